"""Reference LoRA training from PyTorch (transformers + peft) for the Rust trainer (crates/nn/tests/train_golden.rs).

Called by gen_golden.py. Writes tests/golden/out/train_<arch>/:
  model/                  tiny random Hugging Face model (fp32)
  adapter/                PEFT adapter (r=4, alpha=8, every projection, dropout 0) with random A and B
                          (init_lora_weights=False, so the gradients of A are not zero)
  reference.safetensors   ids, mask, labels I64 [4, 2, 16]: four micro-batches of 2 rows x 16 tokens (row 1
                          right-padded: attention_mask 0, labels -100; row 0 has its first labels -100);
                          loss F32 [1] and grad.<module>.lora_A / grad.<module>.lora_B F32 (PEFT layouts) for
                          micro-batch 0 alone (mean CE over its label tokens, as transformers' ForCausalLMLoss);
                          step_loss, step_lr, step_grad_norm F32 [10]: ten optimizer steps as transformers' Trainer
                          runs them (micro-batches 2k, 2k+1 mod 4 per step, gradient accumulation 2 with
                          num_items_in_batch = label tokens of both, clip 1.0, torch.optim.AdamW lr 1e-3
                          weight decay 0.01, linear schedule with 2 warm-up steps over 10)
Cases: llama (GQA, untied head), qwen2 (q/k/v bias, tied embeddings), mistral (sliding window 6 < 16 tokens),
phi3 (fused qkv_proj / gate_up_proj, partial rotary 0.5, LongRoPE long factors: 16 tokens > original context 8),
smollm2 (the default model: gen_golden.py's out/smollm2/model, which must exist first; no model/ copy is written).
"""

from pathlib import Path

import peft
import torch
import transformers
from safetensors.torch import save_file

SEED = 4321
ROWS, SEQ, MICRO = 2, 16, 4
STEPS, ACCUM, WARMUP = 10, 2, 2
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.01, 1.0
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def configs():
    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        pad_token_id=0,
    )
    return {
        "llama": (transformers.LlamaConfig(**common, tie_word_embeddings=False), LLAMA_TARGETS),
        "qwen2": (
            transformers.Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False),
            LLAMA_TARGETS,
        ),
        "mistral": (transformers.MistralConfig(**common, sliding_window=6, tie_word_embeddings=False), LLAMA_TARGETS),
        "phi3": (
            transformers.Phi3Config(
                **{**common, "max_position_embeddings": 32},
                original_max_position_embeddings=8,
                partial_rotary_factor=0.5,
                rope_scaling={
                    "type": "longrope",
                    "short_factor": [1.0 + 0.1 * i for i in range(2)],
                    "long_factor": [1.5 + 0.5 * i for i in range(2)],
                },
                tie_word_embeddings=False,
            ),
            PHI3_TARGETS,
        ),
    }


def batches(vocab: int):
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, vocab, (MICRO, ROWS, SEQ), generator=gen)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for m in range(MICRO):
        pad = 3 + m  # row 1 right-padded by 3..6 tokens
        ids[m, 1, SEQ - pad :] = 0
        mask[m, 1, SEQ - pad :] = 0
        labels[m, 1, SEQ - pad :] = -100
        labels[m, 0, : 2 + m] = -100  # a "prompt" the loss skips
    return ids, mask, labels


def summed_loss(model, ids, mask, labels):
    """transformers' ForCausalLMLoss with reduction sum: labels shifted left, -100 ignored."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


def label_count(labels) -> int:
    return int(labels[..., 1:].ne(-100).sum())


def module_key(param_name: str) -> str:
    # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight -> model.layers.0.self_attn.q_proj.lora_A
    return param_name.removeprefix("base_model.model.").removesuffix(".default.weight")


def tiny_base(config, tmp: Path):
    """A random tiny model, saved to tmp/model."""
    torch.manual_seed(SEED)
    config.initializer_range = 0.15
    base = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in base.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    base.save_pretrained(tmp / "model", safe_serialization=True)
    return base


def build_case(base, targets, tmp: Path) -> None:
    torch.manual_seed(SEED)
    config = base.config
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, init_lora_weights=False)
    model = peft.get_peft_model(base, lora)
    model.save_pretrained(tmp / "adapter", safe_serialization=True)
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids, mask, labels = batches(config.vocab_size)
    out = {"ids": ids, "mask": mask, "labels": labels}

    # Gradients of micro-batch 0 alone.
    loss = summed_loss(model, ids[0], mask[0], labels[0]) / label_count(labels[0])
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    for n, p in params:
        out[f"grad.{module_key(n)}"] = p.grad.detach().clone()
    model.zero_grad()

    # Ten optimizer steps as the Trainer runs them.
    opt = torch.optim.AdamW([p for _, p in params], lr=LR, weight_decay=WEIGHT_DECAY)
    sched = transformers.get_linear_schedule_with_warmup(opt, WARMUP, STEPS)
    step_loss, step_lr, step_norm = [], [], []
    for step in range(STEPS):
        micro = [(ACCUM * step + i) % MICRO for i in range(ACCUM)]
        n = sum(label_count(labels[m]) for m in micro)
        total = 0.0
        for m in micro:
            loss = summed_loss(model, ids[m], mask[m], labels[m]) / n
            loss.backward()
            total += float(loss)
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], CLIP)
        step_lr.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        step_loss.append(total)
        step_norm.append(float(norm))
    out["step_loss"] = torch.tensor(step_loss, dtype=torch.float32)
    out["step_lr"] = torch.tensor(step_lr, dtype=torch.float32)
    out["step_grad_norm"] = torch.tensor(step_norm, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in out.items()}, tmp / "reference.safetensors")


def main(write_case, stamp_of) -> None:
    """Writes every train_<arch> case with gen_golden.py's write_case (temp folder + rename, stamp check)."""
    script = Path(__file__).read_text()
    for name, (config, targets) in configs().items():
        stamp = stamp_of("train", name, script, config.to_json_string(), peft.__version__)
        write_case(f"train_{name}", stamp, lambda tmp, c=config, t=targets: build_case(tiny_base(c, tmp), t, tmp))
    # The default model as our converter writes it (tests/golden/out/smollm2/model).
    model_dir = Path(__file__).resolve().parent / "out" / "smollm2" / "model"
    weights = model_dir / "model.safetensors"
    stamp = stamp_of("train", "smollm2", script, peft.__version__, str(weights.stat().st_size))

    def smollm2(tmp: Path) -> None:
        base = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager"
        )
        build_case(base, LLAMA_TARGETS, tmp)

    write_case("train_smollm2", stamp, smollm2)
