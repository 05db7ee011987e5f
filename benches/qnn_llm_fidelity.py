"""A static-KV QDQ LLM (ep-qnn's `uint16` recipe from a Hugging Face model) on the QNN HTP simulator vs ONNX Runtime's
CPU run of the same model and vs the fp32 GroupQueryAttention export (benches/RESULTS.md, "SmolLM2-135M on the QNN
HTP simulator"). "ratio" is the largest |HTP - CPU| over ep-qnn's tolerance (atol 3 + rtol 0.1 * |CPU|) across the
outputs; <= 1 passes ep-check's comparison on those inputs. Three input sets: ep-check's synthetic ids for a model
without a tokenizer (i % 97, attention_mask ones, past KV a [-1, 1] ramp), the same ids on an empty cache (past slots
masked and zero), and the first S tokens of a text as a first prompt (past masked) — the last also gives cosine /
top-1 against fp32. (ep-check feeds a language model with a tokenizer a fixed passage instead: host ep/check.rs.) The
empty-cache check ids are also split by position ("check_ids_by_position"): positions whose id is one of the
tokenizer's special tokens (SmolLM2: ids 0-16) and the rest, each with its ratio and cosines to fp32.

    python benches/qnn_llm_fidelity.py QDQ_DIR FP32_DIR [--text data/eval.txt] [--htp_arch 73]

QDQ_DIR: a folder with the static QDQ model.onnx (e.g. run-pass outputs of the recipe's passes); FP32_DIR: the
ModelBuilder fp32 export (auto-opt --device cpu --precision fp32, or run-pass ModelBuilder) with tokenizer.json.
Needs OLIVE_ORT_QNN_DYLIB (scripts/install.sh) and the venv's onnxruntime >= 1.24.2.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ATOL, RTOL = 3.0, 0.1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("qdq")
    ap.add_argument("fp32")
    ap.add_argument("--text", default=str(Path(__file__).parent.parent / "data" / "eval.txt"))
    ap.add_argument("--htp_arch", default="73", help="'' for the simulator's default")
    a = ap.parse_args()
    ort.register_execution_provider_library("QNNExecutionProvider", os.environ["OLIVE_ORT_QNN_DYLIB"])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = {"backend_type": "htp", **({"htp_arch": a.htp_arch} if a.htp_arch else {})}
    options.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"],
                                     provider)
    model = str(Path(a.qdq) / "model.onnx")
    htp = ort.InferenceSession(model, sess_options=options)
    # As ep-check's CPU reference: the QDQ math as written, not ORT's int8-activation MatMulNBits fusion (level 4).
    exact = ort.SessionOptions()
    exact.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    cpu = ort.InferenceSession(model, sess_options=exact, providers=["CPUExecutionProvider"])
    outs = [o.name for o in cpu.get_outputs()]
    s = next(i.shape[1] for i in cpu.get_inputs() if i.name == "input_ids")
    p = next(i.shape[2] for i in cpu.get_inputs() if i.name.startswith("past_key_values"))

    def ratio(feed):
        h, c = htp.run(outs, feed), cpu.run(outs, feed)
        h, c = [x.astype(np.float64) for x in h], [x.astype(np.float64) for x in c]
        worst = max((float((np.abs(x - y) / (ATOL + RTOL * np.abs(y))).max()), float(np.abs(x - y).max()), k)
                    for k, x, y in zip(outs, h, c))
        return {"ratio": round(worst[0], 3), "max": round(worst[1], 3), "output": worst[2]}, \
            h[outs.index("logits")], c[outs.index("logits")]

    check = {}
    for i in cpu.get_inputs():
        n = int(np.prod(i.shape))
        if i.type == "tensor(float)":
            check[i.name] = (((np.arange(n) % 17) - 8) / 8).astype(np.float32).reshape(i.shape)
        elif i.name == "attention_mask":
            check[i.name] = np.ones(i.shape, np.int64)
        else:
            check[i.name] = (np.arange(n) % 97).astype(np.int64).reshape(i.shape)
    empty = {k: (np.zeros_like(v) if k.startswith("past") else v) for k, v in check.items()}
    empty["attention_mask"] = np.array([[0] * p + [1] * s], np.int64)
    tok = Tokenizer.from_file(str(Path(a.fp32) / "tokenizer.json"))
    ids = np.array([tok.encode(Path(a.text).read_text()).ids[:s]], np.int64)
    text = dict(empty, input_ids=ids, position_ids=np.arange(s, dtype=np.int64)[None])
    report = {"htp_arch": a.htp_arch or "default", "check_inputs": ratio(check)[0]}
    report["check_ids_empty_cache"], eh, ec = ratio(empty)
    report["text"], qh, qc = ratio(text)
    fp32 = ort.InferenceSession(str(Path(a.fp32) / "model.onnx"), providers=["CPUExecutionProvider"])

    def reference(input_ids):
        feed = {"input_ids": input_ids, "attention_mask": np.ones((1, s), np.int64)}
        for i in fp32.get_inputs():
            if i.name.startswith("past"):
                feed[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        return fp32.run(["logits"], feed)[0].astype(np.float64)

    ref = reference(ids)

    def cos(x, y):
        return round(float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y)), 4)

    special = {t["id"] for t in json.loads((Path(a.fp32) / "tokenizer.json").read_text())["added_tokens"]
               if t.get("special")}
    er = reference(empty["input_ids"])
    at_special = np.isin(empty["input_ids"][0], list(special))
    report["check_ids_by_position"] = {}
    for group, rows in (("special", at_special), ("other", ~at_special)):
        if rows.any():
            h, c, r = eh[0, rows], ec[0, rows], er[0, rows]
            worst = float((np.abs(h - c) / (ATOL + RTOL * np.abs(c))).max())
            report["check_ids_by_position"][group] = {
                "positions": int(rows.sum()), "ratio": round(worst, 3),
                "max": round(float(np.abs(h - c).max()), 3), "cos_htp_fp32": cos(h, r), "cos_cpu_qdq_fp32": cos(c, r),
                "max_cpu_qdq_fp32": round(float(np.abs(c - r).max()), 2)}

    def top1(x, y):
        return round(float((x.argmax(-1) == y.argmax(-1)).mean()), 3)

    report.update({"text_mean": round(float(np.abs(qh - qc).mean()), 3), "cos_htp_fp32": cos(qh, ref),
                   "cos_cpu_qdq_fp32": cos(qc, ref), "top1_htp_fp32": top1(qh, ref), "top1_cpu_qdq_fp32": top1(qc, ref),
                   "top1_htp_cpu_qdq": top1(qh, qc)})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
