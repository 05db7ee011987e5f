"""The fusion plugin on a real encoder (all-MiniLM-L6-v2 exported to ONNX, see minilm.py): OnnxPeepholeOptimizer and
OrtTransformersOptimization through `olive-host run-pass`; onnx.checker passes, ONNX Runtime gives the same
last_hidden_state (within 1e-4) with right and left padding, and the node counts before/after are printed. Bad input
(not an ONNX file, a truncated model, a folder without a model) fails with an error naming the file."""

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import minilm
from minilm import outputs, run_pass

TOLERANCE = 1e-4  # fp32 fused kernels (Attention, SkipLayerNormalization) reorder sums


@pytest.fixture(scope="module")
def model() -> Path:
    return minilm.exported_model()


def op_counts(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("name", ["OnnxPeepholeOptimizer", "OrtTransformersOptimization"])
def test_minilm_outputs_unchanged(olive_host, model, tmp_path, name):
    config = {"model_type": "bert", "num_heads": 12, "hidden_size": 384} if name != "OnnxPeepholeOptimizer" else None
    result = run_pass(olive_host, name, model, tmp_path / "out", config)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["metadata"]["fusion"]
    fused = tmp_path / "out" / "model" / "model.onnx"
    onnx.checker.check_model(str(fused))
    before, after = op_counts(model), op_counts(fused)
    print(f"{name}: {sum(before.values())} -> {sum(after.values())} nodes: {dict(after)}")
    assert report["nodes_before"] == sum(before.values()) and report["nodes_after"] == sum(after.values())
    if name == "OrtTransformersOptimization":
        assert after["Attention"] == 6 and after["SkipLayerNormalization"] == 12 and after["BiasGelu"] == 6, after
        assert after["EmbedLayerNormalization"] == 1, after
        assert sum(after.values()) <= 60, after
    else:
        assert "Constant" not in after and sum(after.values()) < sum(before.values())
    for batch, seq in [(1, 7), (3, 16)]:
        feed = minilm.feeds(batch, seq)
        expected, got = outputs(model, feed), outputs(fused, feed)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


def test_bad_input_is_a_clear_error(olive_host, model, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not an ONNX model\n")
    truncated = tmp_path / "truncated" / "model.onnx"
    truncated.parent.mkdir()
    truncated.write_bytes(model.read_bytes()[:100_000])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.onnx").write_bytes(b"")
    for path, expect in [(junk, "not an ONNX model"), (truncated, "not an ONNX model"), (empty, "not an ONNX model")]:
        for name in ["OnnxPeepholeOptimizer", "OrtTransformersOptimization"]:
            out = tmp_path / f"out-{path.name}-{name}"
            result = run_pass(olive_host, name, path, out)
            assert result.returncode != 0, result.stdout
            assert expect in result.stderr and path.name in result.stderr, result.stderr
            assert not out.exists() or not any(out.iterdir()), "a failed pass leaves no output"
    result = run_pass(olive_host, "OrtTransformersOptimization", model, tmp_path / "o", {"only_onnxruntime": True})
    assert result.returncode != 0 and "only_onnxruntime" in result.stderr, result.stderr


def test_input_int32(olive_host, model, tmp_path):
    """OrtTransformersOptimization input_int32 (with float16 too): the three int64 inputs become int32, the Casts of
    input_ids / token_type_ids to int32 go (and the mask's, which float16's cascaded-Cast removal makes read the
    input), and the outputs with int32 feeds are those of the int64 model."""
    for extra, removed, tolerance in [({}, 2, 0.0), ({"float16": True}, 3, 2e-2)]:
        out = tmp_path / f"int32-{len(extra)}"
        result = run_pass(olive_host, "OrtTransformersOptimization", model, out, {"input_int32": True, **extra})
        assert result.returncode == 0, result.stderr
        path = out / "model" / "model.onnx"
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False).graph
        assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT32] * 3
        report = json.loads(result.stdout)["metadata"]["fusion"]["input_int32"]
        assert report == {"inputs": 3, "casts_removed": removed, "casts_added": 0}, report
        for batch, seq in [(1, 7), (3, 16)]:
            feed = minilm.feeds(batch, seq)
            got = outputs(path, {k: v.astype(np.int32) for k, v in feed.items()})
            np.testing.assert_allclose(got.astype(np.float32), outputs(model, feed), atol=max(tolerance, TOLERANCE),
                                       rtol=0)


def test_tiny_gpt2_fast_gelu(olive_host, tmp_path):
    """A random 2-layer GPT-2 (gelu_new, the tanh form): FastGelu and LayerNormalization fuse, outputs unchanged."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, activation_function="gelu_new")
    gpt2 = transformers.GPT2Model(config).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    src = tmp_path / "gpt2.onnx"
    ids = torch.ones(1, 8, dtype=torch.int64)
    torch.onnx.export(Hidden(gpt2), (ids, ids), str(src), input_names=["input_ids", "attention_mask"],
                      output_names=["h"], dynamic_axes={k: {0: "b", 1: "s"} for k in ["input_ids", "attention_mask", "h"]},
                      opset_version=14, dynamo=False)
    result = run_pass(olive_host, "OrtTransformersOptimization", src, tmp_path / "out", {"model_type": "gpt2"})
    assert result.returncode == 0, result.stderr
    fused = tmp_path / "out" / "model" / "model.onnx"
    onnx.checker.check_model(str(fused))
    after = op_counts(fused)
    assert after["FastGelu"] == 2 and after["LayerNormalization"] == 5, after
    rng = np.random.default_rng(1)
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0
    feed = {"input_ids": rng.integers(0, 1000, (2, 9)).astype(np.int64), "attention_mask": mask}
    np.testing.assert_allclose(outputs(fused, feed), outputs(src, feed), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_blockwise_rtn_matches_onnxruntime_quantizer(olive_host, model, tmp_path, symmetric):
    """OnnxBlockWiseRtnQuantization on MiniLM writes the MatMulNBits bytes of onnxruntime's MatMulNBitsQuantizer (RTN,
    block 32) and, for the three embedding Gathers, GatherBlockQuantized with the values, scales and zero points of
    its Gather option (ORT stores int4/uint4 tensors, Olive 0.13 and olive-rs nibble-packed uint8 with the symmetric
    values offset by 8). ORT's Gather output declares opset 21 and does not load, so the outputs are compared with
    its MatMul-only model whose embedding tables are replaced by ORT's dequantized ones. OnnxMatMul4Quantizer refuses
    another algorithm."""
    from onnx import numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    config = {"block_size": 32, "is_symmetric": symmetric, "accuracy_level": 4}
    result = run_pass(olive_host, "OnnxBlockWiseRtnQuantization", model, tmp_path / "out", config)
    assert result.returncode == 0, result.stderr
    ours = tmp_path / "out" / "model" / "model.onnx"
    onnx.checker.check_model(str(ours))
    kwargs = {"block_size": 32, "is_symmetric": symmetric, "accuracy_level": 4}
    reference = MatMulNBitsQuantizer(onnx.load(str(model)), **kwargs)
    reference.process()
    theirs = tmp_path / "ort.onnx"
    reference.model.save_model_to_file(str(theirs), use_external_data_format=True)
    gathers = MatMulNBitsQuantizer(onnx.load(str(model)), **kwargs, op_types_to_quantize=("MatMul", "Gather"),
                                   quant_axes=(("MatMul", 0), ("Gather", 1)))
    gathers.process()
    theirs_gather = tmp_path / "ort-gather.onnx"
    gathers.model.save_model_to_file(str(theirs_gather), use_external_data_format=True)

    def quantized(path, op):
        m = onnx.load(str(path))
        init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        nodes = sorted((n for n in m.graph.node if n.op_type == op), key=lambda n: n.output[0])
        return [[init[i] for i in n.input if i in init] for n in nodes], nodes

    (ours_w, ours_n), (theirs_w, theirs_n) = quantized(ours, "MatMulNBits"), quantized(theirs, "MatMulNBits")
    assert len(ours_n) == len(theirs_n) == 36
    for a, b in zip(ours_w, theirs_w):
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))

    def unpack(packed, width):  # uint8 [..., ceil(width / 2)] -> [..., width], low nibble first
        return np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)[..., :width]

    (ours_g, ours_n), (theirs_g, theirs_n) = (quantized(ours, "GatherBlockQuantized"),
                                              quantized(theirs_gather, "GatherBlockQuantized"))
    assert len(ours_n) == len(theirs_n) == 3
    dequantized = {}
    for a, b, n, m in zip(ours_g, theirs_g, ours_n, theirs_n):
        attrs = {x.name: x.i for x in n.attribute}
        assert attrs == {"gather_axis": 0, "quantize_axis": 1, "block_size": 32, "bits": 4}, attrs
        width = b[0].shape[-1]
        values = unpack(a[0], width).astype(np.int16) - (8 if symmetric else 0)
        assert np.array_equal(values, b[0].astype(np.int16))
        assert a[1].dtype == b[1].dtype == np.float32 and np.array_equal(a[1], b[1])
        if not symmetric:
            assert np.array_equal(unpack(a[2], b[2].shape[-1]), b[2])
        zero = 0 if symmetric else np.repeat(b[2].astype(np.float32), 32, axis=-1)[..., :width]
        table = (b[0].astype(np.float32) - zero) * np.repeat(b[1], 32, axis=-1)[..., :width]
        dequantized[m.input[0].removesuffix("_Q4")] = table.astype(np.float32)
    reference_model = onnx.load(str(theirs))
    for t in reference_model.graph.initializer:
        if t.name in dequantized:
            t.CopyFrom(numpy_helper.from_array(dequantized.pop(t.name), t.name))
    assert not dequantized, dequantized.keys()
    onnx.save(reference_model, str(theirs), save_as_external_data=True, location="ort-dq.onnx.data")
    feed = minilm.feeds(3, 16)
    np.testing.assert_allclose(outputs(ours, feed), outputs(theirs, feed), atol=1e-5, rtol=0)
    bad = run_pass(olive_host, "OnnxMatMul4Quantizer", model, tmp_path / "bad", {"algorithm": "GPTQ"})
    assert bad.returncode != 0 and "algorithm `GPTQ`" in bad.stderr, bad.stderr


def olive_gather_8bit(table: np.ndarray, block: int, symmetric: bool):
    """Olive 0.13's 8-bit RTN of an embedding table along its last axis (rtn_quantization.py _quantize_ndarray with
    bits=8): uint8 values (symmetric ones offset by 128), float32 scales, uint8 zero points."""
    rows, k = table.shape
    q = np.zeros((rows, k), np.uint8)
    scales, zps = [], []
    for i in range(0, k, block):
        x = table[:, i:i + block]
        mx, mn = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
        if symmetric:
            scale = np.where(np.abs(mx) > np.abs(mn), mx, mn) / -128.0
            v = np.where(scale == 0, 0, x / scale).round().clip(-128, 127).astype(np.int16) + 128
        else:
            lo, hi = np.minimum(mn, 0), np.maximum(mx, 0)
            scale = (hi - lo) / 255.0
            zp = np.where(scale == 0, 128, -lo / scale).round().clip(0, 255).astype(np.uint8)
            v = np.where(scale == 0, 128, x / scale + zp).round().clip(0, 255)
            zps.append(zp)
        q[:, i:i + block] = v.astype(np.uint8)
        scales.append(scale)
    return q, np.concatenate(scales, axis=1), (np.concatenate(zps, axis=1) if zps else None)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_blockwise_rtn_8bit_gathers(olive_host, model, tmp_path, symmetric):
    """8-bit GatherBlockQuantized (onnxruntime's quantizer has no 8-bit Gather): the three MiniLM embedding tables
    quantized as Olive 0.13's numpy RTN does, and the outputs those of the fp32 model with the dequantized tables."""
    from onnx import numpy_helper

    names = [f"/m/embeddings/{e}_embeddings/Gather" for e in ["word", "token_type", "position"]]
    config = {"bits": 8, "block_size": 128, "is_symmetric": symmetric, "nodes_to_include": names}
    result = run_pass(olive_host, "OnnxBlockWiseRtnQuantization", model, tmp_path / "out", config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["fusion"]["gather_block_quantized"] == 3
    ours = onnx.load(str(tmp_path / "out" / "model" / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    reference = onnx.load(str(model))
    tables = {t.name: t for t in reference.graph.initializer}
    nodes = [n for n in ours.graph.node if n.op_type == "GatherBlockQuantized"]
    assert sorted(n.name for n in nodes) == sorted(f"{name}_Q8" for name in names)
    for n in nodes:
        source = n.input[0].removesuffix("_Q8")
        q, scales, zps = olive_gather_8bit(numpy_helper.to_array(tables[source]), 128, symmetric)
        assert np.array_equal(init[n.input[0]], q) and np.array_equal(init[n.input[2]], scales)
        if not symmetric:
            assert np.array_equal(init[n.input[3]], zps)
        zero = 128 if symmetric else np.repeat(zps.astype(np.float32), 128, axis=1)
        table = (q.astype(np.float32) - zero) * np.repeat(scales, 128, axis=1)
        tables[source].CopyFrom(numpy_helper.from_array(table[:, :q.shape[1]].astype(np.float32), source))
    dequantized = tmp_path / "dq.onnx"
    onnx.save(reference, str(dequantized))
    feed = minilm.feeds(3, 16)
    np.testing.assert_allclose(outputs(tmp_path / "out" / "model" / "model.onnx", feed), outputs(dequantized, feed),
                               atol=1e-5, rtol=0)


def test_dynamic_int8_matches_onnxruntime_quantize_dynamic(olive_host, model, tmp_path):
    """OnnxDynamicQuantization on the fused MiniLM: the MatMulInteger weights, scales and zero points of
    onnxruntime.quantization.quantize_dynamic (MatMul, int8 and uint8 weights) and the same outputs."""
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused = tmp_path / "fused"
    assert run_pass(olive_host, "OrtTransformersOptimization", model, fused).returncode == 0
    src = fused / "model" / "model.onnx"
    feed = minilm.feeds(3, 16)
    for precision, weight_type in [("int8", QuantType.QInt8), ("uint8", QuantType.QUInt8)]:
        out = tmp_path / precision
        result = run_pass(olive_host, "OnnxDynamicQuantization", src, out, {"precision": precision})
        assert result.returncode == 0, result.stderr
        ours = out / "model" / "model.onnx"
        onnx.checker.check_model(str(ours))
        theirs = tmp_path / f"ort-{precision}.onnx"
        quantize_dynamic(str(src), str(theirs), op_types_to_quantize=["MatMul"], weight_type=weight_type,
                         use_external_data_format=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

        def weights(path):
            m = onnx.load(str(path))
            init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
            nodes = [n for n in m.graph.node if n.op_type == "MatMulInteger"]
            return [(init[n.input[1]], init[n.input[3]], init[n.input[1].replace("_quantized", "_scale")])
                    for n in nodes]

        a, b = weights(ours), weights(theirs)
        assert len(a) == len(b) == 18
        for x, y in zip(a, b):
            assert all(np.array_equal(u, v) for u, v in zip(x, y))
        np.testing.assert_array_equal(outputs(ours, feed), outputs(theirs, feed))
    bad = run_pass(olive_host, "OnnxDynamicQuantization", src, tmp_path / "bad", {"op_types_to_quantize": ["Conv"]})
    assert bad.returncode != 0 and "`Conv`" in bad.stderr, bad.stderr
