"""The GPU paths of olive-host end to end, on a GPU machine (CI has none): run by scripts/gpu-tests.sh's output on
the device tool's machine, where torch and transformers are installed.

For random-weight Hugging Face models of three architectures (SmolLM2's Llama shapes, Qwen2 with q/k/v biases,
Phi-3 with fused projections and LongRoPE past its original context), all with SmolLM2's tokenizer:
- `olive-host evaluate --device gpu` perplexity over data/eval.txt (tests/python/ppl.py's windows) against
  transformers in fp32 on the same GPU, within BF16_PPL_REL; the CPU path (`--device cpu`) within CPU_PPL_REL;
- `olive-host generate --device gpu` decode tokens/s against transformers' bf16 `generate` (greedy, KV cache);
- `olive-host evaluate --device gpu --metrics latency` runs and reports per-token decode latency;
- `olive-host evaluate --device gpu --metrics memory` reports the peak device memory, checked against the bf16
  weights' bytes (MEMORY_FACTOR, MEMORY_SLACK).
Prints a table and writes results.json to --out.

    python3 tests/gpu/check_gpu_paths.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer --out "$OUT"
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from ppl import eval_windows, perplexity, window_nll  # noqa: E402

# bf16 weights and activations (8-bit mantissa) against fp32: the perplexity moves by well under this.
BF16_PPL_REL = 1e-2
# f32 on both sides, different summation orders.
CPU_PPL_REL = 1e-4
WINDOW = 256
NEW_TOKENS = 128
# `--metrics memory` on the GPU: the peak bytes in the device's pool after loading and one 64-token forward is at
# least the bf16 weights and at most twice them plus room for the logits, KV cache and activations.
MEMORY_FACTOR = 2.0
MEMORY_SLACK = 64 << 20


def configs(vocab: int) -> dict:
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5, initializer_range=0.08,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    return {
        "llama": LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=9,
                             num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                             **{**common, "tie_word_embeddings": True}),
        "qwen2": Qwen2Config(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                             num_key_value_heads=2, rope_theta=1000000.0, **common),
        "phi3": Phi3Config(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                           num_key_value_heads=8, original_max_position_embeddings=128, pad_token_id=0,
                           rope_scaling={"type": "longrope",
                                         "short_factor": [1.0 + i / 48 for i in range(48)],
                                         "long_factor": [1.5 + i / 24 for i in range(48)]},
                           **common),
    }


def build(name: str, config, tokenizer: Path, dest: Path) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    folder = dest / name
    model.save_pretrained(folder, safe_serialization=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def torch_perplexity(folder: Path, windows, dtype) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).cuda().eval()
    nll = 0.0
    with torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w], device="cuda")).logits[0].float().cpu().numpy()
            nll += window_nll(logits, w)
    return perplexity(nll, windows)


def torch_decode_rate(folder: Path, prompt_ids) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16).cuda().eval()
    ids = torch.tensor([prompt_ids], device="cuda")
    kwargs = dict(do_sample=False, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids, **kwargs)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    return (NEW_TOKENS - 1) / max(total - prefill, 1e-9)


def olive(olive_host: Path, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([str(olive_host), *map(str, args)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"olive-host {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--olive_host", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True, help="a folder with tokenizer.json and its configs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    vocab = len(json.loads((args.tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    gpu = torch.cuda.get_device_name(0)
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in configs(vocab).items():
            folder = build(name, config, args.tokenizer, Path(tmp))
            windows = eval_windows(folder, window=WINDOW)
            ref32 = torch_perplexity(folder, windows, torch.float32)
            ref16 = torch_perplexity(folder, windows, torch.bfloat16)
            ours_gpu = json.loads(olive(args.olive_host, "evaluate", "-m", folder, "--device", "gpu",
                                        "--window", WINDOW).stdout)["perplexity"]
            ours_cpu = json.loads(olive(args.olive_host, "evaluate", "-m", folder, "--window", WINDOW)
                                  .stdout)["perplexity"]
            gen = olive(args.olive_host, "--log_level", "1", "generate", "-m", folder, "--device", "gpu",
                        "--prompt", "The capital of France is", "--max_new_tokens", NEW_TOKENS, "--ignore_eos")
            rate = float(re.search(r"decode: \d+ tokens in [\d.]+ s \(([\d.]+) tokens/s\)", gen.stderr).group(1))
            prompt_ids = eval_windows(folder, window=WINDOW)[0][:6]
            torch_rate = torch_decode_rate(folder, prompt_ids)
            latency = json.loads(olive(args.olive_host, "evaluate", "-m", folder, "--device", "gpu", "--metrics",
                                       "latency", "--warmup_num", "5", "--repeat_test_num", "20").stdout)
            memory = json.loads(olive(args.olive_host, "evaluate", "-m", folder, "--device", "gpu", "--metrics",
                                      "memory", "--prompt_length", "64").stdout)
            device_bytes = memory["memory-peak_device_memory"]["value"]
            weight_bytes = 2 * sum(p.numel() for p in load_file(folder / "model.safetensors").values())
            row = dict(model=name, ppl_torch_fp32=ref32, ppl_torch_bf16=ref16, ppl_ours_gpu=ours_gpu,
                       ppl_ours_cpu=ours_cpu, gpu_rel=abs(ours_gpu - ref32) / ref32,
                       cpu_rel=abs(ours_cpu - ref32) / ref32, decode_tok_s=rate, torch_bf16_decode_tok_s=torch_rate,
                       latency_avg_ms=latency["latency-avg"]["value"], peak_device_memory=device_bytes,
                       bf16_weight_bytes=weight_bytes)
            rows.append(row)
            if row["gpu_rel"] > BF16_PPL_REL:
                failures.append(f"{name}: GPU perplexity {ours_gpu:.4f} vs torch fp32 {ref32:.4f}")
            # The weights live on the GPU in bf16 (ours keep no f32 copy there); the rest is the KV cache and one
            # forward's activations, small for these models.
            if not weight_bytes <= device_bytes <= MEMORY_FACTOR * weight_bytes + MEMORY_SLACK:
                failures.append(f"{name}: peak device memory {device_bytes} B for {weight_bytes} B of bf16 weights")
            if row["cpu_rel"] > CPU_PPL_REL:
                failures.append(f"{name}: CPU perplexity {ours_cpu:.4f} vs torch fp32 {ref32:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=2))
    print(f"GPU: {gpu}")
    print(f"{'model':7} {'torch fp32':>11} {'torch bf16':>11} {'ours gpu':>11} {'ours cpu':>11} {'gpu rel':>8} "
          f"{'ours tok/s':>10} {'torch tok/s':>11} {'lat ms':>7} {'dev MiB':>8}")
    for r in rows:
        print(f"{r['model']:7} {r['ppl_torch_fp32']:11.4f} {r['ppl_torch_bf16']:11.4f} {r['ppl_ours_gpu']:11.4f} "
              f"{r['ppl_ours_cpu']:11.4f} {r['gpu_rel']:8.1e} {r['decode_tok_s']:10.1f} "
              f"{r['torch_bf16_decode_tok_s']:11.1f} {r['latency_avg_ms']:7.3f} {r['peak_device_memory'] / 2**20:8.1f}")
    if failures:
        raise SystemExit("FAILED:\n" + "\n".join(failures))
    print("all GPU path checks passed")


if __name__ == "__main__":
    main()
