#!/usr/bin/env bash
# The main job on the bundled default model, as far as the lab of ../shared/LAB.md has landed: convert the
# default model's GGUF to a Hugging Face folder and answer a travel question with it on CPU; then auto-opt it
# to an ONNX model for onnxruntime-genai (Olive's layout) and answer the same question through ONNX Runtime.
# quantize and finetune join when they land.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=/dev/null
source target/olive-env.sh

model=models/smollm2
onnx=models/smollm2-onnx-ao
prompt=$'<|im_start|>user\nWhat is the best thing to see in Chicago?<|im_end|>\n<|im_start|>assistant\n'

"$OLIVE_HOST" convert --model_name_or_path "$OLIVE_DEFAULT_GGUF" --output_path "$model" --overwrite --log_level 1
"$OLIVE_HOST" generate --model_name_or_path "$model" --max_length 200 --log_level 1 --prompt "$prompt"

"$OLIVE_HOST" auto-opt --model_name_or_path "$model" --device cpu --provider CPUExecutionProvider \
    --use_ort_genai --output_path "$onnx" --overwrite --log_level 1
"$OLIVE_HOST" generate --model_name_or_path "$onnx/model" --max_length 200 --log_level 1 --prompt "$prompt"
