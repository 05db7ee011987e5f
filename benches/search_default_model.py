"""The issue-7 search on the default model: Rtn / AutoAWQQuantizer / GptqQuantizer (Olive's list of alternative
pass configs) x group size 64 | 128 at 4 bits, then the int4 ONNX export (ModelBuilder: the groups become
MatMulNBits blocks), ranked by perplexity over data/eval.txt (priority 1) and decode latency (priority 2), both
through onnxruntime. One exhaustive (sequential) run fills the cache; its Pareto front is checked against a
brute-force dominance check; then TPE runs over the same cache (every trial a cache hit) for several seeds, and the
mean number of trials until TPE first proposes the exhaustive best is printed beside random's.

    source target/olive-env.sh
    $OLIVE_TEST_VENV/bin/python benches/search_default_model.py models/smollm2 /tmp/search-bench
(a rerun over the same folder reuses its cache.)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def categorical(values):
    return {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": values}


def workflow(model: str, sampler: str, seed: int, max_samples: int = 0) -> dict:
    strategy = {"execution_order": "joint", "sampler": sampler, "seed": seed}
    if max_samples:
        strategy["max_samples"] = max_samples
    grid = {"bits": 4, "group_size": categorical([64, 128])}
    return {
        "input_model": {"type": "HfModel", "model_path": model},
        "evaluators": {"e": {"metrics": [
            {"name": "ppl", "type": "accuracy", "sub_types": [{"name": "perplexity", "priority": 1}]},
            {"name": "latency", "type": "latency",
             "sub_types": [{"name": "avg", "priority": 2, "metric_config": {"warmup_num": 3, "repeat_test_num": 20}}]},
        ]}},
        "passes": {"quant": [{"type": "Rtn", **grid}, {"type": "AutoAWQQuantizer", **grid},
                             {"type": "GptqQuantizer", **grid}],
                   "builder": {"type": "ModelBuilder", "precision": "int4"}},
        "evaluator": "e", "search_strategy": strategy,
        "cache_dir": "cache", "output_dir": f"out-{sampler}-{seed}",
    }


def run(folder: Path, config: dict, name: str) -> float:
    (folder / name).write_text(json.dumps(config, indent=1))
    start = time.monotonic()
    subprocess.run([os.environ["OLIVE_HOST"], "run", "--config", name, "--log_level", "1"], cwd=folder, check=True)
    return time.monotonic() - start


def main() -> None:
    model, folder = str(Path(sys.argv[1]).resolve()), Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    seconds = run(folder, workflow(model, "sequential", 0), "exhaustive.json")
    results = json.loads((folder / "out-sequential-0" / "search_results.json").read_text())
    names = [o["name"] for o in results["objectives"]]
    values = {t["id"]: [t["metrics"][n] for n in names] for t in results["trials"] if t["metrics"]}
    assert len(values) == len(results["trials"]), "a trial failed; see the log"
    dominated = lambda v, w: all(a <= b for a, b in zip(w, v)) and any(a < b for a, b in zip(w, v))
    brute = sorted(i for i, v in values.items() if not any(dominated(v, w) for j, w in values.items() if j != i))
    print(f"exhaustive: {len(values)} trials in {seconds:.0f} s; front {results['pareto_front']} "
          f"(brute force {brute}); best {results['best']}")
    assert results["pareto_front"] == brute
    best = json.dumps(results["trials"][results["best"]]["point"], sort_keys=True)
    for sampler in ("tpe", "random"):
        reached = []
        for seed in range(10):
            run(folder, workflow(model, sampler, seed, len(values)), f"{sampler}-{seed}.json")
            trials = json.loads((folder / f"out-{sampler}-{seed}" / "search_results.json").read_text())["trials"]
            points = [json.dumps(t["point"], sort_keys=True) for t in trials]
            reached.append(points.index(best) + 1)
        print(f"{sampler}: trials to reach the exhaustive best over 10 seeds {reached}, "
              f"mean {sum(reached) / len(reached):.1f} of {len(values)}")


if __name__ == "__main__":
    main()
