"""LoRA adapters: PEFT in, ONNX Runtime adapter format (.onnx_adapter) out, checked against the real consumers.

- `olive-host convert-adapters` on adapters made with peft (init_lora_weights=False) for the tiny golden models:
  onnxruntime's `AdapterFormat.read_adapter` reads the file and every parameter equals PEFT's tensors in the graph's
  layout (lora_A^T, scale * lora_B^T; Phi-3's qkv_proj / gate_up_proj split as onnxruntime-genai's builder splits
  them; rslora, rank_pattern and alpha_pattern scales; ranks padded to one lora_r), in float32 or float16;
- ExtractAdapters on a small model built in Rust (the `lora_graph` example): optional `lora_r` inputs with empty
  defaults; onnxruntime runs it without an adapter (base output) and with the file through `RunOptions.
  add_active_adapter` (base + LoRA), both equal to numpy; a further PEFT adapter converted against that exported model
  runs too;
- a file written by onnxruntime's own `AdapterFormat.export_adapter` is read by our reader;
- bad adapters (rank mismatch, a module the model lacks, another base model's shapes) fail with an error naming
  the module.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "out"
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# Our f32 copy of PEFT's f32 tensors: a transpose and one multiplication by the same f32 scale.
F32_TOL = 1e-6
# float16 rounding of values of magnitude < ~4.
F16_TOL = 4e-3
# ONNX Runtime's MatMuls vs numpy's on tiny f32 matrices.
RUN_TOL = 1e-5


def golden(case: str) -> Path:
    path = GOLDEN / case / "model"
    if not (path / "config.json").is_file():
        pytest.fail(f"{path} is missing: run tests/golden/gen_golden.py (make test does)")
    return path


def make_adapter(model_dir: Path, out: Path, targets, seed: int = 0, **lora) -> dict:
    """Saves a PEFT adapter with random (non-zero) weights; returns {peft module key: (A [r,in], B [out,r], scale)}."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(init_lora_weights=False, target_modules=targets, **{"r": 4, "lora_alpha": 8, **lora})
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    modules = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            a = module.lora_A["default"].weight.detach().numpy().copy()
            b = module.lora_B["default"].weight.detach().numpy().copy()
            modules[name.removeprefix("base_model.model.")] = (a, b, float(module.scaling["default"]))
    return modules


def expected_parameters(modules: dict, hf_config: dict) -> dict:
    """The graph's LoRA parameters for PEFT modules: genai names, [in, r] / [r, out] with the scale folded into B,
    fused Phi-3 projections split (lora_A shared, lora_B by rows), every rank padded to the largest."""
    head = hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"]
    q = hf_config["num_attention_heads"] * head
    kv = hf_config["num_key_value_heads"] * head
    inter = hf_config["intermediate_size"]
    splits = {"qkv_proj": [("q_proj", 0, q), ("k_proj", q, q + kv), ("v_proj", q + kv, q + 2 * kv)],
              "gate_up_proj": [("gate_proj", 0, inter), ("up_proj", inter, 2 * inter)]}
    rank = max(a.shape[0] for a, _, _ in modules.values())
    out = {}
    for key, (a, b, scale) in modules.items():
        _, _, layer, block, proj = key.split(".")
        block = {"self_attn": "attn", "mlp": "mlp"}[block]
        for part, start, end in splits.get(proj, [(proj, 0, b.shape[0])]):
            r = a.shape[0]
            a_t = np.zeros((a.shape[1], rank), np.float32)
            a_t[:, :r] = a.T
            b_t = np.zeros((rank, end - start), np.float32)
            b_t[:r] = (b[start:end] * np.float32(scale)).T
            prefix = f"model.layers.{layer}.{block}.{part}"
            out[f"{prefix}.lora_A.weight"] = a_t
            out[f"{prefix}.lora_B.weight"] = b_t
    return out


def convert_adapters(olive_host: Path, adapter: Path, output: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(olive_host), "convert-adapters", "--adapter_path", str(adapter), "--output_path", str(output), *extra],
        capture_output=True, text=True, timeout=300,
    )


def read_with_ort(path: Path) -> dict:
    adapter = ort.AdapterFormat.read_adapter(str(path))
    assert adapter.get_format_version() == 1
    return {name: value.numpy().copy() for name, value in adapter.get_parameters().items()}


CASES = {
    "qwen2_all_linears": ("qwen2", LLAMA_TARGETS, {}),
    "mistral_rslora_patterns": ("mistral", ["q_proj", "v_proj", "down_proj"],
                                {"use_rslora": True, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3}}),
    "phi3_fused": ("phi3_short", PHI3_TARGETS, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_convert_adapters_matches_peft(olive_host, tmp_path, case):
    model_case, targets, lora = CASES[case]
    model_dir = golden(model_case)
    modules = make_adapter(model_dir, tmp_path / "adapter", targets, **lora)
    out = tmp_path / "adapter_weights.onnx_adapter"
    result = convert_adapters(olive_host, tmp_path / "adapter", out, "--base_model", str(model_dir))
    assert result.returncode == 0, result.stderr
    assert f"Exported adapter weights to {out}" in result.stdout

    hf_config = json.loads((model_dir / "config.json").read_text())
    expected = expected_parameters(modules, hf_config)
    got = read_with_ort(out)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == np.float32, name
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=0, atol=F32_TOL, err_msg=name)
    if "rank_pattern" in lora:
        # v_proj has rank 2 in a rank-4 adapter: padded with zeros to the one lora_r of the file.
        v_a = got["model.layers.0.attn.v_proj.lora_A.weight"]
        assert v_a.shape[1] == 4 and not v_a[:, 2:].any() and v_a[:, :2].any()


def test_convert_adapters_float16(olive_host, tmp_path):
    model_dir = golden("qwen2")
    modules = make_adapter(model_dir, tmp_path / "adapter", ["q_proj", "up_proj"], seed=1)
    # Olive's --output_path gets the format's extension.
    result = convert_adapters(olive_host, tmp_path / "adapter", tmp_path / "fp16", "--dtype", "float16",
                              "--base_model", str(model_dir))
    assert result.returncode == 0, result.stderr
    got = read_with_ort(tmp_path / "fp16.onnx_adapter")
    expected = expected_parameters(modules, json.loads((model_dir / "config.json").read_text()))
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == np.float16, name
        np.testing.assert_allclose(got[name].astype(np.float32), want, rtol=1e-3, atol=F16_TOL, err_msg=name)


def test_bad_adapters_name_the_module(olive_host, tmp_path):
    qwen2, mistral, phi3 = golden("qwen2"), golden("mistral"), golden("phi3_short")
    adapter = tmp_path / "adapter"
    make_adapter(qwen2, adapter, ["q_proj", "k_proj"])

    # another base model's shapes: qwen2's k_proj is [32, 64], mistral's [16, 64]
    result = convert_adapters(olive_host, adapter, tmp_path / "x", "--base_model", str(mistral))
    assert result.returncode != 0
    assert "model.layers.0.self_attn.k_proj" in result.stderr and "another base model" in result.stderr, result.stderr

    # modules the model lacks: phi3 has qkv_proj, not q_proj / k_proj (PEFT saves target_modules unordered)
    result = convert_adapters(olive_host, adapter, tmp_path / "x", "--base_model", str(phi3))
    assert result.returncode != 0
    assert re.search(r"module `[qk]_proj`: .*phi3", result.stderr) and "qkv_proj" in result.stderr, result.stderr

    # rank mismatch: the config says 8, the tensors hold rank 4
    bad = tmp_path / "bad_rank"
    shutil.copytree(adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    config["r"] = 8
    (bad / "adapter_config.json").write_text(json.dumps(config))
    result = convert_adapters(olive_host, bad, tmp_path / "x", "--base_model", str(qwen2))
    assert result.returncode != 0
    assert "model.layers.0.self_attn.q_proj" in result.stderr and "rank mismatch" in result.stderr, result.stderr
    assert not list(tmp_path.glob("x*")), "nothing written on failure"


@pytest.fixture(scope="module")
def lora_graph() -> Path:
    """The `lora_graph` example of crates/onnx, built if needed."""
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "olive-onnx", "--example", "lora_graph"],
                   cwd=ROOT, check=True, timeout=900)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "examples" / "lora_graph"


def session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the LoRA initializers are graph inputs on purpose
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def run_reference(x: np.ndarray, reference: list, loras: dict | None) -> np.ndarray:
    """x through the linears of reference.json, each plus scale * x·A^T·B^T where `loras` has its path."""
    h = x
    for linear in reference:
        w = np.array(linear["w"], np.float32).reshape(linear["in"], linear["out"])
        out = h @ w
        if loras is not None and linear["path"] in loras:
            a, b, scale = loras[linear["path"]]
            out = out + np.float32(scale) * ((h @ a.T) @ b.T)
        h = out
    return h


def test_extract_adapters_runs_in_onnxruntime(lora_graph, olive_host, tmp_path):
    out = tmp_path / "model"
    subprocess.run([str(lora_graph), "write", str(out)], check=True, timeout=60)
    reference = json.loads((out / "reference.json").read_text())
    model = session(out / "model.onnx")

    onnx.checker.check_model(str(out / "model.onnx"))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs == {
        "x": ["batch", 8],
        "model.layers.0.attn.q_proj.lora_A.weight": [8, "lora_r"],
        "model.layers.0.attn.q_proj.lora_B.weight": ["lora_r", 6],
        "model.layers.0.mlp.down_proj.lora_A.weight": [6, "lora_r"],
        "model.layers.0.mlp.down_proj.lora_B.weight": ["lora_r", 5],
    }
    defaults = {t.name: list(t.dims) for t in graph.initializer if ".lora_" in t.name}
    assert defaults == {name: [0 if d == "lora_r" else d for d in dims] for name, dims in inputs.items() if name != "x"}
    assert {i.name for i in model.get_overridable_initializers()} == set(defaults)
    x = np.linspace(-1, 1, 3 * 8, dtype=np.float32).reshape(3, 8)
    base = run_reference(x, reference, None)
    np.testing.assert_allclose(model.run(None, {"x": x})[0], base, atol=RUN_TOL)

    def run_with(adapter_file: Path) -> np.ndarray:
        adapter = ort.LoraAdapter()
        adapter.Load(str(adapter_file))
        options = ort.RunOptions()
        options.add_active_adapter(adapter)
        return model.run(None, {"x": x}, options)[0]

    loras = {l["path"]: (np.array(l["a"], np.float32).reshape(l["rank"], l["in"]),
                         np.array(l["b"], np.float32).reshape(l["out"], l["rank"]), l["scale"]) for l in reference}
    with_lora = run_with(out / "adapter_weights.onnx_adapter")
    np.testing.assert_allclose(with_lora, run_reference(x, reference, loras), atol=RUN_TOL)
    assert np.abs(with_lora - base).max() > 0.1, "the adapter changes the output"

    # A further PEFT adapter (rank 2, only q_proj) converted against the exported model.
    rng = np.random.default_rng(0)
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    a, b = rng.standard_normal((2, 8), np.float32), rng.standard_normal((6, 2), np.float32)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"]}))
    result = convert_adapters(olive_host, peft_dir, tmp_path / "further.onnx_adapter", "--base_model", str(out))
    assert result.returncode == 0, result.stderr
    further = run_with(tmp_path / "further.onnx_adapter")
    want = run_reference(x, reference, {"/model/layers.0/attn/q_proj": (a, b, 1.5)})
    np.testing.assert_allclose(further, want, atol=RUN_TOL)

    # ... and one trained for another model: q_proj in 7, not 8.
    save_file({f"{prefix}.lora_A.weight": a[:, :7], f"{prefix}.lora_B.weight": b}, peft_dir / "adapter_model.safetensors")
    result = convert_adapters(olive_host, peft_dir, tmp_path / "bad.onnx_adapter", "--base_model", str(out))
    assert result.returncode != 0
    assert "model.layers.0.self_attn.q_proj" in result.stderr and "size 7" in result.stderr, result.stderr


def test_convert_adapters_takes_the_dtype_of_an_fp16_export(lora_graph, olive_host, tmp_path):
    out = tmp_path / "model"
    subprocess.run([str(lora_graph), "write", str(out), "float16"], check=True, timeout=60)
    reference = json.loads((out / "reference.json").read_text())
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 6), np.float32), rng.standard_normal((5, 3), np.float32)
    prefix = "base_model.model.model.layers.0.mlp.down_proj"
    save_file({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 3, "lora_alpha": 6, "target_modules": ["down_proj"]}))

    result = convert_adapters(olive_host, peft_dir, tmp_path / "a.onnx_adapter", "--base_model", str(out))
    assert result.returncode == 0, result.stderr
    got = read_with_ort(tmp_path / "a.onnx_adapter")
    assert {v.dtype for v in got.values()} == {np.dtype(np.float16)}
    # q_proj, which the adapter lacks, gets zeros of the adapter's rank: ONNX Runtime binds one lora_r per run.
    assert got["model.layers.0.attn.q_proj.lora_A.weight"].shape == (8, 3)
    assert got["model.layers.0.attn.q_proj.lora_B.weight"].shape == (3, 6)
    assert not got["model.layers.0.attn.q_proj.lora_B.weight"].any()

    adapter = ort.LoraAdapter()
    adapter.Load(str(tmp_path / "a.onnx_adapter"))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    x = np.linspace(-1, 1, 2 * 8, dtype=np.float32).reshape(2, 8)
    y = session(out / "model.onnx").run(None, {"x": x.astype(np.float16)}, options)[0]
    want = run_reference(x, reference, {"/model/layers.0/mlp/down_proj": (a, b, 2.0)})
    # float16 weights and activations through two small linears.
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=2e-2, atol=2e-2)

    result = convert_adapters(olive_host, peft_dir, tmp_path / "b.onnx_adapter", "--base_model", str(out),
                              "--dtype", "float32")
    assert result.returncode != 0 and "does not match" in result.stderr, result.stderr


def test_our_reader_reads_onnxruntime_files(lora_graph, tmp_path):
    rng = np.random.default_rng(1)
    params = {
        "model.layers.0.attn.q_proj.lora_A.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "model.layers.0.attn.q_proj.lora_B.weight": rng.standard_normal((4, 6)).astype(np.float16),
        "empty": np.zeros((0, 3), np.float32),
    }
    writer = ort.AdapterFormat()
    writer.set_adapter_version(5)
    writer.set_model_version(9)
    writer.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    path = tmp_path / "ort.onnx_adapter"
    writer.export_adapter(str(path))

    dump = json.loads(subprocess.run([str(lora_graph), "dump", str(path)], check=True, capture_output=True,
                                     text=True, timeout=60).stdout)
    assert (dump["adapter_version"], dump["model_version"]) == (5, 9)
    got = {p["name"]: p for p in dump["parameters"]}
    assert sorted(got) == sorted(params)
    onnx_type = {np.dtype(np.float32): 1, np.dtype(np.float16): 10}
    for name, value in params.items():
        assert got[name]["dims"] == list(value.shape), name
        assert got[name]["data_type"] == onnx_type[value.dtype], name
        assert bytes.fromhex(got[name]["raw_data"]) == value.tobytes(), name

    path.write_bytes(b"\x00" * 4 + b"ORTM" + path.read_bytes()[8:])
    result = subprocess.run([str(lora_graph), "dump", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "TORT" in result.stderr, result.stderr


def greedy_og(model_dir: Path, prompt: list, steps: int, adapter: tuple | None) -> list:
    """Greedy tokens from onnxruntime-genai (0.18 API), with an adapter file (path, name) active or none."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    adapters = og.Adapters(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    if adapter is not None:
        adapters.load(str(adapter[0]), adapter[1])
        generator.set_active_adapter(adapters, adapter[1])
    generator.append_tokens([prompt])
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def greedy_peft(base: Path, adapter: Path | None, prompt: list, steps: int) -> list:
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_genai_builder_export_with_our_adapters(lora_graph, olive_host, tmp_path):
    """onnxruntime-genai's own builder exports tiny Phi-3 with a LoRA adapter (fused qkv/gate_up, split by the
    builder); our ExtractAdapters on it gives the parameters convert-adapters writes, bit for bit, and
    onnxruntime-genai runs the export with those files greedily like transformers + PEFT."""
    base = tmp_path / "base"
    shutil.copytree(golden("phi3_short"), base)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(golden("smollm2") / name, base / name)  # the builder saves a tokenizer; any one will do
    first, second = tmp_path / "first", tmp_path / "second"
    make_adapter(base, first, PHI3_TARGETS, seed=0)
    make_adapter(base, second, PHI3_TARGETS, seed=1, r=2, lora_alpha=5)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base), "-o",
                    str(tmp_path / "genai"), "-p", "fp32", "-e", "cpu", "--extra_options", f"adapter_path={first}"],
                   check=True, capture_output=True, timeout=600)
    export = tmp_path / "export"
    subprocess.run([str(lora_graph), "extract", str(tmp_path / "genai"), str(export)], check=True, timeout=120)
    extracted = read_with_ort(export / "adapter_weights.onnx_adapter")
    assert len(extracted) == 2 * 2 * 7, "q, k, v, o, gate, up, down of 2 layers, A and B each"

    for adapter in (first, second):
        result = convert_adapters(olive_host, adapter, tmp_path / f"{adapter.name}.onnx_adapter",
                                  "--base_model", str(export))
        assert result.returncode == 0, result.stderr
    converted = read_with_ort(tmp_path / "first.onnx_adapter")
    assert sorted(converted) == sorted(extracted)
    for name, value in extracted.items():
        np.testing.assert_array_equal(converted[name], value, err_msg=name)

    prompt, steps = [1, 5, 9, 13], 16
    runs = {
        "none": (None, None),
        "first": ((export / "adapter_weights.onnx_adapter", "first"), first),
        "second": ((tmp_path / "second.onnx_adapter", "second"), second),
    }
    tokens = {}
    for label, (og_adapter, peft_adapter) in runs.items():
        tokens[label] = greedy_og(export, prompt, steps, og_adapter)
        assert tokens[label] == greedy_peft(base, peft_adapter, prompt, steps), label
    assert len({tuple(t) for t in tokens.values()}) == 3, "each adapter changes the output"


# The lab's API (onnxruntime-genai 0.5.2): params.input_ids, compute_logits; prints the greedy ids as JSON.
GENAI05_SCRIPT = """
import json, sys
import onnxruntime_genai as og
model_dir, adapter_file, prompt, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
model = og.Model(model_dir)
adapters = og.Adapters(model)
adapters.load(adapter_file, "a")
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
params.input_ids = prompt
generator = og.Generator(model, params)
generator.set_active_adapter(adapters, "a")
tokens = []
while not generator.is_done():
    generator.compute_logits()
    generator.generate_next_token()
    tokens.append(int(generator.get_next_tokens()[0]))
print(json.dumps(tokens))
"""


def test_auto_opt_export_runs_further_adapters(olive_host, genai05_python, tmp_path):
    """auto-opt --adapter_path exports tiny Qwen2 with one adapter; convert-adapters turns a second one (another
    rank, fewer modules) into a file for that export; onnxruntime-genai 0.18 and 0.5.2 run both like PEFT."""
    base = tmp_path / "base"
    shutil.copytree(golden("qwen2"), base)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(golden("smollm2") / name, base / name)
    first, second = tmp_path / "first", tmp_path / "second"
    make_adapter(base, first, LLAMA_TARGETS, seed=3)
    make_adapter(base, second, ["q_proj", "v_proj", "down_proj"], seed=4, r=2, lora_alpha=6)
    result = subprocess.run(
        [str(olive_host), "auto-opt", "--model_name_or_path", str(base), "--adapter_path", str(first),
         "--output_path", str(tmp_path / "ao"), "--device", "cpu", "--provider", "CPUExecutionProvider",
         "--use_ort_genai"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    export = tmp_path / "ao" / "model"
    result = convert_adapters(olive_host, second, tmp_path / "second.onnx_adapter", "--base_model", str(export))
    assert result.returncode == 0, result.stderr
    # The export's LoRA inputs are all in the file: those `second` lacks as zeros of its rank.
    assert sorted(read_with_ort(tmp_path / "second.onnx_adapter")) == sorted(
        read_with_ort(export / "adapter_weights.onnx_adapter"))

    prompt, steps = [1, 5, 9, 13, 21], 16
    first_ids = greedy_og(export, prompt, steps, (export / "adapter_weights.onnx_adapter", "first"))
    second_ids = greedy_og(export, prompt, steps, (tmp_path / "second.onnx_adapter", "second"))
    assert first_ids == greedy_peft(base, first, prompt, steps)
    assert second_ids == greedy_peft(base, second, prompt, steps)
    assert first_ids != second_ids
    lab = subprocess.run([str(genai05_python), "-c", GENAI05_SCRIPT, str(export), str(tmp_path / "second.onnx_adapter"),
                          json.dumps(prompt), str(steps)], capture_output=True, text=True, timeout=300)
    assert lab.returncode == 0, lab.stderr
    assert json.loads(lab.stdout) == second_ids
