#!/usr/bin/env bash
# Builds, here (Rust, no GPU), what benches/gpu/decode_ab.sh runs on a GPU machine: the gpu_decode bench of git
# revision BASE (.gpu-ab/base/bench, built in a temporary worktree into target/ab-base/) and of the work tree
# (.gpu-ab/new/bench), olive-host with the RTN plugin beside it (to quantize the random models there), and the work
# tree's kernel and transformer GPU tests (.gpu-ab/tests/gpu-tests, nn-gpu-tests: parity in the same call). Then
# carry .gpu-ab (git-ignored) to the GPU machine and run `bash benches/gpu/decode_ab.sh` there. Each NAME=REVISION
# after BASE adds that revision's bench as .gpu-ab/NAME/bench (AB_BUILDS="base new NAME" takes it in turn).
#   scripts/gpu-decode-ab.sh BASE [NAME=REVISION ...]   e.g. scripts/gpu-decode-ab.sh main f1=my-branch
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
base=${1:?usage: scripts/gpu-decode-ab.sh BASE_REVISION [NAME=REVISION ...]}
shift
revision() {
    git rev-parse --verify --quiet "$1^{commit}" || { echo "gpu-decode-ab.sh: $1 is not a revision here" >&2; exit 1; }
}
rev=$(revision "$base")
variants=()
for spec in "$@"; do
    name=${spec%%=*}
    [[ $spec == *=* && $name =~ ^[A-Za-z0-9_-]+$ && $name != base && $name != new && $name != tests ]] || {
        echo "gpu-decode-ab.sh: $spec: expected NAME=REVISION, NAME of letters, digits, - or _ (not base/new/tests)" >&2
        exit 1
    }
    variants+=("$name $(revision "${spec#*=}")")
done
out=$root/.gpu-ab
rm -rf "$out.tmp"
mkdir -p "$out.tmp/new"
# The gpu_decode bench executable of the crate tree at $1 built in target dir $2 (cargo's own report of what it
# built). Each tree has its own target dir: cargo's freshness check goes by file times, so a dir shared between
# trees can hand one tree's build to the other.
bench_of() {
    (cd "$1" && CARGO_TARGET_DIR=$2 cargo bench -p olive-nn --bench gpu_decode --no-run \
        --message-format=json-render-diagnostics) | python3 "$root/scripts/cargo-executable.py" gpu_decode
}
tree=$(mktemp -d)
trap 'rm -rf "$tree"; git worktree prune' EXIT
# Revision $2's bench into $out.tmp/$1/bench, built in its own worktree and target dir.
bench_at() {
    git worktree add --detach --quiet "$tree/$1" "$2"
    mkdir -p "$out.tmp/$1"
    cp "$(bench_of "$tree/$1" "$root/target/ab-$1")" "$out.tmp/$1/bench"
    git worktree remove --force "$tree/$1"
}
bench_at base "$rev"
for v in "${variants[@]}"; do
    read -r name vrev <<<"$v"
    bench_at "$name" "$vrev"
done
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
strip --strip-all "$out.tmp"/*/bench "$out.tmp/olive-host" "$out.tmp/libolive_quant_rtn.so" "$out.tmp"/tests/*
rm -rf "$out"
mv "$out.tmp" "$out"
{
    echo "base $rev, new: the work tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + changes'))"
    for v in "${variants[@]}"; do echo "$v"; done
} >"$out/BUILDS"
du -sh "$out"
