"""fusion's DecomposeGroupQueryAttention (com.microsoft GroupQueryAttention as standard ONNX ops, for OpenVINO)
against GroupQueryAttention itself on onnxruntime's CPU provider, fp32, within 1e-4:

- ModelBuilder's exports (packed QKV, rotary from cos/sin caches; tiny llama and the LongRoPE Phi-3 whose caches
  switch past 32 tokens): a batch-2 prompt, a decode step with the growing KV cache, the same step with
  onnxruntime-genai's shared buffer (past of max length, present written in place), a right-padded prompt (valid rows),
  a second prompt chunk after a cache, a 40-token prompt; and onnxruntime-genai 0.18 generates the same greedy tokens;
- a hand-built GroupQueryAttention with separate Q/K/V, interleaved partial rotary and a local window.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

TOL = 1e-4


def decompose(olive_host: Path, model: Path, out: Path) -> Path:
    result = subprocess.run([str(olive_host), "run-pass", "--pass-name", "DecomposeGroupQueryAttention",
                             "-m", str(model), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    folder = out / "model" if (out / "model").is_dir() else out
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}
    assert "GroupQueryAttention" not in ops and "ScatterElements" in ops, ops
    return folder


@pytest.fixture(scope="module")
def exports(olive_host, tiny, tiny_phi3, tmp_path_factory) -> dict:
    """{case: (GroupQueryAttention export folder, decomposed folder)} for the CPU provider, fp32."""
    found = {}
    for case, model in [("llama", tiny), ("phi3_longrope", tiny_phi3)]:
        root = tmp_path_factory.mktemp(case)
        result = subprocess.run([str(olive_host), "auto-opt", "-m", str(model), "-o", str(root / "ao"),
                                 "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        found[case] = (root / "ao" / "model", decompose(olive_host, root / "ao" / "model", root / "decomposed"))
    return found


def sessions(a: Path, b: Path):
    return tuple(ort.InferenceSession(str(p / "model.onnx"), providers=["CPUExecutionProvider"]) for p in (a, b))


@pytest.mark.parametrize("case", ["llama", "phi3_longrope"])
def test_decomposed_export_matches_group_query_attention(exports, case):
    gqa, plain = sessions(*exports[case])
    past_input = next(i for i in gqa.get_inputs() if i.name == "past_key_values.0.key")
    kv_heads, head = past_input.shape[1], past_input.shape[3]
    rng = np.random.default_rng(0)

    def feed(ids, mask, past):
        f = {"input_ids": ids, "attention_mask": mask}
        for layer, (k, v) in enumerate(past):
            f[f"past_key_values.{layer}.key"], f[f"past_key_values.{layer}.value"] = k, v
        return f

    def both(f):
        a, b = gqa.run(None, f), plain.run(None, f)
        assert [x.shape for x in a] == [x.shape for x in b]
        return a, b

    def close(a, b):
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        assert diff <= TOL, diff
        assert float(np.abs(a[0]).max()) > 1e-3  # not a degenerate output

    batch, length = 2, 5
    ids = rng.integers(0, 300, (batch, length)).astype(np.int64)
    empty = [(np.zeros((batch, kv_heads, 0, head), np.float32),) * 2 for _ in range(2)]
    prompt, decoded = both(feed(ids, np.ones((batch, length), np.int64), empty))
    close(prompt, decoded)
    past = [(prompt[1 + 2 * layer], prompt[2 + 2 * layer]) for layer in range(2)]
    token = prompt[0][:, -1].argmax(-1)[:, None].astype(np.int64)
    step = feed(token, np.ones((batch, length + 1), np.int64), past)
    a, b = both(step)
    close(a, b)
    assert a[1].shape[2] == length + 1  # the cache grew by the one token
    # onnxruntime-genai's shared buffer: the past is the whole max-length buffer, present comes back the same size.
    buffer = [tuple(np.concatenate([x, np.zeros((batch, kv_heads, 40 - length, head), np.float32)], 2) for x in kv)
              for kv in past]
    a, b = both(feed(token, np.ones((batch, length + 1), np.int64), buffer))
    close(a, b)
    assert a[1].shape[2] == 40
    # Right-padded prompt: the valid rows agree (padding rows are unspecified).
    mask = np.ones((batch, length), np.int64)
    mask[1, 3:] = 0
    a, b = both(feed(ids, mask, empty))
    assert float(np.abs(a[0][1, :3] - b[0][1, :3]).max()) <= TOL
    assert float(np.abs(a[0][0] - b[0][0]).max()) <= TOL
    # A second prompt chunk of 3 tokens after the 5 cached ones (batch 1).
    first = [(k[:1], v[:1]) for k, v in past]
    close(*both(feed(ids[:1, :3], np.ones((1, length + 3), np.int64), first)))
    # 40 tokens: past Phi-3's original 32, where its long rotary factors take over.
    long_ids = rng.integers(0, 300, (1, 40)).astype(np.int64)
    close(*both(feed(long_ids, np.ones((1, 40), np.int64), [(k[:1], v[:1]) for k, v in empty])))


def test_onnxruntime_genai_generates_the_same_tokens(exports):
    import onnxruntime_genai as og

    def greedy(folder: Path) -> list[int]:
        model = og.Model(str(folder))
        tokenizer = og.Tokenizer(model)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=32, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(tokenizer.encode("what is the best thing to see in chicago"))
        tokens = []
        while not generator.is_done() and len(tokens) < 12:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens

    gqa, plain = exports["llama"]
    assert json.loads((plain / "genai_config.json").read_text()) == json.loads((gqa / "genai_config.json").read_text())
    expected = greedy(gqa)
    assert len(expected) == 12
    assert greedy(plain) == expected


def hand_built(path: Path) -> None:
    """GroupQueryAttention with separate Q/K/V ([1, S, 4*32], [1, S, 1*32]), rotary on the first 16 of 32 dims with
    interleaved pairs, a local window of 3 keys before each query, scale left to its default."""
    heads, kv_heads, head, half = 4, 1, 32, 8
    angles = np.arange(64)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
    gqa = helper.make_node(
        "GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"],
        ["out", "present_key", "present_value"], name="/attn/GroupQueryAttention", domain="com.microsoft",
        num_heads=heads, kv_num_heads=kv_heads, local_window_size=3, do_rotary=1, rotary_interleaved=1)
    past = ["batch", kv_heads, "past", head]
    graph = helper.make_graph(
        [gqa], "gqa",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "seq", heads * head]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", "seq", kv_heads * head]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", "seq", kv_heads * head]),
         helper.make_tensor_value_info("past_key", TensorProto.FLOAT, past),
         helper.make_tensor_value_info("past_value", TensorProto.FLOAT, past),
         helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info("total", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", heads * head]),
         helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["batch", kv_heads, "total", head]),
         helper.make_tensor_value_info("present_value", TensorProto.FLOAT, ["batch", kv_heads, "total", head])],
        [numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
         numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    path.mkdir(parents=True)
    onnx.save(model, path / "model.onnx")


def test_separate_qkv_interleaved_partial_rotary_and_window(olive_host, tmp_path):
    hand_built(tmp_path / "gqa")
    gqa, plain = sessions(tmp_path / "gqa", decompose(olive_host, tmp_path / "gqa", tmp_path / "plain"))
    rng = np.random.default_rng(2)

    def run(length, past_k, past_v):
        total = past_k.shape[2] + length
        f = {"q": rng.standard_normal((1, length, 128)).astype(np.float32),
             "k": rng.standard_normal((1, length, 32)).astype(np.float32),
             "v": rng.standard_normal((1, length, 32)).astype(np.float32),
             "past_key": past_k, "past_value": past_v,
             "seqlens_k": np.array([total - 1], np.int32), "total": np.array(total, np.int32)}
        a, b = gqa.run(None, f), plain.run(None, f)
        assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) <= TOL
        return a

    empty = np.zeros((1, 1, 0, 32), np.float32)
    _, k, v = run(6, empty, empty)
    run(1, k, v)  # decode: the window drops the oldest keys
