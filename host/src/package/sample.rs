//! The ready-to-run inference sample a package holds beside `model/`: for an onnxruntime-genai folder, greedy
//! generation from a prompt (the lab's app.py, on the API of onnxruntime-genai 0.5 or later); for another ONNX
//! model, one onnxruntime session run on inputs made from the graph's shapes; for a Hugging Face model, greedy
//! generation with transformers (and PEFT for an adapter).

use olive_pass_api::{kinds, Model};
use serde_json::Value;

use super::manifest::Io;

/// The sample's file name in the package.
pub const FILE: &str = "inference_sample.py";

/// A sample script and what runs it.
pub struct Sample {
    pub text: String,
    /// `onnxruntime-genai`, `onnxruntime` or `transformers`.
    pub runtime: &'static str,
    /// The pip packages it imports.
    pub requires: Vec<String>,
}

/// A Python string literal.
fn py(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "''".to_owned())
}

/// The sample for `model`.
pub fn script(model: &Model, io: &Io, provider: &str) -> anyhow::Result<Sample> {
    if let (true, Some(file)) = (io.genai, &io.onnx_file) {
        let adapter = std::fs::read_dir(&model.path)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.ends_with(".onnx_adapter"));
        let text = GENAI
            .replace(
                "{ADAPTER}",
                &adapter.as_deref().map_or("None".to_owned(), py),
            )
            .replace("{ONNX}", &py(file));
        return Ok(Sample {
            text,
            runtime: "onnxruntime-genai",
            requires: vec!["onnxruntime-genai".into(), "numpy".into()],
        });
    }
    if let Some(file) = &io.onnx_file {
        let text = ONNX
            .replace("{ONNX}", &py(file))
            .replace("{PROVIDER}", &py(provider));
        return Ok(Sample {
            text,
            runtime: "onnxruntime",
            requires: vec!["onnxruntime".into(), "numpy".into()],
        });
    }
    let config: Value = std::fs::read_to_string(model.path.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let mut requires = vec!["torch".to_owned(), "transformers".to_owned()];
    let quant = config
        .pointer("/quantization_config/quant_method")
        .and_then(Value::as_str);
    match quant {
        Some("gptq") => requires.push("gptqmodel".into()),
        Some("awq") => requires.push("autoawq".into()),
        _ => {}
    }
    if model.kind == kinds::HF_ADAPTER || !model.adapter_paths.is_empty() {
        requires.push("peft".into());
    }
    let tokenizer = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model"]
        .iter()
        .any(|f| model.path.join(f).is_file());
    let text = HF
        .replace(
            "{ADAPTER}",
            if model.adapter_paths.is_empty() {
                "None"
            } else {
                "\"adapter\""
            },
        )
        .replace("{TOKENIZER}", if tokenizer { "True" } else { "False" })
        .replace("{REQUIRES}", &requires.join(" "));
    Ok(Sample {
        text,
        runtime: "transformers",
        requires,
    })
}

const GENAI: &str = r#""""Runs the packaged model with onnxruntime-genai: greedy generation from a prompt.

    pip install onnxruntime-genai numpy
    python inference_sample.py ["your prompt"] [--max_length 64]
"""

import argparse
import os

import numpy as np
import onnxruntime_genai as og

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
ONNX_FILE = {ONNX}
ADAPTER_FILE = {ADAPTER}  # an .onnx_adapter file in model/, activated when present

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("prompt", nargs="?", default="What is the best thing to see in Chicago?")
parser.add_argument("--max_length", type=int, default=64, help="prompt plus new tokens")
args = parser.parse_args()

model = og.Model(MODEL_DIR)
tokenizer = og.Tokenizer(model)
stream = tokenizer.create_stream()
ids = np.asarray(tokenizer.encode(args.prompt), dtype=np.int32)
params = og.GeneratorParams(model)
params.set_search_options(max_length=max(args.max_length, len(ids) + 1), do_sample=False)
new_api = hasattr(og.Generator, "append_tokens")  # onnxruntime-genai >= 0.6
if not new_api:
    params.input_ids = ids
generator = og.Generator(model, params)
if ADAPTER_FILE:
    adapters = og.Adapters(model)
    adapters.load(os.path.join(MODEL_DIR, ADAPTER_FILE), "adapter")
    generator.set_active_adapter(adapters, "adapter")
if new_api:
    generator.append_tokens(ids)
print(args.prompt)
new_tokens = 0
while not generator.is_done():
    if not new_api:
        generator.compute_logits()
    generator.generate_next_token()
    print(stream.decode(generator.get_next_tokens()[0]), end="", flush=True)
    new_tokens += 1
print()
print(f"[{new_tokens} new tokens]")
"#;

const ONNX: &str = r#""""Runs the packaged ONNX model once with onnxruntime on inputs made from the graph's shapes (symbolic
dimensions 1, past-sequence dimensions 0; masks of ones, other integers 0, floats random) and prints each output.

    pip install onnxruntime numpy
    python inference_sample.py
"""

import os

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(HERE, "model", {ONNX})
PROVIDER = {PROVIDER}

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
          "tensor(bool)": np.bool_}


def dim(d):
    if isinstance(d, int):
        return d
    return 0 if d and "past" in str(d).lower() else 1


available = ort.get_available_providers()
providers = [p for p in dict.fromkeys([PROVIDER, "CPUExecutionProvider"]) if p in available]
session = ort.InferenceSession(MODEL_PATH, providers=providers)
rng = np.random.default_rng(0)
feeds = {}
for spec in session.get_inputs():
    shape = [dim(d) for d in spec.shape]
    dtype = DTYPES.get(spec.type)
    if dtype is None:
        raise SystemExit(f"input {spec.name}: type {spec.type} is not handled by this sample")
    if np.issubdtype(dtype, np.floating):
        feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    elif "mask" in spec.name:
        feeds[spec.name] = np.ones(shape, dtype=dtype)
    else:
        feeds[spec.name] = np.zeros(shape, dtype=dtype)
outputs = session.run(None, feeds)
for spec, value in zip(session.get_outputs(), outputs):
    print(f"{spec.name}: {value.dtype} {list(value.shape)}")
"#;

const HF: &str = r#""""Runs the packaged Hugging Face model with transformers: greedy generation from a prompt.

    pip install {REQUIRES}
    python inference_sample.py ["your prompt"] [--max_new_tokens 32]
"""

import argparse
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.path.join(HERE, "model")
ADAPTER = {ADAPTER}  # a PEFT adapter folder beside model/, applied when present
HAS_TOKENIZER = {TOKENIZER}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("prompt", nargs="?", default="What is the best thing to see in Chicago?")
parser.add_argument("--max_new_tokens", type=int, default=32)
args = parser.parse_args()

model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
if ADAPTER:
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, os.path.join(HERE, ADAPTER))
model.eval()
if HAS_TOKENIZER:
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
else:
    tokenizer = None
    input_ids = torch.tensor([[1, 2, 3]])  # no tokenizer files in the package: fixed token ids
with torch.no_grad():
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         max_new_tokens=args.max_new_tokens, do_sample=False)
new = out[0, input_ids.shape[1]:]
print(args.prompt)
print(tokenizer.decode(new, skip_special_tokens=True) if tokenizer else new.tolist())
print(f"[{len(new)} new tokens]")
"#;
