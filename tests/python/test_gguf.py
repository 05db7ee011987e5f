"""GGUF → Hugging Face conversion (`olive-host convert`), checked against the `gguf` package and transformers.

- every tensor we write equals `gguf.quants.dequantize` of the file's tensor (q/k rows un-permuted the way
  transformers does it), for a tiny model holding every dtype we read and for the default model;
- the converted folder loads in transformers and gives the same logits as transformers' own GGUF loading;
- the tokenizer we build from `tokenizer.ggml.*` tokenizes a mixed text like transformers' GGUF tokenizer,
  through transformers and through the `tokenizers` library alike;
- a bad magic or an unsupported tensor type is a clear error and leaves nothing behind.
"""

import json
import subprocess
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

Q = gguf.GGMLQuantizationType

# English, Thai, code, emoji (with a ZWJ sequence), digits, accents, special tokens, odd whitespace.
MIXED_TEXT = (
    "Hello, world! The year 2024 had 366 days.\n"
    "สวัสดีครับ ยินดีที่ได้รู้จัก ภาษาไทย\n"
    "def add(a, b):\n    return a + b  # sum ✨\n"
    "🚀🎉👩‍💻 café naïve — 東京 <|im_start|>user\nhi<|im_end|>\n\t  trailing   spaces  "
)
# Logits of our converted folder vs. transformers' GGUF loading: both dequantize the same bytes to f32.
LOGITS_TOL = 1e-3
# Our dequantization repeats the reference's f32 operations in the same order.
DEQUANT_TOL = 1e-6


def convert(olive_host: Path, src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(olive_host), "convert", "--model_name_or_path", str(src), "--output_path", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' `LlamaConverter._reverse_permute_weights` (undoes llama.cpp's `LlamaModel.permute`)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def hf_name(name: str) -> str:
    if name.endswith(".bias"):
        return hf_name(name.removesuffix(".bias") + ".weight").removesuffix(".weight") + ".bias"
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    _, layer, part, _ = name.split(".")
    part = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj"}[part]
    return f"model.layers.{layer}.{part}.weight"


def check_tensors(src: Path, folder: Path) -> dict[str, float]:
    """Max abs difference, per ggml type, between our tensors and the gguf package's dequantization."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    heads = int(reader.fields[f"{arch}.attention.head_count"].contents())
    kv_heads = int(reader.fields[f"{arch}.attention.head_count_kv"].contents())
    ours = load_file(folder / "model.safetensors")
    assert len(ours) == len(reader.tensors)
    worst: dict[str, float] = {}
    for t in reader.tensors:
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        if arch != "llama":  # llama.cpp permutes q/k rows of llama models only
            pass
        elif ".attn_q.weight" in t.name:
            ref = reverse_permute(ref, heads)
        elif ".attn_k.weight" in t.name:
            ref = reverse_permute(ref, kv_heads)
        got = ours[hf_name(t.name)]
        assert got.dtype == np.float32 and got.shape == ref.shape, t.name
        diff = float(np.abs(got - ref).max())
        assert diff <= DEQUANT_TOL, f"{t.name} ({t.tensor_type.name}): max abs diff {diff}"
        worst[t.tensor_type.name] = max(worst.get(t.tensor_type.name, 0.0), diff)
    return worst


def check_logits(src: Path, folder: Path, prompt_ids: list[int]) -> float:
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(ids).logits
        ref = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()(ids).logits
    diff = float((ours - ref).abs().max())
    assert diff <= LOGITS_TOL, f"logits differ by {diff}"
    return diff


def check_tokenizer(src: Path, folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    ours = AutoTokenizer.from_pretrained(folder)
    expected = ref(text)["input_ids"]
    assert ours(text)["input_ids"] == expected
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids == expected
    assert ours.decode(expected) == ref.decode(expected)
    messages = [{"role": "user", "content": text}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    return expected


# A tiny llama: hidden 256 (k-quants need rows of 256), 4 heads / 2 kv heads of 64, 3 layers, each tensor
# in another type so every dequantizer runs on a q/k projection (un-permuted) and on a plain one.
HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 3
LAYER_TYPES = [
    {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.BF16, "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.Q8_0},
    {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.F16, "ffn_gate": Q.BF16, "ffn_up": Q.F32, "ffn_down": Q.Q5_0},
    {"attn_q": Q.Q4_K, "attn_k": Q.Q6_K, "attn_v": Q.Q5_K, "attn_output": Q.Q5_0, "ffn_gate": Q.Q5_1, "ffn_up": Q.Q4_K, "ffn_down": Q.Q6_K},
]
# Byte offsets of the f16 super-block scales in the k-quant blocks (kept finite in random blocks).
K_QUANT_SCALES = {Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def byte_level_vocab(w: gguf.GGUFWriter, pre: str = "smollm") -> int:
    """A GPT-2-style vocabulary: 3 control tokens, the 256 byte characters, a few merged words."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = list(dict.fromkeys(chr(c) for c in [*range(33, 127), *range(161, 173), *range(174, 256)]))
    alphabet += [chr(256 + i) for i in range(256 - len(alphabet))]
    merges, tokens = [], specials + alphabet
    for word in ["Ġthe", "Ġand", "ing", "Ġhello", "Ġworld", "Ġyear", "Ġreturn", "Ġdef", "ĠĠĠ", "ĊĊ", "Ġdays"]:
        for i in range(2, len(word) + 1):
            left, right = word[: i - 1], word[i - 1]
            if word[:i] not in tokens and left in tokens:
                merges.append(f"{left} {right}")
                tokens.append(word[:i])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    return len(tokens)


def sentencepiece_vocab(w: gguf.GGUFWriter) -> int:
    """A Llama-2-style vocabulary: <unk> <s> </s>, 256 byte tokens, scored pieces and no merges."""
    pieces = ["▁", "e", "t", "h", "l", "o", "w", "r", "d", "a", "n", "s", "y", "▁t", "▁th", "▁the", "he", "ll",
              "llo", "hel", "hello", "▁h", "▁hello", "▁w", "or", "▁wor", "▁world", "▁a", "an", "▁an", "▁and",
              "▁d", "ay", "ays", "▁days", "▁y", "ea", "▁ye", "▁yea", "▁year", "re", "▁re", "▁ret", "▁return"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    return len(tokens)


def random_tensor(rng, rows: int, cols: int, qtype) -> np.ndarray:
    if qtype in K_QUANT_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
        for at in K_QUANT_SCALES[qtype]:
            raw[:, at : at + 2] = rng.uniform(0.001, 0.01, size=(raw.shape[0], 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)
    data = rng.normal(0, 0.05, size=(rows, cols)).astype(np.float32)
    return gguf.quants.quantize(data, qtype)


def write_tiny_gguf(path: Path, types=LAYER_TYPES, vocab=byte_level_vocab, arch: str = "llama") -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    n_vocab = vocab(w)
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_tensor("token_embd.weight", random_tensor(rng, n_vocab, HIDDEN, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("output_norm.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
    w.add_tensor("output.weight", random_tensor(rng, n_vocab, HIDDEN, Q.F16).astype(np.float16))
    shapes = {"attn_q": (HEADS * 64, HIDDEN), "attn_k": (KV_HEADS * 64, HIDDEN), "attn_v": (KV_HEADS * 64, HIDDEN),
              "attn_output": (HIDDEN, HEADS * 64), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
    for layer, layer_types in enumerate(types):
        for norm in ["attn_norm", "ffn_norm"]:
            w.add_tensor(f"blk.{layer}.{norm}.weight", rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
        if arch == "qwen2":
            for part in ["attn_q", "attn_k", "attn_v"]:
                w.add_tensor(f"blk.{layer}.{part}.bias", rng.normal(0, 0.1, shapes[part][0]).astype(np.float32))
        for part, qtype in layer_types.items():
            data = random_tensor(rng, *shapes[part], qtype)
            if qtype in (Q.F32, Q.F16):
                w.add_tensor(f"blk.{layer}.{part}.weight", data)
            else:
                w.add_tensor(f"blk.{layer}.{part}.weight", data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_every_dtype(olive_host, tmp_path, arch):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src, arch=arch)
    out = tmp_path / "tiny-hf"
    run = convert(olive_host, src, out)
    assert run.returncode == 0, run.stderr
    worst = check_tensors(src, out)
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"} <= set(worst)
    print("tiny model max abs diff per type:", worst)
    ids = check_tokenizer(src, out, "hello the world and the year 2024: def return")
    print("tiny logits max abs diff:", check_logits(src, out, ids))


@pytest.mark.parametrize(
    "vocab",
    [partial(byte_level_vocab, pre=pre) for pre in ["smollm", "llama-bpe", "qwen2", "default"]] + [sentencepiece_vocab],
    ids=["smollm", "llama-bpe", "qwen2", "default", "sentencepiece"],
)
def test_tokenizer_from_metadata(olive_host, tmp_path, vocab):
    src = tmp_path / "tok.gguf"
    write_tiny_gguf(src, [{p: Q.F32 for p in LAYER_TYPES[0]}] * LAYERS, vocab)
    out = tmp_path / "tok-hf"
    run = convert(olive_host, src, out)
    assert run.returncode == 0, run.stderr
    check_tokenizer(src, out, MIXED_TEXT + " The year 12345 had 366 days and the world said hello")


def test_default_model(olive_host, default_gguf, tmp_path):
    out = tmp_path / "smollm2-hf"
    run = convert(olive_host, default_gguf, out)
    assert run.returncode == 0, run.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert config["tie_word_embeddings"] is True
    print("default model max abs diff per type:", check_tensors(default_gguf, out))
    ids = check_tokenizer(default_gguf, out, MIXED_TEXT)
    print(f"mixed text: {len(ids)} tokens, identical")
    print("default model logits max abs diff:", check_logits(default_gguf, out, ids[:48]))


def test_bad_magic(olive_host, tmp_path):
    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGML" + bytes(60))
    out = tmp_path / "out"
    run = convert(olive_host, src, out)
    assert run.returncode != 0
    assert str(src) in run.stderr and "magic" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == [src]


def test_unsupported_type(olive_host, tmp_path):
    src = tmp_path / "q2k.gguf"
    types = [dict(t) for t in LAYER_TYPES]
    types[2]["ffn_up"] = Q.Q2_K
    K_QUANT_SCALES[Q.Q2_K] = [80, 82]
    try:
        write_tiny_gguf(src, types)
    finally:
        del K_QUANT_SCALES[Q.Q2_K]
    out = tmp_path / "out"
    run = convert(olive_host, src, out)
    assert run.returncode != 0
    assert str(src) in run.stderr and "blk.2.ffn_up.weight" in run.stderr and "Q2_K" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == [src]
