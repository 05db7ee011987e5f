"""`olive-host quantize` (issue 5) checked against independent code and the real consumers:

- unpacking: our AWQ (AutoAWQ GEMM) and GPTQ (v1) tensors, unpacked by the numpy code here from the published
  layouts, equal exactly the weights our own reader dequantizes (the fp32 `auto-opt` export of the quantized
  folder holds them as MatMul initializers), ragged last groups and act-order g_idx included; each weight stays
  within its quantization step of the float one (RTN) or close to it (AWQ folds scales into the norms);
- quality on the default model at 4 bits, group 128, asymmetric: AWQ and GPTQ each beat RTN in perplexity over
  the project's held-out text, and the perplexity through our CPU forward and through the ONNX export under
  onnxruntime agree;
- 3 bits (GPTQ v1, AutoGPTQ's 32-values-in-3-words packing) and the opt-in lm_head (`--lm_head`, GPTQ v1 with
  `lm_head: true`): numpy unpacks of every linear and of the lm_head equal our reader's weights; the int4 export
  carries them as 4-bit MatMulNBits with the same levels (no requantizing), and its onnxruntime logits equal
  transformers' on a float folder holding the numpy-dequantized weights; a 3-bit folder's perplexity through our
  CPU forward equals the export's;
- bad input: an already-quantized model, bits or group size not supported, a calibration file that is empty or
  shorter than one sample, an architecture without a layer map → a clear error and no output folder.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
# our CPU forward vs onnxruntime on the same fp32 weights: the same f32 math in another order.
PPL_AGREE = 1e-3


def run(cmd: list, ok: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def default_hf(olive_host: Path, default_gguf: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "hf"
    run([olive_host, "convert", "-m", default_gguf, "-o", out])
    return out


@pytest.fixture(scope="module")
def tiny_llama(default_hf: Path, tmp_path_factory) -> Path:
    """A random-weight llama with the default model's tokenizer (so the calibration text tokenizes into it):
    hidden 128, intermediate 320, 2 layers, GQA 4/2 heads, untied lm_head."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # correlated input channels with outliers, as real activations have
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(torch.rand(128) * 2 + 0.1)
            layer.post_attention_layernorm.weight.copy_(torch.rand(128) * 2 + 0.1)
    out = tmp_path_factory.mktemp("tiny") / "llama"
    model.save_pretrained(str(out))
    for f in TOKENIZER_FILES:
        shutil.copy(default_hf / f, out / f)
    return out


def quantize(olive_host: Path, model: Path, out: Path, *flags: str) -> Path:
    """Olive's layout: the Hugging Face folder in <out>/model, described by <out>/model_config.json."""
    run([olive_host, "quantize", "-m", model, "-o", out, *flags])
    config = json.loads((out / "model_config.json").read_text())
    assert config["type"] == "hfmodel" and Path(config["config"]["model_path"]) == (out / "model").absolute()
    return out / "model"


def load_folder(folder: Path) -> dict:
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def unpack_awq_gemm(t: dict, prefix: str, group: int) -> np.ndarray:
    """AutoAWQ GEMM: qweight int32 [K, N/8], qzeros int32 [G, N/8] (word c, nibble i holds column
    8c + AWQ_ORDER[i]), scales fp16 [G, N]; w[o, i] = (q - z) · s, group i // group. Returns [N, K]."""
    def unpack(words: np.ndarray) -> np.ndarray:  # [rows, N/8] -> [rows, N]
        w = words.view(np.uint32)
        out = np.zeros((w.shape[0], w.shape[1] * 8), np.uint8)
        for i, col in enumerate(AWQ_ORDER):
            out[:, col::8] = (w >> (4 * i)) & 0xF
        return out
    q = unpack(t[f"{prefix}.qweight"]).astype(np.float32)  # [K, N]
    z = unpack(t[f"{prefix}.qzeros"]).astype(np.float32)  # [G, N]
    s = t[f"{prefix}.scales"].astype(np.float32)  # [G, N]
    g = np.arange(q.shape[0]) // group
    return ((q - z[g]) * s[g]).T


def unpack_3bit(words: np.ndarray) -> np.ndarray:
    """AutoGPTQ's 3-bit packing (qlinear_cuda_old.py `pack`) undone along axis 0: every 3 int32 rows hold 32
    values, values 0-9 in word 0 at bits 3j, value 10 in word 0 bits 30-31 and word 1 bit 0, values 11-20 in word 1
    at bits 3j+1, value 21 in word 1 bit 31 and word 2 bits 0-1, values 22-31 in word 2 at bits 3j+2."""
    w = words.view(np.uint32).astype(np.uint64)
    out = np.zeros((w.shape[0] // 3 * 32, w.shape[1]), np.uint64)
    for blk in range(w.shape[0] // 3):
        w0, w1, w2, base = w[3 * blk], w[3 * blk + 1], w[3 * blk + 2], 32 * blk
        for j in range(10):
            out[base + j] = (w0 >> np.uint64(3 * j)) & 7
            out[base + 11 + j] = (w1 >> np.uint64(3 * j + 1)) & 7
            out[base + 22 + j] = (w2 >> np.uint64(3 * j + 2)) & 7
        out[base + 10] = ((w0 >> np.uint64(30)) | (w1 << np.uint64(2))) & 7
        out[base + 21] = ((w1 >> np.uint64(31)) | (w2 << np.uint64(1))) & 7
    return out.astype(np.float32)


def unpack_gptq_v1(t: dict, prefix: str, bits: int) -> np.ndarray:
    """GPTQ v1: qweight int32 [K·bits/32, N] packed along the input (word r holds inputs r·32/bits + j at bit
    j·bits), qzeros int32 [G, N·bits/32] packed along the output storing zero − 1, scales fp16 [G, N], g_idx
    [K]; w[o, i] = (q[i, o] − (z[g_idx[i], o] + 1)) · s[g_idx[i], o]. Returns [N, K]."""
    if bits == 3:
        q = unpack_3bit(t[f"{prefix}.qweight"])  # [K, N]
        z = unpack_3bit(t[f"{prefix}.qzeros"].T).T + 1  # [G, N]
        s = t[f"{prefix}.scales"].astype(np.float32)
        g = t[f"{prefix}.g_idx"].astype(np.int64)
        return ((q - z[g]) * s[g]).T
    per = 32 // bits
    mask = (1 << bits) - 1
    qw = t[f"{prefix}.qweight"].view(np.uint32)
    q = np.zeros((qw.shape[0] * per, qw.shape[1]), np.float32)
    for j in range(per):
        q[j::per] = (qw >> (bits * j)) & mask
    qz = t[f"{prefix}.qzeros"].view(np.uint32)
    z = np.zeros((qz.shape[0], qz.shape[1] * per), np.float32)
    for j in range(per):
        z[:, j::per] = ((qz >> (bits * j)) & mask) + 1
    s = t[f"{prefix}.scales"].astype(np.float32)
    g = t[f"{prefix}.g_idx"].astype(np.int64)
    return ((q - z[g]) * s[g]).T


def unpack_olive(t: dict, prefix: str, bits: int, group: int) -> np.ndarray:
    """Olive (olive-ai 0.13 QuantLinear / QuantEmbedding, pack_to_uint8): qweight uint8 [N, ceil(K·bits/8)] with
    value c of a row at bits (c % (8/bits))·bits of byte c // (8/bits), qzeros uint8 [N, ceil(G·bits/8)] the same
    (the zero itself; absent when symmetric: 2^(bits-1)), scales [N, G]; w[o, i] = (q - z[o, i // group]) · s.
    Returns [N, K]."""
    per = 8 // bits
    def unpack(b: np.ndarray, cols: int) -> np.ndarray:
        out = np.zeros((b.shape[0], b.shape[1] * per), np.float32)
        for j in range(per):
            out[:, j::per] = (b >> (bits * j)) & ((1 << bits) - 1)
        return out[:, :cols]
    s = t[f"{prefix}.scales"].astype(np.float32)
    k = s.shape[1] * group
    q = unpack(t[f"{prefix}.qweight"], k)
    z = unpack(t[f"{prefix}.qzeros"], s.shape[1]) if f"{prefix}.qzeros" in t else np.full(s.shape, 2 ** (bits - 1))
    g = np.arange(k) // group
    return (q - z[:, g]) * s[:, g]


def gather_block_quantized_table(inits: dict) -> np.ndarray:
    """The table of the export's com.microsoft GatherBlockQuantized (quantize_axis 1): data uint4 [V, H] and
    zero points uint4 [V, G] (onnx unpacks them), scales [V, G]; w = (q - z[:, i // block]) · s[:, i // block]."""
    q = inits["model.embed_tokens.qweight"].astype(np.float32)
    z = inits["model.embed_tokens.qzeros"].astype(np.float32)
    s = inits["model.embed_tokens.scales"].astype(np.float32)
    g = np.arange(q.shape[1]) // (q.shape[1] // s.shape[1])
    return (q - z[:, g]) * s[:, g]


def export_weights(olive_host: Path, model: Path, out: Path) -> dict:
    """Our reader's dequantized linears: the MatMul initializers of the fp32 export, as [out, in] per HF module."""
    run([olive_host, "auto-opt", "-m", model, "-o", out, "--precision", "fp32", "--use_ort_genai"])
    onnx_model = onnx.load(str(out / "model" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i, base_dir=str(out / "model")) for i in onnx_model.graph.initializer}
    config = json.loads((model / "config.json").read_text())
    heads, kv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"] if config.get(
        "head_dim") else config["hidden_size"] // config["num_attention_heads"]
    weights = {}
    for layer in range(config["num_hidden_layers"]):
        onnx_prefix, hf = f"model.layers.{layer}", f"model.layers.{layer}"
        qkv = inits[f"{onnx_prefix}.attn.qkv_proj.MatMul.weight"].T  # [q + 2 kv, in]
        q, k = heads * hd, kv * hd
        weights[f"{hf}.self_attn.q_proj"] = qkv[:q]
        weights[f"{hf}.self_attn.k_proj"] = qkv[q:q + k]
        weights[f"{hf}.self_attn.v_proj"] = qkv[q + k:]
        weights[f"{hf}.self_attn.o_proj"] = inits[f"{onnx_prefix}.attn.o_proj.MatMul.weight"].T
        for p in ("gate_proj", "up_proj", "down_proj"):
            weights[f"{hf}.mlp.{p}"] = inits[f"{onnx_prefix}.mlp.{p}.MatMul.weight"].T
    packed = load_folder(model)
    if "lm_head.qweight" in packed:
        weights["lm_head"] = inits["lm_head.MatMul.weight"].T
    if "model.embed_tokens.qweight" in packed:  # GatherBlockQuantized: uint4 levels and zero points, scales
        weights["model.embed_tokens"] = gather_block_quantized_table(inits)
    return weights


@pytest.mark.parametrize("algorithm,flags", [
    ("awq", ["--bits", "4", "--group_size", "32"]),
    ("gptq", ["--bits", "4", "--group_size", "48"]),  # ragged last group over 128 and 320 inputs
    ("gptq", ["--bits", "8", "--group_size", "-1", "--sym", "true"]),
    ("rtn", ["--bits", "4", "--group_size", "64"]),
    ("rtn", ["--bits", "3", "--group_size", "32"]),
    ("gptq", ["--bits", "3", "--group_size", "64", "--lm_head"]),
    ("awq", ["--bits", "4", "--group_size", "32", "--lm_head"]),  # no AWQ GEMM lm_head: GPTQ v1, lm_head RTN
    ("rtn", ["--bits", "4", "--group_size", "32", "--embeds"]),  # Olive's layout, the embedding quantized
])
def test_packed_tensors_unpack_to_our_weights(olive_host: Path, tiny_llama: Path, tmp_path: Path, algorithm: str,
                                              flags: list):
    calibration = [] if algorithm == "rtn" else ["--max_samples", "8", "--max_seq_len", "64"]
    out = quantize(olive_host, tiny_llama, tmp_path / "q", "--algorithm", algorithm, *flags, *calibration)
    config = json.loads((out / "config.json").read_text())
    qcfg = config["quantization_config"]
    tensors = load_folder(out)
    ours = export_weights(olive_host, out, tmp_path / "fp32")
    original = load_folder(tiny_llama)
    bits = int(flags[flags.index("--bits") + 1])
    assert qcfg["bits"] == bits
    assert ("lm_head" in ours) == ("--lm_head" in flags) == bool(qcfg.get("lm_head"))
    for prefix, got in ours.items():
        if qcfg["quant_method"] == "olive":
            assert qcfg["embeds"] is True and qcfg["lm_head"] is False and qcfg["symmetric"] is False
            unpacked = unpack_olive(tensors, prefix, bits, qcfg["group_size"])
        elif qcfg["quant_method"] == "awq" and prefix != "lm_head":
            assert qcfg["version"] == "gemm" and qcfg["zero_point"] is True
            unpacked = unpack_awq_gemm(tensors, prefix, qcfg["group_size"])
        else:
            assert qcfg["quant_method"] == "gptq"
            unpacked = unpack_gptq_v1(tensors, prefix, bits)
        np.testing.assert_array_equal(unpacked, got, err_msg=prefix)
        w = original[f"{prefix}.weight"]
        if algorithm == "rtn" or prefix == "lm_head" and algorithm == "awq":  # round to nearest: within half a step of the float weight, plus the levels
            # (< 16) times the fp16 rounding of the step (AutoGPTQ rounds with the f32 scale and stores fp16)
            group = qcfg["group_size"]
            scales = tensors[f"{prefix}.scales"].astype(np.float32)  # GPTQ [G, N], Olive [N, G]
            scales = scales if qcfg["quant_method"] == "olive" else scales.T
            step = np.repeat(scales, group, axis=1)[:, :w.shape[1]]
            assert np.all(np.abs(unpacked - w) <= step * (0.5 + 2**bits * 2.0**-11)), prefix
        elif algorithm == "gptq":  # GPTQ moves error between columns, never far from the weight
            if bits >= 4:
                assert np.abs(unpacked - w).max() < np.abs(w).max() * 0.5, prefix
            else:  # 3 levels fewer: single weights move further, the whole weight stays close
                assert np.linalg.norm(unpacked - w) < np.linalg.norm(w) * 0.5, prefix
    for f in TOKENIZER_FILES:
        assert (out / f).is_file(), f
    if bits == 3 or "--lm_head" in flags or "--embeds" in flags:
        check_int4_export(olive_host, out, tensors, original, ours, tmp_path)


def matmul_nbits_weight(inits: dict, module: str, k: int) -> np.ndarray:
    """Dequantizes a com.microsoft MatMulNBits (4 bits) by its layout: B uint8 [N, blocks, blob] low nibble
    first, scales [N, blocks], zero points uint8 [N, ceil(blocks/2)] low nibble first (absent: 8). Returns [N, K]."""
    b = inits[f"{module}.MatMul.weight_Q4"]
    n, blocks, blob = b.shape
    vals = np.stack([b & 0xF, b >> 4], -1).reshape(n, blocks, blob * 2).astype(np.float32)
    scales = inits[f"{module}.MatMul.weight_scales"].reshape(n, blocks).astype(np.float32)
    zp = inits.get(f"{module}.MatMul.weight_zero_points")
    if zp is None:  # symmetric: zero point 8
        zp = np.full((n, blocks), 8, np.uint8)
    else:
        zp = np.stack([zp & 0xF, zp >> 4], -1).reshape(n, -1)[:, :blocks]
    return ((vals - zp[:, :, None].astype(np.float32)) * scales[:, :, None]).reshape(n, -1)[:, :k]


def check_int4_export(olive_host: Path, quantized: Path, tensors: dict, original: dict, ours: dict, tmp: Path):
    """The int4 export (fp32 compute) holds our levels as 4-bit MatMulNBits; its logits equal transformers' on
    the numpy-dequantized weights and our CPU forward's perplexity on them equals the export's; our CPU forward of
    the packed folder (quantized lm_head and embedding included) equals the fp32 export's."""
    from onnx_parity import hf_logits, max_abs_diff, ort_logits

    run([olive_host, "auto-opt", "-m", quantized, "-o", tmp / "int4", "--use_ort_genai", "--precision", "int4",
         "--int4_accuracy_level", "1"])
    model_dir = tmp / "int4" / "model"
    inits = {i.name: numpy_helper.to_array(i, base_dir=str(model_dir))
             for i in onnx.load(str(model_dir / "model.onnx")).graph.initializer}
    if "lm_head" in ours:
        got = matmul_nbits_weight(inits, "lm_head", ours["lm_head"].shape[1])
        np.testing.assert_array_equal(got, ours["lm_head"], err_msg="lm_head MatMulNBits")
    got = matmul_nbits_weight(inits, "model.layers.1.mlp.down_proj", ours["model.layers.1.mlp.down_proj"].shape[1])
    np.testing.assert_array_equal(got, ours["model.layers.1.mlp.down_proj"], err_msg="down_proj MatMulNBits")
    ref = tmp / "ref"
    ref.mkdir()
    # the quantized folder's float tensors (AWQ folds its scales into the norms), the linears dequantized
    weights = {k: v for k, v in tensors.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    for prefix, w in ours.items():
        weights[f"{prefix}.weight"] = w
    if "lm_head" not in ours:  # the export quantizes a float lm_head itself (int4 RTN): the reference takes it
        weights["lm_head.weight"] = matmul_nbits_weight(inits, "lm_head", weights["lm_head.weight"].shape[1])
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(ref / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((quantized / "config.json").read_text())
    config.pop("quantization_config")
    (ref / "config.json").write_text(json.dumps(config))
    for f in TOKENIZER_FILES:
        shutil.copy(quantized / f, ref / f)
    prompt = [(i * 37) % 250 + 3 for i in range(12)]
    want = hf_logits(ref, prompt, 3)
    got = ort_logits(model_dir, prompt, 3)
    diff = max_abs_diff(got, want)
    scale = max(float(np.abs(x).max()) for x in want)
    print(f"{quantized.name}: int4 export vs transformers on the dequantized weights: max |logits diff| {diff:.2e} "
          f"(logit scale {scale:.2f})")
    assert diff <= 1e-3 * max(scale, 1.0)
    # our CPU forward on the same float weights agrees with the int4 export through onnxruntime
    cpu, ort = evaluate(olive_host, ref), evaluate(olive_host, model_dir)
    print(f"{quantized.name}: perplexity CPU {cpu:.4f}, onnxruntime int4 {ort:.4f}")
    assert abs(cpu - ort) <= PPL_AGREE * cpu
    # crates/nn reads the packed folder itself
    packed, fp32 = evaluate(olive_host, quantized), evaluate(olive_host, tmp / "fp32" / "model")
    print(f"{quantized.name}: perplexity CPU on the packed folder {packed:.4f}, fp32 export {fp32:.4f}")
    assert abs(packed - fp32) <= PPL_AGREE * packed


def test_tied_embeds_and_lm_head_stay_tied_and_export(olive_host: Path, tiny_llama: Path, tmp_path: Path):
    """A tied model with both sides quantized (Rtn --embeds --lm_head) stays tied: one quantized table in Olive's
    layout; the int4 export's lm_head MatMulNBits holds exactly its levels and the export's logits equal
    transformers' on the numpy-dequantized table."""
    from onnx_parity import hf_logits, max_abs_diff, ort_logits

    tied = tmp_path / "tied"
    shutil.copytree(tiny_llama, tied)
    tensors = load_folder(tied)
    del tensors["lm_head.weight"]
    for f in tied.glob("*.safetensors"):
        f.unlink()
    for f in tied.glob("*.safetensors.index.json"):
        f.unlink()
    save_file(tensors, str(tied / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    out = quantize(olive_host, tied, tmp_path / "q", "--algorithm", "rtn", "--bits", "4", "--group_size", "32",
                   "--embeds", "--lm_head")
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qcfg["quant_method"], qcfg["embeds"], qcfg["lm_head"], qcfg["tie_word_embeddings"]) == \
        ("olive", True, True, True)
    packed = load_folder(out)
    assert "lm_head.weight" not in packed and "lm_head.qweight" not in packed
    table = unpack_olive(packed, "model.embed_tokens", 4, 32)
    run([olive_host, "auto-opt", "-m", out, "-o", tmp_path / "int4", "--use_ort_genai", "--precision", "int4",
         "--int4_accuracy_level", "1"])
    model_dir = tmp_path / "int4" / "model"
    inits = {i.name: numpy_helper.to_array(i, base_dir=str(model_dir))
             for i in onnx.load(str(model_dir / "model.onnx")).graph.initializer}
    np.testing.assert_array_equal(matmul_nbits_weight(inits, "lm_head", table.shape[1]), table)
    ref = tmp_path / "ref"
    ref.mkdir()
    weights = {k: v for k, v in packed.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    weights["model.embed_tokens.weight"] = table
    for prefix in {k.rsplit(".", 1)[0] for k in packed if k.endswith(".qweight")} - {"model.embed_tokens"}:
        weights[f"{prefix}.weight"] = unpack_olive(packed, prefix, 4, 32)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(ref / "model.safetensors"),
              metadata={"format": "pt"})
    (ref / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    prompt = [(i * 37) % 250 + 3 for i in range(12)]
    want = hf_logits(ref, prompt, 3)
    diff = max_abs_diff(ort_logits(model_dir, prompt, 3), want)
    scale = max(float(np.abs(x).max()) for x in want)
    print(f"tied embeds + lm_head: int4 export vs transformers: max |logits diff| {diff:.2e} (scale {scale:.2f})")
    assert diff <= 1e-3 * max(scale, 1.0)


def evaluate(olive_host: Path, model: Path) -> float:
    return json.loads(run([olive_host, "evaluate", "-m", model]).stdout)["perplexity"]


def test_act_order_gptq_exports_to_int4_exactly(olive_host: Path, tiny_llama: Path, tmp_path: Path):
    """GptqQuantizer with desc_act (a permuted g_idx per linear; v_proj's order differs from q/k's, its Hessian
    being attention-weighted): the int4 export gathers each input into group order, so its perplexity through
    onnxruntime equals our CPU forward's on the same packed folder (the lm_head quantized too, so that the export
    rounds nothing of its own)."""
    config = json.dumps({"bits": 4, "group_size": 32, "desc_act": True, "lm_head": True, "n_samples": 4,
                         "seq_len": 64})
    run([olive_host, "run-pass", "--pass-name", "GptqQuantizer", "-m", tiny_llama, "--pass-config", config, "-o",
         tmp_path / "gptq-act"])
    out = tmp_path / "gptq-act" / "model"
    packed = load_folder(out)
    g_idx = packed["model.layers.0.self_attn.q_proj.g_idx"]
    assert (np.diff(g_idx) < 0).any(), "act-order should permute the groups"
    assert (packed["model.layers.0.self_attn.v_proj.g_idx"] != g_idx).any()
    run([olive_host, "auto-opt", "-m", out, "-o", tmp_path / "int4", "--use_ort_genai", "--precision", "int4",
         "--int4_accuracy_level", "1"])
    model = onnx.load(str(tmp_path / "int4" / "model" / "model.onnx"), load_external_data=False)
    assert any(n.op_type == "Gather" and n.name.endswith("MatMulNBits/Gather") for n in model.graph.node)
    cpu, ort = evaluate(olive_host, out), evaluate(olive_host, tmp_path / "int4" / "model")
    print(f"act-order GPTQ: perplexity CPU {cpu:.4f}, onnxruntime int4 {ort:.4f}")
    assert abs(cpu - ort) <= PPL_AGREE * cpu


def test_awq_and_gptq_beat_rtn_on_the_default_model(olive_host: Path, default_hf: Path, tmp_path: Path):
    grid = ["--precision", "int4", "--group_size", "128", "--sym", "false"]
    ppl = {"fp32": evaluate(olive_host, default_hf)}
    for algorithm in ("rtn", "awq", "gptq"):
        out = quantize(olive_host, default_hf, tmp_path / algorithm, "--algorithm", algorithm, *grid)
        ppl[algorithm] = evaluate(olive_host, out)
    # the same AWQ weights through the ONNX export and onnxruntime
    run([olive_host, "auto-opt", "-m", tmp_path / "awq", "-o", tmp_path / "awq-onnx", "--precision", "fp32",
         "--use_ort_genai"])
    awq_ort = evaluate(olive_host, tmp_path / "awq-onnx" / "model")
    print(f"perplexity over data/eval.txt, 4 bits, group 128, asymmetric: {ppl}; AWQ through onnxruntime {awq_ort}")
    assert abs(awq_ort - ppl["awq"]) <= PPL_AGREE * ppl["awq"]
    assert ppl["fp32"] < ppl["awq"] < ppl["rtn"]
    assert ppl["fp32"] < ppl["gptq"] < ppl["rtn"]


def bad(olive_host: Path, model: Path, out: Path, *flags: str) -> str:
    result = run([olive_host, "quantize", "-m", model, "-o", out, *flags], ok=False)
    assert result.returncode != 0, result.stdout
    assert not out.exists(), f"{out} left behind"
    assert not list(out.parent.glob(f".{out.name}*")), "staging folder left behind"
    return result.stderr


def test_bad_input_is_refused_and_leaves_nothing(olive_host: Path, tiny_llama: Path, tmp_path: Path):
    quantized = quantize(olive_host, tiny_llama, tmp_path / "rtn", "--algorithm", "rtn", "--precision", "int4")
    err = bad(olive_host, quantized, tmp_path / "again", "--algorithm", "rtn", "--precision", "int4")
    assert "quantiz" in err, err
    err = bad(olive_host, tiny_llama, tmp_path / "bits5", "--algorithm", "gptq", "--bits", "5")
    assert "bits" in err, err
    err = bad(olive_host, tiny_llama, tmp_path / "group0", "--algorithm", "rtn", "--bits", "4", "--group_size", "0")
    assert "group_size" in err, err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = bad(olive_host, tiny_llama, tmp_path / "empty", "--algorithm", "gptq", "--precision", "int4",
              "--data_name", "json", "--data_files", str(empty), "--text_field", "text")
    assert "empty.jsonl" in err, err
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "Too short."}) + "\n")
    err = bad(olive_host, tiny_llama, tmp_path / "short", "--algorithm", "awq", "--precision", "int4",
              "--data_name", "json", "--data_files", str(short), "--text_field", "text", "--max_seq_len", "64")
    assert "64" in err, err
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_llama, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    err = bad(olive_host, gpt2, tmp_path / "arch", "--algorithm", "rtn", "--precision", "int4")
    assert "gpt2" in err, err
