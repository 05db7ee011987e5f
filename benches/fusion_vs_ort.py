"""OrtTransformersOptimization: olive-host's fusion plugin vs ONNX Runtime's own transformers optimizer
(onnxruntime.transformers.optimizer.optimize_model, model_type bert) on the same model, in one script: optimization
time, node counts, outputs against the unoptimized model (right padding and left holes), and inference latency
under onnxruntime (default session optimizations, CPU), alternating rounds, median.

    source target/olive-env.sh
    $OLIVE_TEST_VENV/bin/python benches/fusion_vs_ort.py [--model model.onnx] [--rounds 5] [--threads 2]

Without --model it uses all-MiniLM-L6-v2 exported by tests/python/minilm.py.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import minilm  # noqa: E402


def nodes(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def session(path: Path, threads: int, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num_heads", type=int, default=12)
    ap.add_argument("--hidden_size", type=int, default=384)
    args = ap.parse_args()
    model = args.model or minilm.exported_model()
    work = Path(tempfile.mkdtemp(prefix="fusion-bench-"))

    t = time.perf_counter()
    config = {"model_type": "bert", "num_heads": args.num_heads, "hidden_size": args.hidden_size}
    subprocess.run([os.environ["OLIVE_HOST"], "run-pass", "--pass-name", "OrtTransformersOptimization", "-m",
                    str(model), "-o", str(work / "ours"), "--pass-config", json.dumps(config)],
                   check=True, capture_output=True)
    ours_time = time.perf_counter() - t
    ours = work / "ours" / "model" / "model.onnx"

    from onnxruntime.transformers.optimizer import optimize_model
    t = time.perf_counter()
    theirs_model = optimize_model(str(model), model_type="bert", num_heads=args.num_heads,
                                  hidden_size=args.hidden_size)
    theirs = work / "ort.onnx"
    theirs_model.save_model_to_file(str(theirs))
    theirs_time = time.perf_counter() - t

    models = {"unoptimized": model, "olive-host": ours, "ort optimizer": theirs}
    print(f"model: {model}")
    print(f"optimize time: olive-host run-pass {ours_time:.2f} s (process start included), "
          f"onnxruntime.transformers.optimizer {theirs_time:.2f} s (in-process)")
    for name, path in models.items():
        ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
        print(f"{name}: {nodes(path)} nodes {dict(ops.most_common(8))}")

    reference = session(model, 2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for label, feed in [("right padding", minilm.feeds(2, 32)), ("left holes", minilm.feeds(3, 32))]:
        expected = reference.run(None, feed)[0]
        for name in ["olive-host", "ort optimizer"]:
            got = session(models[name], 2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feed)[0]
            print(f"max |diff| vs unoptimized, {label}: {name} {np.abs(got - expected).max():.2e}")

    for batch, seq in [(1, 128), (8, 128)]:
        feed = minilm.feeds(batch, seq)
        feed["attention_mask"][:] = 1
        sessions = {name: session(path, args.threads) for name, path in models.items()}
        for s in sessions.values():
            for _ in range(3):
                s.run(None, feed)
        times = {name: [] for name in sessions}
        reps = 20 if batch == 1 else 5
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t = time.perf_counter()
                for _ in range(reps):
                    s.run(None, feed)
                times[name].append((time.perf_counter() - t) / reps * 1000)
        med = {name: float(np.median(v)) for name, v in times.items()}
        print(f"batch {batch} seq {seq}, {args.threads} threads, median of {args.rounds} rounds x {reps}: "
              + ", ".join(f"{n} {m:.2f} ms" for n, m in med.items())
              + f"; olive-host / ort optimizer = {med['olive-host'] / med['ort optimizer']:.3f}")


if __name__ == "__main__":
    main()
