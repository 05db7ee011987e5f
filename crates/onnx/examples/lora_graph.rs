//! A two-linear ONNX model with LoRA branches (as onnxruntime-genai names them) run through ExtractAdapters, and a
//! dump of `.onnx_adapter` files as JSON: the fixture tests/python/test_adapters.py checks in ONNX Runtime.
//!
//! `lora_graph write OUT_DIR [float16]`: OUT_DIR/{model.onnx, model.onnx.data, adapter_weights.onnx_adapter,
//! reference.json}, weights and activations in float32 (or float16)
//! `lora_graph dump FILE`: the adapter's versions and parameters (raw_data as hex) on stdout.
//! `lora_graph extract SRC_DIR OUT_DIR`: ExtractAdapters on SRC_DIR/model.onnx (e.g. onnxruntime-genai's builder output).

use std::path::Path;

use olive_onnx::adapter_format::Adapter;
use olive_onnx::extract_adapters::{
    emit_lora, extract_adapters, extract_adapters_folder, LoraBranch,
};
use olive_onnx::graph::{Dim, GraphBuilder};
use olive_onnx::proto::ModelProto;
use olive_onnx::tensor::{float_bytes, DataType};
use prost::Message;
use serde_json::{json, Value};

/// (node path, in, out, rank, scale) of the two linears: x [batch, 8] -> [batch, 6] -> [batch, 5]. One rank for all:
/// ONNX Runtime binds the symbolic `lora_r` to one size per run.
const LINEARS: [(&str, usize, usize, usize, f32); 2] = [
    ("/model/layers.0/attn/q_proj", 8, 6, 3, 2.0),
    ("/model/layers.0/mlp/down_proj", 6, 5, 3, 0.5),
];

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 101) % 200) as f32 / 100.0 - 1.0)
        .collect()
}

fn write(out: &Path, dtype: DataType) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(out)?;
    let mut g = GraphBuilder::create(out, "model.onnx")?;
    g.input("x", dtype, &[Dim::sym("batch"), Dim::from(8)]);
    let mut x = "x".to_string();
    let mut reference = Vec::new();
    for (i, &(path, n_in, n_out, rank, scale)) in LINEARS.iter().enumerate() {
        let w = values(n_in * n_out, 10 * i + 1); // [in, out]
        let a = values(rank * n_in, 10 * i + 2); // PEFT [rank, in]
        let b = values(n_out * rank, 10 * i + 3); // PEFT [out, rank]
        let weight = format!(
            "{}.MatMul.weight",
            path.trim_start_matches('/').replace('/', ".")
        );
        let w_name = g.initializer(
            &weight,
            dtype,
            &[n_in as i64, n_out as i64],
            &float_bytes(&w, dtype).ok_or("float32 or float16")?,
        )?;
        let base = g.node(
            "",
            "MatMul",
            &format!("{path}/MatMul"),
            &[&x, &w_name],
            vec![],
        )?;
        let branch = LoraBranch {
            path,
            in_features: n_in,
            out_features: n_out,
            rank,
            a: &a,
            b: &b,
            scale,
        };
        x = emit_lora(&mut g, &branch, dtype, &x, &base)?;
        reference.push(
            json!({"path": path, "w": w, "a": a, "b": b, "rank": rank, "scale": scale,
                              "in": n_in, "out": n_out}),
        );
    }
    g.node_outputs("", "Identity", "/y", &[&x], &["y"], vec![])?;
    g.output("y", dtype, &[Dim::sym("batch"), Dim::from(5)]);
    let path = g.finish(&[("", 21)], "olive-rs lora_graph")?;

    let mut model = ModelProto::decode(std::fs::read(&path)?.as_slice())?;
    let parameters = extract_adapters(&mut model, out)?;
    let temp = out.join(".model.onnx.tmp");
    std::fs::write(&temp, model.encode_to_vec())?;
    std::fs::rename(&temp, &path)?;
    Adapter {
        parameters,
        ..Adapter::default()
    }
    .write(&out.join("adapter_weights.onnx_adapter"))?;
    std::fs::write(
        out.join("reference.json"),
        Value::Array(reference).to_string(),
    )?;
    Ok(())
}

fn dump(file: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let adapter = Adapter::read(file)?;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let params: Vec<Value> = adapter
        .parameters
        .iter()
        .map(|p| json!({"name": p.name, "dims": p.dims, "data_type": p.data_type, "raw_data": hex(&p.raw_data)}))
        .collect();
    let doc = json!({"adapter_version": adapter.adapter_version, "model_version": adapter.model_version,
                     "parameters": params});
    println!("{doc}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..).unwrap_or_default() {
        [mode, path] if mode == "write" => write(Path::new(path), DataType::Float),
        [mode, path, dtype] if mode == "write" && dtype == "float16" => write(Path::new(path), DataType::Float16),
        [mode, path] if mode == "dump" => dump(Path::new(path)),
        [mode, src, out] if mode == "extract" => {
            extract_adapters_folder(Path::new(src), "model.onnx", Path::new(out))
                .map(|n| println!("{n} adapter parameters"))
                .map_err(Into::into)
        }
        _ => Err(
            "usage: lora_graph write OUT_DIR [float16] | dump FILE.onnx_adapter | extract SRC_DIR OUT_DIR"
                .into(),
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
