"""Shared pieces of the QNN execution provider tests (issue 9: test_ep_qnn.py, test_qnn_llm.py): the CLI flags that
pick the provider, the subprocess runner and the `qnn_env` fixture (the environment with OLIVE_ORT_QNN_DYLIB, the
onnxruntime-qnn plugin-EP library scripts/install.sh fetches)."""

import os
import subprocess
from pathlib import Path

import pytest

QNN = ["--device", "npu", "--provider", "QNNExecutionProvider"]


def run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def qnn_env() -> dict:
    lib = os.environ.get("OLIVE_ORT_QNN_DYLIB")
    if not lib or not Path(lib).is_file():
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set or missing: run `make test` (scripts/install.sh fetches it)")
    return dict(os.environ)
