"""Pre-quantized Hugging Face checkpoints (issue 5 item 4, issue 4): AutoAWQ GEMM and GPTQ v1 folders made here
from the tiny qwen2 (numpy RTN, packed by INDEPENDENT numpy code following the published layouts: AutoAWQ's
`pack` with order [0, 2, 4, 6, 1, 3, 5, 7], AutoGPTQ's `QuantLinear.pack` with qzeros = zero - 1), exported by
`olive-host auto-opt` (and Olive's own `quant_method: olive` layout, packed as olive-ai 0.13's QuantLinear /
`pack_to_uint8` does: uint8 along the input, low bits first, the zero point itself, scales [out, groups]):
- int4: every decoder linear is a MatMulNBits whose B / scales / zero points, unpacked by numpy with the
  com.microsoft MatMulNBits layout, equal the numpy dequantized checkpoint weights exactly (no requantization),
  ragged last group included (GPTQ group 48 over 64 and 128 inputs); the export's logits (onnxruntime, fp32
  compute: accuracy level 1) match transformers on a float folder holding the numpy dequantized weights.
- fp32: the export (our Rust unpack + dequantize) matches the same reference.
- our Rust writers (`pack_awq_gemm`, `pack_gptq_v1` through the `pack_quantized` example of olive-model) give
  the numpy packing byte for byte; AWQ refuses a ragged group.
transformers 5 has no AWQ/GPTQ kernels of its own (it needs gptqmodel / autoawq, GPU-oriented), so the reference
unpack is the numpy code here, not transformers' loader.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

from onnx_parity import hf_logits, max_abs_diff, ort_logits

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "golden" / "out" / "qwen2" / "model"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
LOGITS_TOL = 1e-3
DECODE_STEPS = 3
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


def rtn(w: np.ndarray, group: int):
    """Asymmetric 4-bit RTN of w [out, in] (ragged last group): levels [out, in], scales/zeros [out, groups]."""
    out, k = w.shape
    groups = -(-k // group)
    q = np.zeros((out, k), np.uint8)
    scales = np.zeros((out, groups), np.float32)
    zeros = np.zeros((out, groups), np.uint8)
    for g in range(groups):
        cols = slice(g * group, min(k, (g + 1) * group))
        lo = np.minimum(w[:, cols].min(1), 0)
        hi = np.maximum(w[:, cols].max(1), 0)
        s = np.maximum((hi - lo) / 15, 1e-4).astype(np.float16).astype(np.float32)  # as the fp16 checkpoint holds it
        z = np.clip(np.round(-lo / s), 1, 15)  # >= 1: GPTQ v1 stores zero - 1
        q[:, cols] = np.clip(np.round(w[:, cols] / s[:, None] + z[:, None]), 0, 15)
        scales[:, g], zeros[:, g] = s, z
    return q, scales, zeros


def dequant(q, scales, zeros, group):
    g = np.arange(q.shape[1]) // group
    return ((q.astype(np.float32) - zeros[:, g]) * scales[:, g]).astype(np.float32)


def pack_awq(q, scales, zeros):
    """AutoAWQ WQLinear_GEMM.from_linear: intweight [in, out]; word c of a row holds columns 8c + AWQ_ORDER[i]."""
    def pack(m):  # m: [rows, out] levels
        words = np.zeros((m.shape[0], m.shape[1] // 8), np.uint32)
        for c in range(m.shape[1] // 8):
            for i, col in enumerate(AWQ_ORDER):
                words[:, c] |= m[:, c * 8 + col].astype(np.uint32) << (4 * i)
        return words.view(np.int32)
    return {"qweight": pack(q.T), "qzeros": pack(zeros.T), "scales": scales.T.astype(np.float16)}


def pack_gptq_v1(q, scales, zeros, group):
    """AutoGPTQ QuantLinear.pack (4 bits): qweight [in/8, out] along the input, qzeros [groups, out/8] = zero - 1."""
    out, k = q.shape
    qweight = np.zeros((k // 8, out), np.uint32)
    for j in range(8):
        qweight |= q.T[j::8].astype(np.uint32) << (4 * j)
    zm1 = (zeros.T.astype(np.uint32) - 1) & 0xF  # [groups, out]
    qzeros = np.zeros((zm1.shape[0], out // 8), np.uint32)
    for j in range(8):
        qzeros |= zm1[:, j::8] << (4 * j)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32),
            "scales": scales.T.astype(np.float16), "g_idx": (np.arange(k) // group).astype(np.int32)}


def pack_olive(q, scales, zeros, bits=4):
    """olive-ai 0.13 QuantLinear.from_tensors (olive/common/quant/nn.py) with pack_to_uint8 (utils.py): each row
    zero-padded to a multiple of 8 / bits, value i of each pack at bits i * bits; qweight [out, ceil(in*bits/8)],
    qzeros [out, ceil(groups*bits/8)] holding the zero point itself; scales [out, groups] in the model dtype."""
    def pack_to_uint8(t):  # t: [rows, cols] levels < 2^bits
        pf = 8 // bits
        t = np.pad(t.astype(np.uint8), ((0, 0), (0, (-t.shape[1]) % pf)))
        packed = np.zeros((t.shape[0], t.shape[1] // pf), np.uint8)
        for i in range(pf):
            packed |= t[:, i::pf] << np.uint8(bits * i)
        return packed
    return {"qweight": pack_to_uint8(q), "qzeros": pack_to_uint8(zeros), "scales": scales.astype(np.float32)}


def make_folders(tmp: Path, donor: Path, method: str, group: int):
    """(quantized folder, float folder with the dequantized weights, dequantized weights by HF prefix)."""
    tensors = load_file(str(TINY / "model.safetensors"))
    config = json.loads((TINY / "config.json").read_text())
    quant, ref, deq = {}, {}, {}
    for name, t in tensors.items():
        prefix = name[: -len(".weight")]
        if name.endswith(".weight") and any(prefix.endswith(l) for l in LINEARS):
            q, s, z = rtn(t, group)
            deq[prefix] = dequant(q, s, z, group)
            ref[name] = deq[prefix]
            if method == "awq":
                packed = pack_awq(q, s, z)
            elif method == "olive":
                packed = pack_olive(q, s, z)
            else:
                packed = pack_gptq_v1(q, s, z, group)
            quant.update({f"{prefix}.{k}": v for k, v in packed.items()})
        else:
            quant[name] = ref[name] = t
    qcfg = {
        "awq": {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"},
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False, "sym": False,
                 "checkpoint_format": "gptq"},
        # as olive-ai 0.13 writes it (OliveHfQuantizationConfig.to_dict)
        "olive": {"bits": 4, "embeds": False, "group_size": group, "lm_head": False, "modules_to_not_convert": None,
                  "overrides": None, "quant_method": "olive", "symmetric": False, "tie_word_embeddings": False},
    }[method]
    dirs = []
    for sub, weights, cfg in [("quant", quant, {**config, "quantization_config": qcfg}), ("ref", ref, config)]:
        d = tmp / sub
        d.mkdir()
        # contiguous: safetensors writes an array's memory as is (a transposed view would land transposed)
        weights = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(cfg))
        for f in TOKENIZER_FILES:
            shutil.copy(donor / f, d / f)
        dirs.append(d)
    return dirs[0], dirs[1], deq


def export(olive_host: Path, model: Path, out: Path, *extra: str) -> Path:
    result = subprocess.run(
        [str(olive_host), "auto-opt", "-m", str(model), "-o", str(out), "--use_ort_genai", *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return out / "model"


def matmul_nbits_weight(inits: dict, module: str, k: int) -> np.ndarray:
    """Dequantizes a com.microsoft MatMulNBits (4 bits) by its layout: B uint8 [N, blocks, blob] low nibble
    first, scales [N, blocks], zero points uint8 [N, ceil(blocks/2)] low nibble first."""
    b = inits[f"{module}.MatMul.weight_Q4"]
    n, blocks, blob = b.shape
    vals = np.stack([b & 0xF, b >> 4], -1).reshape(n, blocks, blob * 2).astype(np.float32)
    scales = inits[f"{module}.MatMul.weight_scales"].reshape(n, blocks).astype(np.float32)
    zp = inits.get(f"{module}.MatMul.weight_zero_points")
    if zp is None:  # symmetric: zero point 8
        zp = np.full((n, blocks), 8, np.float32)
    else:
        zp = np.stack([zp & 0xF, zp >> 4], -1).reshape(n, -1)[:, :blocks].astype(np.float32)
    return ((vals - zp[:, :, None]) * scales[:, :, None]).reshape(n, -1)[:, :k]


@pytest.fixture(scope="module")
def donor(olive_host: Path, default_gguf: Path, tmp_path_factory) -> Path:
    """The default model as a Hugging Face folder: its tokenizer files (the tiny model's ids are < 300)."""
    out = tmp_path_factory.mktemp("donor") / "hf"
    result = subprocess.run([str(olive_host), "convert", "-m", str(default_gguf), "-o", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("method,group", [("awq", 32), ("gptq", 48), ("gptq", 64), ("olive", 32)])
def test_quantized_checkpoint_exports_exactly(olive_host: Path, donor: Path, tmp_path: Path, method: str,
                                              group: int):
    quant, ref, deq = make_folders(tmp_path, donor, method, group)
    prompt = [(i * 37) % 250 + 3 for i in range(12)]
    want = hf_logits(ref, prompt, DECODE_STEPS)

    int4 = export(olive_host, quant, tmp_path / "int4", "--precision", "int4", "--int4_accuracy_level", "1")
    model = onnx.load(str(int4 / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t, base_dir=str(int4)) for t in model.graph.initializer}
    config = json.loads((TINY / "config.json").read_text())
    for layer in range(config["num_hidden_layers"]):
        hf = f"model.layers.{layer}"
        onnx_mod = f"model.layers.{layer}"
        qkv = np.concatenate([deq[f"{hf}.self_attn.{p}"] for p in ("q_proj", "k_proj", "v_proj")])
        pairs = [(f"{onnx_mod}.attn.qkv_proj", qkv), (f"{onnx_mod}.attn.o_proj", deq[f"{hf}.self_attn.o_proj"])]
        pairs += [(f"{onnx_mod}.mlp.{p}", deq[f"{hf}.mlp.{p}"]) for p in ("gate_proj", "up_proj", "down_proj")]
        for module, w in pairs:
            got = matmul_nbits_weight(inits, module, w.shape[1])
            assert got.shape == w.shape, module
            np.testing.assert_array_equal(got, w, err_msg=f"{method} group {group}: {module}")
    # the tied lm_head is not quantized in the checkpoint, so int4 quantizes it (RTN): the int4 reference has
    # that untied lm_head, dequantized from the export
    tensors = load_file(str(ref / "model.safetensors"))
    tensors["lm_head.weight"] = matmul_nbits_weight(inits, "lm_head", config["hidden_size"])
    save_file(tensors, str(ref / "model.safetensors"), metadata={"format": "pt"})
    (ref / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    diff_int4 = max_abs_diff(ort_logits(int4, prompt, DECODE_STEPS), hf_logits(ref, prompt, DECODE_STEPS))

    fp32 = export(olive_host, quant, tmp_path / "fp32")
    diff_fp32 = max_abs_diff(ort_logits(fp32, prompt, DECODE_STEPS), want)
    scale = max(float(np.abs(x).max()) for x in want)
    print(f"{method} group {group}: max |logits diff| int4 {diff_int4:.2e}, fp32 {diff_fp32:.2e} "
          f"(logit scale {scale:.2f})")
    assert diff_int4 <= LOGITS_TOL * max(scale, 1.0)
    assert diff_fp32 <= LOGITS_TOL * max(scale, 1.0)


def test_a_g_idx_that_is_no_act_order_permutation_is_refused(olive_host: Path, donor: Path, tmp_path: Path):
    """Act-order exports (tests/python/test_quantize.py); a g_idx whose groups are not of group_size inputs each
    cannot be gathered into the grouped layout and is refused, naming the tensor."""
    quant, _, _ = make_folders(tmp_path, donor, "gptq", 32)
    tensors = load_file(str(quant / "model.safetensors"))
    name = "model.layers.0.self_attn.o_proj.g_idx"
    tensors[name] = np.zeros_like(tensors[name])
    save_file(tensors, str(quant / "model.safetensors"), metadata={"format": "pt"})
    result = subprocess.run(
        [str(olive_host), "auto-opt", "-m", str(quant), "-o", str(tmp_path / "ao"), "--use_ort_genai",
         "--precision", "int4"], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert "not a GPTQ act-order permutation" in result.stderr and "o_proj" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def pack_example() -> Path:
    """The `pack_quantized` example of olive-model (our Rust writers), built in release mode."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "olive-model", "--example", "pack_quantized"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "release" / "examples" / "pack_quantized"
    if not path.is_file():
        pytest.fail(f"cargo built the pack_quantized example but {path} is missing")
    return path


@pytest.mark.parametrize("method,group,shapes", [
    ("awq", 32, [(64, 128), (16, 32)]),
    ("gptq", 32, [(64, 48), (8, 128)]),   # 48 inputs: a ragged last group of 16
    ("gptq", 128, [(32, 128)]),
])
def test_our_writers_match_the_published_packing(pack_example: Path, tmp_path: Path, method: str, group: int,
                                                 shapes):
    """Our Rust writers' tensors equal the independent numpy packing byte for byte, and numpy's unpack of them
    gives the levels back (so transformers' AWQ / GPTQ loaders, which follow these layouts, read what we write)."""
    rng = np.random.default_rng(0)
    inputs, want = {}, {}
    for i, (out, k) in enumerate(shapes):
        q, s, z = rtn(rng.standard_normal((out, k)).astype(np.float32), group)
        inputs.update({f"l{i}.q": q, f"l{i}.scales": s, f"l{i}.zeros": z})
        packed = pack_awq(q, s, z) if method == "awq" else pack_gptq_v1(q, s, z, group)
        want.update({f"l{i}.{k}": v for k, v in packed.items()})
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, str(tmp_path / "in.safetensors"))
    result = subprocess.run([str(pack_example), method, str(group), str(tmp_path / "in.safetensors"),
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    ours = load_file(str(tmp_path / "out.safetensors"))
    assert sorted(ours) == sorted(want)
    for name, w in want.items():
        assert ours[name].dtype == w.dtype and ours[name].shape == w.shape, name
        np.testing.assert_array_equal(ours[name], w, err_msg=name)


def test_awq_writer_refuses_a_ragged_group(pack_example: Path, tmp_path: Path):
    q, s, z = rtn(np.ones((8, 48), np.float32), 32)
    save_file({"l.q": q, "l.scales": s, "l.zeros": z}, str(tmp_path / "in.safetensors"))
    result = subprocess.run([str(pack_example), "awq", "32", str(tmp_path / "in.safetensors"),
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "does not divide in_features 48" in result.stderr, result.stderr
    assert not (tmp_path / "out.safetensors").exists()
