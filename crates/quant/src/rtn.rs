//! Round-to-nearest quantization on GPTQ's min-max grid (`grid`): each group of each output row gets
//! its own scale and zero point; no calibration data.

use olive_model::quantized::QuantizedLinear;
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::grid::{dequantize_value, group_params, quantize_value, QuantSpec};

/// Checks `weight` is a finite [out, in] buffer with in > 0 and a valid spec.
pub(crate) fn check_weight(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    spec: &QuantSpec,
) -> Result<()> {
    spec.validate()?;
    if in_features == 0 || out_features == 0 || weight.len() != out_features * in_features {
        return Err(QuantError::Shape {
            what: "weight",
            shape: format!("[{out_features}, {in_features}], both positive"),
            expected: out_features * in_features,
            got: weight.len(),
        });
    }
    if let Some(p) = weight.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite {
            out_features,
            in_features,
            row: p / in_features,
            col: p % in_features,
            value: weight[p],
        });
    }
    Ok(())
}

/// Round-to-nearest: weight [out, in] row-major → levels, scales and zero points [out, groups].
pub fn rtn(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    spec: &QuantSpec,
) -> Result<QuantizedLinear> {
    check_weight(weight, out_features, in_features, spec)?;
    let (k, gl, groups) = (
        in_features,
        spec.group_len(in_features),
        spec.n_groups(in_features),
    );
    let mut q = vec![0u8; out_features * k];
    let mut scales = vec![0f32; out_features * groups];
    let mut zeros = vec![0u8; out_features * groups];
    q.par_chunks_mut(k)
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .zip(weight.par_chunks(k))
        .for_each(|(((q, s), z), w)| {
            for (g, (w, q)) in w.chunks(gl).zip(q.chunks_mut(gl)).enumerate() {
                let (scale, zero) = group_params(w, spec.bits, spec.sym);
                (s[g], z[g]) = (scale, zero);
                for (q, &x) in q.iter_mut().zip(w) {
                    *q = quantize_value(x, scale, zero, spec.bits);
                }
            }
        });
    Ok(QuantizedLinear {
        bits: spec.bits,
        group_size: gl,
        in_features,
        out_features,
        q,
        scales,
        zeros,
        g_idx: None,
    })
}

/// `rtn` then dequantize, without building the levels: the float weight [out, in] that RTN stands for.
pub fn fake_quantize(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    spec: &QuantSpec,
) -> Result<Vec<f32>> {
    check_weight(weight, out_features, in_features, spec)?;
    let gl = spec.group_len(in_features);
    let mut out = vec![0f32; weight.len()];
    out.par_chunks_mut(in_features)
        .zip(weight.par_chunks(in_features))
        .for_each(|(o, w)| {
            for (w, o) in w.chunks(gl).zip(o.chunks_mut(gl)) {
                let (scale, zero) = group_params(w, spec.bits, spec.sym);
                for (o, &x) in o.iter_mut().zip(w) {
                    *o = dequantize_value(quantize_value(x, scale, zero, spec.bits), scale, zero);
                }
            }
        });
    Ok(out)
}
