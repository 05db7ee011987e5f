"""olive-data against transformers: the lab's --text_template and --use_chat_template on the project's travel
data give the same text and token ids as Python's str.format / tokenizer.apply_chat_template and the Hugging
Face tokenizer of the default model (tests/golden/out/smollm2/model, written by gen_golden.py)."""

import json
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import ROOT

MODEL = ROOT / "tests/golden/out/smollm2/model"
TRAVEL = ROOT / "data/data_sample_travel.jsonl"
# The lab's template exactly as the shell hands it over (literal backslash-n, which our CLI unescapes).
LAB_TEMPLATE = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>"
N_RECORDS = 12


@pytest.fixture(scope="module")
def dump_dataset() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "olive-data", "--example", "dump_dataset"], cwd=ROOT, check=True
    )
    return ROOT / "target/release/examples/dump_dataset"


@pytest.fixture(scope="module")
def tokenizer():
    if not (MODEL / "tokenizer.json").is_file():
        pytest.fail(f"{MODEL} is missing: run tests/golden/gen_golden.py (make test does)")
    return AutoTokenizer.from_pretrained(MODEL)


def _records(tmp_path: Path) -> tuple[Path, list[dict]]:
    lines = TRAVEL.read_text(encoding="utf-8").splitlines()[:N_RECORDS]
    path = tmp_path / "head.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, [json.loads(line) for line in lines]


def _dump(binary: Path, config: dict) -> dict:
    out = subprocess.run([str(binary), str(MODEL), json.dumps(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_travel_data_is_well_formed():
    lines = TRAVEL.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 200
    prompts = set()
    for n, line in enumerate(lines, 1):
        rec = json.loads(line)
        assert set(rec) == {"prompt", "response"}, f"line {n}"
        assert rec["prompt"].endswith("?") and rec["response"].strip(), f"line {n}"
        prompts.add(rec["prompt"])
    assert len(prompts) == len(lines), "duplicate prompts"


def test_text_template_matches_str_format_and_hf_tokenizer(tmp_path, dump_dataset, tokenizer):
    path, records = _records(tmp_path)
    template = LAB_TEMPLATE.replace("\\n", "\n")
    got = _dump(dump_dataset, {"data_files": [str(path)], "text_template": template, "max_seq_len": 64})
    want_texts = [template.format(**r) for r in records]
    assert got["texts"] == want_texts
    assert got["ids"] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in want_texts]
    # Packing: the documents joined with eos, cut into full blocks of 64.
    stream = [t for ids in got["ids"] for t in ids + [tokenizer.eos_token_id]]
    assert [row["input_ids"] for row in got["train"]] == [stream[i : i + 64] for i in range(0, len(stream) - 63, 64)]


def test_chat_template_matches_apply_chat_template(tmp_path, dump_dataset, tokenizer):
    path, records = _records(tmp_path)
    got = _dump(
        dump_dataset,
        {"data_files": [str(path)], "use_chat_template": True, "max_seq_len": 256, "layout": "pad"},
    )
    want_texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            tokenize=False,
        )
        for r in records
    ]
    assert got["texts"] == want_texts
    want_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in want_texts]
    assert got["ids"] == want_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for row, ids in zip(got["train"], want_ids):
        n = min(len(ids), 256)
        assert row["input_ids"] == ids[:n] + [pad_id] * (256 - n)
        assert row["attention_mask"] == [1] * n + [0] * (256 - n)
        assert row["labels"] == ids[:n] + [-100] * (256 - n)


def test_missing_template_field_is_a_clear_error(tmp_path, dump_dataset):
    path, _ = _records(tmp_path)
    cfg = {"data_files": [str(path)], "text_template": "{prompt} {answer}"}
    out = subprocess.run([str(dump_dataset), str(MODEL), json.dumps(cfg)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "head.jsonl:line 1" in out.stderr and '"answer"' in out.stderr, out.stderr


def test_text_files_match_hf_tokenizer_line_by_line(dump_dataset, tokenizer):
    eval_txt = ROOT / "data/eval.txt"
    got = _dump(dump_dataset, {"data_name": "text", "data_files": [str(eval_txt)], "max_seq_len": 128})
    lines = [line for line in eval_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert got["texts"] == lines
    assert got["ids"] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in lines]
    assert len(got["train"]) == sum(len(i) + 1 for i in got["ids"]) // 128
