"""Helpers for the auto-opt tests: run an exported onnxruntime-genai decoder with onnxruntime (prefill + decode
steps feeding present.* back as past_key_values.*) and the Hugging Face model with transformers, same tokens."""

import json
from pathlib import Path

import numpy as np


def ort_logits(model_dir: Path, prompt: list[int], steps: int) -> list[np.ndarray]:
    """Logits of the prefill ([1, len(prompt), vocab]) and of `steps` greedy decode steps ([1, 1, vocab] each)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    past_type = inputs["past_key_values.0.key"].type
    dtype = np.float16 if "float16" in past_type else np.float32
    _, kv_heads, _, head_dim = inputs["past_key_values.0.key"].shape
    if not isinstance(head_dim, int):  # onnxruntime-genai's builder writes a symbolic kv_cache_dim
        head_dim = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    past = {
        f"past_key_values.{l}.{k}": np.zeros((1, kv_heads, 0, head_dim), dtype)
        for l in range(layers)
        for k in ("key", "value")
    }
    out_names = [o.name for o in sess.get_outputs()]
    ids = np.array([prompt], dtype=np.int64)
    total = len(prompt)
    results = []
    for _ in range(steps + 1):
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64), **past}
        outs = dict(zip(out_names, sess.run(None, feed)))
        logits = outs["logits"].astype(np.float32)
        results.append(logits)
        past = {
            f"past_key_values.{l}.{k}": outs[f"present.{l}.{k}"] for l in range(layers) for k in ("key", "value")
        }
        ids = np.array([[int(logits[0, -1].argmax())]], dtype=np.int64)
        total += 1
    return results


def hf_logits(hf_dir: Path, prompt: list[int], steps: int) -> list[np.ndarray]:
    """The same as `ort_logits` through transformers with its KV cache, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    results = []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        results.append(out.logits.numpy())
        cache = out.past_key_values
        for _ in range(steps):
            nxt = int(out.logits[0, -1].argmax())
            out = model(torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            results.append(out.logits.numpy())
    return results


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))
