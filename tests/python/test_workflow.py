"""olive-host run: Olive workflow files through the cache (issue 7).

- a second identical run is all cache hits, takes < 10% of the first and writes the same output;
- a run killed with SIGKILL mid-pass, then rerun, gives the same result as an uninterrupted run;
- two concurrent runs on one cache both succeed, and each pass runs once;
- Olive's own example workflow (olive-recipes' SmolLM2-135M CPU config, a hub id resolved from the local Hugging
  Face cache) runs unchanged, and its output loads in onnxruntime-genai;
- bad input (malformed JSON/YAML, a wrong type at a key path, an unknown pass type, a metric on a missing data
  config) fails before any pass runs and leaves no output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_TEMPLATE = "<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>"


def donor() -> Path:
    return ROOT / "tests" / "golden" / "out" / "smollm2" / "model"


def run(olive_host: Path, config: dict | str, folder: Path, *args: str, name: str = "workflow.json",
        **kwargs) -> subprocess.CompletedProcess:
    path = folder / name
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return subprocess.run([str(olive_host), "run", "--config", str(path), *args], cwd=folder,
                          capture_output=True, text=True, timeout=900, **kwargs)


def lora_then_export(model: Path, steps: int = 6) -> dict:
    """LoRA on the travel data, then an int4 ONNX export with the adapter: two passes, seeded."""
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {"local_system": {"type": "LocalSystem",
                                     "accelerators": [{"device": "cpu",
                                                       "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "travel", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": str(ROOT / "data/data_sample_travel.jsonl"),
                                    "split": "train"},
            "pre_process_data_config": {"text_template": LAB_TEMPLATE.replace("\\n", "\n"), "max_seq_len": 64},
        }],
        "evaluators": {"common": {"metrics": [
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes", "priority": 1}]},
        ]}},
        "passes": {
            "lora": {"type": "LoRA", "r": 4, "alpha": 8, "train_data_config": "travel",
                     "training_args": {"max_steps": steps, "per_device_train_batch_size": 2, "learning_rate": 0.01,
                                       "seed": 7}},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "evaluator": "common", "host": "local_system", "target": "local_system",
        "cache_dir": "cache", "output_dir": "out",
    }


def footprints(folder: Path) -> dict:
    return json.loads((folder / "footprints.json").read_text())


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "model").iterdir())
            if p.suffix in (".onnx", ".data", ".onnx_adapter")}


def test_second_run_is_all_cache_hits_and_fast(olive_host: Path, tiny: Path, tmp_path: Path):
    config = lora_then_export(tiny)
    start = time.monotonic()
    first = run(olive_host, config, tmp_path, "--log_level", "1")
    first_s = time.monotonic() - start
    assert first.returncode == 0, first.stderr
    before = output_bytes(tmp_path / "out")
    nodes = footprints(tmp_path / "out")["nodes"]
    assert sum(1 for n in nodes.values() if n["from_pass"]) == 2
    assert not any(n["cache_hit"] for n in nodes.values())

    start = time.monotonic()
    second = run(olive_host, config, tmp_path, "--log_level", "1")
    second_s = time.monotonic() - start
    assert second.returncode == 0, second.stderr
    assert "running pass" not in second.stderr, second.stderr
    assert second.stderr.count("): from the cache") == 2, second.stderr  # both passes
    assert second.stderr.count("evaluation of") == 2, second.stderr  # the input's and the output's
    nodes = footprints(tmp_path / "out")["nodes"]
    assert all(n["cache_hit"] for n in nodes.values() if n["from_pass"])
    assert output_bytes(tmp_path / "out") == before
    assert second_s < 0.1 * first_s, (first_s, second_s)
    listing = subprocess.run([str(olive_host), "cache", "list", "--cache_dir", str(tmp_path / "cache")],
                             capture_output=True, text=True)
    assert listing.returncode == 0 and "2 entries" in listing.stdout, listing.stdout


def test_sigkill_mid_pass_then_rerun_gives_the_same_result(olive_host: Path, tiny: Path, tmp_path: Path):
    config = lora_then_export(tiny, steps=60)
    reference = tmp_path / "reference"
    reference.mkdir()
    done = run(olive_host, config, reference)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "workflow.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(olive_host), "run", "--config", "workflow.json"], cwd=killed,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = killed / "cache" / "runs"
    deadline = time.monotonic() + 120
    # Kill once the first pass is under way: its folder exists, its entry.json does not.
    while time.monotonic() < deadline:
        started = [d for d in runs.iterdir() if not (d / "entry.json").exists()] if runs.is_dir() else []
        if started:
            time.sleep(0.5)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the first pass never started")
    assert proc.poll() is None, "the run finished before it could be killed; make the pass longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "out" / "model").exists()

    rerun = subprocess.run([str(olive_host), "run", "--config", "workflow.json", "--log_level", "1"], cwd=killed,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert output_bytes(killed / "out") == output_bytes(reference / "out")
    # Nothing half-written is left in the cache.
    assert all((d / "entry.json").exists() for d in runs.iterdir())


def test_concurrent_runs_on_one_cache_both_succeed(olive_host: Path, tiny: Path, tmp_path: Path):
    procs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config = lora_then_export(tiny, steps=20)
        config["cache_dir"] = str(tmp_path / "shared-cache")
        (folder / "workflow.json").write_text(json.dumps(config))
        procs.append(subprocess.Popen([str(olive_host), "run", "--config", "workflow.json", "--log_level", "1"],
                                      cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    ran = sum(err.count("running pass") for _, err in results)
    assert ran == 2, [err for _, err in results]  # each pass once, the other run took it from the cache
    assert output_bytes(tmp_path / "a" / "out") == output_bytes(tmp_path / "b" / "out")


def test_olive_recipe_runs_unchanged(olive_host: Path, tmp_path: Path):
    """olive-recipes' HuggingFaceTB-SmolLM2-135M-Instruct/CPU/olive_config.json, verbatim; the hub id comes from a
    local Hugging Face cache laid out as huggingface_hub does."""
    recipe = """{
    "input_model": {
      "type": "HfModel",
      "config": {
        "model_path": "HuggingFaceTB/SmolLM2-135M-Instruct"
      }
    },
    "systems": {
      "local_system": {
        "type": "LocalSystem",
        "config": {
          "accelerators": [
            {
              "device": "cpu",
              "execution_providers": ["CPUExecutionProvider"]
            }
          ]
        }
      }
    },
    "passes": {
      "builder": {
        "type": "ModelBuilder",
        "config": {
          "precision": "int4"
        }
      }
    },
    "engine": {
      "log_severity_level": 1,
      "host": "local_system",
      "target": "local_system",
      "cache_dir": ".olive-cache",
      "output_dir": "models/smollm_manual"
    }
  }"""
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for item in donor().iterdir():
        (snapshot / item.name).symlink_to(item)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = dict(os.environ, HF_HUB_CACHE=str(hub))
    result = run(olive_host, recipe, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    model = tmp_path / "models" / "smollm_manual" / "model"
    assert (model / "model.onnx").is_file() and (model / "genai_config.json").is_file()
    assert json.loads((tmp_path / "models/smollm_manual/model_config.json").read_text())["type"] == "onnxmodel"
    check = subprocess.run([sys.executable, "-c", (
        "import onnxruntime_genai as og, sys\n"
        "m = og.Model(sys.argv[1]); t = og.Tokenizer(m)\n"
        "p = og.GeneratorParams(m); p.set_search_options(max_length=24)\n"
        "g = og.Generator(m, p); g.append_tokens(t.encode('The capital of France is'))\n"
        "while not g.is_done(): g.generate_next_token()\n"
        "print(t.decode(g.get_sequence(0)))\n"), str(model)], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "capital of France" in check.stdout


BASE = {"input_model": {"type": "HfModel", "model_path": "MODEL"},
        "passes": {"q": {"type": "Rtn", "bits": 4}}, "output_dir": "out", "cache_dir": "cache"}


def with_model(config: dict, model: Path) -> str:
    return json.dumps(config).replace('"MODEL"', json.dumps(str(model)))


@pytest.mark.parametrize("case, expected", [
    ("malformed-json", "malformed JSON at line 3 column"),
    ("malformed-yaml", "malformed YAML at line"),
    ("wrong-type", "passes.q.bits: expected integer, found \"four\""),
    ("unknown-field", "passes.q.bitz: unknown field; expected one of"),
    ("unknown-pass", "passes.q.type: unknown pass type `Gptqq`; available: "),
    ("empty-space", "passes.q.group_size"),
    ("missing-data", "not among the workflow's data_configs"),
])
def test_bad_workflows_fail_before_any_pass(olive_host: Path, tiny: Path, tmp_path: Path, case: str,
                                            expected: str):
    name = "workflow.yaml" if case == "malformed-yaml" else "workflow.json"
    config = json.loads(json.dumps(BASE))
    text = None
    if case == "malformed-json":
        text = '{\n  "input_model": {"type": "HfModel",\n  "passes": }\n}'
    elif case == "malformed-yaml":
        text = "input_model:\n  type: HfModel\n  model_path: [x\npasses: {}\n"
    elif case == "wrong-type":
        config["passes"]["q"]["bits"] = "four"
    elif case == "unknown-field":
        config["passes"]["q"]["bitz"] = 4
    elif case == "unknown-pass":
        config["passes"]["q"]["type"] = "Gptqq"
    elif case == "empty-space":
        config["passes"]["q"]["group_size"] = {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                               "support": []}
        config["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    elif case == "missing-data":
        config["evaluators"] = {"e": {"metrics": [{"name": "ppl", "type": "accuracy", "data_config": "nowhere",
                                                   "sub_types": [{"name": "perplexity", "priority": 1}]}]}}
        config["evaluator"] = "e"
    result = run(olive_host, text if text is not None else with_model(config, tiny), tmp_path, name=name)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert name in result.stderr, result.stderr  # the error names the file
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache" / "runs").exists() or not any((tmp_path / "cache" / "runs").iterdir())


def categorical(values: list) -> dict:
    return {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": values}


def search_workflow(model: Path, sampler: str, seed: int = 0, max_samples: int = 0) -> dict:
    """RTN / GPTQ / AWQ (Olive's list of alternative pass configs) x group sizes, ranked by perplexity then
    decode latency."""
    strategy = {"execution_order": "joint", "sampler": sampler, "seed": seed}
    if max_samples:
        strategy["max_samples"] = max_samples
    calibration = {"n_samples": 2, "seq_len": 64}
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "evaluators": {"e": {"metrics": [
            {"name": "ppl", "type": "accuracy",
             "sub_types": [{"name": "perplexity", "priority": 1, "metric_config": {"max_windows": 2}}]},
            {"name": "latency", "type": "latency",
             "sub_types": [{"name": "avg", "priority": 2,
                            "metric_config": {"warmup_num": 1, "repeat_test_num": 3}}]},
        ]}},
        "passes": {"quant": [
            {"type": "Rtn", "bits": categorical([4, 8]), "group_size": categorical([32, 64])},
            {"type": "GptqQuantizer", "group_size": categorical([32, 64]), **calibration},
            {"type": "AutoAWQQuantizer", "group_size": categorical([32, 64]), **calibration},
        ]},
        "evaluator": "e", "evaluate_input_model": False, "search_strategy": strategy,
        "cache_dir": "cache", "output_dir": f"out-{sampler}-{seed}",
    }


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_search_finds_the_pareto_front_and_tpe_reaches_the_best_sooner(olive_host: Path, tiny: Path,
                                                                       tmp_path: Path):
    exhaustive = run(olive_host, search_workflow(tiny, "sequential"), tmp_path, "--log_level", "1")
    assert exhaustive.returncode == 0, exhaustive.stderr
    out = tmp_path / "out-sequential-0"
    results = json.loads((out / "search_results.json").read_text())
    trials = results["trials"]
    assert len(trials) == 8 and all(t["status"] == "succeeded" for t in trials)
    types = {t["point"]["quant"]["type"] for t in trials}
    assert types == {"Rtn", "GptqQuantizer", "AutoAWQQuantizer"}
    names = [o["name"] for o in results["objectives"]]
    assert names == ["ppl-perplexity", "latency-avg"]
    values = {t["id"]: [t["metrics"][n] for n in names] for t in trials}
    brute = {i for i, v in values.items() if not any(dominates(w, v) for j, w in values.items() if j != i)}
    assert set(results["pareto_front"]) == brute
    assert {t["id"] for t in trials if t["pareto_front"]} == brute
    best = min(values, key=lambda i: values[i])  # priority order: perplexity, then latency
    assert results["best"] == best
    for ext in ("png", "svg"):
        assert (out / f"pareto_frontier.{ext}").stat().st_size > 1000
    footprint = footprints(out)
    assert set(footprint["output_model_ids"]) == {n["model_id"] for n in footprint["nodes"].values()
                                                   if n["is_pareto_frontier"]}
    assert "| trial | point |" in exhaustive.stdout

    # TPE over the same cache (every trial a cache hit): the mean number of trials until it first reaches the
    # exhaustive best, over seeds, must be below the size of the space the exhaustive search had to run.
    best_point = trials[best]["point"]
    reached = []
    for seed in range(8):
        tpe = run(olive_host, search_workflow(tiny, "tpe", seed, max_samples=8), tmp_path, "--log_level", "1",
                  name=f"tpe-{seed}.json")
        assert tpe.returncode == 0, tpe.stderr
        assert "running pass" not in tpe.stderr
        order = json.loads((tmp_path / f"out-tpe-{seed}" / "search_results.json").read_text())["trials"]
        points = [json.dumps(t["point"], sort_keys=True) for t in order]
        assert len(set(points)) == len(points), "TPE proposed a point twice"
        reached.append(points.index(json.dumps(best_point, sort_keys=True)) + 1)
    assert sum(reached) / len(reached) < len(trials), reached


def test_dry_run_writes_the_workflow_that_run_reproduces(olive_host: Path, tiny: Path, tmp_path: Path):
    """`finetune`/`auto-opt --dry_run` write Olive's workflow and run nothing; `olive-host run` on it gives the
    files the command itself writes; `--save_config_file` writes the same workflow beside a real run's output."""
    finetune = ["finetune", "-m", str(tiny), "--data_name", "json", "--data_files",
                str(ROOT / "data/data_sample_travel.jsonl"), "--text_template", LAB_TEMPLATE, "--max_steps", "3",
                "--max_seq_len", "64", "--per_device_train_batch_size", "2", "--lora_r", "4"]
    dry = subprocess.run([str(olive_host), *finetune, "-o", str(tmp_path / "dry"), "--dry_run"],
                         capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run mode enabled" in dry.stdout
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["config.json"]
    workflow = json.loads((tmp_path / "dry" / "config.json").read_text())
    assert workflow["passes"]["lora"]["type"] == "LoRA"
    assert workflow["passes"]["lora"]["train_data_config"] == workflow["data_configs"][0]["name"]

    direct = subprocess.run([str(olive_host), *finetune, "-o", str(tmp_path / "direct"), "--save_config_file"],
                            capture_output=True, text=True, timeout=600)
    assert direct.returncode == 0, direct.stderr
    assert json.loads((tmp_path / "direct" / "config.json").read_text())["passes"] == workflow["passes"]
    replay = subprocess.run([str(olive_host), "run", "--config", str(tmp_path / "dry" / "config.json"),
                             "--output_path", str(tmp_path / "replay")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert replay.returncode == 0, replay.stderr
    name = "adapter_model.safetensors"
    assert (tmp_path / "replay/adapter" / name).read_bytes() == (tmp_path / "direct/adapter" / name).read_bytes()

    auto_opt = ["auto-opt", "-m", str(tmp_path / "direct/model"), "--adapter_path", str(tmp_path / "direct/adapter"),
                "--precision", "int4", "--use_ort_genai"]
    dry = subprocess.run([str(olive_host), *auto_opt, "-o", str(tmp_path / "ao-dry"), "--dry_run"],
                         capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr
    workflow = json.loads((tmp_path / "ao-dry" / "config.json").read_text())
    assert [p["type"] for p in workflow["passes"].values()] == ["ModelBuilder", "ExtractAdapters"]
    direct = subprocess.run([str(olive_host), *auto_opt, "-o", str(tmp_path / "ao")], capture_output=True,
                            text=True, timeout=600)
    assert direct.returncode == 0, direct.stderr
    replay = subprocess.run([str(olive_host), "run", "--config", str(tmp_path / "ao-dry" / "config.json"),
                             "--output_path", str(tmp_path / "ao-replay")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert replay.returncode == 0, replay.stderr
    assert output_bytes(tmp_path / "ao-replay") == output_bytes(tmp_path / "ao")


def test_run_pass_dry_run_writes_the_workflow_that_run_reproduces(olive_host: Path, tiny: Path, tmp_path: Path):
    """`run-pass --dry_run` writes Olive's one-pass workflow (its inline data config moved to `data_configs`, its
    relative data file made absolute) and runs nothing; `olive-host run` on it, from another folder, writes the
    same `model/` as `run-pass --save_config_file`, which leaves the same workflow beside its output."""
    (tmp_path / "travel.jsonl").write_bytes((ROOT / "data/data_sample_travel.jsonl").read_bytes())
    data = {"data_name": "json", "data_files": ["travel.jsonl"], "text_field": "response", "max_seq_len": 64}
    config = json.dumps({"bits": 4, "group_size": 32, "n_samples": 4, "seq_len": 64, "data_config": data})
    run_pass = [str(olive_host), "run-pass", "--pass-name", "GptqQuantizer", "-m", str(tiny), "--pass-config", config]
    dry = subprocess.run([*run_pass, "-o", "dry", "--dry_run"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "Dry run mode enabled" in dry.stdout
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["config.json"]
    workflow = json.loads((tmp_path / "dry" / "config.json").read_text())
    assert workflow["passes"]["gptqquantizer"]["type"] == "GptqQuantizer"
    assert workflow["passes"]["gptqquantizer"]["data_config"] == workflow["data_configs"][0]["name"]
    files = workflow["data_configs"][0]["load_dataset_config"]["data_files"]
    assert files == [str(tmp_path / "travel.jsonl")]

    direct = subprocess.run([*run_pass, "-o", "direct", "--save_config_file"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert direct.returncode == 0, direct.stderr
    out = tmp_path / "direct"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model", "model_config.json"]
    assert json.loads((out / "config.json").read_text())["passes"] == workflow["passes"]
    model_config = json.loads((out / "model_config.json").read_text())
    assert model_config["type"] == "hfmodel" and model_config["config"]["model_path"] == str(out / "model")
    assert direct.stdout.startswith("Config file saved at direct/config.json\n")
    assert json.loads(direct.stdout.split("\n", 1)[1])["path"] == str(out / "model")

    (tmp_path / "elsewhere").mkdir()
    replay = subprocess.run([str(olive_host), "run", "--config", str(tmp_path / "dry" / "config.json"),
                             "--output_path", str(tmp_path / "replay")], capture_output=True, text=True,
                            cwd=tmp_path / "elsewhere", timeout=600)
    assert replay.returncode == 0, replay.stderr
    ours = {p.name: p.read_bytes() for p in sorted((out / "model").iterdir())}
    theirs = {p.name: p.read_bytes() for p in sorted((tmp_path / "replay" / "model").iterdir())}
    assert ours.keys() == theirs.keys() and any(name.endswith(".safetensors") for name in ours)
    assert ours == theirs


def test_auto_opt_enable_search_picks_the_best_export(olive_host: Path, tiny: Path, tmp_path: Path):
    """`auto-opt --enable_search tpe` searches the int4 block size and symmetry through the workflow engine and
    saves the best export by perplexity in Olive's layout, with the search results beside it, after the provider's
    check ran it."""
    out = tmp_path / "ao"
    result = subprocess.run([str(olive_host), "auto-opt", "-m", str(tiny), "--precision", "int4", "--use_ort_genai",
                             "--enable_search", "tpe", "--seed", "3", "-o", str(out), "--log_level", "1"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    # The best export ran through the provider's check (its report is logged) before it was saved.
    assert '"max_abs_diff"' in result.stderr and '"CPUExecutionProvider"' in result.stderr
    results = json.loads((out / "search_results.json").read_text())
    assert len(results["trials"]) == 6  # 3 block sizes x symmetric or not
    blocks = {t["point"]["builder"]["int4_block_size"] for t in results["trials"]}
    assert blocks == {32, 64, 128}
    best = results["trials"][results["best"]]
    ppl = [t["metrics"]["accuracy-perplexity"] for t in results["trials"]]
    assert best["metrics"]["accuracy-perplexity"] == min(ppl)
    genai = json.loads((out / "model" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["filename"] == "model.onnx"
    refused = subprocess.run([str(olive_host), "auto-opt", "-m", str(tiny), "--precision", "fp32", "--enable_search",
                              "-o", str(tmp_path / "fp32")], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "give --precision int4" in refused.stderr


def test_olive_quantizer_configs_run_unchanged(olive_host: Path, tiny: Path, tmp_path: Path):
    """A workflow in Olive 0.13's own pass schemas (olive/passes/pytorch/autoawq.py, autogptq.py, gptq.py):
    AutoAWQQuantizer with q_group_size / zero_point / version, GptqQuantizer with AutoGPTQ's model-structure names,
    Olive's own Gptq with its quantizer fields (desc_act null: act-order for group_size -1), each then exported by
    ModelBuilder int4; data from an Olive data config over a local JSONL file."""
    data = {"name": "calib", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": str(ROOT / "data/data_sample_travel.jsonl"),
                                    "split": "train"},
            "pre_process_data_config": {"text_cols": ["response"], "max_seq_len": 64, "max_samples": 4}}
    base = {"input_model": {"type": "HfModel", "model_path": str(tiny), "load_kwargs": {"torch_dtype": "float32"}},
            "systems": {"local_system": {"type": "LocalSystem",
                                         "accelerators": [{"device": "cpu",
                                                           "execution_providers": ["CPUExecutionProvider"]}]}},
            "data_configs": [data], "host": "local_system", "target": "local_system", "cache_dir": "cache"}
    passes = {
        "awq": {"awq": {"type": "AutoAWQQuantizer", "bits": 4, "q_group_size": 32, "zero_point": True,
                        "version": "gemm", "duo_scaling": True, "input_model_dtype": "fp32",
                        "export_compatible": False, "data_config": "calib"},
                "builder": {"type": "ModelBuilder", "precision": "int4"}},
        "gptq": {"gptq": {"type": "GptqQuantizer", "bits": 4, "group_size": 32, "sym": False, "desc_act": False,
                          "damp_percent": 0.01, "static_groups": False, "true_sequential": True,
                          "layers_block_name": "model.layers",
                          "outside_layer_modules": ["model.embed_tokens", "model.norm"],
                          "inside_layer_modules": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
                                                   ["self_attn.o_proj"], ["mlp.up_proj", "mlp.gate_proj"],
                                                   ["mlp.down_proj"]],
                          "data_config": "calib"},
                 "builder": {"type": "ModelBuilder", "precision": "int4"}},
        "gptq_olive": {"gptq_olive": {"type": "Gptq", "bits": 4, "group_size": -1, "sym": False, "lm_head": False,
                                      "overrides": None, "damp_percent": 0.01, "desc_act": None,
                                      "data_config": "calib"},
                       "builder": {"type": "ModelBuilder", "precision": "int4"}},
    }
    for name, flow in passes.items():
        result = run(olive_host, {**base, "passes": flow, "output_dir": f"out-{name}"}, tmp_path,
                     name=f"{name}.json")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"out-{name}" / "model" / "model.onnx").is_file()
        quantized = [n for n in footprints(tmp_path / f"out-{name}")["nodes"].values() if n["pass_name"] == name][0]
        layout = json.loads((Path(quantized["model_config"]["config"]["model_path"]) / "config.json").read_text())
        assert layout["quantization_config"]["quant_method"] == ("awq" if name == "awq" else "gptq")
        assert layout["quantization_config"]["bits"] == 4
        if name == "gptq_olive":
            assert layout["quantization_config"]["desc_act"] is True
