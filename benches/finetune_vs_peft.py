"""Training throughput and peak memory on CPU (issue 6): `olive-host finetune --method lora` against transformers +
PEFT on the same model, the same rows (the lab's travel data through the lab's template, packed into rows of
--seq_len tokens with eos between records), the same batch, LoRA settings (Olive's: r 64, alpha 16, dropout 0.05,
q_proj/v_proj), AdamW at 2e-4 and gradient checkpointing (Olive's defaults), alternating rounds in one run.

Tokens/s counts input tokens of the timed steps (the first step of each run is a warm-up and not timed); peak
RSS is the whole process's (ours: olive-host and its worker, RUSAGE_CHILDREN; PEFT: its own process).

Usage (after `make test` set-up): source target/olive-env.sh;
  $OLIVE_TEST_VENV/bin/python benches/finetune_vs_peft.py models/smollm2 --steps 6 --seq_len 512 --batch 1
"""

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "data_sample_travel.jsonl"
TEMPLATE = "<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
TEMPLATE_FLAG = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"

# transformers + PEFT, one run in its own process: prints {"tokens_per_second", "peak_rss_kib"}.
_PEFT = r"""
import json, resource, sys, time
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
model_dir, data, template, steps, seq_len, batch = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
torch.manual_seed(42)
torch.set_num_threads(int(sys.argv[7]))
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
eos = json.load(open(f"{model_dir}/config.json"))["eos_token_id"]
eos = eos[0] if isinstance(eos, list) else eos
stream = []
for line in open(data):
    r = json.loads(line)
    stream += tok.encode(template.format(**r), add_special_tokens=False).ids + [eos]
rows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.gradient_checkpointing_enable()
model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                         task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
timed_tokens, timed = 0, 0.0
for step in range(steps):
    ids = torch.tensor([rows[(step * batch + b) % len(rows)] for b in range(batch)])
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    if step > 0:
        timed += time.perf_counter() - t0
        timed_tokens += ids.numel()
print(json.dumps({"tokens_per_second": timed_tokens / timed,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

# Runs argv[1:] and prints the peak RSS (KiB) of it and every process it waited for.
_PEAK_RSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def ours(olive_host: str, model: str, steps: int, seq_len: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ft"
        cmd = [sys.executable, "-c", _PEAK_RSS, olive_host, "finetune", "--method", "lora", "-m", model,
               "--data_name", "json", "--data_files", str(DATA), "--text_template", TEMPLATE_FLAG,
               "--max_steps", str(steps), "--max_seq_len", str(seq_len), "--per_device_train_batch_size", str(batch),
               "--lora_r", "64", "--lora_alpha", "16", "--lora_dropout", "0.05", "--target_modules", "q_proj,v_proj",
               "--output_path", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        with open(out / "loss.csv") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) > 1 and r["tokens_per_second"]]
        # each step's tokens/s; the mean over equal-sized steps = tokens / time
        tps = len(rows) / sum(1 / float(r["tokens_per_second"]) for r in rows)
        return {"tokens_per_second": tps, "peak_rss_kib": int(result.stdout.strip().splitlines()[-1])}


def peft(python: str, model: str, steps: int, seq_len: int, batch: int, threads: int) -> dict:
    cmd = [python, "-c", _PEFT, model, str(DATA), TEMPLATE, str(steps), str(seq_len), str(batch), str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--olive_host", default=str(ROOT / "target" / "release" / "olive-host"))
    args = parser.parse_args()
    runs = {"olive-host": [], "transformers+peft": []}
    for _ in range(args.rounds):
        runs["olive-host"].append(ours(args.olive_host, args.model, args.steps, args.seq_len, args.batch))
        runs["transformers+peft"].append(peft(sys.executable, args.model, args.steps, args.seq_len, args.batch,
                                              args.threads))
    summary = {k: {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in v),
                   "peak_rss_mib": max(r["peak_rss_kib"] for r in v) / 1024} for k, v in runs.items()}
    a, b = summary["olive-host"], summary["transformers+peft"]
    print(json.dumps(summary, indent=2))
    print(f"olive-host {a['tokens_per_second']:.1f} tok/s, {a['peak_rss_mib']:.0f} MiB; transformers+peft "
          f"{b['tokens_per_second']:.1f} tok/s, {b['peak_rss_mib']:.0f} MiB: "
          f"{a['tokens_per_second'] / b['tokens_per_second']:.2f}x the speed in "
          f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x the memory (batch {args.batch} x {args.seq_len} tokens)")


if __name__ == "__main__":
    main()
