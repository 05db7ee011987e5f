#!/usr/bin/env python3
"""Decode speed of onnxruntime-genai folders under onnxruntime-genai (the test venv's 0.18 API: append_tokens):
the same prompt, greedy, exactly N new tokens (min_length holds EOS back), the folders alternating within each
round; tokens/s = N / the time of the N generate_next_token calls (the prompt's prefill is timed apart).
Prints one line per folder with the median over the rounds, and a JSON line.

    $OLIVE_TEST_VENV/bin/python benches/decode_genai.py --tokens 128 --rounds 3 name=DIR [name=DIR ...]
"""

import argparse
import json
import statistics
import time

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def decode(model, tokenizer, prompt_ids, tokens: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt_ids) + tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt_ids)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    produced = 0
    while not generator.is_done():
        generator.generate_next_token()
        produced += 1
    elapsed = time.perf_counter() - start
    assert produced == tokens, f"generated {produced} tokens, expected {tokens}"
    return tokens / elapsed, prefill


def main() -> None:
    import onnxruntime_genai as og

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="name=folder (a folder with genai_config.json)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args()
    models = {}
    for spec in args.folders:
        name, _, folder = spec.partition("=")
        model = og.Model(folder)
        models[name] = (model, og.Tokenizer(model))
    prompt_ids = None
    speeds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, tokenizer) in models.items():
            ids = list(tokenizer.encode(args.prompt))
            if prompt_ids is None:
                prompt_ids = ids
            assert ids == prompt_ids, f"{name}: its tokenizer encodes the prompt differently"
            speeds[name].append(decode(model, tokenizer, prompt_ids, args.tokens)[0])
    for name, values in speeds.items():
        print(f"decode {name}: {statistics.median(values):.1f} tok/s median of {args.rounds} "
              f"({', '.join(f'{v:.1f}' for v in values)}), {args.tokens} greedy tokens after {len(prompt_ids)}")
    print(json.dumps({"genai": og.__version__, "tokens": args.tokens,
                      "median_tok_s": {n: statistics.median(v) for n, v in speeds.items()}}))


if __name__ == "__main__":
    main()
