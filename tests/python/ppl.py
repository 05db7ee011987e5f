"""Perplexity over the project's held-out text (data/eval.txt), one definition for every check and benchmark.

The windows: the whole file tokenized once with the model's tokenizer.json, no special tokens added, cut into
consecutive non-overlapping windows of WINDOW tokens (the last one shorter, kept when it has at least 2 tokens).
Each window is one independent forward pass from an empty KV cache; every token but a window's first is predicted.
Perplexity = exp(sum of the negative log-likelihoods / number of predicted tokens), log-softmax in float64.
With the default model's tokenizer: 2467 tokens, windows of 512, 512, 512, 512, 419, 2462 predicted tokens.

Used by tests/python/test_int4_quality.py (ONNX exports through onnxruntime) and benches/ppl_hf.py (Hugging Face
folders through transformers); a Rust perplexity over DEFAULT_EVAL_TEXT must cut the same windows to agree.
"""

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EVAL_TEXT = ROOT / "data" / "eval.txt"
WINDOW = 512


def eval_windows(tokenizer_dir: Path, text_file: Path = EVAL_TEXT, window: int = WINDOW) -> list[list[int]]:
    """The token windows of `text_file` (see the module doc)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).encode(
        text_file.read_text(encoding="utf-8"), add_special_tokens=False).ids
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in windows if len(w) >= 2]


def window_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Sum of -log p(ids[i+1] | ids[..=i]) from one window's logits [len(ids), vocab]."""
    x = logits[:-1].astype(np.float64)  # [len - 1, vocab]
    x -= x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum())


def perplexity(nll_sum: float, windows: list[list[int]]) -> float:
    return float(np.exp(nll_sum / sum(len(w) - 1 for w in windows)))


def ort_perplexity(model_dir: Path, windows: list[list[int]], threads: int = 0) -> float:
    """Perplexity of an onnxruntime-genai decoder folder (model.onnx, past_key_values.* / present.*) through
    onnxruntime: each window is one prefill from an empty cache."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past_input = inputs["past_key_values.0.key"]
    dtype = np.float16 if "float16" in past_input.type else np.float32
    _, kv_heads, _, head_dim = past_input.shape
    if not isinstance(head_dim, int):  # onnxruntime-genai's builder writes a symbolic kv_cache_dim
        head_dim = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    empty = np.zeros((1, kv_heads, 0, head_dim), dtype)  # [batch, kv_heads, past 0, head_dim]
    past = {f"past_key_values.{l}.{k}": empty for l in range(layers) for k in ("key", "value")}
    nll = 0.0
    for ids in windows:
        feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64), **past}
        logits = sess.run(["logits"], feed)[0]  # [1, len, vocab]
        nll += window_nll(logits[0], ids)
    return perplexity(nll, windows)
