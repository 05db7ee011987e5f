"""fp16 conversion in the fusion plugin: `OnnxFloatToFloat16` (Olive's keys) and `OrtTransformersOptimization` with
`float16: true`, on the MiniLM encoder (minilm.py) and the fused MiniLM, against ONNX Runtime's own converter
(onnxruntime.transformers OnnxModel.convert_float_to_float16, what Olive runs): onnx.checker passes, the nodes, Casts,
initializer bytes and value types are those of the reference, ONNX Runtime runs it, and last_hidden_state is within
FP16_TOLERANCE of the fp32 model's."""

import collections
import functools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import minilm
from minilm import outputs, run_pass

# |last_hidden_state| reaches ~6 on MiniLM, where one fp16 step is 2^-8 ≈ 0.004; 6 layers of fp16 matmuls and
# norms stay within a few steps (onnxruntime's own converter: 5e-3 on these feeds).
FP16_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def model() -> Path:
    return minilm.exported_model()


@pytest.fixture(scope="module")
def fused(olive_host, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "out"
    result = run_pass(olive_host, "OrtTransformersOptimization", model, out, {"model_type": "bert"})
    assert result.returncode == 0, result.stderr
    return out / "model" / "model.onnx"


def reference(src: Path, dst: Path, **kwargs) -> Path:
    from onnxruntime.transformers.onnx_model import OnnxModel

    m = OnnxModel(onnx.load(str(src)))
    m.convert_float_to_float16(**kwargs)
    m.topological_sort()
    onnx.save(m.model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return dst


def value_types(g: onnx.GraphProto) -> dict:
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def assert_same_conversion(ours: Path, theirs: Path):
    """Same nodes (op, name, inputs, outputs, Cast targets), same initializers byte for byte, same value types."""
    a, b = onnx.load(str(ours)).graph, onnx.load(str(theirs)).graph

    def nodes(g):
        return sorted((n.op_type, n.name, tuple(n.input), tuple(n.output),
                       tuple((x.name, x.i) for x in n.attribute if n.op_type == "Cast")) for n in g.node)

    assert nodes(a) == nodes(b)
    init_a = {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in a.initializer}
    init_b = {t.name: (t.data_type, numpy_helper.to_array(t).tobytes()) for t in b.initializer}
    assert init_a.keys() == init_b.keys()
    assert [k for k in init_a if init_a[k] != init_b[k]] == []
    ta, tb = value_types(a), value_types(b)
    produced = {o for n in a.node for o in n.output}
    assert produced <= ta.keys(), "every node output has a declared type"
    assert [(k, ta[k], tb.get(k)) for k in ta if ta[k] != tb.get(k)] == []
    dtypes = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in a.initializer)
    print(f"{ours.parent.parent.name}: {len(a.node)} nodes, Casts {sum(n.op_type == 'Cast' for n in a.node)}, "
          f"initializers {dict(dtypes)}")


@functools.cache
def fp32_outputs(fp32: Path, batch: int, seq: int) -> np.ndarray:
    return outputs(fp32, minilm.feeds(batch, seq))


def check_outputs(fp32: Path, ours: Path, theirs: Path):
    for batch, seq in [(1, 7), (3, 16)]:
        feed = minilm.feeds(batch, seq)
        expected, got, ref = fp32_outputs(fp32, batch, seq), outputs(ours, feed), outputs(theirs, feed)
        assert got.dtype == ref.dtype and got.shape == expected.shape
        diff = np.abs(got.astype(np.float32) - expected).max()
        print(f"max |fp16 - fp32| = {diff:.2e} (onnxruntime's converter: "
              f"{np.abs(ref.astype(np.float32) - expected).max():.2e})")
        assert diff <= FP16_TOLERANCE
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("config", [{}, {"keep_io_types": True, "op_block_list": ["Softmax", "Erf"]},
                                    {"keep_io_types": ["last_hidden_state"], "node_block_list": ["/m/Cast"]}],
                         ids=["defaults", "op-block", "io-list"])
def test_float_to_float16_matches_onnxruntime(olive_host, model, tmp_path, config):
    """OnnxFloatToFloat16 on the exported MiniLM == Olive's call of onnxruntime's converter with the same keys."""
    result = run_pass(olive_host, "OnnxFloatToFloat16", model, tmp_path / "out", config)
    assert result.returncode == 0, result.stderr
    ours = tmp_path / "out" / "model" / "model.onnx"
    onnx.checker.check_model(str(ours))
    theirs = reference(model, tmp_path / "ort.onnx", min_positive_val=1e-7, max_finite_val=1e4,
                       keep_io_types=config.get("keep_io_types", False), use_symbolic_shape_infer=True,
                       op_block_list=config.get("op_block_list"), node_block_list=config.get("node_block_list"))
    assert_same_conversion(ours, theirs)
    check_outputs(model, ours, theirs)


def test_fused_minilm_to_float16(olive_host, model, fused, tmp_path):
    """The fused MiniLM (Attention, SkipLayerNormalization, EmbedLayerNormalization, BiasGelu): OnnxFloatToFloat16
    with fp32 io, and OrtTransformersOptimization float16 (fp32 io by default, as onnxruntime's optimizer does)."""
    out = tmp_path / "f16"
    result = run_pass(olive_host, "OnnxFloatToFloat16", fused, out, {"keep_io_types": True})
    assert result.returncode == 0, result.stderr
    ours = out / "model" / "model.onnx"
    onnx.checker.check_model(str(ours))
    theirs = reference(fused, tmp_path / "ort.onnx", min_positive_val=1e-7, max_finite_val=1e4, keep_io_types=True)
    assert_same_conversion(ours, theirs)
    check_outputs(model, ours, theirs)

    out = tmp_path / "opt16"
    result = run_pass(olive_host, "OrtTransformersOptimization", model, out, {"model_type": "bert", "float16": True})
    assert result.returncode == 0, result.stderr
    ours = out / "model" / "model.onnx"
    onnx.checker.check_model(str(ours))
    theirs = reference(fused, tmp_path / "ort-opt.onnx")
    assert_same_conversion(ours, theirs)
    check_outputs(model, ours, theirs)
    report = json.loads(result.stdout)["metadata"]["fusion"]
    assert report["float16"]["initializers_fp16"] == len(onnx.load(str(ours)).graph.initializer)

    # Olive's force_fp32_ops / force_fp32_nodes are the converter's op and node block lists.
    config = {"model_type": "bert", "float16": True, "keep_io_types": False,
              "force_fp32_ops": ["SkipLayerNormalization"], "force_fp32_nodes": ["Attention_1"]}
    result = run_pass(olive_host, "OrtTransformersOptimization", model, tmp_path / "mixed", config)
    assert result.returncode == 0, result.stderr
    ours = tmp_path / "mixed" / "model" / "model.onnx"
    onnx.checker.check_model(str(ours))
    theirs = reference(fused, tmp_path / "ort-mixed.onnx", keep_io_types=False,
                       op_block_list=["SkipLayerNormalization"], node_block_list=["Attention_1"])
    assert_same_conversion(ours, theirs)
    check_outputs(model, ours, theirs)
    assert json.loads(result.stdout)["metadata"]["fusion"]["float16"]["nodes_blocked"] == 13


def test_float16_bad_config_is_a_clear_error(olive_host, model, tmp_path):
    for config, expect in [({"min_positive_val": 1e-9}, "min_positive_val"),
                           ({"max_finite_val": 1e5}, "max_finite_val"),
                           ({"op_block_list": ["Erf"], "op_include_list": ["MatMul"]}, "mutually exclusive"),
                           ({"keep_io_types": "yes"}, "keep_io_types")]:
        out = tmp_path / f"bad-{len(expect)}"
        result = run_pass(olive_host, "OnnxFloatToFloat16", model, out, config)
        assert result.returncode != 0 and expect in result.stderr, (config, result.stderr)
        assert not out.exists() or not any(out.iterdir()), "a failed pass leaves no output"
