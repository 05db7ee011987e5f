"""Packaging (Olive's packaging_config, type Zipfile; issue 10): `--package zip` on auto-opt, finetune and quantize, and
a workflow's `packaging_config` in `olive-host run`. Each zip is unpacked here; its manifest is checked against the
model (inputs/outputs against the ONNX graph or config.json, every file's size and sha256, metrics against the run's
footprints), and the inference sample inside is run with this venv's python on the tiny model."""

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANDIDATE = "CandidateModels/cpu-cpu/BestCandidateModel_1"
LAB_TEMPLATE = "<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>"


def host(olive_host, *args, cwd=None, timeout=600):
    return subprocess.run([str(olive_host), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def unpack(zip_path: Path, dest: Path) -> tuple[Path, dict]:
    """Unzips `zip_path` into `dest`; returns the candidate folder and its manifest, checked against the files."""
    assert zip_path.is_file(), f"{zip_path} missing"
    assert not [p for p in zip_path.parent.iterdir() if p.name.startswith(".") and p.name.endswith(".zip")]
    with zipfile.ZipFile(zip_path) as z:
        assert z.testzip() is None
        z.extractall(dest)
    folder = dest / CANDIDATE
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["model"]["files"]}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    present -= {"manifest.json", "model_info.json", "metrics.json", "configurations.json", "inference_sample.py"}
    assert set(listed) == present
    for rel, entry in listed.items():
        data = (folder / rel).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], rel
    rank = json.loads((dest / "models_rank.json").read_text())
    assert rank[0]["rank"] == 1 and rank[0]["model_config"]["config"]["model_path"] == f"{CANDIDATE}/model"
    return folder, manifest


def same_files(a: Path, b: Path):
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    assert files(a) == files(b)


def onnx_io(path: Path) -> tuple[list, list]:
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def info(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    return [info(v) for v in graph.input if v.name not in initializers], [info(v) for v in graph.output]


def run_sample(folder: Path, *args: str, timeout=300) -> str:
    r = subprocess.run([sys.executable, str(folder / "inference_sample.py"), *args], cwd=folder.parent,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_auto_opt_package_runs_the_genai_sample(olive_host, tiny, tmp_path):
    out = tmp_path / "ao"
    r = host(olive_host, "auto-opt", "-m", str(tiny), "--use_ort_genai", "-o", str(out), "--package", "zip",
             "--save_config_file")
    assert r.returncode == 0, r.stderr
    folder, manifest = unpack(out / "OutputModels.zip", tmp_path / "unzipped")
    same_files(folder / "model", out / "model")
    inputs, outputs = onnx_io(out / "model" / "model.onnx")
    assert manifest["inputs"] == inputs and manifest["outputs"] == outputs
    assert inputs[0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
    assert manifest["sample"]["runtime"] == "onnxruntime-genai" and manifest["metrics"] is None
    stdout = run_sample(folder, "Hello there", "--max_length", "16")
    lines = stdout.splitlines()
    assert lines[0] == "Hello there" and lines[-1].startswith("[") and int(lines[-1][1:].split()[0]) > 0, stdout

    # The saved workflow carries the packaging_config; `run` on it writes the same model into the same zip layout.
    config = json.loads((out / "config.json").read_text())
    assert config["packaging_config"] == {"type": "Zipfile", "name": "OutputModels"}
    r = host(olive_host, "run", "--config", str(out / "config.json"), "-o", str(tmp_path / "again"),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder2, manifest2 = unpack(tmp_path / "again" / "OutputModels.zip", tmp_path / "unzipped2")
    assert manifest2["model"]["files"] == manifest["model"]["files"]


def plain_onnx(folder: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Identity", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def onnx_workflow(model: Path, packaging) -> dict:
    return {
        "input_model": {"type": "OnnxModel", "model_path": str(model)},
        "evaluators": {"e": {"metrics": [
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes", "priority": 1}]}]}},
        "passes": {"peephole": {"type": "OnnxPeepholeOptimizer"}},
        "evaluator": "e", "packaging_config": packaging, "cache_dir": "cache", "output_dir": "out",
    }


def test_workflow_packaging_config_runs_the_onnxruntime_sample(olive_host, tmp_path):
    model = plain_onnx(tmp_path / "plain")
    (tmp_path / "wf.json").write_text(json.dumps(onnx_workflow(model, [{"type": "Zipfile", "name": "Best"}])))
    r = host(olive_host, "run", "--config", "wf.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    folder, manifest = unpack(out / "Best.zip", tmp_path / "unzipped")
    same_files(folder / "model", out / "model")
    assert (manifest["inputs"], manifest["outputs"]) == onnx_io(out / "model" / "model.onnx")
    assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]
    footprints = json.loads((out / "footprints.json").read_text())
    output = footprints["nodes"][footprints["output_model_ids"][0]]
    assert manifest["metrics"] == output["metrics"]["value"] and "size-bytes" in manifest["metrics"]
    assert manifest["input_model_metrics"] == footprints["nodes"][footprints["input_model_id"]]["metrics"]["value"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["candidate_model_metrics"] == manifest["metrics"]
    history = json.loads((folder / "configurations.json").read_text())
    assert [h["from_pass"] for h in history] == ["OnnxPeepholeOptimizer"]
    assert manifest["sample"]["runtime"] == "onnxruntime"
    assert run_sample(folder).strip() == "y: float32 [1, 4]"


@pytest.mark.parametrize("packaging,message", [
    ({"type": "Dockerfile"}, "packaging_config: type: Dockerfile packaging is not supported"),
    ({"type": "Zipfile", "config": {"export_in_mlflow_format": True}}, "MLflow model format is not written"),
])
def test_bad_packaging_config_fails_before_any_pass(olive_host, tmp_path, packaging, message):
    model = plain_onnx(tmp_path / "plain")
    (tmp_path / "wf.json").write_text(json.dumps(onnx_workflow(model, packaging)))
    r = host(olive_host, "run", "--config", "wf.json", cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_finetune_package_runs_the_transformers_sample(olive_host, tiny, tmp_path):
    out = tmp_path / "ft"
    r = host(olive_host, "finetune", "--method", "lora", "-m", str(tiny), "--data_name", "json", "--data_files",
             str(ROOT / "data" / "data_sample_travel.jsonl"), "--text_template", LAB_TEMPLATE, "--max_steps", "2",
             "--max_seq_len", "32", "--per_device_train_batch_size", "1", "--eval_split_ratio", "0",
             "-o", str(out), "--package", "zip")
    assert r.returncode == 0, r.stderr
    folder, manifest = unpack(out / "OutputModels.zip", tmp_path / "unzipped")
    same_files(folder / "model", out / "model")
    same_files(folder / "adapter", out / "adapter")
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32",
                                    "shape": ["batch_size", "sequence_length", vocab]}]
    assert manifest["model"]["adapter_path"] == "adapter" and "peft" in manifest["sample"]["requires"]
    stdout = run_sample(folder, "Hello there", "--max_new_tokens", "4")
    assert stdout.splitlines()[0] == "Hello there" and stdout.splitlines()[-1] == "[4 new tokens]", stdout


def test_quantize_package_lists_the_quantized_model(olive_host, tiny, tmp_path):
    out = tmp_path / "q"
    r = host(olive_host, "quantize", "-m", str(tiny), "--algorithm", "rtn", "-o", str(out), "--package", "zip")
    assert r.returncode == 0, r.stderr
    folder, manifest = unpack(out / "OutputModels.zip", tmp_path / "unzipped")
    same_files(folder / "model", out / "model")
    assert manifest["model"]["type"] == "hfmodel" and manifest["inputs"][0]["name"] == "input_ids"
    # transformers loads a GPTQ checkpoint through gptqmodel, which the test venv lacks: the sample names it.
    assert "gptqmodel" in manifest["sample"]["requires"]
    assert "pip install torch transformers gptqmodel" in (folder / "inference_sample.py").read_text()


def test_auto_opt_search_package_carries_the_best_models_metrics(olive_host, tiny, tmp_path):
    out = tmp_path / "ao"
    r = host(olive_host, "auto-opt", "-m", str(tiny), "--use_ort_genai", "--precision", "int4", "--enable_search",
             "--package", "zip", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder, manifest = unpack(out / "OutputModels.zip", tmp_path / "unzipped")
    same_files(folder / "model", out / "model")
    footprints = json.loads((out / "footprints.json").read_text())
    metrics = [n["metrics"]["value"] for n in footprints["nodes"].values() if n["metrics"]]
    best = min(metrics, key=lambda m: (m["accuracy-perplexity"]["value"], m["latency-avg"]["value"]))
    assert manifest["metrics"] == best, (manifest["metrics"], metrics)
    assert json.loads((folder / "metrics.json").read_text())["candidate_model_metrics"] == best
