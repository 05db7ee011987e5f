#!/usr/bin/env bash
# The main job: the lab of ../shared/LAB.md on the bundled default model, with olive-host in place of olive and
# the lab's own flags. Convert the default model's GGUF to a Hugging Face folder and answer a travel question with
# it on CPU; quantize it with AWQ; fine-tune LoRA adapters over the quantized model on the project's travel Q&A
# (data/data_sample_travel.jsonl, the lab's template); auto-opt the result with its adapter into an ONNX model for
# onnxruntime-genai in Olive's layout; answer through ONNX Runtime; and run the lab's client app.py unchanged
# (onnxruntime-genai 0.5.2) from a folder laid out as the lab's models/phi/onnx-ao/model.
# The fine-tuning runs the lab's 100 steps with one 512-token row per step (Olive's batch of 8 rows of 1024 tokens
# is ~16x the work: hours on a 2-core CPU); LAB_MAX_STEPS overrides the step count.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=/dev/null
source target/olive-env.sh

model=models/smollm2
awq=models/smollm2-awq
ft=models/smollm2-ft
onnx=models/smollm2-onnx-ao
template='<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>'
prompt=$'<|user|>\nwhat is the best thing to see in chicago<|end|>\n<|assistant|>\n'

echo "== 0. the default model as a Hugging Face folder, answering on CPU"
"$OLIVE_HOST" convert --model_name_or_path "$OLIVE_DEFAULT_GGUF" --output_path "$model" --overwrite --log_level 1
"$OLIVE_HOST" generate --model_name_or_path "$model" --max_new_tokens 64 --log_level 1 --prompt "$prompt"

echo "== 1. quantize (AWQ)"
"$OLIVE_HOST" quantize --model_name_or_path "$model" --trust_remote_code --algorithm awq --output_path "$awq" \
    --overwrite --log_level 1

echo "== 2. finetune (LoRA over the quantized model)"
"$OLIVE_HOST" finetune --method lora --model_name_or_path "$awq" --data_files data/data_sample_travel.jsonl \
    --data_name json --text_template "$template" --max_steps "${LAB_MAX_STEPS:-100}" \
    --per_device_train_batch_size 1 --max_seq_len 512 --output_path "$ft" --overwrite --log_level 1

echo "== 3. auto-opt (ONNX for onnxruntime-genai, with the adapter)"
"$OLIVE_HOST" auto-opt --model_name_or_path "$ft/model" --adapter_path "$ft/adapter" --device cpu \
    --provider CPUExecutionProvider --use_ort_genai --output_path "$onnx" --overwrite --log_level 1
"$OLIVE_HOST" generate --model_name_or_path "$onnx/model" --adapter "$onnx/model/adapter_weights.onnx_adapter" \
    --adapter_name travel --max_new_tokens 64 --log_level 1 --prompt "$prompt"

echo "== 4. inference: the lab's app.py (onnxruntime-genai 0.5.2)"
lab=models/lab
rm -rf "$lab"
mkdir -p "$lab/models/phi/onnx-ao"
# hard links, not symlinks: ONNX Runtime refuses external data whose resolved path leaves the model folder
cp -al "$onnx/model" "$lab/models/phi/onnx-ao/model"
(cd "$lab" && "$OLIVE_GENAI05_VENV/bin/python" "$root/../shared/lab/app.py")
