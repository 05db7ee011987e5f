"""Random bf16 Llama models of SmolLM2-135M's, TinyLlama-1.1B's, (8 layers of) Phi-3.5-mini's and (4 layers of)
Llama-3-8B's shapes, and a Mistral model of TinyLlama's shapes with a 2048-key sliding window (tinyw), for the GPU
decode bench (benches/gpu/decode_ab.sh): python random_llama.py OUT_DIR [smol|tiny|phi8|llama4|tinyw ...] writes
OUT_DIR/<name>/ (config.json + safetensors, on the GPU when there is one)."""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

SHAPES = {
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "tiny": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0),
    "phi8": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=8, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False, rope_theta=10000.0),
    "llama4": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
# Mistral models: a shape above and the sliding window.
WINDOWED = {"tinyw": ("tiny", 2048)}
KNOWN = list(SHAPES) + list(WINDOWED)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: random_llama.py OUT_DIR [{'|'.join(KNOWN)} ...]")
    root, names = sys.argv[1], sys.argv[2:] or KNOWN
    for name in names:
        if name not in KNOWN:
            sys.exit(f"random_llama.py: unknown shape {name!r}, expected one of {', '.join(KNOWN)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        torch.manual_seed(0)
        common = dict(max_position_embeddings=8192, rms_norm_eps=1e-5, torch_dtype="bfloat16")
        if name in WINDOWED:
            shape, window = WINDOWED[name]
            config, cls = MistralConfig(sliding_window=window, **common, **SHAPES[shape]), MistralForCausalLM
        else:
            config, cls = LlamaConfig(**common, **SHAPES[name]), LlamaForCausalLM
        with torch.device(device):
            model = cls(config).to(torch.bfloat16)
        model.save_pretrained(f"{root}/{name}", safe_serialization=True)
        print(f"made {root}/{name}", flush=True)


if __name__ == "__main__":
    main()
