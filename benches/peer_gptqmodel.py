#!/usr/bin/env python3
"""GPTQModel (ModelCloud, the maintained successor of AutoGPTQ and AutoAWQ) quantizing a local Hugging Face folder
on CPU: GPTQ, AWQ (in bfloat16: its module refuses float32) or RTN, weight-only, 4 bits, the given group size,
asymmetric, no act-order. Calibration: the project's data/calibration.txt tokenized once (no special tokens)
and cut into full windows of --seq_len tokens (what Olive's JOIN text strategy makes of it). Writes the quantized
folder (GPTQ v1 / AWQ GEMM layout).

    $OLIVE_BENCH_VENV/bin/python benches/peer_gptqmodel.py gptq models/smollm2 OUT --group_size 128
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=["gptq", "awq", "rtn"])
    ap.add_argument("model", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--group_size", type=int, default=128)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--max_samples", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # GPTQModel 7.7 sizes its cpu pool as ceil(cores / 2) = 1 on 2 cores, then asks 2 loader workers of it:
    # "Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1".
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import torch
    from tokenizers import Tokenizer

    import gptqmodel
    from gptqmodel import GPTQModel

    ids = Tokenizer.from_file(str(args.model / "tokenizer.json")).encode(
        (ROOT / "data" / "calibration.txt").read_text(encoding="utf-8"), add_special_tokens=False).ids
    windows = [ids[i:i + args.seq_len] for i in range(0, len(ids) - args.seq_len + 1, args.seq_len)]
    windows = windows[: args.max_samples]
    calibration = [{"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
                   for w in windows]
    common = dict(bits=4, group_size=args.group_size, sym=False, desc_act=False)
    if args.method == "gptq":
        config = gptqmodel.GPTQConfig(**common)
    elif args.method == "awq":
        config = gptqmodel.AWQConfig(**{k: v for k, v in common.items() if k != "desc_act"})
    else:
        config = gptqmodel.RTNConfig(**common)
    start = time.time()
    # AWQ's packed module (AwqTorchLinear) refuses float32 ("only supports [torch.float16, torch.bfloat16]");
    # bfloat16 (AVX512-BF16 here): float16 on CPU ran ~100 s a layer.
    dtype = torch.bfloat16 if args.method == "awq" else torch.float32
    model = GPTQModel.load(str(args.model), config, device="cpu", dtype=dtype)
    model.quantize(calibration if args.method != "rtn" else None, batch_size=1)
    model.save(str(args.output))
    print(f"gptqmodel {gptqmodel.__version__} {args.method} group {args.group_size}: {len(windows)} calibration "
          f"windows of {args.seq_len} tokens, {time.time() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
