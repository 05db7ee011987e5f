#!/usr/bin/env python3
"""AutoAWQ 0.2.9 (casper-hansen/AutoAWQ, archived; the AWQ reference implementation Olive's AutoAWQQuantizer
wraps) quantizing a local Hugging Face folder on CPU: 4 bits, the given group size, zero point (asymmetric), GEMM
layout. Calibration: the paragraphs of the project's data/calibration.txt, which AutoAWQ concatenates and cuts into
windows of --seq_len tokens.

AutoAWQ is not in benches/requirements.txt (it pins nothing usable and pulls triton): install it beside the bench
venv without dependencies, then run with PYTHONPATH:
    $OLIVE_BENCH_VENV/bin/pip install --no-deps --target /tmp/awqpkg autoawq==0.2.9 zstandard
    PYTHONPATH=/tmp/awqpkg $OLIVE_BENCH_VENV/bin/python benches/peer_autoawq.py models/smollm2 OUT --group_size 64
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--group_size", type=int, default=128)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--max_samples", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    text = (ROOT / "data" / "calibration.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    start = time.time()
    model = AutoAWQForCausalLM.from_pretrained(str(args.model), safetensors=True, device_map="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    config = {"zero_point": True, "q_group_size": args.group_size, "w_bit": 4, "version": "GEMM"}
    model.quantize(tokenizer, quant_config=config, calib_data=paragraphs, max_calib_samples=args.max_samples,
                   max_calib_seq_len=args.seq_len)
    model.save_quantized(str(args.output))
    tokenizer.save_pretrained(str(args.output))
    print(f"autoawq group {args.group_size}: {time.time() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
