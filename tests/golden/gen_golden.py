"""Reference logits from PyTorch/transformers for the Rust forward (crates/nn/tests/golden.rs).

Writes tests/golden/out/<case>/:
  model/                  the Hugging Face folder the Rust side loads
  reference.safetensors   input_ids I64 [n], prefill_logits F32 [n, vocab],
                          decode_logits F32 [5, vocab] (logits after feeding greedy_tokens[i]),
                          greedy_tokens I64 [5] (greedy_tokens[0] = argmax of the last prefill row)
  tokenization.json       (smollm2 only) a mixed text and transformers' token ids for it
  stamp                   hash of what made the case; a case whose stamp matches is not rebuilt

Cases: smollm2 (the default model: transformers reads the GGUF itself, our converter writes model/),
phi3_short / phi3_longrope (tiny random Phi-3 with LongRoPE: short factors, then a prompt that crosses the
original context during decoding), qwen2 (q/k/v bias), mistral (sliding window shorter than the prompt);
train_<arch>: LoRA gradients and optimizer steps from transformers + peft (train_reference.py).

Usage: python tests/golden/gen_golden.py   (needs OLIVE_HOST and OLIVE_DEFAULT_GGUF; `make golden` sets them)
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from gptq_reference import write_gptq_case

import train_reference

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DECODE_STEPS = 5
SEED = 1234
MIXED_TEXT = (
    "Travel tip: visit Chiang Mai in November! "
    "เชียงใหม่สวยมากในฤดูหนาว "
    "def fare(km: float) -> float:\n    return 2.5 * km  # THB\n"
    "✈️🌏😀 costs 1,234.56 USD\t\tdone."
)


def stamp_of(*parts: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(transformers.__version__.encode())
    h.update(torch.__version__.encode())
    for p in parts:
        h.update(p.encode())
    return h.hexdigest()


@torch.no_grad()
def reference(model, input_ids: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([input_ids], dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    prefill = out.logits[0].float()
    past = out.past_key_values
    tokens, decode = [], []
    next_token = int(prefill[-1].argmax())
    for _ in range(DECODE_STEPS):
        tokens.append(next_token)
        out = model(input_ids=torch.tensor([[next_token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        decode.append(logits)
        next_token = int(logits.argmax())
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.int64),
        "prefill_logits": prefill.contiguous(),
        "decode_logits": torch.stack(decode).contiguous(),
        "greedy_tokens": torch.tensor(tokens, dtype=torch.int64),
    }


def write_case(name: str, stamp: str, build) -> None:
    """Builds one case into a temp folder and renames it into place."""
    dest = OUT / name
    if (dest / "stamp").is_file() and (dest / "stamp").read_text() == stamp:
        print(f"[golden] {name}: up to date")
        return
    tmp = OUT / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / "stamp").write_text(stamp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"[golden] {name}: written")


def smollm2_case() -> None:
    olive_host = os.environ["OLIVE_HOST"]
    gguf = Path(os.environ["OLIVE_DEFAULT_GGUF"])
    stamp = stamp_of(str(gguf), str(gguf.stat().st_size))

    def build(tmp: Path) -> None:
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        prompt = "<|im_start|>user\nWhat is the best thing to see in Chicago?<|im_end|>\n<|im_start|>assistant\n"
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        save_file(reference(model, ids), tmp / "reference.safetensors")
        mixed = tok(MIXED_TEXT, add_special_tokens=False)["input_ids"]
        (tmp / "tokenization.json").write_text(json.dumps({"text": MIXED_TEXT, "ids": mixed}, ensure_ascii=False))

    write_case("smollm2", stamp, build)
    # model/ is our converter's output, rebuilt on every run so that it always reflects the current code.
    model_dir = OUT / "smollm2" / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    subprocess.run(
        [olive_host, "convert", "--model_name_or_path", str(gguf), "--output_path", str(model_dir)], check=True
    )


def tiny_case(name: str, config, prompt_len: int) -> None:
    def build(tmp: Path) -> None:
        torch.manual_seed(SEED)
        # A wide init (0.02 leaves attention almost uniform) so that rope and masking errors show in the logits.
        config.initializer_range = 0.15
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        # Random init leaves norms at 1 and biases at 0: perturb them so the test sees their use.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.add_(0.1 * torch.randn_like(p))
                elif pname.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
        model.save_pretrained(tmp / "model", safe_serialization=True)
        gen = torch.Generator().manual_seed(SEED + prompt_len)
        ids = torch.randint(3, config.vocab_size, (prompt_len,), generator=gen).tolist()
        save_file(reference(model, ids), tmp / "reference.safetensors")

    write_case(name, stamp_of(name, config.to_json_string(), str(prompt_len)), build)


def phi3_config(original_ctx: int):
    head_dim = 16
    return transformers.Phi3Config(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4 * original_ctx,
        original_max_position_embeddings=original_ctx,
        rope_theta=10000.0,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.05 * i for i in range(head_dim // 2)],
            "long_factor": [1.5 + 0.4 * i for i in range(head_dim // 2)],
        },
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    smollm2_case()
    write_gptq_case(OUT)  # crates/quant/tests/golden_gptq.rs
    tiny_case("phi3_short", phi3_config(64), prompt_len=9)
    # Prompt within the original context; decoding crosses it, switching to the long factors.
    tiny_case("phi3_longrope", phi3_config(32), prompt_len=30)
    tiny_case(
        "qwen2",
        transformers.Qwen2Config(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
        prompt_len=11,
    )
    tiny_case(
        "mistral",
        transformers.MistralConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            sliding_window=16,
            tie_word_embeddings=False,
        ),
        prompt_len=20,
    )
    # LoRA training references (train_<arch> cases): see train_reference.py.
    train_reference.main(write_case, stamp_of)
    return 0


if __name__ == "__main__":
    sys.exit(main())
