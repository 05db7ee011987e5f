"""The qdq plugin (issue 9): DynamicToFixedShape and OnnxStaticQuantization on all-MiniLM-L6-v2 (minilm.py), and
auto-opt's QNN recipe end to end on the HTP simulator.

- Our static QDQ quantization vs onnxruntime.quantization.quantize_static (MinMax, QDQ; uint8 activations with
  uint8 weights per tensor, and with int4 weights per channel) on the same model and the same calibration samples
  (our generator, plugins/qdq/src/calibrate.rs, a SplitMix64 over [0, vocab) for input_ids, replayed here; or a
  data_config's text tokenized into the same rows): every activation/weight scale and zero point ORT writes is ours
  too, equal to float32 precision; the quantized weights are byte-identical except a handful of elements one step
  off (float32 rounding at .5; at most WEIGHT_ODD_ELEMENTS a tensor).
- Entropy and Percentile calibration (with ORT's CalibStridedMinMax / CalibPercentile / CalibTensorRangeSymmetric),
  and MinMax's CalibMovingAverage, vs quantize_static with the same options: the same scales and zero points.
- int4 per-channel weights with uint16 activations run fully on the HTP simulator (MINILM_INT4_COS).
- The attention mask's fill survives quantization (keep_attention_mask): padded inputs on the HTP; an Olive
  workflow with Olive's encoder calibration data config (padded text rows) through `olive-host run`.
- EPContextBinaryGenerator: the QNN context-binary model runs on the simulator with the QDQ model's outputs.
- `auto-opt --model_name_or_path model.onnx --device npu --provider QNNExecutionProvider --precision uint8`: fixed
  shapes (batch 1, 128 tokens) -> peephole -> LayerNorm/Gelu fusion -> static QDQ uint8 -> ep-check (every node
  on QNN with CPU fallback disabled; output vs the CPU provider within the plugin's tolerance); then the result on the
  simulator is compared with the same QDQ model on the CPU and with the fp32 model (see MINILM_* below).
- uint16 activations (com.microsoft Q/DQ) with uint8 weights at [1, SEQ]: Where's constants (the attention mask's
  0 / -3.4e38) take the Where output's uint16 params, so the simulator finalizes the graph (as uint8 weights of their
  own range it failed with QNN_COMMON_ERROR_MEM_ALLOC); its output is close to fp32 (MINILM_U16_COS).
- Bad input: a symbolic dim left, unsupported quantization options, calibration on dynamic shapes.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

import minilm
from qnn import provider_options, qnn_session

SEQ = 16
WEIGHT_ODD_ELEMENTS = 4
# uint8 QDQ MiniLM at 128 tokens, the check's inputs, last_hidden_state (|x| <= ~6), measured: HTP vs the same QDQ
# model on the CPU max |diff| 2.35, mean 0.17; cosine to the fp32 output 0.445 (HTP) and 0.455 (CPU QDQ): uint8
# per-tensor activations are lossy on this encoder whatever runs them. Bounds: the mean, and the HTP run no further
# from fp32 (cosine) than the CPU QDQ run by more than MINILM_COS_GAP.
MINILM_MEAN_DIFF = 0.3
MINILM_COS_GAP = 0.05
# uint16 activations, uint8 weights, [1, 16], the check-style ids below: cosine to fp32 measured 0.944 (CPU QDQ; HTP
# vs CPU max 0.094); uint8 gives 0.54 on the same input.
MINILM_U16_COS = 0.9
# uint16 activations, int4 per-channel weights, same input: cosine measured 0.849 on the HTP (int8 per channel 0.998).
MINILM_INT4_COS = 0.8
# uint16 activations, uint8 per-channel weights, 6 of SEQ tokens padded: cosine to fp32 (same mask) measured 0.9965.
MINILM_MASKED_COS = 0.98
LN_GELU_ONLY = {"model_type": "bert", "optimization_options": {
    "enable_attention": False, "enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False,
    "enable_bias_gelu": False, "enable_embed_layer_norm": False}}


def run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, env=env)


def run_pass(olive_host, name, config, model, out) -> Path:
    done = run([olive_host, "run-pass", "--pass", name, "--config", json.dumps(config), "-m", model, "-o", out])
    assert done.returncode == 0, done.stderr
    return Path(out) / "model" / "model.onnx"


@pytest.fixture(scope="module")
def prepared(olive_host, tmp_path_factory) -> Path:
    """MiniLM with fixed shapes [1, SEQ], peephole-optimized, LayerNorm and Gelu fused (the QNN recipe's prefix)."""
    tmp = tmp_path_factory.mktemp("qdq")
    m = run_pass(olive_host, "DynamicToFixedShape", {"dim_param": ["batch", "sequence"], "dim_value": [1, SEQ]},
                 minilm.exported_model(), tmp / "fixed")
    shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(m).graph.input]
    assert shapes == [[1, SEQ]] * 3
    m = run_pass(olive_host, "OnnxPeepholeOptimizer", {}, m, tmp / "peephole")
    return run_pass(olive_host, "OrtTransformersOptimization", LN_GELU_ONLY, m, tmp / "fused")


class SplitMix:
    """plugins/qdq/src/calibrate.rs's generator."""

    MASK = 2**64 - 1

    def __init__(self, seed):
        self.x = seed

    def unit(self) -> float:
        self.x = (self.x + 0x9E3779B97F4A7C15) & self.MASK
        z = self.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


class _Reader(CalibrationDataReader):
    def __init__(self, samples):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def initializers(path) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def ids_samples(seq=SEQ):
    """Our random-id calibration samples (calibrate.rs's generator, seed 0), replayed."""
    rng = SplitMix(0)
    vocab = 30522  # word_embeddings rows
    return [{"input_ids": np.array([int(rng.unit() * vocab) for _ in range(seq)], np.int64).reshape(1, seq),
             "attention_mask": np.ones((1, seq), np.int64), "token_type_ids": np.zeros((1, seq), np.int64)}
            for _ in range(8)]


def assert_matches_ort(ort_model, ours):
    """Every scale / zero point ORT writes is ours (equal to float32 precision; a scalar and a 1-element vector
    alike), the quantized tensors equal but for WEIGHT_ODD_ELEMENTS one step off."""
    a, b = initializers(ort_model), initializers(ours)
    scales = [k for k in a if k.endswith("_scale")]
    assert len(scales) > 200
    for k in scales:
        assert k in b, f"ORT quantizes {k[:-6]}, we do not"
        assert a[k].size == b[k].size and np.allclose(a[k].ravel(), b[k].ravel(), rtol=1e-6, atol=0), (k, a[k], b[k])
        zp = k[:-6] + "_zero_point"
        if zp in a:
            assert a[zp].dtype == b[zp].dtype and np.array_equal(a[zp].ravel(), b[zp].ravel()), zp
    weights = [k for k in a if k.endswith("_quantized") and not k.endswith("bias_quantized")]
    assert len(weights) > 50
    for k in weights:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (k, a[k].dtype, b[k].dtype)
        d = np.abs(a[k].astype(np.int64) - b[k].astype(np.int64))
        assert d.max() <= 1 and (d > 0).sum() <= WEIGHT_ODD_ELEMENTS, (k, d.max(), (d > 0).sum())


# (activation, weight, per_channel): uint8 per tensor; int4 per channel (MatMul weights int4 along axis 1, packed,
# com.microsoft Q/DQ; the other constants — Add biases, embedding tables — uint8 as ORT quantizes them as activations)
@pytest.mark.parametrize("act,weight,per_channel", [("QUInt8", "QUInt8", False), ("QUInt8", "QInt4", True)])
def test_scales_zero_points_and_weights_match_quantize_static(olive_host, prepared, tmp_path, act, weight,
                                                              per_channel):
    ours = run_pass(olive_host, "OnnxStaticQuantization",
                    {"activation_type": act, "weight_type": weight, "per_channel": per_channel,
                     "calibration_samples": 8, "seed": 0, "keep_attention_mask": False}, prepared, tmp_path / "ours")
    theirs = tmp_path / "ort.onnx"
    quantize_static(prepared, theirs, _Reader(ids_samples()), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType[act], weight_type=QuantType[weight], per_channel=per_channel)
    assert_matches_ort(theirs, ours)
    if per_channel:
        graph = onnx.load(ours).graph
        inits = {i.name: i for i in graph.initializer}
        int4 = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and inits[n.input[0]].data_type == onnx.TensorProto.INT4]
        per_channel = [n for n in int4 if n.attribute]
        # 6 MatMul weights a layer along axis 1; the 13 LayerNorm scales per tensor (axis 1 is beyond their rank)
        assert (len(per_channel), len(int4)) == (36, 49), (len(per_channel), len(int4))
        for dq in per_channel:
            assert dq.domain == "com.microsoft" and [a.i for a in dq.attribute if a.name == "axis"] == [1], dq
            assert list(inits[dq.input[1]].dims) == [inits[dq.input[0]].dims[1]], dq.input


class _RoundsReader(_Reader):
    """A reader quantize_static can stride through (CalibStridedMinMax: len() and set_range())."""

    def __init__(self, samples):
        self._samples = samples
        super().__init__(samples)

    def __len__(self):
        return len(self._samples)

    def set_range(self, start_index, end_index):
        self._it = iter(self._samples[start_index:end_index])


@pytest.fixture(scope="module")
def ort_minmax(prepared, tmp_path_factory) -> dict:
    """quantize_static's MinMax uint8 initializers (the histogram cases must differ from them)."""
    out = tmp_path_factory.mktemp("minmax") / "ort.onnx"
    quantize_static(prepared, out, _Reader(ids_samples()), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    return initializers(out)


# (calibrate_method, extra_options, scales that differ from MinMax at least): Entropy in rounds of 2 samples (each
# wider round widens the 128-bin histogram by whole bins, so the KL search has candidates; Entropy over one round of
# 128 bins is MinMax); Percentile of |x| (symmetric, ORT's default) in rounds of 2 (a wider round extends the edges);
# Percentile of the signed values, one round; MinMax's moving average over rounds of 2. Measured: 51, 130, 130, 130
# of 231 scales differ from MinMax.
CALIBRATION_CASES = [("Entropy", {"CalibStridedMinMax": 2}, 40),
                     ("Percentile", {"CalibStridedMinMax": 2, "CalibPercentile": 99.9}, 100),
                     ("Percentile", {"CalibTensorRangeSymmetric": False, "CalibPercentile": 99.5}, 100),
                     ("MinMax", {"CalibMovingAverage": True, "CalibStridedMinMax": 2,
                                 "CalibMovingAverageConstant": 0.5}, 100)]


@pytest.mark.parametrize("method,extra,differ", CALIBRATION_CASES)
def test_calibration_methods_match_quantize_static(olive_host, prepared, ort_minmax, tmp_path, method, extra,
                                                       differ):
    """Entropy and Percentile (plugins/qdq/src/histogram.rs) and MinMax's moving average (methods.rs) give ORT's
    ranges: every scale and zero point equal to float32 precision, as plain MinMax (measured: all 231 equal in each
    case). Our KL divergence takes libm's float32 log
    where numpy may use its AVX-512 one (1 ulp apart on ~8% of inputs), so two KL candidates within an ulp could pick
    neighbouring bins; no such tie on these samples."""
    ours = run_pass(olive_host, "OnnxStaticQuantization",
                    {"activation_type": "QUInt8", "weight_type": "QUInt8", "calibration_samples": 8, "seed": 0,
                     "keep_attention_mask": False, "calibrate_method": method, "extra_options": extra},
                    prepared, tmp_path / "ours")
    theirs = tmp_path / "ort.onnx"
    quantize_static(prepared, theirs, _RoundsReader(ids_samples()), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod[method], extra_options=extra)
    assert_matches_ort(theirs, ours)
    got = initializers(theirs)
    changed = sum(not np.allclose(got[k], v, rtol=1e-6) for k, v in ort_minmax.items() if k.endswith("_scale"))
    assert changed >= differ, (method, extra, changed)
    report = json.loads((tmp_path / "ours" / "model_config.json").read_text())["config"]["model_attributes"]
    assert report["static_quantization"]["calibrate_method"] == method, report


def test_calibration_from_a_data_config_matches_quantize_static_on_the_same_rows(olive_host, prepared, tmp_path):
    """data_config (olive-data's form of Olive's data config: the project's calibration text, one record per line,
    layout pack): each line tokenized with MiniLM's tokenizer ([CLS] ... [SEP]), joined, cut into rows of SEQ tokens;
    ORT calibrated on the same rows writes the same scales."""
    text = Path(__file__).resolve().parents[2] / "data" / "calibration.txt"
    data = {"data_name": "text", "data_files": [str(text)], "max_samples": 4}
    # the tokenizer beside the model (tokenizer_dir's default); it is copied to the output with the model
    model_dir = tmp_path / "in"
    shutil.copytree(prepared.parent, model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm.source_dir() / name, model_dir / name)
    ours = run_pass(olive_host, "OnnxStaticQuantization",
                    {"activation_type": "QUInt8", "weight_type": "QUInt8", "data_config": data,
                     "keep_attention_mask": False}, model_dir,
                    tmp_path / "ours")
    assert (ours.parent / "tokenizer.json").is_file()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm.source_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lines = [line for line in text.read_text().splitlines() if line.strip()]
    ids = [i for e in tok.encode_batch(lines) for i in e.ids]
    rows = [ids[k * SEQ:(k + 1) * SEQ] for k in range(4)]
    samples = [{"input_ids": np.array([r], np.int64), "attention_mask": np.ones((1, SEQ), np.int64),
                "token_type_ids": np.zeros((1, SEQ), np.int64)} for r in rows]
    assert rows[0][0] == 101 and ids.count(101) == ids.count(102) == len(lines)  # [CLS] ... [SEP] a line
    theirs = tmp_path / "ort.onnx"
    quantize_static(prepared, theirs, _Reader(samples), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    assert_matches_ort(theirs, ours)
    report = json.loads((tmp_path / "ours" / "model_config.json").read_text())["config"]["model_attributes"]
    assert report["static_quantization"]["calibration_data"] == "data_config", report
    assert report["static_quantization"]["calibration_samples"] == 4, report


def test_olive_workflow_with_an_encoder_data_config_calibrates_padded_text(olive_host, prepared, tmp_path):
    """`olive-host run` on an Olive workflow whose data config is Olive's BERT calibration form (HuggingfaceContainer,
    huggingface_pre_process input_cols / max_length / padding max_length / max_samples): padded rows of text
    calibrate a uint16 model whose mask ranges are floored; on the simulator a padded text's real tokens match fp32."""
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    text = Path(__file__).resolve().parents[2] / "data" / "calibration.txt"
    flow = {
        "input_model": {"type": "OnnxModel", "model_path": str(prepared)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "npu", "execution_providers": ["QNNExecutionProvider"]}]}},
        "data_configs": [{"name": "calib", "type": "HuggingfaceContainer",
                          "load_dataset_config": {"data_name": "text", "data_files": [str(text)]},
                          "pre_process_data_config": {"input_cols": ["text"], "max_length": SEQ,
                                                      "padding": "max_length", "truncation": True, "max_samples": 8},
                          "dataloader_config": {"batch_size": 1}}],
        "passes": {"q": {"type": "OnnxStaticQuantization", "activation_type": "QUInt16", "weight_type": "QUInt8",
                         "per_channel": True, "data_config": "calib", "tokenizer_dir": str(minilm.source_dir())}},
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
    }
    (tmp_path / "flow.json").write_text(json.dumps(flow))
    done = run([olive_host, "run", "--config", tmp_path / "flow.json"])
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    report = json.loads((out / "model_config.json").read_text())["config"]["model_attributes"]["static_quantization"]
    assert report["calibration_data"] == "data_config" and report["mask_ranges_floored"] > 0, report
    ids = [101, 2023, 2003, 1037, 2460, 6251, 1012, 102] + [0] * (SEQ - 8)  # "this is a short sentence." + pads
    feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.array([[1] * 8 + [0] * (SEQ - 8)], np.int64),
            "token_type_ids": np.zeros((1, SEQ), np.int64)}
    htp = qnn_session(out / "model" / "model.onnx").run(None, feed)[0][0, :8]
    fp32 = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"]).run(None, feed)[0][0, :8]
    assert float((htp * fp32).sum() / np.linalg.norm(htp) / np.linalg.norm(fp32)) >= MINILM_MASKED_COS


# uint8: uint8 weights per channel (HTP v73 vs CPU max 2.49, cosine to fp32 0.46); int4: uint16 activations, int4
# weights per channel (cosine measured 0.79 at the check inputs, 0.93 on text; HTP vs CPU max 0.29)
@pytest.mark.parametrize("precision", ["uint8", "int4"])
def test_auto_opt_qnn_runs_minilm_fully_on_the_htp_simulator(olive_host, tmp_path, precision):
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    src = minilm.exported_model()
    out = tmp_path / "ao"
    done = run([olive_host, "auto-opt", "--model_name_or_path", src, "--device", "npu", "--provider",
                "QNNExecutionProvider", "--precision", precision, "-o", out])
    assert done.returncode == 0, done.stderr
    model = out / "model" / "model.onnx"
    ops = {n.op_type for n in onnx.load(model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization", "Gelu"} <= ops, ops
    # On the simulator (every node on QNN, fallback disabled) vs the fp32 model on CPU, the check's inputs.
    feed = {"input_ids": (np.arange(128) % 97).reshape(1, 128).astype(np.int64),
            "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    htp = qnn_session(model).run(None, feed)[0]
    qdq = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    fp32 = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert htp.shape == fp32.shape == (1, 128, 384)
    assert np.abs(htp - qdq).mean() <= MINILM_MEAN_DIFF, np.abs(htp - qdq).mean()

    def cos(a, b):
        return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(htp, fp32) >= cos(qdq, fp32) - MINILM_COS_GAP, (cos(htp, fp32), cos(qdq, fp32))


def test_uint16_activations_finalize_on_the_htp_simulator_close_to_fp32(olive_host, prepared, tmp_path):
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    model = run_pass(olive_host, "OnnxStaticQuantization", {"activation_type": "QUInt16", "weight_type": "QUInt8"},
                     prepared, tmp_path / "u16")
    graph = onnx.load(model).graph
    inits = {i.name: i for i in graph.initializer}
    where = [n for n in graph.node if n.op_type == "Where" and n.output[0] + "_scale" in inits]
    assert where, "no quantized Where"
    for w in where:
        for name in w.input[1:]:
            dq = next(n for n in graph.node if name in n.output)
            assert dq.op_type == "DequantizeLinear" and dq.domain == "com.microsoft", (w.name, dq.op_type, dq.domain)
            assert inits[dq.input[0]].data_type == onnx.TensorProto.UINT16, (w.name, name)
            assert list(dq.input[1:]) == [w.output[0] + "_scale", w.output[0] + "_zero_point"], (w.name, dq.input)
    feed = {"input_ids": (np.arange(SEQ) % 97).reshape(1, SEQ).astype(np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64), "token_type_ids": np.zeros((1, SEQ), np.int64)}
    htp = qnn_session(model).run(None, feed)[0]
    fp32 = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cos = float((htp * fp32).sum() / np.linalg.norm(htp) / np.linalg.norm(fp32))
    assert cos >= MINILM_U16_COS, cos


def test_padding_mask_survives_quantization_on_the_htp_simulator(olive_host, prepared, tmp_path):
    """The attention mask's -3.4e38 fill quantizes to -100 (keep_attention_mask, the default for 16-bit
    activations): with the last 6 of
    SEQ tokens padded, the HTP output is close to the fp32 output with that mask (MINILM_MASKED_COS); without it the
    padded positions are attended (measured 0.931 vs 0.9965)."""
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    feed = {"input_ids": (np.arange(SEQ) * 37 % 20000 + 1000).reshape(1, SEQ).astype(np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64), "token_type_ids": np.zeros((1, SEQ), np.int64)}
    feed["attention_mask"][0, -6:] = 0
    fp32 = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = {}
    for keep in (True, False):
        model = run_pass(olive_host, "OnnxStaticQuantization",
                         {"activation_type": "QUInt16", "weight_type": "QUInt8", "per_channel": True,
                          "keep_attention_mask": keep}, prepared, tmp_path / f"keep-{keep}")
        htp = qnn_session(model).run(None, feed)[0][0, :-6]
        got[keep] = float((htp * fp32[0, :-6]).sum() / np.linalg.norm(htp) / np.linalg.norm(fp32[0, :-6]))
    assert got[True] >= MINILM_MASKED_COS and got[False] < got[True] - 0.02, got


def test_int4_per_channel_weights_with_uint16_activations_run_on_the_htp_simulator(olive_host, prepared, tmp_path):
    """QInt4 weights per channel (MatMul: int4 along the output axis, com.microsoft DQ) with uint16 activations run
    fully on the simulator; for QNN the LayerNorm scales stay uint8 (the HTP refuses a signed LayerNorm scale beside
    uint16 activations: every LayerNormalization fell back to the CPU)."""
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    model = run_pass(olive_host, "OnnxStaticQuantization",
                     {"activation_type": "QUInt16", "weight_type": "QInt4", "per_channel": True,
                      "execution_provider": "QNNExecutionProvider"}, prepared, tmp_path / "int4")
    graph = onnx.load(model).graph
    inits = {i.name: i for i in graph.initializer}
    assert sum(i.data_type == onnx.TensorProto.INT4 and k.endswith("_quantized") for k, i in inits.items()) == 36
    assert inits["m.embeddings.LayerNorm.weight_quantized"].data_type == onnx.TensorProto.UINT8
    feed = {"input_ids": (np.arange(SEQ) % 97).reshape(1, SEQ).astype(np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64), "token_type_ids": np.zeros((1, SEQ), np.int64)}
    htp = qnn_session(model).run(None, feed)[0]
    fp32 = ort.InferenceSession(prepared, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cos = float((htp * fp32).sum() / np.linalg.norm(htp) / np.linalg.norm(fp32))
    assert cos >= MINILM_INT4_COS, cos


def test_ep_context_model_runs_on_the_htp_simulator_as_the_qdq_model(olive_host, prepared, tmp_path):
    """EPContextBinaryGenerator (ep.context_enable=1): model_ctx.onnx is one EPContext node (+ model_ctx_qnn.bin, or the
    binary embedded); it runs on QNN with CPU fallback disabled and gives the QDQ model's outputs on QNN."""
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    qdq = run_pass(olive_host, "OnnxStaticQuantization", {"activation_type": "QUInt16", "weight_type": "QUInt8",
                                                          "per_channel": True}, prepared, tmp_path / "qdq")
    feed = {"input_ids": (np.arange(SEQ) % 97).reshape(1, SEQ).astype(np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64), "token_type_ids": np.zeros((1, SEQ), np.int64)}
    want = qnn_session(qdq).run(None, feed)[0]
    for embed in (False, True):
        out = tmp_path / f"ctx-{embed}"
        done = run([olive_host, "run-pass", "--pass", "EPContextBinaryGenerator", "--device", "npu", "--config",
                    json.dumps({"embed_context": embed, "disable_cpu_fallback": True,
                                    "provider_options": provider_options()}), "-m", qdq.parent, "-o", out])
        assert done.returncode == 0, done.stderr
        files = sorted(p.name for p in (out / "model").iterdir())
        assert files == (["model_ctx.onnx"] if embed else ["model_ctx.onnx", "model_ctx_qnn.bin"]), files
        ctx = out / "model" / "model_ctx.onnx"
        assert [n.op_type for n in onnx.load(ctx).graph.node] == ["EPContext"]
        got = qnn_session(ctx).run(None, feed)[0]
        assert np.array_equal(got, want), np.abs(got - want).max()


def test_bad_configs_are_named(olive_host, prepared, tmp_path):
    src = minilm.exported_model()
    done = run([olive_host, "run-pass", "--pass", "DynamicToFixedShape", "--config",
                json.dumps({"dim_param": ["batch"], "dim_value": [1]}), "-m", src, "-o", tmp_path / "a"])
    assert done.returncode != 0 and "input `input_ids` keeps the symbolic dim `sequence`" in done.stderr, done.stderr
    assert not (tmp_path / "a").exists()
    done = run([olive_host, "run-pass", "--pass", "OnnxStaticQuantization", "-m", src, "-o", tmp_path / "b"])
    assert done.returncode != 0 and "calibration needs static shapes" in done.stderr, done.stderr
    for config, words in [({"quant_format": "QOperator"}, "olive-rs writes QDQ only"),
                          ({"calibrate_method": "Distribution"}, "olive-rs writes no float8 types"),
                          ({"calibrate_method": "Percentile", "extra_options": {"CalibPercentile": 101}},
                           "OnnxStaticQuantization: extra_options `CalibPercentile`: expected a number in [0, 100], got 101"),
                          ({"calibrate_method": "Entropy", "extra_options": {"CalibStridedMinMax": 3}},
                           "extra_options `CalibStridedMinMax`: expected a divisor of the 8 calibration samples, got 3"),
                          ({"reduce_range": True}, "reduce_range"),
                          ({"data_config": "glue"}, "expected struct DataConfig"),
                          ({"data_config": {"data_name": "text", "data_files": [__file__]}, "tokenizer_dir": "/nonexistent"},
                           "a data_config needs the model's tokenizer"),
                          ({"weight_type": "QInt2"}, "weight_type `QInt2`")]:
        done = run([olive_host, "run-pass", "--pass", "OnnxStaticQuantization", "--config", json.dumps(config),
                    "-m", prepared, "-o", tmp_path / "c"])
        assert done.returncode != 0 and words in done.stderr, (config, done.stderr)
    done = run([olive_host, "run-pass", "--pass", "EPContextBinaryGenerator", "--device", "npu", "--config",
                json.dumps({"ep_library": "/nonexistent/libqnn.so"}), "-m", prepared, "-o", tmp_path / "e"])
    assert done.returncode != 0 and "plugin-EP library /nonexistent/libqnn.so is not a file" in done.stderr, done.stderr
    assert not (tmp_path / "e").exists()
    done = run([olive_host, "run-pass", "--pass", "OnnxQuantization", "--config", json.dumps({"quant_mode": "dynamic"}),
                "-m", prepared, "-o", tmp_path / "d"])
    assert done.returncode != 0 and "OnnxDynamicQuantization" in done.stderr, done.stderr
