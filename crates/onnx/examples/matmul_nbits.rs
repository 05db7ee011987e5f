//! Writes a one-node `com.microsoft::MatMulNBits` model (ONNX Runtime contrib op) from our packing, for the
//! end-to-end check against ONNX Runtime's quantizer and kernel (tests/python/test_matmul_nbits.py).
//!
//! ```text
//! matmul_nbits quantize     W.f32 N K BITS BLOCK sym|asym f32|f16 ACCURACY OUT_DIR
//! matmul_nbits prequantized Q.u8 SCALES.f32 ZP.u8|- N K GROUP BITS BLOCK f32|f16 ACCURACY OUT_DIR
//! ```
//! Raw little-endian files: `W: f32 [N, K]`, `Q: u8 [N, K]`, `SCALES: f32 [N, n_groups]`, `ZP: u8 [N, n_groups]`
//! (`-`: symmetric). ACCURACY `-` leaves the attribute off. OUT_DIR gets `model.onnx` (+ `model.onnx.data`):
//! input `A: [M, K]`, one output `[M, N]`, in the scales' type; opset ai.onnx 21, com.microsoft 1.

use std::error::Error;
use std::path::Path;

use olive_onnx::graph::{Dim, GraphBuilder};
use olive_onnx::matmul_nbits::{pack_prequantized, quantize, MatMulNBitsWeights, NBitsConfig};
use olive_onnx::tensor::DataType;

fn read_f32(path: &str) -> Result<Vec<f32>, Box<dyn Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("{path}: {} bytes is not a whole number of f32", bytes.len()).into());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_u8(path: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    Ok(std::fs::read(path).map_err(|e| format!("{path}: {e}"))?)
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, Box<dyn Error>> {
    s.parse()
        .map_err(|_| format!("{what}: cannot parse {s:?}").into())
}

fn config(
    bits: &str,
    block: &str,
    symmetric: bool,
    dtype: &str,
    accuracy: &str,
) -> Result<NBitsConfig, Box<dyn Error>> {
    let scale_type = match dtype {
        "f32" => DataType::Float,
        "f16" => DataType::Float16,
        other => return Err(format!("scale type must be f32 or f16, got {other:?}").into()),
    };
    let accuracy_level = match accuracy {
        "-" => None,
        level => Some(parse("ACCURACY", level)?),
    };
    Ok(NBitsConfig {
        bits: parse("BITS", bits)?,
        block_size: parse("BLOCK", block)?,
        symmetric,
        scale_type,
        accuracy_level,
    })
}

fn write_model(w: &MatMulNBitsWeights, out_dir: &Path) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let dtype = w.config.scale_type;
    let mut g = GraphBuilder::create(out_dir, "model.onnx")?;
    g.input("A", dtype, &[Dim::sym("M"), Dim::from(w.k)]);
    let y = w.add_to_graph(&mut g, "linear.MatMul.weight", "/linear/MatMul_Q", "A")?;
    g.output(&y, dtype, &[Dim::sym("M"), Dim::from(w.n)]);
    g.finish(
        &[("", 21), ("com.microsoft", 1)],
        "olive-rs matmul_nbits example",
    )?;
    Ok(())
}

fn run(args: &[String]) -> Result<(), Box<dyn Error>> {
    let usage = "usage: matmul_nbits quantize W.f32 N K BITS BLOCK sym|asym f32|f16 ACCURACY OUT_DIR\n       \
                 matmul_nbits prequantized Q.u8 SCALES.f32 ZP.u8|- N K GROUP BITS BLOCK f32|f16 ACCURACY OUT_DIR";
    match args {
        [mode, w, n, k, bits, block, sym, dtype, acc, out] if mode == "quantize" => {
            let symmetric = match sym.as_str() {
                "sym" => true,
                "asym" => false,
                other => return Err(format!("expected sym or asym, got {other:?}").into()),
            };
            let cfg = config(bits, block, symmetric, dtype, acc)?;
            let weights = quantize(&read_f32(w)?, parse("N", n)?, parse("K", k)?, &cfg)?;
            write_model(&weights, Path::new(out))
        }
        [mode, q, scales, zp, n, k, group, bits, block, dtype, acc, out]
            if mode == "prequantized" =>
        {
            let zero_points = if zp == "-" { None } else { Some(read_u8(zp)?) };
            let cfg = config(bits, block, zero_points.is_none(), dtype, acc)?;
            let weights = pack_prequantized(
                &read_u8(q)?,
                &read_f32(scales)?,
                zero_points.as_deref(),
                parse("N", n)?,
                parse("K", k)?,
                parse("GROUP", group)?,
                &cfg,
            )?;
            write_model(&weights, Path::new(out))
        }
        _ => Err(usage.into()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("matmul_nbits: {e}");
        std::process::exit(1);
    }
}
