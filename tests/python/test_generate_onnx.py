"""`olive-host generate` on an exported ONNX folder (ONNX Runtime through the `ort` crate), checked against
onnxruntime-genai 0.18 and transformers on the default model:

- greedy: the 32 new token ids equal onnxruntime-genai's (og.Generator, append_tokens) and transformers'
  greedy generate, without the adapter and with it (genai's set_active_adapter, a PEFT model in
  transformers), and the two differ; on `olive-host auto-opt`'s own exports (fp32, fp16, int4; no adapter) too;
- `--do_sample --seed 1` twice gives the same text, another seed another text;
- a missing adapter file, a missing ONNX Runtime library, or --adapter on a Hugging Face folder is a clear error.

The adapter export: `olive-host auto-opt --adapter_path` of the default model with a PEFT LoRA adapter (q_proj,
v_proj, r=8, random init so it changes the output): model.onnx whose LoRA weights are graph inputs with empty
defaults, their values in adapter_weights.onnx_adapter.
"""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_HF = ROOT / "tests" / "golden" / "out" / "smollm2" / "model"
PROMPT = "The best thing to see in Chicago is"
NEW_TOKENS = 32
ADAPTER_FILE = "adapter_weights.onnx_adapter"
# `olive-host generate --log_level 0` logs the generated ids on this line.
IDS_LINE = re.compile(r"generated ids: \[([0-9, ]*)\]")


@pytest.fixture(scope="module")
def hf_model(olive_host: Path, default_gguf: Path, tmp_path_factory) -> Path:
    """The default model as a Hugging Face folder: scripts/test.sh's golden copy, else converted here."""
    if (GOLDEN_HF / "model.safetensors").is_file():
        return GOLDEN_HF
    out = tmp_path_factory.mktemp("hf") / "model"
    run = subprocess.run([str(olive_host), "convert", "-m", str(default_gguf), "-o", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def peft_adapter(hf_model: Path, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(hf_model), dtype=torch.float32)
    config = LoraConfig(init_lora_weights=False, r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("peft") / "adapter"
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def auto_opt(olive_host: Path, hf_model: Path, out: Path, *extra: str) -> Path:
    """`olive-host auto-opt` for the CPU with onnxruntime-genai's layout; returns `out/model`."""
    run = subprocess.run(
        [str(olive_host), "auto-opt", "--model_name_or_path", str(hf_model), "--output_path", str(out),
         "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai", *extra],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return out / "model"


@pytest.fixture(scope="module")
def onnx_model(olive_host: Path, hf_model: Path, peft_adapter: Path, tmp_path_factory) -> Path:
    """fp32 CPU export of the default model with the adapter's LoRA inputs and adapter_weights.onnx_adapter."""
    model = auto_opt(olive_host, hf_model, tmp_path_factory.mktemp("export") / "ao", "--adapter_path",
                     str(peft_adapter))
    assert (model / ADAPTER_FILE).is_file(), f"auto-opt --adapter_path wrote no {ADAPTER_FILE}"
    return model


@pytest.fixture(scope="module")
def prompt_ids(onnx_model: Path) -> list[int]:
    import onnxruntime_genai as og

    return [int(i) for i in og.Tokenizer(og.Model(str(onnx_model))).encode(PROMPT)]


def genai_greedy(model_dir: Path, ids: list[int], adapter: Path | None) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    if adapter:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), "travel")
        generator.set_active_adapter(adapters, "travel")
    generator.append_tokens(np.array(ids, dtype=np.int32))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def transformers_greedy(hf_dir: Path, ids: list[int], peft_dir: Path | None) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if peft_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft_dir))
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, do_sample=False)
    return out[0, len(ids):].tolist()


def generate(olive_host: Path, model_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(olive_host), "generate", "-m", str(model_dir), "--prompt", PROMPT, "--max_new_tokens", str(NEW_TOKENS),
         *extra],
        capture_output=True, text=True, timeout=600, env=env)


def olive_greedy(olive_host: Path, model_dir: Path, *extra: str) -> tuple[list[int], str]:
    """The generated ids (from the debug log) and the printed text."""
    run = generate(olive_host, model_dir, "--log_level", "0", *extra)
    assert run.returncode == 0, run.stderr[-4000:]
    found = IDS_LINE.findall(run.stderr)
    assert len(found) == 1, f"expected one 'generated ids' line in the log:\n{run.stderr[-4000:]}"
    return [int(i) for i in found[0].split(",") if i.strip()], run.stdout


@pytest.fixture(scope="module")
def transformers_ids(hf_model: Path, peft_adapter: Path, prompt_ids: list[int]) -> dict[str, list[int]]:
    """transformers' greedy ids without ("base") and with ("adapter") the PEFT adapter."""
    ids = {"base": transformers_greedy(hf_model, prompt_ids, None),
           "adapter": transformers_greedy(hf_model, prompt_ids, peft_adapter)}
    for name, tokens in ids.items():
        assert len(tokens) == NEW_TOKENS and 2 not in tokens, f"{name}: stopped early ({tokens}); pick another prompt"
    return ids


def test_greedy_matches_genai_and_transformers(olive_host, onnx_model, prompt_ids, transformers_ids):
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(onnx_model)))
    adapter = onnx_model / ADAPTER_FILE
    ours = {}
    for name, extra, genai_adapter in [
        ("base", [], None),
        ("adapter", ["--adapter", str(adapter), "--adapter_name", "travel"], adapter),
    ]:
        ids, text = olive_greedy(olive_host, onnx_model, *extra)
        genai = genai_greedy(onnx_model, prompt_ids, genai_adapter)
        assert ids == genai, f"{name}: olive-host generate vs onnxruntime-genai"
        assert genai == transformers_ids[name], f"{name}: onnxruntime-genai vs transformers"
        assert text == tokenizer.decode(np.array(genai, dtype=np.int32)) + "\n", f"{name}: printed text"
        ours[name] = ids
    assert ours["base"] != ours["adapter"], "the adapter changes the greedy output"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int4"])
def test_greedy_on_auto_opt_export(olive_host, hf_model, tmp_path, prompt_ids, transformers_ids, precision):
    """auto-opt's own export: the ids of onnxruntime-genai on it (fp16: float16 KV cache and logits; int4:
    MatMulNBits), and in fp32 transformers' ids as well."""
    model = auto_opt(olive_host, hf_model, tmp_path / "ao", "--precision", precision)
    ids, _ = olive_greedy(olive_host, model)
    assert ids == genai_greedy(model, prompt_ids, None), "olive-host generate vs onnxruntime-genai"
    if precision == "fp32":
        assert ids == transformers_ids["base"], "olive-host generate vs transformers"


def test_sampling_is_reproducible_with_a_seed(olive_host, onnx_model):
    def sample(seed: int) -> str:
        run = generate(olive_host, onnx_model, "--do_sample", "--top_k", "50", "--top_p", "0.95",
                       "--temperature", "1.2", "--seed", str(seed))
        assert run.returncode == 0, run.stderr[-4000:]
        assert run.stdout.strip(), "sampling printed nothing"
        return run.stdout

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


def test_bad_adapter_and_missing_runtime_are_clear_errors(olive_host, onnx_model, hf_model, tmp_path):
    missing = tmp_path / "nope.onnx_adapter"
    run = generate(olive_host, onnx_model, "--adapter", str(missing))
    assert run.returncode != 0
    assert str(missing) in run.stderr and "panicked" not in run.stderr, run.stderr

    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    run = generate(olive_host, onnx_model, env=env)
    assert run.returncode != 0
    assert "ORT_DYLIB_PATH" in run.stderr and "scripts/install.sh" in run.stderr, run.stderr
    assert "panicked" not in run.stderr, run.stderr

    # The CPU transformer (a Hugging Face folder) decodes greedily only.
    run = generate(olive_host, hf_model, "--adapter", str(onnx_model / ADAPTER_FILE))
    assert run.returncode != 0
    assert "ONNX folder" in run.stderr and "panicked" not in run.stderr, run.stderr
