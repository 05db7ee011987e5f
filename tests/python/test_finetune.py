"""`olive-host finetune` (the lora plugin's LoRA / QLoRA passes) checked against the real consumers:

- layout: `<output_path>/model` (the input folder's files, hard-linked), `adapter/` (adapter_config.json as peft
  writes it, adapter_model.safetensors), `loss.csv` (a step-0 evaluation row, then one row per step) and `loss.png`;
- PEFT's `PeftModel.from_pretrained` loads our adapter on the base and its logits equal the base with our
  safetensors merged by hand (W + alpha/r * B @ A), and the adapter moved them (training did something);
- ours: our ONNX export (ModelBuilder with the adapter, fp32) of the fine-tuned model gives PEFT's logits, on a float
  base and on an AWQ base quantized by `olive-host quantize --algorithm awq` (the lab's steps 1-2; transformers side:
  the AWQ weights dequantized by independent numpy code);
- Phi-3 (fused qkv_proj, Olive's default targets o_proj + qkv_proj): PEFT loads the fused adapter, logits = merged by hand;
- the lab's pipeline on the tiny model: quantize --algorithm awq -> finetune --method lora -> auto-opt --adapter_path
  -> the lab's app.py runs unchanged (onnxruntime-genai 0.5.2), and onnxruntime-genai 0.18's greedy tokens with the
  adapter active are transformers + PEFT's (on the dequantized AWQ base) and differ from the base's;
- QLoRA over a float base (RTN int4 inside the pass), adapter saved in bfloat16 (--torch_dtype): it loads on the
  float base it was given;
- the lab's step on the default model (.gguf input, the lab's template and data, a few short steps): the held-out
  loss falls below the base's, the greedy answer to a travel question not in the data changes (transformers +
  PEFT), and the output holds the converted model;
- bad input: an unparsable JSONL line (file:line), a template field missing from a record, an empty dataset,
  --max_steps 0, unknown target modules (the model's linears listed), --device gpu without a CUDA device, a non-empty
  output without --overwrite: non-zero exit, a clear message, no output folder.
"""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lab_app import genai_greedy, run_lab_app
from onnx_parity import hf_logits, max_abs_diff, ort_logits

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "out"
TRAVEL = ROOT / "data" / "data_sample_travel.jsonl"
# The lab's template as the shell passes it: a literal backslash-n.
LAB_TEMPLATE = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# PEFT vs the same f32 weights merged by hand: one extra rounding per weight.
MERGE_TOL = 1e-5
# Our fp32 ONNX export vs transformers (test_auto_opt.py's bound).
LOGITS_TOL = 1e-3
DECODE_STEPS = 2
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def finetune(olive_host: Path, model: Path, out: Path, *extra: str, data: Path = TRAVEL) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(olive_host), "finetune", "--model_name_or_path", str(model), "--data_name", "json", "--data_files",
         str(data), "--output_path", str(out), *extra],
        capture_output=True, text=True, timeout=900,
    )


def donor() -> Path:
    path = GOLDEN / "smollm2" / "model"
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"{path} is missing: run tests/golden/gen_golden.py (make test does)")
    return path


def tiny_args(steps: int) -> list[str]:
    """Short runs on the tiny model: rows of 64 tokens, 2 per step, a high learning rate so the adapter moves."""
    return ["--text_template", LAB_TEMPLATE, "--max_steps", str(steps), "--max_seq_len", "64",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--lora_r", "4", "--lora_alpha", "8",
            "--eval_split_ratio", "0.1", "--eval_steps", "4", "--log_level", "1"]


@pytest.fixture(scope="module")
def tiny_run(olive_host: Path, tiny: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "ft"
    result = finetune(olive_host, tiny, out, *tiny_args(8), "--target_modules", ",".join(LINEARS))
    assert result.returncode == 0, result.stderr
    assert "step 8/8" in result.stderr, result.stderr
    return out


def read_curve(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,learning_rate,grad_norm,tokens_per_second,eval_loss"
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        assert len(cells) == 6, line
        rows.append({k: (float(v) if v else None) for k, v in zip(lines[0].split(","), cells)})
    return rows


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_layout_config_and_curve(tiny_run: Path, tiny: Path):
    assert sorted(p.name for p in tiny_run.iterdir()) == ["adapter", "loss.csv", "loss.png", "model"]
    assert sorted(p.name for p in (tiny_run / "model").iterdir()) == sorted(p.name for p in tiny.iterdir())
    for f in tiny.iterdir():
        assert os.path.samefile(f, tiny_run / "model" / f.name) or (tiny_run / "model" / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in (tiny_run / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    cfg = json.loads((tiny_run / "adapter" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", "CAUSAL_LM", 4, 8)
    assert sorted(cfg["target_modules"]) == sorted(LINEARS)
    assert cfg["bias"] == "none" and cfg["inference_mode"] is True and cfg["use_rslora"] is False
    rows = read_curve(tiny_run / "loss.csv")
    assert [r["step"] for r in rows] == list(range(9))
    assert rows[0]["loss"] is None and rows[0]["eval_loss"] is not None
    assert all(r["loss"] > 0 and r["tokens_per_second"] > 0 and r["grad_norm"] > 0 for r in rows[1:])
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    assert len(evals) == 3 and evals[-1] < evals[0], evals
    assert png_size(tiny_run / "loss.png") == (1000, 700)


def merged_by_hand(base, adapter: Path):
    """`base` with our adapter_model.safetensors added into its linears: W += alpha/r * B @ A."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    modules = dict(base.named_modules())
    touched = 0
    with torch.no_grad():
        for name, a in tensors.items():
            if not name.endswith(".lora_A.weight"):
                continue
            key = name[len("base_model.model."): -len(".lora_A.weight")]
            b = tensors[name.replace("lora_A", "lora_B")]
            modules[key].weight += scale * (b @ a)
            touched += 1
    assert touched > 0
    return base


def test_peft_loads_our_adapter(tiny_run: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, adapter = tiny_run / "model", tiny_run / "adapter"
    ids = torch.tensor([[(i * 997) % 49000 + 5 for i in range(24)]])
    load = lambda: AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        base = load()(ids).logits
        peft = PeftModel.from_pretrained(load(), str(adapter)).eval()(ids).logits
        merged = merged_by_hand(load(), adapter)(ids).logits
    moved = float((peft - base).abs().max())
    diff = float((peft - merged).abs().max())
    print(f"PEFT vs merged by hand: {diff:.2e}; adapter moved logits by {moved:.2e}")
    assert diff <= MERGE_TOL
    assert moved > 1e-3


def test_phi3_fused_projections(olive_host: Path, tmp_path: Path):
    """Phi-3's fused qkv_proj / gate_up_proj: Olive's default targets (o_proj, qkv_proj), saved fused as PEFT does;
    PEFT's logits equal ours merged by hand."""
    import torch
    import transformers
    from peft import PeftModel

    model_dir = tmp_path / "phi3"
    torch.manual_seed(0)
    config = transformers.Phi3Config(
        vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=2, initializer_range=0.1,
    )
    transformers.Phi3ForCausalLM(config).save_pretrained(model_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(donor() / name, model_dir / name)
    out = tmp_path / "ft"
    result = finetune(olive_host, model_dir, out, *tiny_args(4))
    assert result.returncode == 0, result.stderr
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["o_proj", "qkv_proj"]
    ids = torch.tensor([[(i * 997) % 49000 + 5 for i in range(24)]])
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    with torch.no_grad():
        peft = PeftModel.from_pretrained(load(), str(out / "adapter")).eval()(ids).logits
        merged = merged_by_hand(load(), out / "adapter")(ids).logits
        base = load()(ids).logits
    assert float((peft - merged).abs().max()) <= MERGE_TOL
    assert float((peft - base).abs().max()) > 1e-3


def export_with_adapter(olive_host: Path, model: Path, adapter: Path, out: Path) -> Path:
    result = subprocess.run(
        [str(olive_host), "run-pass", "--pass-name", "ModelBuilder", "-m", str(model), "--adapter_path", str(adapter),
         "--pass-config", '{"precision": "fp32"}', "-o", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out / "model"


def peft_merged(model_dir: Path, adapter: Path, out: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(out))
    return out


def test_our_export_of_the_finetuned_model_matches_peft(olive_host: Path, tiny_run: Path, tmp_path: Path):
    onnx_dir = export_with_adapter(olive_host, tiny_run / "model", tiny_run / "adapter", tmp_path / "onnx")
    merged = peft_merged(tiny_run / "model", tiny_run / "adapter", tmp_path / "merged")
    prompt = [(i * 131) % 49000 + 7 for i in range(30)]
    diff = max_abs_diff(ort_logits(onnx_dir, prompt, DECODE_STEPS), hf_logits(merged, prompt, DECODE_STEPS))
    print(f"finetuned tiny llama, ONNX vs PEFT: {diff:.2e}")
    assert diff <= LOGITS_TOL


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """AutoAWQ GEMM packing, undone: [rows, cols/8] int32 -> [rows, cols] 4-bit levels (word c, nibble i holds
    column 8c + AWQ_ORDER[i])."""
    w = words.view(np.uint32)
    out = np.zeros((w.shape[0], w.shape[1] * 8), np.float32)
    for i, col in enumerate(AWQ_ORDER):
        out[:, col::8] = (w >> (4 * i)) & 0xF
    return out


def dequantized_awq_folder(awq: Path, dst: Path) -> Path:
    """A float folder with the AWQ folder's weights dequantized: W[out, in] = ((q - z) * s)ᵀ per group."""
    from safetensors.numpy import load_file, save_file

    tensors = {}
    for f in sorted(awq.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    out = {}
    for name, t in tensors.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            q = unpack_awq(t)  # [in, out]
            z = unpack_awq(tensors[f"{prefix}.qzeros"])  # [groups, out]
            s = tensors[f"{prefix}.scales"].astype(np.float32)  # [groups, out]
            group = q.shape[0] // s.shape[0]
            g = np.arange(q.shape[0]) // group
            out[f"{prefix}.weight"] = np.ascontiguousarray(((q - z[g]) * s[g]).T)
        elif not name.endswith((".qzeros", ".scales")):
            out[name] = t
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((awq / "config.json").read_text())
    del config["quantization_config"]
    (dst / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        shutil.copy(awq / name, dst / name)
    return dst


def test_lora_over_an_awq_base_matches_peft_on_the_dequantized_weights(olive_host: Path, tiny: Path,
                                                                       tmp_path: Path):
    """The lab's steps 1-2: quantize --algorithm awq, then finetune --method lora over the AWQ folder."""
    awq = tmp_path / "awq"
    result = subprocess.run([str(olive_host), "quantize", "-m", str(tiny), "--algorithm", "awq", "--group_size", "32",
                             "-o", str(awq)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "ft"
    result = finetune(olive_host, awq, out, "--method", "lora", *tiny_args(4), "--target_modules",
                      "q_proj,v_proj,down_proj")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    onnx_dir = export_with_adapter(olive_host, out / "model", out / "adapter", tmp_path / "onnx")
    merged = peft_merged(dequantized_awq_folder(out / "model", tmp_path / "deq"), out / "adapter", tmp_path / "merged")
    prompt = [(i * 131) % 49000 + 7 for i in range(30)]
    diff = max_abs_diff(ort_logits(onnx_dir, prompt, DECODE_STEPS), hf_logits(merged, prompt, DECODE_STEPS))
    print(f"LoRA over AWQ, ONNX vs PEFT on the dequantized base: {diff:.2e}")
    assert diff <= LOGITS_TOL


def test_qlora_over_a_float_base(olive_host: Path, tiny: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ft"
    result = finetune(olive_host, tiny, out, "--method", "qlora", *tiny_args(4), "--torch_dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    data = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    header = json.loads(data[8: 8 + struct.unpack("<Q", data[:8])[0]])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert "rounding 14 linears to 4 bits" in result.stderr, result.stderr
    # Olive's CLI saves the base it was given (save_quant_config false): the float model.
    assert "quantization_config" not in json.loads((out / "model" / "config.json").read_text())
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]  # PEFT's default for llama
    base = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(b) == 4 and all(float(p.abs().max()) > 0 for p in b)


# Runs argv[1:] and prints the peak RSS (KiB) of it and every process it waited for (the pass's worker too).
_PEAK_RSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.exit(r.returncode)")


def linear_bytes(folder: Path) -> int:
    """Bytes the decoder linears take in a folder's safetensors (float weights, or qweight/qzeros/scales/g_idx)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name.startswith("model.layers.") and "_proj." in name and not name.endswith(".bias"):
                start, end = t["data_offsets"]
                total += end - start
    return total


def test_lora_over_a_quantized_base_keeps_it_packed_in_memory(olive_host: Path, tmp_path: Path):
    """QLoRA's memory: the int4 base stays int4 while training (dequantized one matrix at a time). The loader drops
    each tensor's mapped pages once copied, so a run's peak is the weights held plus a working set that does not
    depend on the base: dequantizing at load would hold the float weights and save nothing; kept packed, the run
    saves about S = float linears' bytes - int4 linears' bytes. Half of S is asked for."""
    import torch
    import transformers

    float_dir, int4_dir = tmp_path / "float", tmp_path / "int4"
    torch.manual_seed(0)
    # Linears of 300 MB in fp32 beside a 150 MB embedding (the default tokenizer's vocabulary): the int4 run's
    # weights must outweigh the ~230 MiB the run peaks at before it loads them (engine and tokenizer).
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=768, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=12,
        num_key_value_heads=12, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(float_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(donor() / name, float_dir / name)
    result = subprocess.run([str(olive_host), "quantize", "-m", str(float_dir), "--algorithm", "rtn", "--precision",
                             "int4", "-o", str(int4_dir)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    saved = linear_bytes(float_dir) - linear_bytes(int4_dir / "model")
    assert saved > 0.8 * linear_bytes(float_dir)
    peaks = {}
    for name, base in [("float", float_dir), ("int4", int4_dir)]:
        cmd = ["python3", "-c", _PEAK_RSS, str(olive_host), "finetune", "--method", "lora", "-m", str(base),
               "--data_name", "json", "--data_files", str(TRAVEL), "--text_template", LAB_TEMPLATE,
               "--max_steps", "2", "--max_seq_len", "32", "--per_device_train_batch_size", "1",
               "--eval_split_ratio", "0", "--output_path", str(tmp_path / f"ft-{name}")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        peaks[name] = int(result.stdout.strip().splitlines()[-1]) * 1024
    print(f"peak RSS: float base {peaks['float'] / 2**20:.0f} MiB, int4 base {peaks['int4'] / 2**20:.0f} MiB; "
          f"S = {saved / 2**20:.0f} MiB")
    assert peaks["float"] - peaks["int4"] > 0.5 * saved


def test_lab_step_on_the_default_model(olive_host: Path, default_gguf: Path, tmp_path: Path):
    """The lab's finetune flags on the default model, shortened (4 steps of 2 x 128 tokens)."""
    out = tmp_path / "ft"
    result = finetune(olive_host, default_gguf, out, "--method", "lora", "--text_template", LAB_TEMPLATE,
                      "--max_steps", "4", "--max_seq_len", "128", "--per_device_train_batch_size", "2",
                      "--learning_rate", "1e-3", "--eval_split_ratio", "0.1", "--eval_steps", "4", "--log_level", "1")
    assert result.returncode == 0, result.stderr
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    rows = read_curve(out / "loss.csv")
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    print("default model, held-out loss:", evals, "train loss:", [r["loss"] for r in rows[1:]])
    assert evals[-1] < evals[0]
    assert png_size(out / "loss.png") == (1000, 700)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (64, 16, ["q_proj", "v_proj"])
    # The adapter changes the greedy answer to a travel question that is not in the data.
    base, tuned = greedy_answers(out / "model", out / "adapter", HELD_OUT_QUESTION)
    print(f"base: {base!r}\nwith the adapter: {tuned!r}")
    assert base != tuned


HELD_OUT_QUESTION = "Is it safe to drink tap water in Lisbon?"


def greedy_answers(model_dir: Path, adapter: Path, question: str, tokens: int = 24) -> tuple[str, str]:
    """transformers' greedy answers in the lab's template, without and with the PEFT adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(f"<|user|>\n{question}<|end|>\n<|assistant|>\n", return_tensors="pt").input_ids
    answers = []
    for with_adapter in (False, True):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if with_adapter:
            model = PeftModel.from_pretrained(model, str(adapter))
        with torch.no_grad():
            out = model.eval().generate(ids, max_new_tokens=tokens, do_sample=False)
        answers.append(tok.decode(out[0, ids.shape[1]:]))
    return answers[0], answers[1]


@pytest.mark.parametrize("case", ["bad_json", "missing_field", "empty", "max_steps_0", "unknown_target", "gpu",
                                  "not_empty"])
def test_bad_input_fails_cleanly(olive_host: Path, tiny: Path, tmp_path: Path, case: str):
    data = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "Where is Rome?", "response": "In Italy."})
    data.write_text("\n".join([good] * 20) + "\n")
    extra = ["--text_template", LAB_TEMPLATE, "--max_seq_len", "32"]
    out = tmp_path / "out" / "ft"
    expected = {
        "bad_json": f"{data}:3",
        "missing_field": "response",
        "empty": "empty",
        "max_steps_0": "--max_steps 0",
        "unknown_target": "`attn_proj`",
        "gpu": "device gpu: no CUDA device",
        "not_empty": "--overwrite",
    }[case]
    if case == "bad_json":
        data.write_text(f"{good}\n{good}\n{{\"prompt\": \"x\",\n{good}\n")
    elif case == "missing_field":
        data.write_text(json.dumps({"prompt": "Where is Rome?", "answer": "In Italy."}) + "\n")
    elif case == "empty":
        data.write_text("")
    if case == "max_steps_0":
        extra += ["--max_steps", "0"]
    else:
        extra += ["--max_steps", "2"]
    if case == "max_steps_0":
        pass
    elif case == "unknown_target":
        extra += ["--target_modules", "q_proj,attn_proj"]
    elif case == "gpu":
        extra += ["--device", "gpu"]
    elif case == "not_empty":
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    result = finetune(olive_host, tiny, out, *extra, data=data)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    if case == "unknown_target":
        assert "gate_proj" in result.stderr, result.stderr  # the model's linears are listed
    if case == "not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not (tmp_path / "out").exists(), list((tmp_path / "out").rglob("*"))


def test_overwrite_replaces_an_existing_output(olive_host: Path, tiny: Path, tmp_path: Path):
    out = tmp_path / "ft"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = finetune(olive_host, tiny, out, *tiny_args(1), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "loss.csv", "loss.png", "model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # no staging folder left beside it


def test_lab_pipeline_on_a_tiny_model(olive_host: Path, tiny: Path, genai05_python: Path, tmp_path: Path):
    """The lab's steps 1-4 with the lab's flags (shortened training), on the tiny llama."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    awq, ft, ao = tmp_path / "awq", tmp_path / "ft", tmp_path / "ao"
    result = subprocess.run([str(olive_host), "quantize", "-m", str(tiny), "--algorithm", "awq", "--group_size", "32",
                             "-o", str(awq), "--log_level", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    result = finetune(olive_host, awq, ft, "--method", "lora", *tiny_args(6))
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [str(olive_host), "auto-opt", "--model_name_or_path", str(ft / "model"), "--adapter_path", str(ft / "adapter"),
         "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai", "--output_path", str(ao),
         "--log_level", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    onnx_dir = ao / "model"
    print("lab app answer:", run_lab_app(genai05_python, onnx_dir, tmp_path / "lab")[:200])
    prompt = [(i * 131) % 49000 + 7 for i in range(16)]
    tokens = 12
    with_adapter = genai_greedy(Path(sys.executable), onnx_dir, prompt, tokens,
                                adapter=onnx_dir / "adapter_weights.onnx_adapter")
    without = genai_greedy(Path(sys.executable), onnx_dir, prompt, tokens)
    merged = peft_merged(dequantized_awq_folder(ft / "model", tmp_path / "deq"), ft / "adapter", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=tokens, do_sample=False)[0, len(prompt):].tolist()
    assert with_adapter == ref[: len(with_adapter)] and with_adapter, (with_adapter, ref)
    assert with_adapter != without
