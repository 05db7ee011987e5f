"""auto-opt --enable_aot (Olive 0.13's `olive optimize --enable_aot`) for QNN (issue 9, item 3): the ep-qnn recipe's
QDQ model of all-MiniLM-L6-v2 (minilm.py) is compiled by the QNN HTP simulator into an EPContext model
(EPContextBinaryGenerator: model/model_ctx.onnx + model_ctx_qnn.bin). The CPU provider cannot run an EPContext node,
so ep-check compares the context model's outputs on QNN with the CPU outputs of the model it was compiled from
(`--reference_model`; auto-opt passes the last model without EPContext nodes); every node (the EPContext one) must
still run on QNN with CPU fallback disabled.

- the AOT output runs on the simulator with outputs equal to the same recipe's QDQ model's (calibration is seeded,
  so a plain auto-opt run gives the model that was compiled);
- ep-check on the context model: with the QDQ model as reference it passes and names the reference; without one the
  error says to give --reference_model;
- --enable_aot with another provider is refused (as Olive's).
"""

import json
import os

import numpy as np
import onnx
import pytest

import minilm
from qnn import QNN, qnn_session, run

def report(stdout: str) -> dict:
    # The simulator prints " # LIBNATIVE: ..." lines around the JSON report.
    return json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0]


def test_auto_opt_enable_aot_writes_a_qnn_context_model_checked_against_the_qdq_model(olive_host, tmp_path):
    if not os.environ.get("OLIVE_ORT_QNN_DYLIB"):
        pytest.fail("OLIVE_ORT_QNN_DYLIB is not set: run `make test`")
    src = minilm.exported_model()
    aot, plain = tmp_path / "aot", tmp_path / "plain"
    done = run([olive_host, "auto-opt", "-m", src, *QNN, "--precision", "uint16", "--enable_aot", "-o", aot])
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (aot / "model").iterdir())
    assert files == ["model_ctx.onnx", "model_ctx_qnn.bin"], files
    ctx = aot / "model" / "model_ctx.onnx"
    assert [n.op_type for n in onnx.load(ctx).graph.node] == ["EPContext"]

    done = run([olive_host, "auto-opt", "-m", src, *QNN, "--precision", "uint16", "-o", plain])
    assert done.returncode == 0, done.stderr
    qdq = plain / "model" / "model.onnx"
    feed = {"input_ids": (np.arange(128) % 97).reshape(1, 128).astype(np.int64),
            "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    got = qnn_session(ctx).run(None, feed)[0]
    want = qnn_session(qdq).run(None, feed)[0]
    assert got.shape == (1, 128, 384)
    assert np.array_equal(got, want), np.abs(got - want).max()

    # ep-check: the context model on QNN vs the QDQ model on the CPU; without a reference, a clear error.
    done = run([olive_host, "ep-check", "-m", aot / "model", *QNN, "--reference_model", plain / "model"])
    assert done.returncode == 0, done.stderr
    checked = report(done.stdout)
    assert checked["reference_model"] == str(qdq) and checked["nodes"] == 1, checked
    assert 0 < checked["max_abs_diff"]["last_hidden_state"] < 3.0, checked
    done = run([olive_host, "ep-check", "-m", aot / "model", *QNN])
    assert done.returncode != 0 and "EPContext" in done.stderr and "--reference_model" in done.stderr, done.stderr


def test_enable_aot_is_refused_for_other_providers(olive_host, tmp_path):
    done = run([olive_host, "auto-opt", "-m", minilm.exported_model(), "--device", "cpu", "--enable_aot",
                "-o", tmp_path / "out"])
    assert done.returncode != 0
    assert "--enable_aot" in done.stderr and "only supported with QNNExecutionProvider" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
