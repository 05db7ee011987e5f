"""Data-parallel LoRA scaling (issue 11): `olive-host finetune --device gpu --num_gpus N` for N = 1, 2, 4, 8 (those
the machine has), the same rows per GPU (weak scaling, as transformers' Trainer under torchrun), and the training
tokens/s that rank 0 logs per step (the global batch's tokens over the step's time). Scaling efficiency =
tokens/s at N / (N x tokens/s at 1), all measured in this one run; the one-GPU run is made before and after the
others and its mean is the baseline (a small model's step is bound by the host's kernel launches, whose speed
drifts between runs). Targets: >= 90% at 2 GPUs, >= 80% at 8.

    python3 benches/gpu/dp_scaling.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer [--hidden 576 --layers 30]

The model is a random Llama: hidden 2048 and 16 layers by default (GQA, 8 kv heads, vocab 49152, about 1.1B
parameters); --hidden 576 --layers 30 gives SmolLM2-135M's shapes.
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
from check_gpu_finetune import TEMPLATE, TRAVEL  # noqa: E402

SKIP = 2  # the first steps compile kernels and warm NCCL up


def llama(path: Path, tokenizer: Path, hidden: int, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = hidden // 64
    kv_heads = max(d for d in range(1, heads // 3 + 1) if heads % d == 0)  # GQA, about 3 query heads a kv head
    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, path / f.name)


def tokens_per_second(olive_host: Path, model: Path, out: Path, gpus: int, rows: int, steps: int) -> float:
    r = subprocess.run([str(olive_host), "finetune", "--model_name_or_path", str(model), "--data_name", "json",
                        "--data_files", str(TRAVEL), "--text_template", TEMPLATE, "--max_seq_len", "256",
                        "--max_steps", str(steps), "--per_device_train_batch_size", str(rows), "--seed", "42",
                        "--device", "gpu", "--num_gpus", str(gpus), "--output_path", str(out)],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"finetune --num_gpus {gpus} failed:\n{r.stderr[-4000:]}")
    with open(out / "loss.csv") as f:
        tps = [float(row["tokens_per_second"]) for row in csv.DictReader(f) if row["loss"]][SKIP:]
    return sorted(tps)[len(tps) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--olive_host", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--rows", type=int, default=8, help="rows of 256 tokens per GPU per step")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    have = torch.cuda.device_count()
    counts = [n for n in (1, 2, 4, 8) if n <= have]
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": have, "hidden": a.hidden, "layers": a.layers,
              "rows_per_gpu": a.rows, "tokens_per_second": {}, "efficiency": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        llama(model, a.tokenizer, a.hidden, a.layers)
        def run(n: int, name: str) -> float:
            return tokens_per_second(a.olive_host, model, Path(tmp) / name, n, a.rows, a.steps)

        before = run(1, "before")
        for n in counts[1:]:
            result["tokens_per_second"][n] = run(n, f"n{n}")
        after = run(1, "after")
    result["one_gpu_before_after"] = [before, after]
    one = result["tokens_per_second"][1] = (before + after) / 2
    print(f"{result['gpu']}: hidden {a.hidden}, {a.layers} layers, {a.rows} rows x 256 tokens a GPU; one GPU "
          f"{before:,.0f} tok/s before the others, {after:,.0f} after")
    for n in (1, 2, 4, 8):
        if n not in result["tokens_per_second"]:
            print(f"{n} GPUs: not run (this machine has {have})")
            continue
        tps = result["tokens_per_second"][n]
        eff = tps / (n * one)
        result["efficiency"][n] = eff
        print(f"{n} GPUs: {tps:,.0f} tok/s, {tps / n:,.0f} a GPU, scaling efficiency {eff:.1%}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"dp_scaling_h{a.hidden}_l{a.layers}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
