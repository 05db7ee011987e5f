"""Execution-provider plugins (issue 9): `olive-host ep-check` and auto-opt's choice of provider.

- OpenVINO (the onnxruntime-openvino 1.24.1 wheel's library, OLIVE_ORT_OPENVINO_DYLIB): a small ONNX graph with
  MatMulNBits runs with every node on OpenVINOExecutionProvider (CPU fallback disabled, each node's provider read
  from ONNX Runtime's profile), its output within OPENVINO_TOL of the venv's onnxruntime CPU run and within the
  plugin's tolerance of the same library's CPU provider (checked in Rust);
- auto-opt for OpenVINO on a tiny llama (int4) and a tiny Phi-3 LongRoPE (fp32): ModelBuilder then fusion's
  DecomposeGroupQueryAttention, and the result runs with every node on OpenVINO within the plugin's tolerance; the
  GroupQueryAttention export itself is refused by OpenVINO with an error naming the provider and each node; the lab's
  --adapter_path flags too (LoRA weights as required inputs);
- DecomposeGroupQueryAttention alone (test_gqa_decomposition.py) matches GroupQueryAttention on the CPU provider;
- an absent OpenVINO device (NPU), the CUDA EP without its library, a library of the wrong version, an unknown
  provider: clear errors naming the provider;
- a third-party EP plugin built outside the workspace against pass-api only (tests/third_party/ep-example) adds the
  device `example` through OLIVE_PLUGIN_PATH, and auto-opt uses its recipe and check.
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
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests" / "third_party" / "ep-example"
# OpenVINO CPU with precision=ACCURACY vs ONNX Runtime's CPU provider on MatMulNBits: measured 1.9e-6 (FACTS.md).
OPENVINO_TOL = 1e-4


def run(cmd, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, env=env, **kw)


@pytest.fixture(scope="module")
def openvino_env() -> dict:
    lib = os.environ.get("OLIVE_ORT_OPENVINO_DYLIB")
    if not lib or not Path(lib).is_file():
        pytest.fail("OLIVE_ORT_OPENVINO_DYLIB is not set or missing: run `make test` (scripts/install.sh fetches it)")
    return dict(os.environ)


def matmul_nbits_model(path: Path) -> Path:
    """[1, 4, 64] -> MatMulNBits (int4, block 32, 64 -> 48) -> Add -> Relu -> Softmax, weights packed by onnxruntime's
    own quantizer."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48)).astype(np.float32) / 8
    bias = rng.standard_normal(48).astype(np.float32) / 8
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
         helper.make_node("Add", ["mm", "b"], ["add"], name="add"),
         helper.make_node("Relu", ["add"], ["relu"], name="relu"),
         helper.make_node("Softmax", ["relu"], ["y"], name="softmax", axis=-1)],
        "ep_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "sequence_length", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", "sequence_length", 48])],
        [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True)
    quantizer.process()
    quantized = quantizer.model.model
    assert "MatMulNBits" in {n.op_type for n in quantized.graph.node}
    quantized.ir_version = 10  # onnxruntime 1.24.1 reads IR versions up to 13; the venv's onnx writes newer ones
    onnx.save(quantized, path)
    return path


def test_openvino_runs_every_node_within_tolerance_of_the_cpu(olive_host, openvino_env, tmp_path):
    model = matmul_nbits_model(tmp_path / "model.onnx")
    outputs = tmp_path / "openvino.json"
    result = run([olive_host, "ep-check", "-m", model, "--device", "cpu", "--provider", "OpenVINOExecutionProvider",
                  "--outputs_file", outputs], env=openvino_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["provider"] == "OpenVINOExecutionProvider"
    assert report["onnxruntime"] == "1.24.1"
    assert report["nodes"] >= 1  # every node event of the profile ran on OpenVINO (the check fails otherwise)
    assert report["max_abs_diff"]["y"] <= OPENVINO_TOL  # vs the CPU provider of the same 1.24.1 library
    # The check's input (a ramp over [batch 1, 4 tokens, 64]) on the venv's onnxruntime CPU provider: the OpenVINO
    # output the check wrote is within OPENVINO_TOL of it.
    x = (((np.arange(4 * 64) % 17) - 8.0) / 8.0).astype(np.float32).reshape(1, 4, 64)
    cpu = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    openvino = np.array(json.loads(outputs.read_text())["y"], dtype=np.float64).reshape(cpu.shape)
    assert np.abs(openvino - cpu).max() <= OPENVINO_TOL
    assert np.abs(cpu).max() > 0.02  # not a degenerate output


@pytest.fixture(scope="module")
def cpu_export(olive_host, tiny, tmp_path_factory) -> Path:
    """auto-opt for the CPU provider (fp32): ModelBuilder's GroupQueryAttention export, checked on the CPU."""
    out = tmp_path_factory.mktemp("cpu") / "ao"
    result = run([olive_host, "auto-opt", "-m", tiny, "-o", out, "--device", "cpu",
                  "--provider", "CPUExecutionProvider", "--use_ort_genai", "--log_level", "1"])
    assert result.returncode == 0, result.stderr
    assert '"provider": "CPUExecutionProvider"' in result.stderr  # the check's report, logged
    return out / "model"


def test_cpu_auto_opt_checks_every_node_on_the_cpu_provider(cpu_export):
    assert (cpu_export / "model.onnx").is_file()


def test_openvino_refuses_group_query_attention_naming_the_nodes(olive_host, openvino_env, cpu_export):
    result = run([olive_host, "ep-check", "-m", cpu_export, "--device", "cpu",
                  "--provider", "OpenVINOExecutionProvider"], env=openvino_env)
    assert result.returncode != 0
    assert "execution provider OpenVINOExecutionProvider cannot take 2 node(s)" in result.stderr, result.stderr
    assert "CPU fallback is disabled" in result.stderr
    for layer in range(2):
        assert f"/model/layers.{layer}/attn/GroupQueryAttention (GroupQueryAttention" in result.stderr


@pytest.mark.parametrize("case", ["llama-int4", "phi3_longrope-fp32"])
def test_openvino_auto_opt_runs_every_node_on_openvino(olive_host, openvino_env, tiny, tiny_phi3, tmp_path, case):
    model, precision = {"llama-int4": (tiny, "int4"), "phi3_longrope-fp32": (tiny_phi3, "fp32")}[case]
    out = tmp_path / "ao"
    result = run([olive_host, "auto-opt", "-m", model, "-o", out, "--device", "cpu",
                  "--provider", "OpenVINOExecutionProvider", "--precision", precision, "--use_ort_genai"],
                 env=openvino_env)
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(out / "model" / "model.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"GroupQueryAttention", "MultiHeadAttention", "RotaryEmbedding", "Attention"}, ops
    assert {"Softmax", "ScatterElements"} <= ops
    assert ("MatMulNBits" in ops) == (precision == "int4")
    assert (out / "model" / "genai_config.json").is_file()
    # auto-opt checked it before moving it into place; the check again, for its report.
    check = run([olive_host, "ep-check", "-m", out / "model", "--device", "cpu",
                 "--provider", "OpenVINOExecutionProvider"], env=openvino_env)
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["provider"] == "OpenVINOExecutionProvider" and report["nodes"] >= 1
    names = {"logits"} | {f"present.{layer}.{kv}" for layer in range(2) for kv in ("key", "value")}
    assert set(report["max_abs_diff"]) == names
    assert max(report["max_abs_diff"].values()) <= OPENVINO_TOL, report


def test_openvino_auto_opt_with_the_labs_adapter_flags(olive_host, openvino_env, tiny, tmp_path):
    """The lab's step 3 with OpenVINO: --adapter_path; the LoRA weights become required inputs (the OpenVINO EP
    ignores values fed to inputs that have a default and computes with the empty default), which the check feeds."""
    from test_adapters import make_adapter

    make_adapter(tiny, tmp_path / "adapter", ["q_proj", "v_proj", "o_proj"])
    out = tmp_path / "ao"
    result = run([olive_host, "auto-opt", "-m", tiny, "--adapter_path", tmp_path / "adapter", "-o", out,
                  "--device", "cpu", "--provider", "OpenVINOExecutionProvider", "--use_ort_genai"], env=openvino_env)
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "adapter_weights.onnx_adapter").is_file()
    graph = onnx.load(str(out / "model" / "model.onnx"), load_external_data=False).graph
    lora = [i.name for i in graph.input if "lora" in i.name]
    assert len(lora) == 2 * 3 * 2  # A and B of 3 linears in 2 layers
    assert not set(lora) & {t.name for t in graph.initializer}
    check = run([olive_host, "ep-check", "-m", out / "model", "--device", "cpu",
                 "--provider", "OpenVINOExecutionProvider"], env=openvino_env)
    assert check.returncode == 0, check.stderr
    assert max(json.loads(check.stdout)["max_abs_diff"].values()) <= OPENVINO_TOL


def test_openvino_cpu_has_no_fp16_recipe(olive_host, openvino_env, tiny, tmp_path):
    result = run([olive_host, "auto-opt", "-m", tiny, "-o", tmp_path / "ao", "--device", "cpu",
                  "--provider", "OpenVINOExecutionProvider", "--precision", "fp16", "--use_ort_genai"],
                 env=openvino_env)
    assert result.returncode != 0
    assert "has no recipe for --precision fp16; it has: fp32, int4" in result.stderr, result.stderr
    assert not (tmp_path / "ao").exists()


def test_an_absent_openvino_device_is_an_error_naming_the_provider(olive_host, openvino_env, tmp_path):
    model = matmul_nbits_model(tmp_path / "model.onnx")
    result = run([olive_host, "ep-check", "-m", model, "--device", "npu",
                  "--provider", "OpenVINOExecutionProvider"], env=openvino_env)
    assert result.returncode != 0
    assert "execution provider OpenVINOExecutionProvider (device npu" in result.stderr, result.stderr
    assert "cannot be created with ONNX Runtime 1.24.1" in result.stderr
    assert "Device NPU is not available" in result.stderr


def test_missing_or_wrong_libraries_and_unknown_providers_are_clear_errors(olive_host, openvino_env, tmp_path):
    model = matmul_nbits_model(tmp_path / "model.onnx")
    env = {k: v for k, v in openvino_env.items() if k != "OLIVE_ORT_CUDA_DYLIB"}
    cuda = run([olive_host, "ep-check", "-m", model, "--device", "gpu", "--provider", "CUDAExecutionProvider"],
               env=env)
    assert cuda.returncode != 0
    assert ("CUDAExecutionProvider needs the ONNX Runtime library of the onnxruntime-gpu 1.31 wheel, "
            "and OLIVE_ORT_CUDA_DYLIB is not set") in cuda.stderr, cuda.stderr
    wrong = dict(openvino_env, OLIVE_ORT_OPENVINO_DYLIB=os.environ["ORT_DYLIB_PATH"])
    result = run([olive_host, "ep-check", "-m", model, "--provider", "OpenVINOExecutionProvider"], env=wrong)
    assert result.returncode != 0
    assert "OpenVINOExecutionProvider needs the ONNX Runtime library of the onnxruntime-openvino 1.24.1 wheel" \
        in result.stderr, result.stderr
    assert f"is ONNX Runtime {ort.__version__}" in result.stderr
    unknown = run([olive_host, "auto-opt", "-m", model, "-o", tmp_path / "ao", "--device", "npu",
                   "--provider", "VitisAIExecutionProvider", "--use_ort_genai"], env=openvino_env)
    assert unknown.returncode != 0
    assert "--device npu with --provider VitisAIExecutionProvider is not served by any execution-provider plugin" \
        in unknown.stderr
    assert "--device npu: OpenVINOExecutionProvider, QNNExecutionProvider (ep-openvino, ep-qnn)" in unknown.stderr \
        or "--device npu: QNNExecutionProvider, OpenVINOExecutionProvider (ep-qnn, ep-openvino)" in unknown.stderr, \
        unknown.stderr
    assert "--device gpu: CUDAExecutionProvider" in unknown.stderr
    assert not (tmp_path / "ao").exists()


@pytest.fixture(scope="module")
def example_plugin_dir(olive_host, tmp_path_factory) -> Path:
    """tests/third_party/ep-example built with cargo (its own workspace and lock file) and its manifest written."""
    target = ROOT / "target" / "third-party"
    build = run(["cargo", "build", "--release", "--offline", "--manifest-path", EXAMPLE / "Cargo.toml"],
                env=dict(os.environ, CARGO_TARGET_DIR=str(target)))
    assert build.returncode == 0, build.stderr
    folder = tmp_path_factory.mktemp("third-party-plugins")
    shutil.copy(target / "release" / "libolive_ep_example.so", folder)
    manifest = run([olive_host, "plugins", "manifest", folder / "libolive_ep_example.so", "--output_dir", folder])
    assert manifest.returncode == 0, manifest.stderr
    return folder


def test_a_third_party_plugin_adds_a_device(olive_host, example_plugin_dir, tiny, tmp_path):
    manifest = json.loads((example_plugin_dir / "olive_ep_example.olive-plugin.json").read_text())
    assert manifest["passes"] == []
    assert manifest["execution_providers"][0]["device"] == "example"
    env = dict(os.environ, OLIVE_PLUGIN_PATH=str(example_plugin_dir))
    out = tmp_path / "ao"
    result = run([olive_host, "auto-opt", "-m", tiny, "-o", out, "--device", "example",
                  "--provider", "CPUExecutionProvider", "--use_ort_genai", "--log_level", "1"], env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "model.onnx").is_file()
    assert (out / "model" / "genai_config.json").is_file()
    without = run([olive_host, "auto-opt", "-m", tiny, "-o", tmp_path / "none", "--device", "example",
                   "--provider", "CPUExecutionProvider", "--use_ort_genai"])
    assert without.returncode != 0
    assert "--device example with --provider CPUExecutionProvider is not served" in without.stderr
    listed = run([olive_host, "auto-opt", "-m", tiny, "-o", tmp_path / "none", "--device", "npu",
                  "--provider", "X", "--use_ort_genai"], env=env)
    assert "--device example: CPUExecutionProvider (ep-example)" in listed.stderr, listed.stderr
    plugins = run([olive_host, "plugins", "list"], env=env)
    assert "serves --device example --provider CPUExecutionProvider  (onnxruntime library: onnxruntime any " \
        "version; auto-opt precisions: fp32)" in plugins.stdout, plugins.stdout
