#!/usr/bin/env python3
"""Perplexity of a Hugging Face folder over data/eval.txt with the windows of tests/python/ppl.py, through
transformers in fp32 on CPU. Float folders load as they are; quantized folders (config.json quantization_config)
are first dequantized by the numpy code below, written from the published layouts, into a temporary float folder:
- AutoAWQ GEMM (`quant_method: awq`, `version: gemm`; awq/modules/linear/gemm.py): qweight int32 [K, N/8],
  qzeros int32 [G, N/8], nibble i of a word = column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]; scales [G, N].
- GPTQ (`quant_method: gptq`; AutoGPTQ / GPTQModel QuantLinear.pack, bits 2/4/8): qweight int32 [K*bits/32, N]
  packed along the input, qzeros int32 [G, N*bits/32] storing zero - 1 (`checkpoint_format: gptq`, v1) or the
  zero (`gptq_v2`), scales [G, N], g_idx [K].
- Olive (`quant_method: olive`, olive-ai 0.13 olive/common/quant/nn.py QuantLinear): qweight uint8
  [N, ceil(K*bits/8)] packed along the input, lowest bits first; qzeros uint8 [N, ceil(G*bits/8)] (the zero
  itself; absent when symmetric: zero 2^(bits-1)); scales [N, G].
Every layout dequantizes to w[o, i] = (q[o, i] - z[o, g(i)]) * s[o, g(i)].

Usage (any venv with torch, transformers, safetensors, tokenizers):
    python benches/ppl_hf.py models/smollm2 [--threads 2]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from ppl import EVAL_TEXT, WINDOW, eval_windows, perplexity, window_nll  # noqa: E402

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_along_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 words [R, C] packed along the rows (GPTQ qweight) -> levels [R * 32 / bits, C]."""
    w = words.view(np.uint32)
    per = 32 // bits
    out = np.empty((w.shape[0] * per, w.shape[1]), np.int32)
    for j in range(per):
        out[j::per] = (w >> (bits * j)) & ((1 << bits) - 1)
    return out


def unpack_along_cols(words: np.ndarray, bits: int, order: list[int] | None = None) -> np.ndarray:
    """int32 words [R, C] packed along the columns -> levels [R, C * 32 / bits]; `order[i]` is the column within
    its word of nibble i (AutoAWQ), identity when None (GPTQ qzeros)."""
    w = words.view(np.uint32)
    per = 32 // bits
    order = order or list(range(per))
    out = np.empty((w.shape[0], w.shape[1] * per), np.int32)
    for i, col in enumerate(order):
        out[:, col::per] = (w >> (bits * i)) & ((1 << bits) - 1)
    return out


def unpack_u8(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """uint8 [R, ceil(cols * bits / 8)] packed along the columns, lowest bits first -> levels [R, cols]."""
    per = 8 // bits
    out = np.empty((packed.shape[0], packed.shape[1] * per), np.int32)
    for t in range(per):
        out[:, t::per] = (packed >> (bits * t)) & ((1 << bits) - 1)
    return out[:, :cols]


def dequant_awq(t: dict, group: int) -> np.ndarray:
    q = unpack_along_cols(t["qweight"], 4, AWQ_ORDER)  # [K, N]
    z = unpack_along_cols(t["qzeros"], 4, AWQ_ORDER)  # [G, N]
    g = np.arange(q.shape[0]) // group
    return ((q - z[g]) * t["scales"][g]).T  # [N, K]


def dequant_gptq(t: dict, bits: int, group: int, v1: bool) -> np.ndarray:
    if bits not in (2, 4, 8):
        raise SystemExit(f"GPTQ bits {bits}: only 2, 4 and 8 are unpacked here")
    q = unpack_along_rows(t["qweight"], bits)  # [K, N]
    z = unpack_along_cols(t["qzeros"], bits) + (1 if v1 else 0)  # [G, N]
    k = q.shape[0]
    g = t["g_idx"].astype(np.int64) if "g_idx" in t else np.arange(k) // group
    return ((q - z[g, : q.shape[1]]) * t["scales"][g]).T  # [N, K]


def dequant_olive(t: dict, bits: int, group: int) -> np.ndarray:
    scales = t["scales"]  # [N, G]
    k = group * scales.shape[1] if group > 0 else None
    q = unpack_u8(t["qweight"], bits, k or t["qweight"].shape[1] * (8 // bits))  # [N, K]
    if "qzeros" in t:
        z = unpack_u8(t["qzeros"], bits, scales.shape[1])  # [N, G]
    else:
        z = np.full(scales.shape, 1 << (bits - 1), np.int32)
    g = np.arange(q.shape[1]) // (group if group > 0 else q.shape[1])
    return (q - z[:, g]) * scales[:, g]  # [N, K]


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"{folder}: no *.safetensors file")
    tensors = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                x = st.get_tensor(k)
                tensors[k] = x.float().numpy() if x.is_floating_point() else x.numpy()
    return tensors


def dequantized_folder(src: Path, dst: Path) -> Path:
    """A float copy of the quantized folder `src` in `dst` (config without quantization_config)."""
    from safetensors.numpy import save_file

    config = json.loads((src / "config.json").read_text())
    qc = config.pop("quantization_config")
    method, bits = qc["quant_method"], int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", qc.get("block_size", -1))))
    tensors = load_tensors(src)
    prefixes = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    if not prefixes:
        raise SystemExit(f"{src}: quantization_config but no *.qweight tensor")
    for p in prefixes:
        parts = {s: tensors.pop(f"{p}.{s}") for s in ("qweight", "qzeros", "scales", "g_idx") if f"{p}.{s}" in tensors}
        if method == "awq":
            if qc.get("version", "gemm").lower() != "gemm" or bits != 4:
                raise SystemExit(f"{src}: AWQ {qc.get('version')} {bits} bits: only GEMM 4-bit is unpacked here")
            w = dequant_awq(parts, group)
        elif method == "gptq":
            w = dequant_gptq(parts, bits, group, qc.get("checkpoint_format", "gptq") != "gptq_v2")
        elif method == "olive":
            w = dequant_olive(parts, bits, group)
        else:
            raise SystemExit(f"{src}: quant_method {method!r} is not one this script unpacks")
        tensors[f"{p}.weight"] = np.ascontiguousarray(w, np.float32)
    if "lm_head.weight" in tensors and config.get("tie_word_embeddings"):
        config["tie_word_embeddings"] = False  # a quantized lm_head no longer equals the embeddings
    dst.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")) or f.suffix == ".jinja":
            shutil.copy(f, dst / f.name)
    print(f"dequantized {len(prefixes)} {method} linears ({bits} bits, group {group})", file=sys.stderr)
    return dst


def hf_perplexity(folder: Path, windows: list[list[int]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    nll = 0.0
    with torch.no_grad():
        for ids in windows:
            logits = model(torch.tensor([ids])).logits[0].numpy()  # [len, vocab]
            nll += window_nll(logits, ids)
    return perplexity(nll, windows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="Hugging Face folder (float, or AWQ GEMM / GPTQ / Olive quantized)")
    ap.add_argument("--text", type=Path, default=EVAL_TEXT)
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    windows = eval_windows(args.model, args.text, args.window)
    with tempfile.TemporaryDirectory() as tmp:
        quantized = "quantization_config" in json.loads((args.model / "config.json").read_text())
        folder = dequantized_folder(args.model, Path(tmp) / "float") if quantized else args.model
        ppl = hf_perplexity(folder, windows)
    print(f"perplexity {ppl:.3f} ({args.model}, {sum(len(w) - 1 for w in windows)} predicted tokens in "
          f"{len(windows)} windows of <= {args.window}, {time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
