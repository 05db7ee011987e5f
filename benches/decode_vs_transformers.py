"""CPU greedy decode speed: olive-host generate beside transformers (eager, fp32), same threads, same model.

Runs both in alternation (ROUNDS times each) on the same prompt and number of new tokens, and prints the
tokens/s of each and their ratio (ours / transformers). Decode speed only: the prompt's prefill is excluded
on both sides.

Usage (after `make test` set-up):
  source target/olive-env.sh
  $OLIVE_TEST_VENV/bin/python benches/decode_vs_transformers.py MODEL_FOLDER [--threads 2] [--tokens 64]
"""

import argparse
import os
import re
import statistics
import subprocess
import time

PROMPT = "<|im_start|>user\nWhat is the best thing to see in Chicago?<|im_end|>\n<|im_start|>assistant\n"
ROUNDS = 3


def transformers_decode_tps(model, tok, new_tokens: int) -> float:
    import torch

    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return new_tokens / (time.perf_counter() - start)


def ours_decode_tps(olive_host: str, model_dir: str, new_tokens: int, threads: int) -> float:
    result = subprocess.run(
        [olive_host, "generate", "--model_name_or_path", model_dir, "--prompt", PROMPT,
         "--max_new_tokens", str(new_tokens), "--ignore_eos", "--log_level", "1"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    )
    match = re.search(r"decode: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)", result.stderr)
    if not match:
        raise SystemExit(f"no decode timing in olive-host's log:\n{result.stderr}")
    return float(match.group(2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    olive_host = os.environ["OLIVE_HOST"]

    ours, theirs = [], []
    for _ in range(ROUNDS):
        theirs.append(transformers_decode_tps(model, tok, args.tokens))
        ours.append(ours_decode_tps(olive_host, args.model, args.tokens, args.threads))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"threads={args.threads} new_tokens={args.tokens} rounds={ROUNDS}")
    print(f"transformers {transformers.__version__} (torch {torch.__version__}, eager fp32): {t:.1f} tokens/s")
    print(f"olive-host generate (fp32): {o:.1f} tokens/s")
    print(f"ratio olive-host / transformers: {o / t:.2f}")


if __name__ == "__main__":
    main()
