#!/usr/bin/env bash
# Export of one Hugging Face folder at one precision to an onnxruntime-genai folder, three ways, alternating,
# N rounds each, wall time and peak RSS (/usr/bin/time %M: the largest process):
#   ours     olive-host auto-opt
#   builder  onnxruntime-genai 0.18's own model builder (python -m onnxruntime_genai.models.builder, test venv)
#   olive    Microsoft Olive's `olive auto-opt ... --use_ort_genai --use_model_builder` (olive-ai 0.13.0, bench venv;
#            its ModelBuilder pass runs onnxruntime-genai 0.14.1's builder). The lab's flags alone (no
#            --use_model_builder) go through Olive's TorchScript OnnxConversion: tried once first, outcome printed.
# then decode tokens/s of the three exports under onnxruntime-genai 0.18 (benches/decode_genai.py: same prompt,
# greedy, 128 new tokens, N rounds alternating, median). int4 = block 32 for all three (every tool's default).
# Usage (after scripts/install.sh bench):
#   source target/olive-env.sh; benches/export_vs_genai_builder.sh models/smollm2 int4 3
set -euo pipefail
model=$(realpath "$1") precision=${2:-fp32} rounds=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
py=$OLIVE_TEST_VENV/bin/python
olive=${OLIVE_BENCH_VENV:?run scripts/install.sh bench (OLIVE_BENCH_VENV unset)}/bin/olive
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OLIVE_DISABLE_TELEMETRY=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
builder_extra=()
[ "$precision" = int4 ] && builder_extra=(--extra_options block_size=32)
olive_flags=(--model_name_or_path "$model" --device cpu --provider CPUExecutionProvider --use_ort_genai
    --precision "$precision" --log_level 3)

# The lab's `olive auto-opt` flags as they are (Olive writes .olive-cache into its working directory).
mkdir -p "$work/olive-run"
if (cd "$work/olive-run" && "$olive" auto-opt "${olive_flags[@]}" --output_path "$work/olive-lab") \
    >"$work/olive-lab.log" 2>&1 && [ -f "$work/olive-lab/model.onnx" ]; then
    echo "olive auto-opt with the lab's flags: exported"
else
    echo "olive auto-opt with the lab's flags: FAILED: $(grep -E '^[A-Za-z]*(Error|Exception)' "$work/olive-lab.log" | tail -n 1)"
fi

for _ in $(seq "$rounds"); do
    rm -rf "$work/ours" "$work/genai" "$work/cache" "$work/olive" "$work/olive-run"
    /usr/bin/time -f "ours %e s %M KB" "$OLIVE_HOST" auto-opt -m "$model" -o "$work/ours" \
        --precision "$precision" >/dev/null 2>"$work/t1"
    tail -n 1 "$work/t1"
    /usr/bin/time -f "builder %e s %M KB" "$py" -m onnxruntime_genai.models.builder -i "$model" \
        -o "$work/genai" -p "$precision" -e cpu -c "$work/cache" "${builder_extra[@]}" >/dev/null 2>"$work/t2"
    tail -n 1 "$work/t2"
    mkdir -p "$work/olive-run"
    (cd "$work/olive-run" && /usr/bin/time -f "olive %e s %M KB" "$olive" auto-opt "${olive_flags[@]}" \
        --use_model_builder --output_path "$work/olive") >/dev/null 2>"$work/t3"
    tail -n 1 "$work/t3"
done | tee "$work/log"
"$py" - "$work/log" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
tools = ("ours", "builder", "olive")
wall = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in tools}
rss = {k: max(int(r[3]) for r in rows if r[0] == k) / 1024 for k in tools}
for k in tools:
    print(f"{k:8s} median wall {wall[k]:6.2f} s   peak RSS {rss[k]:6.0f} MiB")
for k in tools[1:]:
    print(f"ours vs {k}: {wall[k] / wall['ours']:.1f}x faster, {rss['ours'] / rss[k]:.2f}x the memory")
PY
"$py" "$root/benches/decode_genai.py" --tokens 128 --rounds "$rounds" \
    ours="$work/ours/model" builder="$work/genai" olive="$work/olive"
