#!/usr/bin/env bash
# Builds the GPU test binaries (kernels, and the transformer of crates/nn) and the GPU bench here, where there is
# Rust but no GPU, and copies them into .gpu/ (git-ignored), to be carried to a GPU machine and run there:
#   .gpu/gpu-tests --test-threads=1 [filter]    .gpu/nn-gpu-tests --test-threads=1    .gpu/gpu-bench
#   .gpu/quant-gpu-tests --test-threads=1    .gpu/nn-gpu-train-tests --test-threads=1    .gpu/gpu-calibration-bench
#   python3 tests/gpu/check_gpu_paths.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer --out "$OUT"
#   python3 tests/gpu/check_gpu_finetune.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer --out "$OUT"
#   python3 tests/gpu/check_multi_gpu.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer --out "$OUT"
#   python3 benches/gpu/dp_scaling.py --olive_host .gpu/olive-host --tokenizer .gpu/tokenizer
# (the host binary with the LoRA, AWQ and GPTQ plugins beside it, and the default model's tokenizer files, for the
# end-to-end checks; the other plugins are left out, and symbols stripped, to stay under the device tool's 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu
mkdir -p .gpu
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# package, test target, name under .gpu/
for spec in "olive-kernels gpu gpu-tests" "olive-nn gpu nn-gpu-tests" "olive-nn gpu_train nn-gpu-train-tests" "olive-quant gpu quant-gpu-tests"; do
    read -r package target name <<<"$spec"
    if ! cargo test --release -p "$package" --test "$target" --no-run --message-format=json-render-diagnostics >"$log"; then
        echo "the GPU tests of $package did not build (the errors are above)" >&2
        exit 1
    fi
    built=$(python3 scripts/cargo-executable.py "$target" <"$log")
    cp "$built" ".gpu/$name" && strip --strip-all ".gpu/$name"
done
if cargo metadata --no-deps --format-version 1 | grep -q '"name":"gpu-bench"'; then
    cargo build --release -p olive-kernels --bin gpu-bench
    cp target/release/gpu-bench .gpu/gpu-bench && strip --strip-all .gpu/gpu-bench
fi
bench=$(cargo bench -p olive-quant --bench gpu_calibration --no-run --message-format=json-render-diagnostics |
    python3 scripts/cargo-executable.py gpu_calibration)
cp "$bench" .gpu/gpu-calibration-bench && strip --strip-all .gpu/gpu-calibration-bench
cargo build --release -p olive-host -p olive-lora -p olive-quant-awq -p olive-quant-gptq
cp target/release/olive-host .gpu/olive-host && strip --strip-all .gpu/olive-host
bash scripts/write-plugin-manifests.sh >/dev/null
for plugin in olive_lora olive_quant_awq olive_quant_gptq; do
    cp "target/release/lib$plugin.so" .gpu/ && strip --strip-all ".gpu/lib$plugin.so"
    cp "target/release/$plugin.olive-plugin.json" .gpu/
done
# The default model's tokenizer: from the lab's converted folder, else converted here from the set-up's GGUF.
default_model=models/smollm2
if [ ! -f "$default_model/tokenizer.json" ]; then
    [ -n "${OLIVE_DEFAULT_GGUF:-}" ] || { echo "models/smollm2 is missing and OLIVE_DEFAULT_GGUF is unset: run the set-up and source target/olive-env.sh" >&2; exit 1; }
    default_model=$(mktemp -d)
    trap 'rm -f "$log"; rm -rf "$default_model"' EXIT
    target/release/olive-host convert --model_name_or_path "$OLIVE_DEFAULT_GGUF" --output_path "$default_model" \
        --overwrite --log_level 3 >/dev/null
fi
mkdir -p .gpu/tokenizer
cp "$default_model"/tokenizer.json "$default_model"/tokenizer_config.json "$default_model"/special_tokens_map.json .gpu/tokenizer/
ls -la .gpu
# The device tool's 64 MiB counts the working tree (tracked and untracked, not ignored, files) with what is carried.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
size=$(($(du -sb .gpu | cut -f1) + tree))
if [ "$size" -gt $((64 << 20)) ]; then
    echo "warning: .gpu with the working tree holds $((size >> 20)) MiB, over the device tool's 64 MiB carry:" \
        "carry part of it (e.g. without gpu-calibration-bench)" >&2
fi
