"""Fixtures shared by the end-to-end tests: paths that scripts/install.sh wrote to target/olive-env.sh."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def _env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through `make test` (it sources target/olive-env.sh)")
    path = Path(value)
    if not path.exists():
        pytest.fail(f"{name}={path} does not exist: run `make test` to build and fetch it")
    return path


@pytest.fixture(scope="session")
def olive_host() -> Path:
    return _env_path("OLIVE_HOST")


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    return _env_path("OLIVE_DEFAULT_GGUF")


@pytest.fixture(scope="session")
def genai05_python() -> Path:
    """The python of the onnxruntime-genai 0.5.2 venv (the API of the lab's app.py)."""
    python = _env_path("OLIVE_GENAI05_VENV") / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python} is missing: OLIVE_GENAI05_VENV is not a complete venv; run `make test`")
    return python


def tokenizer_donor() -> Path:
    """The default model as tests/golden/gen_golden.py writes it: its tokenizer files serve the tiny models."""
    path = ROOT / "tests" / "golden" / "out" / "smollm2" / "model"
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"{path} is missing: run tests/golden/gen_golden.py (make test does)")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A random tiny llama (head_dim 16, 2 layers) with the default model's tokenizer and vocabulary."""
    import torch
    import transformers

    dst = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.1,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(dst)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_donor() / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory) -> Path:
    """tests/golden's random Phi-3 with LongRoPE (head_dim 16, 2 layers, vocab 320, short/long caches switching past
    32 tokens) with the default model's tokenizer files, which ModelBuilder needs."""
    src = ROOT / "tests" / "golden" / "out" / "phi3_longrope" / "model"
    if not (src / "config.json").is_file():
        pytest.fail(f"{src} is missing: run tests/golden/gen_golden.py (make test does)")
    dst = tmp_path_factory.mktemp("tiny_phi3") / "model"
    shutil.copytree(src, dst)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_donor() / name, dst / name)
    return dst
