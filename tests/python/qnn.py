"""Shared pieces of the QNN execution provider tests (issue 9: test_ep_qnn.py, test_qnn_llm.py, test_qnn_aot.py,
test_qdq.py): the CLI flags that pick the provider, the subprocess runner, the `qnn_env` fixture (the environment with
OLIVE_ORT_QNN_DYLIB, the onnxruntime-qnn plugin-EP library scripts/install.sh fetches) and `qnn_session`."""

import json
import os
import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest

QNN = ["--device", "npu", "--provider", "QNNExecutionProvider"]


def provider_options() -> dict:
    """ep-qnn's provider options (its manifest beside olive-host), which ep-check runs with: backend_type htp and
    the htp_arch the simulator emulates (the plugin's docs say why)."""
    manifest = Path(os.environ["OLIVE_HOST"]).parent / "olive_ep_qnn.olive-plugin.json"
    providers = json.loads(manifest.read_text())["execution_providers"]
    return next(p["provider_options"] for p in providers if p["provider"] == "QNNExecutionProvider")


def run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def qnn_env() -> dict:
    lib = os.environ.get("OLIVE_ORT_QNN_DYLIB")
    if not lib or not Path(lib).is_file():
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set or missing: run `make test` (scripts/install.sh fetches it)")
    return dict(os.environ)


def qnn_session(model) -> ort.InferenceSession:
    """`model` on the HTP simulator, every node on QNN (CPU fallback disabled)."""
    if not any(d.ep_name == "QNNExecutionProvider" for d in ort.get_ep_devices()):
        ort.register_execution_provider_library("QNNExecutionProvider", os.environ["OLIVE_ORT_QNN_DYLIB"])
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, provider_options())
    return ort.InferenceSession(model, sess_options=options)
