"""int4 export quality (issue 4): `olive-host auto-opt --precision int4` of the default model against
onnxruntime-genai's own model builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`) at the same
block size (32), both run through onnxruntime over the project's held-out text data/eval.txt with the windows of
ppl.py: our perplexity must be at most the builder's + 2%, and above the fp32 export's but within INT4_VS_FP32.

Measured on the dev machine (SmolLM2-135M-Instruct from the bundled Q4_1 GGUF): fp32 27.40, int4 ours 35.05,
builder 35.48 (both RTN, symmetric, block 32: 1.28x and 1.29x the fp32 perplexity). ~35 s on 2 cores.
"""

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from ppl import eval_windows, ort_perplexity

BLOCK_SIZE = 32
# Ours against the builder at the same settings (issue 4).
VS_BUILDER = 1.02
# int4 over fp32: both int4 exports measured 1.28-1.29x; a broken quantizer lands far above.
INT4_VS_FP32 = 1.35


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def default_hf(olive_host: Path, default_gguf: Path, tmp_path_factory) -> Path:
    """The default model as a Hugging Face folder: what both exporters read."""
    out = tmp_path_factory.mktemp("int4q") / "hf"
    run([str(olive_host), "convert", "-m", str(default_gguf), "-o", str(out)])
    return out


def nbits_attrs(model_dir: Path) -> set[tuple[int, int]]:
    """(bits, block_size) of every MatMulNBits node of model_dir/model.onnx."""
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nodes, f"{model_dir} has no MatMulNBits node"
    return {tuple(next(a.i for a in n.attribute if a.name == k) for k in ("bits", "block_size")) for n in nodes}


def test_int4_perplexity_vs_genai_builder(olive_host: Path, default_hf: Path, tmp_path: Path):
    ours32 = tmp_path / "ours32"
    run([str(olive_host), "auto-opt", "-m", str(default_hf), "-o", str(ours32), "--device", "cpu",
         "--provider", "CPUExecutionProvider", "--use_ort_genai", "--precision", "fp32"])
    ours4 = tmp_path / "ours4"
    run([str(olive_host), "auto-opt", "-m", str(default_hf), "-o", str(ours4), "--device", "cpu",
         "--provider", "CPUExecutionProvider", "--use_ort_genai", "--precision", "int4"])
    theirs4 = tmp_path / "builder4"
    run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(default_hf), "-o", str(theirs4),
         "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "builder-cache"), "--extra_options",
         f"block_size={BLOCK_SIZE}"], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert nbits_attrs(ours4 / "model") == {(4, BLOCK_SIZE)}
    assert nbits_attrs(theirs4) == {(4, BLOCK_SIZE)}

    windows = eval_windows(default_hf)
    assert sum(len(w) for w in windows) > 2000, "data/eval.txt should give a few thousand tokens"
    ppl32 = ort_perplexity(ours32 / "model", windows)
    ppl4 = ort_perplexity(ours4 / "model", windows)
    builder4 = ort_perplexity(theirs4, windows)
    print(f"perplexity over data/eval.txt: fp32 {ppl32:.3f}, int4 ours {ppl4:.3f}, int4 genai builder {builder4:.3f}")
    assert ppl4 <= builder4 * VS_BUILDER
    assert ppl32 < ppl4 <= ppl32 * INT4_VS_FP32
