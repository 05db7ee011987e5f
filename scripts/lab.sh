#!/usr/bin/env bash
# The main job on the bundled default model. Until quantize/finetune/auto-opt land, the lab is: convert the
# default model's GGUF to a Hugging Face folder, then answer a travel question with it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=/dev/null
source target/olive-env.sh

model=models/smollm2
"$OLIVE_HOST" convert --model_name_or_path "$OLIVE_DEFAULT_GGUF" --output_path "$model" --overwrite --log_level 1
"$OLIVE_HOST" generate --model_name_or_path "$model" --max_length 200 --log_level 1 \
    --prompt $'<|im_start|>user\nWhat is the best thing to see in Chicago?<|im_end|>\n<|im_start|>assistant\n'
