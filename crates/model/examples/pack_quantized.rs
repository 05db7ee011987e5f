//! Packs unpacked quantized linears into the AutoAWQ GEMM or GPTQ v1 checkpoint layout with
//! `olive_model::quantized` (its writers), for tests/python/test_quantized_layouts.py.
//!
//! `pack_quantized <awq|gptq> <group_size> <in.safetensors> <out.safetensors>`: the input holds, per linear
//! `<p>`, `<p>.q` U8 [out, in] levels, `<p>.scales` F32 [out, groups], `<p>.zeros` U8 [out, groups]; the output
//! holds `<p>.qweight`, `<p>.qzeros`, `<p>.scales` (and `<p>.g_idx` for GPTQ).

use std::collections::BTreeSet;
use std::error::Error;
use std::path::Path;

use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1, PackedTensor, QuantizedLinear};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A 2-D tensor's shape and bytes.
type Tensor2<'a> = (Vec<usize>, &'a [u8]);

fn tensor<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
) -> Result<Tensor2<'a>, Box<dyn Error>> {
    let t = st.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    if t.dtype() != dtype || t.shape().len() != 2 {
        return Err(format!(
            "{name}: expected 2-D {dtype:?}, found {:?} {:?}",
            t.dtype(),
            t.shape()
        )
        .into());
    }
    Ok((t.shape().to_vec(), t.data()))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, layout, group, input, output] = &args[..] else {
        return Err(
            "usage: pack_quantized <awq|gptq> <group_size> <in.safetensors> <out.safetensors>"
                .into(),
        );
    };
    let group_size: usize = group
        .parse()
        .map_err(|_| format!("group_size: expected a positive integer, not {group}"))?;
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{input}: {e}"))?;
    let prefixes: BTreeSet<&str> = st
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(".q"))
        .collect();
    let mut packed: Vec<(String, PackedTensor)> = Vec::new();
    for p in prefixes {
        let (shape, q) = tensor(&st, &format!("{p}.q"), Dtype::U8)?;
        let (_, scales) = tensor(&st, &format!("{p}.scales"), Dtype::F32)?;
        let (_, zeros) = tensor(&st, &format!("{p}.zeros"), Dtype::U8)?;
        let linear = QuantizedLinear {
            bits: 4,
            group_size,
            in_features: shape[1],
            out_features: shape[0],
            q: q.to_vec(),
            scales: scales
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            zeros: zeros.to_vec(),
            g_idx: None,
        };
        let tensors = match layout.as_str() {
            "awq" => pack_awq_gemm(&linear)?,
            "gptq" => pack_gptq_v1(&linear)?,
            other => return Err(format!("layout: expected awq or gptq, not {other}").into()),
        };
        packed.extend(tensors.into_iter().map(|t| (format!("{p}.{}", t.0), t)));
    }
    let views = packed
        .iter()
        .map(|(name, (_, d, s, b))| Ok((name.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let out = Path::new(output);
    let tmp = out.with_extension("tmp");
    safetensors::serialize_to_file(views, None, &tmp)?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{output}: {e}"))?;
    Ok(())
}
