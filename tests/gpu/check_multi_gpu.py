"""Issue 11's checks on a machine with 2+ GPUs (CI has none), end to end through olive-host:

1. `finetune --device gpu --num_gpus N` for 20 steps equals the single-GPU run with the same global batch (N ranks of
   B/N rows against one GPU of B rows, LoRA dropout 0 so both draw no masks): every adapter tensor within
   ADAPTER_REL, every step's loss within LOSS_REL. For scale, the same comparison between one GPU taking B rows at
   once and one GPU taking them as N micro-batches (the same sums, split as the ranks split them) is printed.
   Then two "hosts" on this one (`--nnodes 2 --node_rank r --master_addr/--master_port`, each olive-host seeing
   one GPU through CUDA_VISIBLE_DEVICES): node 0 writes the adapter, equal to the one-host run's; node 1 writes none.
2. A rank killed (SIGKILL) mid-run: olive-host exits non-zero within KILL_LIMIT_S, its error names the rank, and no
   output folder (nor a half-written adapter) is left.
3. `quantize --device gpu --num_gpus N` (AWQ and GPTQ): every output file byte-identical to the single-GPU output.

The model is random, of SmolLM2-135M's shapes with its tokenizer (tests/gpu/check_gpu_finetune.py makes it).
    python3 tests/gpu/check_multi_gpu.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer --out "$OUT"
Writes results.json to --out; exits non-zero when a check fails.
"""

import argparse
import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gpu_finetune import TEMPLATE, TRAVEL, random_model  # noqa: E402

# bf16 activations: the ranks' shards are padded and multiplied as smaller matrices than the single GPU's batch, so
# the sums are ordered differently; over 20 AdamW steps the adapters drift apart by about bf16's resolution.
ADAPTER_REL = 2e-2
LOSS_REL = 1e-2
STEPS = 20
# The limit for every rank to exit after one is killed.
KILL_LIMIT_S = 60.0


def finetune_args(olive_host: Path, model: Path, out: Path, gpus: int, rows: int, steps: int,
                  extra: tuple[str, ...] = ()) -> list[str]:
    return [str(olive_host), "--log_level", "1", "finetune", "--model_name_or_path", str(model), "--data_name", "json",
            "--data_files", str(TRAVEL), "--text_template", TEMPLATE, "--max_seq_len", "256",
            "--max_steps", str(steps), "--per_device_train_batch_size", str(rows), "--seed", "42",
            "--lora_dropout", "0", "--device", "gpu", "--num_gpus", str(gpus), "--output_path", str(out), *extra]


def losses(out: Path) -> list[dict]:
    with open(out / "loss.csv") as f:
        return [row for row in csv.DictReader(f) if row["loss"]]


def finetune(olive_host: Path, model: Path, out: Path, gpus: int, rows: int, extra: tuple[str, ...] = ()) -> list[dict]:
    r = subprocess.run(finetune_args(olive_host, model, out, gpus, rows, STEPS, extra), capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"finetune --num_gpus {gpus} {' '.join(extra)} failed:\n{r.stderr[-4000:]}")
    return losses(out)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def adapter(out: Path) -> dict:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def worst_rel(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        sys.exit(f"adapters name different tensors: {sorted(a.keys() ^ b.keys())[:4]}")
    return max(rel(a[k], b[k]) for k in b)


def check_training(olive_host: Path, model: Path, tmp: Path, gpus: int) -> dict:
    per_gpu = 4
    one = finetune(olive_host, model, tmp / "ft1", 1, per_gpu * gpus)
    many = finetune(olive_host, model, tmp / f"ft{gpus}", gpus, per_gpu)
    finetune(olive_host, model, tmp / "ft1-accum", 1, per_gpu, ("--gradient_accumulation_steps", str(gpus)))
    worst_loss = max(abs(float(m["loss"]) - float(o["loss"])) / abs(float(o["loss"]))
                     for o, m in zip(one, many, strict=True))
    a1 = adapter(tmp / "ft1")
    worst_tensor = worst_rel(adapter(tmp / f"ft{gpus}"), a1)
    accumulation = worst_rel(adapter(tmp / "ft1-accum"), a1)
    # The adapter must have moved from its initial B = 0: equality of two untrained adapters proves nothing.
    moved = max(float(a1[k].abs().max()) for k in a1 if "lora_B" in k)
    print(f"training: {STEPS} steps, {per_gpu * gpus} rows a step; worst loss rel {worst_loss:.2e}, "
          f"worst adapter tensor rel {worst_tensor:.2e} ({gpus} GPUs) and {accumulation:.2e} (one GPU, {gpus} "
          f"micro-batches), largest |B| {moved:.3e}")
    return {"steps": STEPS, "global_rows": per_gpu * gpus, "worst_loss_rel": worst_loss,
            "worst_adapter_rel": worst_tensor, "accumulation_adapter_rel": accumulation, "largest_lora_B": moved,
            "losses_1": [float(r["loss"]) for r in one], f"losses_{gpus}": [float(r["loss"]) for r in many],
            "ok": worst_loss <= LOSS_REL and worst_tensor <= ADAPTER_REL and moved > 0}


def check_nodes(olive_host: Path, model: Path, tmp: Path) -> dict:
    """Two olive-host processes as nodes 0 and 1 of a 2-node run, one GPU each, against the one-host 2-GPU run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node in (0, 1):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(node))
        extra = ("--nnodes", "2", "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port))
        procs.append(subprocess.Popen(finetune_args(olive_host, model, tmp / f"node{node}", 1, 4, STEPS, extra),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    if codes != [0, 0]:
        sys.exit(f"2-node finetune exited {codes}:\n" + "\n".join(o[1][-3000:] for o in outs))
    diff = worst_rel(adapter(tmp / "node0"), adapter(tmp / "ft2"))
    node1_wrote = (tmp / "node1").exists()
    said = [line for line in (outs[1][0] + outs[1][1]).splitlines() if "node 0" in line]
    print(f"two nodes: node 0's adapter vs the one-host run: worst rel {diff:.2e}; node 1 wrote an output: "
          f"{node1_wrote}; node 1 said: {said[-1:] }")
    return {"adapter_rel_to_one_host": diff, "node1_output": node1_wrote, "node1_said": said[-1:],
            "ok": diff <= ADAPTER_REL and not node1_wrote and bool(said)}


def worker_pids(rank: int) -> list[int]:
    """olive-host worker processes whose environment has RANK=rank."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and f"RANK={rank}".encode() in env:
            found.append(int(proc.name))
    return found


def check_kill(olive_host: Path, model: Path, tmp: Path, gpus: int, victim: int) -> dict:
    out = tmp / f"killed{victim}"
    p = subprocess.Popen(finetune_args(olive_host, model, out, gpus, 4, 2000), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    # Wait until the ranks train (rank 0 logs "training on <gpu>" once the model is on it), then kill one.
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not any("training on" in x for x in lines):
        time.sleep(0.5)
    time.sleep(10)
    pids = worker_pids(victim)
    if not pids:
        p.kill()
        sys.exit(f"kill test: no worker of rank {victim} found (olive-host ended with {p.poll()}):\n"
                 + "".join(lines[-20:]))
    os.kill(pids[0], signal.SIGKILL)
    killed = time.time()
    try:
        p.wait(timeout=KILL_LIMIT_S + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    took = time.time() - killed
    reader.join(timeout=5)
    err = "".join(lines)
    left = [str(x) for x in tmp.iterdir()
            if x.name.startswith((out.name, f".{out.name}", ".finetune-"))]
    others = [pid for r in range(gpus) if r != victim for pid in worker_pids(r)]
    last = err.strip().splitlines()[-3:] if err.strip() else []
    print(f"kill rank {victim}: olive-host exited {p.returncode} after {took:.1f} s; left behind {left}; "
          f"workers still alive {others}; its error: {' / '.join(last)}")
    return {"victim": victim, "exit": p.returncode, "seconds": took, "left": left, "alive": others,
            "error_tail": last,
            "ok": p.returncode != 0 and took <= KILL_LIMIT_S and not left and not others
            and f"rank {victim}" in err}


def digest(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def check_quantize(olive_host: Path, model: Path, tmp: Path, gpus: int, algorithm: str) -> dict:
    outs, seconds = {}, {}
    for n in (1, gpus):
        out = tmp / f"q-{algorithm}-{n}"
        start = time.time()
        r = subprocess.run([str(olive_host), "quantize", "--model_name_or_path", str(model), "--algorithm", algorithm,
                            "--precision", "int4", "--device", "gpu", "--num_gpus", str(n), "--output_path",
                            str(out)], capture_output=True, text=True, timeout=900)
        seconds[n] = time.time() - start
        if r.returncode != 0:
            sys.exit(f"quantize {algorithm} --num_gpus {n} failed:\n{r.stderr[-4000:]}")
        outs[n] = digest(out / "model")
    differ = sorted(k for k in outs[1].keys() | outs[gpus].keys() if outs[1].get(k) != outs[gpus].get(k))
    print(f"quantize {algorithm}: 1 GPU {seconds[1]:.1f} s, {gpus} GPUs {seconds[gpus]:.1f} s; files differing: "
          f"{differ or 'none'}")
    return {"seconds": seconds, "files": len(outs[1]), "differ": differ, "ok": not differ and bool(outs[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--olive_host", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", choices=["train", "kill", "quantize"], action="append")
    a = ap.parse_args()
    gpus = torch.cuda.device_count()
    if gpus < 2:
        sys.exit(f"needs 2+ CUDA devices, found {gpus}")
    only = set(a.only or ["train", "kill", "quantize"])
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        random_model(model, a.tokenizer)
        if "train" in only:
            result["train"] = check_training(a.olive_host, model, tmp, gpus)
            if gpus == 2:
                result["nodes"] = check_nodes(a.olive_host, model, tmp)
        if "kill" in only:
            result["kill"] = [check_kill(a.olive_host, model, tmp, gpus, v) for v in (1, 0)]
        if "quantize" in only:
            result["quantize"] = {alg: check_quantize(a.olive_host, model, tmp, gpus, alg) for alg in ("awq", "gptq")}
    print(json.dumps(result, indent=1))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "multi_gpu.json").write_text(json.dumps(result, indent=1))
    failed = [k for k, v in result.items() if isinstance(v, dict) and v.get("ok") is False]
    failed += [f"kill rank {k['victim']}" for k in result.get("kill", []) if not k["ok"]]
    failed += [f"quantize {alg}" for alg, v in result.get("quantize", {}).items() if not v["ok"]]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
