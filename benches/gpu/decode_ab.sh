#!/usr/bin/env bash
# GPU decode A/B, run on the GPU machine over what scripts/gpu-decode-ab.sh built into .gpu-ab/: random Llama models
# of SmolLM2-135M's, TinyLlama-1.1B's, 8 layers of Phi-3.5-mini's and 4 of Llama-3-8B's (llama4) shapes, and tinyw, a
# Mistral one of TinyLlama's with a 2048-key sliding window (random_llama.py, bf16, then int4 by `olive-host quantize
# --algorithm rtn`), then the gpu_decode bench's `graph` mode (tok/s, 32 steps) of each build (base and new),
# alternated in the same call (these machines drift by a few percent between runs):
#   bash benches/gpu/decode_ab.sh [ROUNDS [MODELS [PROMPTS]]]
# ROUNDS: rounds a case (2); MODELS: of smol tiny phi8 llama4 tinyw, each also with -int4 ("tiny-int4 smol-int4
# phi8-int4"); PROMPTS: prompt lengths (OLIVE_BENCH_PROMPT, "16"); AB_MAX_LENGTH, when set, the KV cache's capacity
# (OLIVE_BENCH_MAX_LENGTH: generate's --max_length; else what the steps reach); AB_BUILDS, the builds under .gpu-ab
# taken in turn ("base new"; a variant built by hand into .gpu-ab/NAME/bench joins as NAME). Models go to
# $AB_MODELS (/tmp/ab-models), kept for the next call while the machine stays warm. Prints one line a round, then
# each case's mean ratio of every build to the first.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ab=$root/.gpu-ab
rounds=${1:-2}
models=${2:-tiny-int4 smol-int4 phi8-int4}
prompts=${3:-16}
dir=${AB_MODELS:-/tmp/ab-models}
read -r -a builds <<<"${AB_BUILDS:-base new}"
for f in "${builds[@]/%//bench}" olive-host; do
    [ -x "$ab/$f" ] || { echo "decode_ab.sh: $ab/$f is missing: run scripts/gpu-decode-ab.sh first" >&2; exit 1; }
done
for m in $models; do
    case $m in
        smol | tiny | phi8 | llama4 | tinyw | smol-int4 | tiny-int4 | phi8-int4 | llama4-int4 | tinyw-int4) ;;
        *) echo "decode_ab.sh: unknown model $m, expected smol, tiny, phi8, llama4, tinyw or one of them with -int4" >&2
           exit 1 ;;
    esac
done
mkdir -p "$dir"
for m in $models; do
    shape=${m%-int4}
    [ -f "$dir/$shape/config.json" ] || python3 "$root/benches/gpu/random_llama.py" "$dir" "$shape" >&2
    if [ "$m" != "$shape" ] && [ ! -f "$dir/$m/model/config.json" ]; then
        "$ab/olive-host" quantize --model_name_or_path "$dir/$shape" --algorithm rtn --precision int4 \
            --output_path "$dir/$m" --log_level 3 >&2
    fi
done
# tok/s of one bench run (criterion's middle throughput estimate).
run() {  # run BUILD MODEL PROMPT
    local folder=$dir/$2
    [ -d "$folder/model" ] && folder=$folder/model
    env ${AB_MAX_LENGTH:+OLIVE_BENCH_MAX_LENGTH=$AB_MAX_LENGTH} OLIVE_BENCH_PROMPT=$3 OLIVE_BENCH_MODEL=$folder \
        "$ab/$1/bench" --bench --warm-up-time 1 --measurement-time 3 \
        --noplot graph/ 2>&1 | python3 -c 'import re, sys
text = sys.stdin.read()
m = re.search(r"thrpt:\s+\[\s*[\d.]+\s+\S+\s+([\d.]+)\s+(\S+)", text)
if not m:
    sys.exit("no throughput in the bench output:\n" + text[-2000:])
scale = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6}[m.group(2)]
print(f"{float(m.group(1)) * scale:.0f}")'
}
summary=""
for p in $prompts; do
    for m in $models; do
        declare -A sums=()
        for _ in $(seq "$rounds"); do
            line="$m prompt $p:"
            for b in "${builds[@]}"; do
                t=$(run "$b" "$m" "$p")
                line+=" $b $t"
                sums[$b]=$((${sums[$b]:-0} + t))
            done
            echo "$line tok/s"
        done
        first=${builds[0]}
        for b in "${builds[@]:1}"; do
            summary+="$m prompt $p: $b / $first $(python3 -c "print(f'{${sums[$b]} / ${sums[$first]}:.3f}')")"$'\n'
        done
        unset sums
    done
done
printf '%s' "$summary"
