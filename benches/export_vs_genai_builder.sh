#!/usr/bin/env bash
# Export wall time and peak RSS: `olive-host auto-opt` vs onnxruntime-genai's own model builder
# (python -m onnxruntime_genai.models.builder, which needs the `onnx_ir` package in the venv), alternating,
# N rounds each, on one Hugging Face folder and precision. Usage (after `make test` set-up):
#   source target/olive-env.sh; benches/export_vs_genai_builder.sh models/smollm2 fp32 3
set -euo pipefail
model=$1 precision=${2:-fp32} rounds=${3:-3}
py=$OLIVE_TEST_VENV/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for _ in $(seq "$rounds"); do
    rm -rf "$work/ours" "$work/genai" "$work/cache"
    /usr/bin/time -f "olive-host %e s %M KB" "$OLIVE_HOST" auto-opt -m "$model" -o "$work/ours" \
        --precision "$precision" >/dev/null 2>"$work/t1"
    tail -n 1 "$work/t1"
    /usr/bin/time -f "genai-builder %e s %M KB" "$py" -m onnxruntime_genai.models.builder -i "$model" \
        -o "$work/genai" -p "$precision" -e cpu -c "$work/cache" >/dev/null 2>"$work/t2"
    tail -n 1 "$work/t2"
done | tee "$work/log"
"$py" - "$work/log" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
wall = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in ("olive-host", "genai-builder")}
rss = {k: max(int(r[3]) for r in rows if r[0] == k) for k in ("olive-host", "genai-builder")}
print(f"median wall: olive-host {wall['olive-host']:.2f} s, genai builder {wall['genai-builder']:.2f} s, "
      f"{wall['genai-builder'] / wall['olive-host']:.1f}x faster; peak RSS {rss['olive-host'] / 1024:.0f} MiB vs "
      f"{rss['genai-builder'] / 1024:.0f} MiB ({rss['olive-host'] / rss['genai-builder']:.2f}x)")
PY
