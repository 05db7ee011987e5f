"""`olive-host benchmark` (issue 7 item 6): a tiny random llama and its int4 ONNX export × two prompt lengths.

- four rows (2 models × 2 prompt lengths); benchmark.csv holds the values of benchmark.json; the Markdown table
  is printed; latencies and throughputs are positive; size_on_disk equals each folder's bytes (summed here);
- benchmark.png and benchmark.svg are a PNG and an SVG of the plot; --dry_run writes the first cell's workflow,
  which `olive-host run` evaluates;
- bad flags (an unknown task, a missing model, --device gpu) fail before anything runs, naming the flag, and
  leave no output folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FAST = ["--limit", "2", "--max_length", "64", "--warmup_num", "2", "--repeat_test_num", "5"]


@pytest.fixture(scope="module")
def tiny_int4(olive_host: Path, tiny: Path) -> Path:
    out = tiny.parent / "int4"
    r = subprocess.run([str(olive_host), "auto-opt", "-m", str(tiny), "--precision", "int4", "--use_ort_genai",
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out / "model"


def benchmark(olive_host: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(olive_host), "benchmark", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_two_models_by_two_prompt_lengths(olive_host: Path, tiny: Path, tiny_int4: Path, tmp_path: Path):
    out = tmp_path / "bench"
    r = benchmark(olive_host, "-m", f"tiny={tiny}", "--model_name_or_path", f"int4={tiny_int4}",
                  "--prompt_length", "16,32", *FAST, "--output_path", str(out), "--save_config_file", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "benchmark.json").read_text())
    rows = report["rows"]
    assert [(x["model"], x["device"], x["prompt_length"], x["mode"]) for x in rows] == [
        ("tiny", "cpu", 16, "decode"), ("tiny", "cpu", 32, "decode"),
        ("int4", "cpu", 16, "decode"), ("int4", "cpu", 32, "decode")]
    assert report["tasks"] == ["perplexity", "latency", "throughput", "size_on_disk"]

    with open(out / "benchmark.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    for line, row in zip(table, rows):
        assert (line["model"], line["device"], int(line["prompt_length"]), line["mode"]) == \
            (row["model"], row["device"], row["prompt_length"], row["mode"])
        for column in report["columns"]:
            assert float(line[column["header"]]) == pytest.approx(row["metrics"][column["key"]]["value"],
                                                                   rel=1e-12), column
    headers = [c["header"] for c in report["columns"]]
    assert {"latency-avg (ms)", "throughput-avg (tokens/s)", "size_on_disk-bytes (bytes)",
            "perplexity-perplexity"} <= set(headers)

    for row in rows:
        m = row["metrics"]
        assert all(m[f"latency-{s}"]["value"] > 0 for s in ("avg", "p50", "p90", "p99", "max"))
        assert m["latency-p50"]["value"] <= m["latency-max"]["value"]
        assert m["throughput-avg"]["value"] > 0
        assert m["perplexity-perplexity"]["value"] > 1
        folder = tiny if row["model"] == "tiny" else tiny_int4
        assert m["size_on_disk-bytes"]["value"] == folder_bytes(folder)
    assert rows[0]["metrics"]["size_on_disk-bytes"]["value"] != rows[2]["metrics"]["size_on_disk-bytes"]["value"]

    md = (out / "benchmark.md").read_text()
    assert md in r.stdout
    assert len([l for l in md.splitlines() if l.startswith("| int4 ")]) == 2
    png = (out / "benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    svg = ET.parse(out / "benchmark.svg").getroot()
    assert svg.tag.endswith("svg")
    assert "latency-avg (ms)" in (out / "benchmark.svg").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["input_model"] == {"type": "HfModel", "model_path": str(tiny)}
    assert config["passes"] == {}
    assert [m["name"] for m in config["evaluators"]["benchmark"]["metrics"]] == report["tasks"]


def test_dry_run_writes_a_workflow_that_olive_host_run_evaluates(olive_host: Path, tiny_int4: Path,
                                                                 tmp_path: Path):
    out = tmp_path / "dry"
    relative = os.path.relpath(tiny_int4, tmp_path)  # written absolute: run reads paths from the config's folder
    r = benchmark(olive_host, "-m", relative, "--tasks", "latency,memory", "--prompt_length", "8",
                  "--warmup_num", "1", "--repeat_test_num", "3", "--dry_run", "-o", "dry", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["input_model"]["type"] == "ONNXModel"
    assert Path(config["input_model"]["model_path"]).is_absolute()
    assert Path(config["input_model"]["model_path"]).resolve() == tiny_int4.resolve()
    latency = config["evaluators"]["benchmark"]["metrics"][0]
    assert latency["sub_types"][0]["metric_config"]["prompt_length"] == 8
    r = subprocess.run([str(olive_host), "run", "--config", str(out / "config.json")], capture_output=True,
                       text=True, timeout=120, cwd=out)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "input_model_metrics.json").read_text())
    assert sorted(metrics) == sorted(["latency-avg", "latency-p50", "latency-p90", "latency-p99", "latency-max",
                                      "memory-peak_rss"])
    assert all(m["value"] > 0 for m in metrics.values())


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "latency,bleu"], '--tasks "bleu"'),
    (["-m", "missing-model"], "does not exist"),
    (["--device", "gpu"], "--device gpu"),
    (["--prompt_length", "0"], "--prompt_length 0"),
])
def test_bad_flags_fail_before_anything_runs(olive_host: Path, tiny: Path, tmp_path: Path, flags, message):
    out = tmp_path / "never"
    r = benchmark(olive_host, "-m", str(tiny), *flags, "-o", str(out), cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "benchmark:" not in r.stderr, "a cell ran"
    assert not out.exists()
