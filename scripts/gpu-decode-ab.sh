#!/usr/bin/env bash
# Builds, here (Rust, no GPU), what benches/gpu/decode_ab.sh runs on a GPU machine: the gpu_decode bench of git
# revision BASE (.gpu-ab/base/bench, built in a temporary worktree into target/ab-base/) and of the work tree
# (.gpu-ab/new/bench), olive-host with the RTN plugin beside it (to quantize the random models there), and the work
# tree's kernel and transformer GPU tests (.gpu-ab/tests/gpu-tests, nn-gpu-tests: parity in the same call). Then
# carry .gpu-ab (git-ignored) to the GPU machine and run `bash benches/gpu/decode_ab.sh` there.
#   scripts/gpu-decode-ab.sh BASE      e.g. scripts/gpu-decode-ab.sh main
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
base=${1:?usage: scripts/gpu-decode-ab.sh BASE_REVISION}
rev=$(git rev-parse --verify "$base^{commit}") || { echo "gpu-decode-ab.sh: $base is not a revision here" >&2; exit 1; }
out=$root/.gpu-ab
rm -rf "$out.tmp"
mkdir -p "$out.tmp/base" "$out.tmp/new"
# The gpu_decode bench executable of the crate tree at $1 built in target dir $2 (cargo's own report of what it
# built). Each tree has its own target dir: cargo's freshness check goes by file times, so a dir shared between
# trees can hand one tree's build to the other.
bench_of() {
    (cd "$1" && CARGO_TARGET_DIR=$2 cargo bench -p olive-nn --bench gpu_decode --no-run \
        --message-format=json-render-diagnostics) | python3 "$root/scripts/cargo-executable.py" gpu_decode
}
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" 2>/dev/null || true; rm -rf "$tree"' EXIT
git worktree add --detach --quiet "$tree" "$rev"
cp "$(bench_of "$tree" "$root/target/ab-base")" "$out.tmp/base/bench"
cp "$(bench_of "$root" "$root/target")" "$out.tmp/new/bench"
mkdir -p "$out.tmp/tests"
for spec in "olive-kernels gpu-tests" "olive-nn nn-gpu-tests"; do
    read -r package name <<<"$spec"
    cargo test --release -p "$package" --test gpu --no-run --message-format=json-render-diagnostics |
        python3 scripts/cargo-executable.py gpu | xargs -I{} cp {} "$out.tmp/tests/$name"
done
cargo build --release -p olive-host -p olive-quant-rtn
bash scripts/write-plugin-manifests.sh >/dev/null
cp target/release/olive-host target/release/libolive_quant_rtn.so target/release/olive_quant_rtn.olive-plugin.json \
    "$out.tmp/"
strip --strip-all "$out.tmp/base/bench" "$out.tmp/new/bench" "$out.tmp/olive-host" "$out.tmp/libolive_quant_rtn.so" \
    "$out.tmp"/tests/*
rm -rf "$out"
mv "$out.tmp" "$out"
echo "base $rev, new: the work tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + changes'))" \
    >"$out/BUILDS"
du -sh "$out"
