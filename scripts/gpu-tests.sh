#!/usr/bin/env bash
# Builds the GPU test binary (and the GPU bench, once it exists) here, where there is Rust but no GPU, and
# copies them into .gpu/ (git-ignored), to be carried to a GPU machine and run there:
#   .gpu/gpu-tests --test-threads=1 [filter]      .gpu/gpu-bench (when built)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cargo test --release -p olive-kernels --test gpu --no-run --message-format=json-render-diagnostics >"$log"; then
    echo "the GPU test binary did not build (the errors are above)" >&2
    exit 1
fi
built=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])' "$log")
cp "$built" .gpu/gpu-tests && strip --strip-debug .gpu/gpu-tests
if cargo metadata --no-deps --format-version 1 | grep -q '"name":"gpu-bench"'; then
    cargo build --release -p olive-kernels --bin gpu-bench
    cp target/release/gpu-bench .gpu/gpu-bench && strip --strip-debug .gpu/gpu-bench
fi
ls -la .gpu
