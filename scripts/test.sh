#!/usr/bin/env bash
# Runs every test: golden references from PyTorch, the Rust workspace tests, then the end-to-end tests
# against the real consumers. Expects scripts/install.sh test to have run (make test does both).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=/dev/null
source target/olive-env.sh
py=$OLIVE_TEST_VENV/bin/python

echo "== golden references (tests/golden/gen_golden.py)"
"$py" tests/golden/gen_golden.py

echo "== cargo test"
cargo test --release --workspace

echo "== end-to-end tests (pytest)"
scripts/write-plugin-manifests.sh
"$py" -m pytest -q tests/python
