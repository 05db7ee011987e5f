#!/usr/bin/env bash
# Issue 5's peers quantizing one local Hugging Face folder on this CPU-only machine, 4 bits, asymmetric, group G:
# wall time and peak RSS (/usr/bin/time %M, the largest process) of each, then the perplexity of each output over
# data/eval.txt (benches/ppl_hf.py: the windows of tests/python/ppl.py; quantized folders dequantized by numpy).
#   olive-cli-rtn / olive-cli-gptq  `olive quantize` with Olive's own flags (olive-ai 0.13.0): outcome only
#   olive-rtn / olive-gptq          Olive's Rtn / Gptq passes through `olive run --config` (the CLI neither sets the
#                                   group size nor hands --data_* to Gptq); Gptq calibrates on data/calibration.txt
#                                   (HuggingfaceContainer text rows, JOIN into windows of 512, at most 128)
#   gptqmodel-gptq / -awq / -rtn    GPTQModel (benches/peer_gptqmodel.py), same calibration windows
#   autoawq                         AutoAWQ 0.2.9 (benches/peer_autoawq.py), installed without dependencies into
#                                   $AUTOAWQ_TARGET (see that file), calibration.txt's paragraphs
# Usage (after scripts/install.sh bench):
#   source target/olive-env.sh; benches/peer_quantize.sh models/smollm2 64 /tmp/peers [peer ...]
# Outputs stay in the output folder (<peer>/ and <peer>.log); a summary table ends the run.
set -euo pipefail
model=$(realpath "$1") group=${2:-128} out=$(realpath -m "${3:-peers-out}")
shift $(($# < 3 ? $# : 3))
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(olive-cli-rtn olive-cli-gptq olive-rtn olive-gptq gptqmodel-gptq gptqmodel-awq)
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${OLIVE_BENCH_VENV:?run scripts/install.sh bench (OLIVE_BENCH_VENV unset)}/bin
py=$OLIVE_TEST_VENV/bin/python
calib=$root/data/calibration.txt
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OLIVE_DISABLE_TELEMETRY=1
mkdir -p "$out"

# Runs "$@" in a fresh working directory (Olive writes .olive-cache there) under /usr/bin/time; the log ends with
# "<peer> <wall> s <rss> KB" or the failure.
timed() {
    local peer=$1
    shift
    rm -rf "${out:?}/$peer" "$out/$peer.run"
    mkdir -p "$out/$peer.run"
    # Olive exits 0 after "No output model produced": success needs the quantized folder too.
    if (cd "$out/$peer.run" && /usr/bin/time -f "$peer %e s %M KB" "$@") >"$out/$peer.log" 2>&1 &&
        { [ -f "$out/$peer/config.json" ] || [ -f "$out/$peer/model/config.json" ]; }; then
        tail -n 1 "$out/$peer.log"
    else
        local why
        why=$(grep -E '^[A-Za-z.]*(Error|Exception)' "$out/$peer.log" | tail -n 1 || true)
        echo "$peer FAILED: ${why:-$(tail -n 1 "$out/$peer.log")}"
    fi
    rm -rf "$out/$peer.run"
}

# An `olive run` config for pass $1 (Rtn | Gptq) at group $group into $2.
olive_config() {
    "$bench/python" - "$1" "$2" "$model" "$group" "$calib" <<'PY'
import json, sys
pass_type, output, model, group, calib = sys.argv[1:]
config = {
    "input_model": {"type": "HfModel", "model_path": model, "load_kwargs": {"attn_implementation": "eager"}},
    "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
    "data_configs": [{"name": "calib", "type": "HuggingfaceContainer",
                      "load_dataset_config": {"data_name": "text", "data_files": [calib], "split": "train"},
                      "pre_process_data_config": {"text_cols": "text", "max_seq_len": 512, "max_samples": 128}}],
    "passes": {"q": {"type": pass_type, "bits": 4, "group_size": int(group), "sym": False,
                     **({"data_config": "calib"} if pass_type == "Gptq" else {})}},
    "host": "local_system", "target": "local_system", "no_artifacts": True, "output_dir": output,
    "log_severity_level": 1,
}
print(json.dumps(config, indent=1))
PY
}

for peer in "${peers[@]}"; do
    case $peer in
    olive-cli-rtn)
        timed "$peer" "$bench/olive" quantize --model_name_or_path "$model" --algorithm rtn --precision int4 \
            --output_path "$out/$peer" --log_level 1 ;;
    olive-cli-gptq)
        timed "$peer" "$bench/olive" quantize --model_name_or_path "$model" --algorithm gptq --precision int4 \
            --data_name text --data_files "$calib" --text_field text --max_seq_len 512 --max_samples 128 \
            --output_path "$out/$peer" --log_level 1 ;;
    olive-rtn | olive-gptq)
        pass_type=$([ "$peer" = olive-rtn ] && echo Rtn || echo Gptq)
        olive_config "$pass_type" "$out/$peer" >"$out/$peer.json"
        timed "$peer" "$bench/olive" run --config "$out/$peer.json" ;;
    autoawq)
        timed "$peer" env PYTHONPATH="${AUTOAWQ_TARGET:?pip install --no-deps --target DIR autoawq==0.2.9 zstandard}" \
            "$bench/python" "$root/benches/peer_autoawq.py" "$model" "$out/$peer" --group_size "$group" ;;
    gptqmodel-*)
        timed "$peer" "$bench/python" "$root/benches/peer_gptqmodel.py" "${peer#gptqmodel-}" "$model" \
            "$out/$peer" --group_size "$group" ;;
    *) echo "unknown peer $peer" >&2; exit 2 ;;
    esac
done

echo "== perplexity over data/eval.txt (benches/ppl_hf.py)"
echo "fp32 $("$py" "$root/benches/ppl_hf.py" "$model" 2>/dev/null)"
for peer in "${peers[@]}"; do
    folder=$out/$peer
    [ -f "$folder/model/config.json" ] && folder=$folder/model  # olive run writes <output_dir>/model
    if [ -f "$folder/config.json" ]; then
        echo "$peer $("$py" "$root/benches/ppl_hf.py" "$folder" 2>"$out/$peer.ppl.log" || tail -n 1 "$out/$peer.ppl.log")"
    fi
done
