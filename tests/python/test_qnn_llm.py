"""An LLM on the QNN HTP simulator (issue 9): auto-opt --device npu --provider QNNExecutionProvider --precision uint16
from a Hugging Face llama (the tiny random one, head_dim 16, 2 layers; SmolLM2's figures are in the ep-qnn module
docs), the default model, and the lab's step-3 input (an int4 checkpoint fine-tuned with LoRA).

The ep-qnn `uint16` recipe for a Hugging Face input: ModelBuilder fp32 -> DynamicToFixedShape (batch 1, 64 new tokens,
past 192) -> DecomposeGroupQueryAttention static_kv -> DecomposeSkipSimplifiedLayerNormalization -> peephole ->
OnnxStaticQuantization (uint16 activations, uint8 weights).

- auto-opt succeeds, so ep-check ran the result with CPU fallback disabled, every profiled node on
  QNNExecutionProvider, outputs within the plugin's tolerance of the CPU provider's run of the same model;
- the static layout is exact in fp32: the fixed-shape graph before quantization gives the GroupQueryAttention
  export's logits for a first prompt (past slots masked) and for a continuation (the first prompt's present in the
  last past slots), within 1e-4; so does the elementwise RMSNorm form (decompose_simplified);
- the HTP run of the QDQ model on a text prompt: close to ONNX Runtime's CPU run of the same QDQ model, and to the
  fp32 export (cosine; top-1 agreement is reported, not asserted: the random tiny model's logits are nearly flat).
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from qnn import QNN, qnn_env, qnn_session, run  # noqa: F401 (qnn_env: the module's fixture)

S, T = 64, 256  # the recipe's new tokens per run and window
PROMPT = ("The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its cafes. "
          "Every year millions of travellers visit the city to see its monuments, walk along the Seine and enjoy "
          "the food. The best time to go is in spring, when the weather is mild and the parks are green.")


def cpu(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def kv_inputs(session: ort.InferenceSession) -> list:
    return [i for i in session.get_inputs() if i.name.startswith("past_key_values")]


def static_feed(ids, past: dict, valid_past: int, first_position: int, session) -> dict:
    """The static model's inputs: `past` ([1, kv, k, d] each) in the last k of the 192 past slots, the rest masked."""
    p = T - S
    feed = {"input_ids": ids, "position_ids": np.arange(first_position, first_position + S, dtype=np.int64)[None],
            "attention_mask": np.array([[0] * (p - valid_past) + [1] * (valid_past + S)], np.int64)}
    for i in kv_inputs(session):
        buffer = np.zeros(i.shape, np.float32)
        if valid_past:
            buffer[:, :, p - valid_past:] = past[i.name]
        feed[i.name] = buffer
    return feed


def htp_vs_fp32(qdq_dir: Path, fp32_dir: Path, tokenizer: Path) -> tuple:
    """PROMPT's first S tokens as a first prompt: the static QDQ model in `qdq_dir` on the HTP simulator against the
    GroupQueryAttention fp32 export in `fp32_dir`; (logits cosine, top-1 agreement)."""
    ids = np.array([Tokenizer.from_file(str(tokenizer)).encode(PROMPT).ids[:S]], np.int64)
    gqa = cpu(fp32_dir / "model.onnx")
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in kv_inputs(gqa)}
    fp32 = gqa.run(["logits"], {"input_ids": ids, "attention_mask": np.ones((1, S), np.int64), **empty})[0]
    model = str(qdq_dir / "model.onnx")
    htp = qnn_session(model).run(["logits"], static_feed(ids, {}, 0, 0, cpu(model)))[0]
    cos = float((htp * fp32).sum() / np.linalg.norm(htp) / np.linalg.norm(fp32))
    return cos, float((htp.argmax(-1) == fp32.argmax(-1)).mean())

def test_auto_opt_puts_a_hugging_face_llm_fully_on_the_htp_simulator(olive_host, qnn_env, tiny, tmp_path):
    out = tmp_path / "qnn"
    done = run([olive_host, "auto-opt", "-m", tiny, *QNN, "--precision", "uint16", "-o", out], env=qnn_env)
    assert done.returncode == 0, done.stderr
    model = out / "model" / "model.onnx"
    assert (out / "model" / "genai_config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    meta = json.loads(done.stdout[done.stdout.index("{"):])["metadata"]
    assert meta["static_quantization"]["activation_type"] == "QUInt16", meta
    assert meta["static_quantization"]["calibration_data"] == "the project's calibration text", meta
    # The residual stream adds in float (float_residual): each of its Adds reads the previous sum, not a DQ; the
    # lm_head weight is per tensor (TensorQuantOverrides), the other MatMul weights per channel.
    graph = onnx.load(model, load_external_data=False).graph
    adds = {n.output[0]: n for n in graph.node if n.op_type == "Add"}
    chained = [n for n in adds.values() if any(i in adds for i in n.input)]
    assert len(chained) >= 3, [n.name for n in chained]  # 2 layers: 2 x 2 - 1 sums read a sum
    scales = {i.name: list(i.dims) for i in graph.initializer if i.name.endswith("MatMul.weight_scale")}
    assert scales.pop("lm_head.MatMul.weight_scale") == [], "lm_head weight per channel"
    assert scales and all(len(d) == 1 and d[0] > 1 for d in scales.values()), scales

    # The same recipe without the quantization, and the plain fp32 export (GroupQueryAttention) as the reference.
    ref_dir = tmp_path / "cpu"
    done = run([olive_host, "auto-opt", "-m", tiny, "--device", "cpu", "--precision", "fp32", "-o", ref_dir])
    assert done.returncode == 0, done.stderr
    steps = [("DynamicToFixedShape", {"dim_param": ["batch_size", "sequence_length", "past_sequence_length",
                                                    "total_sequence_length"], "dim_value": [1, S, T - S, T]}),
             ("DecomposeGroupQueryAttention", {"static_kv": True, "mask_value": -100.0}),
             ("DecomposeSkipSimplifiedLayerNormalization", {})]
    current = ref_dir / "model"
    for i, (name, config) in enumerate(steps):
        done = run([olive_host, "run-pass", "--pass", name, "--pass-config", json.dumps(config), "-m", current,
                    "-o", tmp_path / f"step{i}"])
        assert done.returncode == 0, done.stderr
        current = tmp_path / f"step{i}" / "model"
    static_fp32, gqa = cpu(current / "model.onnx"), cpu(ref_dir / "model" / "model.onnx")

    ids = np.array([Tokenizer.from_file(str(tiny / "tokenizer.json")).encode(PROMPT + " " + PROMPT).ids[:2 * S]], np.int64)
    assert ids.shape == (1, 2 * S)
    kv = kv_inputs(gqa)
    names = [o.name for o in gqa.get_outputs()]
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in kv}
    first = dict(zip(names, gqa.run(None, {"input_ids": ids[:, :S], "attention_mask": np.ones((1, S), np.int64),
                                           **empty})))
    presents = {i.name: first[i.name.replace("past_key_values", "present")] for i in kv}
    second = gqa.run(["logits"], {"input_ids": ids[:, S:], "attention_mask": np.ones((1, 2 * S), np.int64),
                                  **presents})[0]
    got = static_fp32.run(["logits"], static_feed(ids[:, :S], {}, 0, 0, static_fp32))[0]
    assert np.abs(got - first["logits"]).max() <= 1e-4
    got = static_fp32.run(["logits"], static_feed(ids[:, S:], presents, S, S, static_fp32))[0]
    assert np.abs(got - second).max() <= 1e-4
    # Olive's elementwise RMSNorm form of every SimplifiedLayerNormalization: the same logits.
    done = run([olive_host, "run-pass", "--pass", "DecomposeSkipSimplifiedLayerNormalization", "--pass-config",
                json.dumps({"decompose_simplified": True}), "-m", tmp_path / "step1" / "model", "-o", tmp_path / "rms"])
    assert done.returncode == 0, done.stderr
    elementwise = cpu(tmp_path / "rms" / "model" / "model.onnx")
    assert not any(n.op_type.endswith("LayerNormalization") for n in onnx.load(
        tmp_path / "rms" / "model" / "model.onnx", load_external_data=False).graph.node)
    got = elementwise.run(["logits"], static_feed(ids[:, :S], {}, 0, 0, elementwise))[0]
    assert np.abs(got - first["logits"]).max() <= 1e-4

    # The QDQ model on the HTP simulator (fallback off) vs its CPU run and vs fp32, first prompt.
    qdq = cpu(model)
    feed = static_feed(ids[:, :S], {}, 0, 0, qdq)
    htp = qnn_session(str(model)).run(["logits"], feed)[0]
    on_cpu = qdq.run(["logits"], feed)[0]
    fp32 = first["logits"]
    cos = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    top1 = float((htp.argmax(-1) == fp32.argmax(-1)).mean())
    print(f"HTP vs CPU QDQ max {np.abs(htp - on_cpu).max():.3f}; cosine to fp32: HTP {cos(htp, fp32):.3f}, "
          f"CPU QDQ {cos(on_cpu, fp32):.3f}; top-1 HTP vs fp32 {top1:.2f}")
    assert np.abs(htp - on_cpu).max() <= 3.0 + 0.1 * np.abs(on_cpu).max()
    assert cos(htp, on_cpu) >= 0.99
    assert cos(htp, fp32) >= 0.99


def test_auto_opt_puts_the_default_model_on_the_htp_simulator(olive_host, qnn_env, tmp_path):
    """SmolLM2-135M (the default model, tests/golden's HF folder) through the QNN uint16 recipe: auto-opt's ep-check
    passes (every node on QNN, fallback off; the passage on an empty static cache within ep-qnn's tolerance of the
    CPU run) and a text prompt on the HTP stays close to the fp32 export (measured: cosine 0.997, top-1 0.89). ~80 s."""
    from conftest import tokenizer_donor

    src = tokenizer_donor()
    out = tmp_path / "qnn"
    done = run([olive_host, "auto-opt", "-m", src, *QNN, "--precision", "uint16", "-o", out], env=qnn_env)
    assert done.returncode == 0, done.stderr
    ref = tmp_path / "cpu"
    done = run([olive_host, "auto-opt", "-m", src, "--device", "cpu", "--precision", "fp32", "-o", ref])
    assert done.returncode == 0, done.stderr
    cos, top1 = htp_vs_fp32(out / "model", ref / "model", src / "tokenizer.json")
    print(f"SmolLM2 HTP cosine to fp32 {cos:.4f}, top-1 {top1:.2f}")
    assert cos >= 0.99


def test_the_labs_adapter_is_merged_into_the_qdq_model(olive_host, qnn_env, tiny, tmp_path):
    """The lab's step 3 flags (--adapter_path, --use_ort_genai) on QNN: the recipe's ModelBuilder merges the LoRA into
    the weights (merge_adapter: QDQ quantizes every weight, so no switchable float adapter, no adapter file), ep-check
    passes, and the HTP's logits follow PEFT's merged model rather than the base model."""
    import torch
    from peft import PeftModel
    from test_adapters import make_adapter
    from transformers import AutoModelForCausalLM

    make_adapter(tiny, tmp_path / "adapter", ["q_proj", "v_proj", "o_proj", "down_proj"])
    out = tmp_path / "qnn"
    done = run([olive_host, "auto-opt", "-m", tiny, "--adapter_path", tmp_path / "adapter", *QNN, "--precision",
                "uint16", "--use_ort_genai", "-o", out], env=qnn_env)
    assert done.returncode == 0, done.stderr
    assert not (out / "model" / "adapter_weights.onnx_adapter").exists()
    model = str(out / "model" / "model.onnx")
    assert not [i.name for i in onnx.load(model, load_external_data=False).graph.input if "lora" in i.name]

    ids = np.array([Tokenizer.from_file(str(tiny / "tokenizer.json")).encode(PROMPT).ids[:S]], np.int64)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.no_grad():
        plain = base(torch.from_numpy(ids)).logits.numpy()
        merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload()(
            torch.from_numpy(ids)).logits.numpy()
    htp = qnn_session(model).run(["logits"], static_feed(ids, {}, 0, 0, cpu(model)))[0]
    cos = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    print(f"HTP cosine to PEFT's merged model {cos(htp, merged):.4f}, to the base model {cos(htp, plain):.4f}; "
          f"merged vs base {cos(merged, plain):.4f}")
    assert cos(merged, plain) < 0.99  # the adapter changes the logits
    assert cos(htp, merged) >= 0.99


def test_the_labs_quantized_and_fine_tuned_model_passes_on_the_htp_simulator(olive_host, qnn_env, tmp_path):
    """The lab's real step-3 input, on the default model: an int4 checkpoint (quantize) fine-tuned with LoRA (finetune,
    a few steps), then auto-opt with --adapter_path on QNN. ep-check passes on the passage its tokenizer encodes (the
    report says so), and the HTP follows the fp32 export of the same merged weights on a text prompt. ~100 s."""
    from conftest import tokenizer_donor

    src = tokenizer_donor()
    done = run([olive_host, "quantize", "-m", src, "--algorithm", "rtn", "--precision", "int4", "-o", tmp_path / "q"])
    assert done.returncode == 0, done.stderr
    done = run([olive_host, "finetune", "--method", "lora", "-m", tmp_path / "q",
                "--data_files", Path(__file__).parents[2] / "data" / "data_sample_travel.jsonl", "--data_name", "json",
                "--text_template", "<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>",
                "--max_steps", "4", "--per_device_train_batch_size", "1", "--max_seq_len", "256",
                "-o", tmp_path / "ft"])
    assert done.returncode == 0, done.stderr
    ft = tmp_path / "ft"
    out = tmp_path / "qnn"
    done = run([olive_host, "auto-opt", "-m", ft / "model", "--adapter_path", ft / "adapter", *QNN,
                "--precision", "uint16", "--use_ort_genai", "--log_level", "1", "-o", out], env=qnn_env)
    assert done.returncode == 0, done.stderr
    assert "the passage, tokenized by the model's tokenizer.json" in done.stderr, done.stderr

    ref = tmp_path / "fp32"
    done = run([olive_host, "run-pass", "--pass", "ModelBuilder", "--pass-config",
                json.dumps({"precision": "fp32", "merge_adapter": True}), "-m", ft / "model",
                "--adapter_path", ft / "adapter", "-o", ref])
    assert done.returncode == 0, done.stderr
    cos, top1 = htp_vs_fp32(out / "model", ref / "model", src / "tokenizer.json")
    print(f"int4 + LoRA SmolLM2: HTP cosine to the merged fp32 export {cos:.4f}, top-1 {top1:.2f}")
    assert cos >= 0.99
