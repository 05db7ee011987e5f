"""Fixtures shared by the end-to-end tests: paths that scripts/install.sh wrote to target/olive-env.sh."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
