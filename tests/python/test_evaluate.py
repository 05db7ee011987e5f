"""olive-host evaluate --metrics: the workflow evaluators (host/src/evaluate) against real consumers.

- accuracy_score: each choice's log-likelihood equals transformers' (same token ids, f64 log-softmax of its f32
  logits) within LOGLIK_TOL on the CPU transformer and an auto-opt ONNX export, and the chosen answers and
  accuracy follow, plain and length-normalized;
- latency / prefill_latency / throughput / size_on_disk / memory on a tiny model, through the CPU transformer and
  an `olive-host auto-opt` ONNX export: positive, ordered percentiles, throughput = 1000 / latency (one shared
  timed run), size = the files' bytes;
- the default model's accuracy on data/multiple_choice.jsonl, printed for the record.
"""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HF = ROOT / "tests" / "golden" / "out" / "smollm2" / "model"
CHOICES = ROOT / "data" / "multiple_choice.jsonl"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# Our f32 CPU forward (prefix run once, choices from its KV cache) or the fp32 ONNX export vs transformers' f32
# forward of the whole sequence: the same math in another order; a sum of a few log-probabilities (measured 7e-6
# on the tiny llama, both ways).
LOGLIK_TOL = 1e-4


def run(cmd: list, ok: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A random-weight llama with the default model's tokenizer: hidden 64, 2 layers, GQA 4/2 heads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (DEFAULT_HF / "tokenizer.json").is_file():
        pytest.fail(f"{DEFAULT_HF} is missing: run tests/golden/gen_golden.py (make test does)")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    out = tmp_path_factory.mktemp("eval") / "tiny"
    LlamaForCausalLM(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(DEFAULT_HF / name, out / name)
    return out


def reference_logliks(model_dir: Path, questions: list) -> list:
    """lm-eval's split: continuation = encode(context + " " + choice)[len(encode(context)):], no special tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    for q in questions:
        context = f"Question: {q['question']}\nAnswer:"
        n = len(tok(context, add_special_tokens=False)["input_ids"])
        row = []
        for c in q["choices"]:
            whole = tok(f"{context} {c}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            row.append(sum(float(logp[i - 1, whole[i]]) for i in range(n, len(whole))))
        out.append(row)
    return out


@pytest.mark.parametrize("which", ["hf", "onnx"])
def test_choice_logliks_match_transformers(olive_host: Path, tiny: Path, tiny_onnx: Path, tmp_path: Path,
                                           which: str):
    model = tiny if which == "hf" else tiny_onnx
    questions = [json.loads(line) for line in CHOICES.read_text().splitlines()[:12]]
    subset = tmp_path / "q.jsonl"
    subset.write_text("".join(json.dumps(q) + "\n" for q in questions))
    want = reference_logliks(tiny, questions)
    for normalized in (False, True):
        details = tmp_path / f"details-{normalized}.json"
        cmd = [olive_host, "evaluate", "-m", model, "--metrics", "accuracy_score", "--choices_file", subset,
               "--details_file", details] + (["--length_normalized"] if normalized else [])
        result = json.loads(run(cmd).stdout)
        scored = json.loads(details.read_text())["accuracy_score"]
        assert len(scored) == len(questions)
        right, worst = 0, 0.0
        for q, s, ref in zip(questions, scored, want):
            diff = max(abs(a - b) for a, b in zip(s["loglik"], ref))
            worst = max(worst, diff)
            assert diff <= LOGLIK_TOL, f"{q['question']}: {s['loglik']} vs {ref}"
            rank = [l / (len(c) + 1) if normalized else l for l, c in zip(ref, q["choices"])]
            best = max(range(len(rank)), key=lambda i: (rank[i], -i))
            # a near-tie may flip within the tolerance; otherwise the choice must agree
            if sorted(rank)[-1] - sorted(rank)[-2] > 2 * LOGLIK_TOL:
                assert s["predicted"] == best, f"{q['question']}: {s} vs reference {rank}"
            right += s["predicted"] == q["answer"]
        print(f"{which} normalized={normalized}: max |loglik diff| = {worst:.2e}")
        got = result["accuracy_score-accuracy_score"]
        assert got == {"value": round(right / len(questions), 5), "priority": -1, "higher_is_better": True}


@pytest.fixture(scope="module")
def tiny_onnx(olive_host: Path, tiny: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-onnx") / "ao"
    run([olive_host, "auto-opt", "--model_name_or_path", tiny, "--output_path", out, "--device", "cpu",
         "--provider", "CPUExecutionProvider", "--use_ort_genai"])
    return out / "model"


@pytest.mark.parametrize("which", ["hf", "onnx"])
def test_latency_throughput_size_memory(olive_host: Path, tiny: Path, tiny_onnx: Path, which: str):
    model = tiny if which == "hf" else tiny_onnx
    cmd = [olive_host, "evaluate", "-m", model, "--metrics",
           "latency,prefill_latency,throughput,size_on_disk,memory,perplexity",
           "--warmup_num", "3", "--repeat_test_num", "15", "--prompt_length", "32", "--window", "128"]
    r = json.loads(run(cmd).stdout)
    print(which, json.dumps({k: v["value"] for k, v in r.items()}))
    for metric in ("latency", "prefill_latency"):
        v = {s: r[f"{metric}-{s}"]["value"] for s in ("min", "p50", "p75", "p90", "p95", "p99", "max", "avg")}
        assert 0 < v["min"] <= v["p50"] <= v["p75"] <= v["p90"] <= v["p95"] <= v["p99"] <= v["max"], v
        assert v["min"] <= v["avg"] <= v["max"], v
        assert r[f"{metric}-p90"]["higher_is_better"] is False
    # the throughput metric has latency's settings: one timed run, tokens/s = 1000 / ms per decode step
    assert math.isclose(r["throughput-avg"]["value"], 1000 / r["latency-avg"]["value"], rel_tol=1e-3)
    assert math.isclose(r["throughput-min"]["value"], 1000 / r["latency-max"]["value"], rel_tol=1e-3)
    assert r["throughput-avg"]["higher_is_better"] is True
    files = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert r["size_on_disk-bytes"]["value"] == files
    # the process holds at least the model's weights at the forward (f32 or memory-mapped)
    rss = r["memory-peak_rss"]["value"]
    weights = sum(p.stat().st_size for p in model.glob("*") if p.suffix in (".safetensors", ".data"))
    assert weights < rss < 4 * 2**30, (rss, weights)
    # a random model: perplexity near the vocabulary size, far from a trained model's
    assert 1000 < r["perplexity-perplexity"]["value"] < 10 * 49152


def test_bad_metric_names_and_prompts_are_clear_errors(olive_host: Path, tiny: Path):
    r = run([olive_host, "evaluate", "-m", tiny, "--metrics", "f1_score"], ok=False)
    assert r.returncode != 0 and "--metrics \"f1_score\": choose among perplexity, accuracy_score" in r.stderr
    r = run([olive_host, "evaluate", "-m", tiny, "--metrics", "latency", "--prompt_length", "100000"], ok=False)
    assert r.returncode != 0 and "prompt_length 100000: the text has only" in r.stderr, r.stderr


def test_default_model_multiple_choice_accuracy(olive_host: Path):
    """The record: the default model (SmolLM2-135M-Instruct) on the project's 116 questions, 4 choices each.
    ~30 s on 2 cores (one forward per question, the choices from its KV cache)."""
    r = json.loads(run([olive_host, "evaluate", "-m", DEFAULT_HF, "--metrics", "accuracy_score"]).stdout)
    acc = r["accuracy_score-accuracy_score"]["value"]
    n = sum(1 for line in CHOICES.read_text().splitlines() if line.strip())
    print(f"default model multiple-choice accuracy: {acc:.4f} on {n} questions (chance 0.25)")
    # chance is 0.25 ± 0.040 (binomial sd over 116): 3 sd above it is far from luck
    assert acc > 0.25 + 3 * math.sqrt(0.25 * 0.75 / n)


def test_peft_adapter_is_merged_for_evaluation(olive_host: Path, tiny: Path, tmp_path: Path):
    """kind hf+adapter (what the LoRA pass returns): perplexity with the PEFT adapter merged equals PEFT's own
    (transformers + peft, unmerged) over the same windows, and differs from the base model's."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ppl import eval_windows, perplexity, window_nll

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 lora_dropout=0.0, init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    text = tmp_path / "t.txt"
    text.write_text((ROOT / "data" / "eval.txt").read_text()[:1500])
    windows = eval_windows(tiny, text, 64)
    with torch.no_grad():
        nll = sum(window_nll(peft_model(torch.tensor([w])).logits[0].numpy().astype(np.float64), w) for w in windows)
    want = perplexity(nll, windows)

    def ours(*extra):
        cmd = [olive_host, "evaluate", "-m", tiny, "--text_file", text, "--window", "64", "--metrics",
               "perplexity,size_on_disk", *extra]
        return json.loads(run(cmd).stdout)

    merged, plain = ours("--adapter", adapter), ours()
    got = merged["perplexity-perplexity"]["value"]
    print(f"perplexity with the adapter: ours {got}, peft {want}; base {plain['perplexity-perplexity']['value']}")
    assert math.isclose(got, want, rel_tol=1e-4)
    assert not math.isclose(got, plain["perplexity-perplexity"]["value"], rel_tol=1e-3)
    adapter_bytes = sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file())
    assert merged["size_on_disk-bytes"]["value"] == plain["size_on_disk-bytes"]["value"] + adapter_bytes
    bad = run([olive_host, "evaluate", "-m", tiny, "--adapter", tmp_path / "missing", "--metrics", "perplexity"],
              ok=False)
    assert bad.returncode != 0 and "PEFT adapter folders" in bad.stderr, bad.stderr
