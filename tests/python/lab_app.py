"""Runs an exported model folder the way the lab does: its client ../shared/lab/app.py, unchanged (written against
onnxruntime-genai 0.5.2's API), and a greedy-decoding script that speaks both 0.5.2's API (`params.input_ids`,
`compute_logits`) and 0.18's (`append_tokens`), so tests can compare token ids across versions.

The export is laid out as the lab expects, `models/phi/onnx-ao/model/`, with hard links (copies across file
systems), never symlinks: ONNX Runtime 1.32 refuses external data whose resolved path leaves the model folder.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_APP = ROOT.parent / "shared" / "lab" / "app.py"
# Where app.py loads the model and the adapter from, relative to its working directory.
LAB_MODEL_DIR = Path("models/phi/onnx-ao/model")
LAB_ADAPTER_FILE = "adapter_weights.onnx_adapter"
# app.py prints this question on its own line, then the answer.
LAB_QUESTION = "what is the best thing to see in chicago"

# Greedy decoding of given token ids through onnxruntime-genai, whichever API the installed version has.
# argv: model_dir, json list of prompt ids, max_length, adapter file or "", adapter name. Prints new ids as JSON.
_GREEDY = r"""
import json, sys
import numpy as np
import onnxruntime_genai as og
model_dir, ids, max_length, adapter_file, adapter_name = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
model = og.Model(model_dir)
params = og.GeneratorParams(model)
params.set_search_options(max_length=max_length, do_sample=False, past_present_share_buffer=False)
new_api = hasattr(og.Generator, "append_tokens")
if not new_api:
    params.input_ids = np.array(ids, dtype=np.int32)
generator = og.Generator(model, params)
if adapter_file:
    adapters = og.Adapters(model)
    adapters.load(adapter_file, adapter_name)
    generator.set_active_adapter(adapters, adapter_name)
if new_api:
    generator.append_tokens(np.array(ids, dtype=np.int32))
out = []
while not generator.is_done():
    if not new_api:
        generator.compute_logits()
    generator.generate_next_token()
    out.append(int(generator.get_next_tokens()[0]))
print(json.dumps({"version": og.__version__, "tokens": out}))
"""


def lab_layout(export_dir: Path, work_dir: Path) -> Path:
    """Makes `work_dir/models/phi/onnx-ao/model/` hold every file of `export_dir`; returns `work_dir`."""
    files = sorted(p for p in export_dir.iterdir() if p.is_file())
    if not any(p.name == "model.onnx" for p in files):
        pytest.fail(f"{export_dir} holds no model.onnx: not an exported model folder")
    model_dir = work_dir / LAB_MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = model_dir / src.name
        if dst.exists():
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return work_dir


def run_lab_app(python: Path, export_dir: Path, work_dir: Path, timeout: float = 600) -> str:
    """Runs the lab's app.py unchanged with `python` on `export_dir` (which must hold the adapter file);
    returns the answer it prints (fails the test on a non-zero exit or an empty answer)."""
    if not LAB_APP.is_file():
        pytest.fail(f"the lab's client {LAB_APP} is missing (expected at ../shared/lab/app.py from the repo root)")
    if not (export_dir / LAB_ADAPTER_FILE).is_file():
        pytest.fail(f"{export_dir} has no {LAB_ADAPTER_FILE}: app.py loads it")
    cwd = lab_layout(export_dir, work_dir)
    run = subprocess.run([str(python), str(LAB_APP)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        pytest.fail(f"{python} {LAB_APP} exited {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    lines = run.stdout.splitlines()
    if LAB_QUESTION not in lines:
        pytest.fail(f"app.py did not print the question line {LAB_QUESTION!r}; stdout:\n{run.stdout[-2000:]}")
    answer = "\n".join(lines[lines.index(LAB_QUESTION) + 1 :]).strip()
    if not answer:
        pytest.fail(f"app.py printed an empty answer; stdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-2000:]}")
    return answer


def genai_greedy(
    python: Path,
    model_dir: Path,
    prompt_ids: list[int],
    max_new_tokens: int,
    adapter: Path | None = None,
    adapter_name: str = "adapter",
    timeout: float = 600,
) -> list[int]:
    """Greedy new token ids for `prompt_ids` from the onnxruntime-genai installed beside `python` (0.5.2 or 0.18),
    with `adapter` (an .onnx_adapter file) active when given. Stops early at the end-of-sequence token.

    0.5.2 masks every prompt token equal to genai_config's pad_token_id (attention mask 0, position 0): keep the
    pad id (the default model's is 2, `<|im_end|>`) out of `prompt_ids` when comparing it with 0.18 or transformers."""
    max_length = len(prompt_ids) + max_new_tokens
    args = [str(model_dir), json.dumps(prompt_ids), str(max_length), str(adapter or ""), adapter_name]
    run = subprocess.run(
        [str(python), "-c", _GREEDY, *args], capture_output=True, text=True, timeout=timeout
    )
    if run.returncode != 0:
        pytest.fail(f"onnxruntime-genai greedy run with {python} on {model_dir} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])["tokens"]
