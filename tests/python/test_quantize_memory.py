"""Layer streaming (issue 5): quantizing a synthetic 1.2B-parameter llama (random weights, TinyLlama-1.1B's shape
with the default model's 49152-token vocabulary, written shard by shard here) with RTN, AWQ and GPTQ peaks below
MAX_RSS_FRACTION of the model's fp32 size, measured as the peak RSS of `olive-host quantize` and its worker
(RUSAGE_CHILDREN of a fresh wrapper process, so nothing else this test session ran counts).

AWQ and GPTQ calibrate on one window of 64 tokens here instead of the default 16 of 512, to keep the test inside
CI's time (at 8192 tokens a 1B layer's search takes minutes on 2 cores): what is measured is what does not grow
with the tokens (one layer's weights, AWQ's saved weight of the searched group, GPTQ's Hessians and solver);
the activations add about 4 · (4 · hidden + 3 · intermediate) bytes per calibration token (~100 MB per 1000 tokens
at this shape).
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

MAX_RSS_FRACTION = 0.25
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "hidden_act": "silu",
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

# Runs argv[1:] and prints the peak RSS in KiB of it and every process it waited for.
_PEAK_RSS = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"


def write_model(folder: Path) -> int:
    """Writes the model one shard per decoder layer (so this process never holds more than a layer);
    returns its fp32 size in bytes."""
    c = CONFIG
    h, inter = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    shards = [{"model.embed_tokens.weight": w(c["vocab_size"], h)}]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        shards.append(lambda p=p: {
            f"{p}.input_layernorm.weight": np.ones(h, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(h, np.float32),
            f"{p}.self_attn.q_proj.weight": w(h, h), f"{p}.self_attn.k_proj.weight": w(kv, h),
            f"{p}.self_attn.v_proj.weight": w(kv, h), f"{p}.self_attn.o_proj.weight": w(h, h),
            f"{p}.mlp.gate_proj.weight": w(inter, h), f"{p}.mlp.up_proj.weight": w(inter, h),
            f"{p}.mlp.down_proj.weight": w(h, inter),
        })
    shards.append(lambda: {"model.norm.weight": np.ones(h, np.float32), "lm_head.weight": w(c["vocab_size"], h)})
    folder.mkdir(parents=True)
    weight_map, total = {}, 0
    n = len(shards)
    for i, shard in enumerate(shards):
        tensors = shard() if callable(shard) else shard
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.nbytes
        del tensors
        shards[i] = None
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return total


@pytest.fixture(scope="module")
def donor(olive_host: Path, default_gguf: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mem") / "hf"
    subprocess.run([str(olive_host), "convert", "-m", str(default_gguf), "-o", str(out)], check=True,
                   capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def synthetic_1b(donor: Path):
    """The model and its fp32 size, in its own folder removed when the module's tests end: 5 GB of disk."""
    with tempfile.TemporaryDirectory(prefix="olive-synthetic-1b-") as tmp:
        model = Path(tmp) / "synthetic-1b"
        size = write_model(model)
        for f in TOKENIZER_FILES:
            (model / f).write_bytes((donor / f).read_bytes())
        yield model, size


# One calibration window of 64 tokens for the calibrated methods (see the module docstring).
CALIBRATION = ["--max_samples", "1", "--max_seq_len", "64"]


@pytest.mark.parametrize("algorithm", ["rtn", "awq", "gptq"])
def test_a_1b_model_streams_in_a_quarter_of_its_size(olive_host: Path, synthetic_1b, algorithm: str):
    model, size = synthetic_1b
    out = model.parent / algorithm
    cmd = [sys.executable, "-c", _PEAK_RSS, str(olive_host), "quantize", "-m", str(model), "-o", str(out),
           "--algorithm", algorithm, "--precision", "int4", "--group_size", "128",
           *([] if algorithm == "rtn" else CALIBRATION)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr[-4000:]
        peak = int(result.stdout.strip().splitlines()[-1]) * 1024
        print(f"synthetic model: {size / 2**30:.2f} GiB fp32; quantize {algorithm} peak RSS {peak / 2**20:.0f} MiB "
              f"({peak / size:.1%})")
        assert json.loads((out / "model" / "config.json").read_text())["quantization_config"]["bits"] == 4
        assert peak < MAX_RSS_FRACTION * size
    finally:
        shutil.rmtree(out, ignore_errors=True)
