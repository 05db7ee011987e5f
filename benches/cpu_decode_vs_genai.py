#!/usr/bin/env python3
"""CPU int4 decode: `olive-host generate` on an int4 Hugging Face folder against onnxruntime-genai on the int4 ONNX
export of the same folder (issue 12: ours >= 1.2x).

One run: makes the int4 HF folder (`olive-host quantize --algorithm rtn --precision int4`, group 128, GPTQ v1
packing) from MODEL unless --hf_int4 gives one, exports it with `olive-host auto-opt --precision int4
--use_ort_genai` (MatMulNBits block 32, accuracy_level 4 on every linear and the lm_head: the pre-quantized levels
kept, the float lm_head rounded to int4), then for each thread count alternates ROUNDS decodes of each side: the
same prompt, greedy, exactly --tokens new tokens (ours: --ignore_eos; genai: min_length holds EOS back).
tokens/s excludes the prompt's prefill on both sides: ours is olive-host's logged `decode: N tokens in S s`
(from the first generated token to the last, detokenization and stdout included), genai's the time of the
generate_next_token calls after the first token. Threads: RAYON_NUM_THREADS for ours, the decoder's
session_options intra_op_num_threads in genai_config.json for genai (a copy of the folder per count, files
linked). Prints one line per side and thread count (median of the rounds), the ratio, and a JSON line.

    source target/olive-env.sh
    $OLIVE_TEST_VENV/bin/python benches/cpu_decode_vs_genai.py [models/smollm2] [--hf_int4 DIR]
        [--threads 1,2] [--tokens 128] [--rounds 3] [--generate_host BIN]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "<|im_start|>user\nWhat is the best thing to see in Chicago?<|im_end|>\n<|im_start|>assistant\n"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def ours(olive_host: str, folder: str, tokens: int, threads: int) -> tuple[float, int, str]:
    """(decode tokens/s, prompt tokens, text) of one olive-host generate run."""
    result = run(
        [olive_host, "--log_level", "1", "generate", "--model_name_or_path", folder, "--prompt", PROMPT,
         "--max_new_tokens", str(tokens), "--ignore_eos",
         # genai's int4 export rounds the lm_head to int4 too: the same model on both sides.
         "--int4_lm_head"],
        env={**os.environ, "RAYON_NUM_THREADS": str(threads)},
    )
    decode = re.search(r"decode: (\d+) tokens in ([\d.]+) s", result.stderr)
    prefill = re.search(r"prefill: (\d+) tokens", result.stderr)
    if not decode or not prefill:
        sys.exit(f"no prefill/decode timing in olive-host's log:\n{result.stderr}")
    # The first token ends the prefill: decode times tokens - 1 steps.
    return int(decode.group(1)) / float(decode.group(2)), int(prefill.group(1)), result.stdout.strip()


def genai_folder(export: Path, threads: int, root: Path) -> Path:
    """A copy of the export (files linked) whose decoder session runs `threads` intra-op threads."""
    folder = root / f"genai-{threads}t"
    folder.mkdir()
    for f in export.iterdir():
        if f.name != "genai_config.json":
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((export / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    return folder


def genai(model, prompt_ids: list[int], tokens: int) -> tuple[float, list[int]]:
    """(decode tokens/s, generated ids) of one greedy run: the steps after the first token are timed."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt_ids) + tokens
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)  # prefill + the first token's logits
    generator.generate_next_token()
    start = time.perf_counter()
    steps = 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    elapsed = time.perf_counter() - start
    ids = list(generator.get_sequence(0))[len(prompt_ids):]
    assert len(ids) == tokens, f"genai generated {len(ids)} tokens, expected {tokens}"
    return steps / elapsed, ids


def main() -> None:
    import onnxruntime_genai as og

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="models/smollm2", help="float HF folder to quantize")
    ap.add_argument("--hf_int4", help="an int4 HF folder (AWQ/GPTQ/RTN) instead of quantizing MODEL")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", help="write the int4 folders here instead of a temporary directory")
    ap.add_argument("--generate_host", help="the olive-host binary that generates (default $OLIVE_HOST; e.g. a "
                    "copy, for A/B runs while the tree is rebuilt)")
    args = ap.parse_args()
    olive_host = os.environ.get("OLIVE_HOST")
    if not olive_host:
        sys.exit("OLIVE_HOST is not set: source target/olive-env.sh")
    generate_host = args.generate_host or olive_host

    with tempfile.TemporaryDirectory(prefix="cpu-decode-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        hf = args.hf_int4
        if hf is None:
            out = root / "hf-int4"
            start = time.perf_counter()
            run([olive_host, "quantize", "--model_name_or_path", args.model, "--algorithm", "rtn",
                 "--precision", "int4", "--output_path", str(out), "--overwrite"])
            print(f"olive-host quantize rtn int4: {time.perf_counter() - start:.1f} s", flush=True)
            hf = str(out / "model")
        export = root / "genai-int4"
        start = time.perf_counter()
        run([olive_host, "auto-opt", "--model_name_or_path", hf, "--device", "cpu", "--provider",
             "CPUExecutionProvider", "--precision", "int4", "--use_ort_genai", "--output_path", str(export)])
        print(f"olive-host auto-opt int4: {time.perf_counter() - start:.1f} s", flush=True)

        results = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            model = og.Model(str(genai_folder(export / "model", threads, root)))
            prompt_ids = list(og.Tokenizer(model).encode(PROMPT))
            speeds = {"ours": [], "genai": []}
            for _ in range(args.rounds):
                tps, prompt_len, text = ours(generate_host, hf, args.tokens, threads)
                if prompt_len != len(prompt_ids):
                    sys.exit(f"the prompt is {prompt_len} tokens for olive-host, {len(prompt_ids)} for genai")
                speeds["ours"].append(tps)
                tps, ids = genai(model, prompt_ids, args.tokens)
                speeds["genai"].append(tps)
            theirs_text = og.Tokenizer(model).decode(ids)
            med = {k: statistics.median(v) for k, v in speeds.items()}
            for side, values in speeds.items():
                print(f"{threads} thread(s) {side}: {med[side]:.1f} tok/s median of {args.rounds} "
                      f"({', '.join(f'{v:.1f}' for v in values)})")
            ratio = med["ours"] / med["genai"]
            # Each round's two runs are back to back: their ratio sees the same machine load.
            paired = [a / b for a, b in zip(speeds["ours"], speeds["genai"])]
            print(f"{threads} thread(s) ratio ours/genai: {ratio:.2f} of the medians, {statistics.median(paired):.2f} "
                  f"median of the rounds' ratios ({', '.join(f'{r:.2f}' for r in paired)}) (target >= 1.2), "
                  f"{args.tokens} greedy tokens after {len(prompt_ids)}", flush=True)
            print(f"  ours:  {text[:100]!r}\n  genai: {theirs_text[:100]!r}")
            results[threads] = {"ours": med["ours"], "genai": med["genai"], "ratio": ratio,
                                "paired_ratio": statistics.median(paired),
                                "same_text": text == theirs_text.strip()}
            del model
        print(json.dumps({"genai": og.__version__, "tokens": args.tokens, "rounds": args.rounds,
                          "load": os.getloadavg(), "results": results}))


if __name__ == "__main__":
    main()
