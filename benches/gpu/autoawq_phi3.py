#!/usr/bin/env python3
"""AutoAWQ 0.2.9 (casper-hansen/AutoAWQ, the AWQ reference Olive's AutoAWQQuantizer wraps) on a GPU, on a random
model of Phi-3.5-mini's shapes (hidden 3072, intermediate 8192, 32 heads of 96, vocab 32064; fp16), with the
calibration `olive-host quantize --algorithm awq` uses by default: 16 windows of 512 random token ids (AutoAWQ's
own loop, given token ids, runs them as they are). 4 bits, groups of 128, zero point, GEMM layout, AutoAWQ's
defaults otherwise (grid of 20, duo scaling, clipping).

For each layer count of --layers it writes the model, then times AutoAWQ's load, quantize and save_quantized, and
projects 32 layers from the last two counts (the per-layer slope plus the larger run). The counterpart of
`gpu-calibration-bench --awq_phi3 N`, run in the same call on the same machine (benches/RESULTS.md).

The device image has no `datasets` (AutoAWQ imports it) nor AutoAWQ: carry their wheels, made here with
    pip wheel --no-deps autoawq==0.2.9 -w WHEELS
    pip download --no-deps --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 \
        --platform any -d WHEELS zstandard datasets dill multiprocess
and install them there without dependencies (the image has torch, transformers, accelerate, pyarrow, xxhash):
    pip install --no-deps --no-index --target /tmp/awqpkg WHEELS/*.whl
    PYTHONPATH=/tmp/awqpkg python3 benches/gpu/autoawq_phi3.py --layers 2,4
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PHI3_LAYERS = 32


def write_model(path: Path, layers: int, shape: dict) -> None:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        num_hidden_layers=layers,
        vocab_size=shape["vocab"],
        max_position_embeddings=4096,
        pad_token_id=0,
        torch_dtype="float16",
    )
    Phi3ForCausalLM(config).to(torch.float16).save_pretrained(str(path), safe_serialization=True)


def run(layers: int, shape: dict, tokenizer_dir: Path, samples: int, seq_len: int) -> dict:
    import torch
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, out_dir = Path(tmp) / "fp16", Path(tmp) / "awq"
        write_model(model_dir, layers, shape)
        gen = torch.Generator().manual_seed(3)
        calib = torch.randint(0, shape["vocab"], (samples, seq_len), generator=gen).tolist()
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        torch.cuda.synchronize()
        t0 = time.time()
        model = AutoAWQForCausalLM.from_pretrained(str(model_dir), safetensors=True)
        t1 = time.time()
        config = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
        model.quantize(tokenizer, quant_config=config, calib_data=calib, max_calib_samples=samples,
                       max_calib_seq_len=seq_len)
        torch.cuda.synchronize()
        t2 = time.time()
        model.save_quantized(str(out_dir))
        t3 = time.time()
        del model
        torch.cuda.empty_cache()
    return {"layers": layers, "load": t1 - t0, "quantize": t2 - t1, "save": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="2,4", help="comma-separated layer counts, ascending")
    ap.add_argument("--tokenizer", type=Path, default=Path(".gpu/tokenizer"),
                    help="any tokenizer folder (AutoAWQ wants one; the calibration is token ids already)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--tiny", action="store_true", help="a small model, to check the script on a CPU-only machine")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available() and not args.tiny:
        sys.exit("autoawq_phi3.py: no CUDA device (AutoAWQ calibrates on the GPU); --tiny checks the script on a CPU")
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda: None
    shape = {"hidden": 3072, "intermediate": 8192, "heads": 32, "vocab": 32064}
    if args.tiny:
        shape = {"hidden": 256, "intermediate": 512, "heads": 4, "vocab": 1024}
    counts = [int(n) for n in args.layers.split(",")]
    runs = [run(n, shape, args.tokenizer, args.samples, args.seq_len) for n in counts]
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for r in runs:
        print(f"autoawq {r['layers']} layers on {name}: load {r['load']:.1f} s, quantize {r['quantize']:.1f} s, "
              f"save {r['save']:.1f} s, total {r['total']:.1f} s", file=sys.stderr)
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        slope = (b["total"] - a["total"]) / (b["layers"] - a["layers"])
        projected = b["total"] + slope * (PHI3_LAYERS - b["layers"])
        label = "tiny" if args.tiny else "phi3.5-mini"
        print(f"TIMING autoawq {label} shapes, {args.samples}x{args.seq_len} calibration tokens, on {name}: "
              f"{slope:.2f} s a layer, projected {PHI3_LAYERS} layers {projected:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
