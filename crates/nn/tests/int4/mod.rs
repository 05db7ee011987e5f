//! Int4 weights for the tests: asymmetric min-max rounding of a float weight into the unpacked levels that
//! crates/model's AutoAWQ GEMM and GPTQ v1 packers take, packed in either layout with its `quantization_config`,
//! and a safetensors writer for the packed checkpoints. Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use olive_model::quantized::{pack_awq_gemm, pack_gptq_v1, QuantizedLinear};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

/// A checkpoint's tensors by name: (dtype, shape, little-endian bytes).
pub type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// The packed int4 layouts the tests write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    /// AutoAWQ GEMM.
    Awq,
    /// GPTQ v1 in a permuted order (act-order).
    GptqActOrder,
}

/// `w`: [out, k] quantized with groups of `group` and packed in `layout`, as (suffix, dtype, shape, bytes) of the
/// linear's tensors. Act-order: input i in group (7i + 3) mod groups (7 is coprime with the tests' group counts,
/// so every group gets `group` inputs where `group` divides k).
pub fn pack(
    layout: Layout,
    w: &[f32],
    out: usize,
    k: usize,
    group: usize,
) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    match layout {
        Layout::Awq => pack_awq_gemm(&quantize(w, out, k, group, None)).unwrap(),
        Layout::GptqActOrder => {
            let groups = k.div_ceil(group) as u32;
            let g_idx = (0..k as u32).map(|i| (i * 7 + 3) % groups).collect();
            pack_gptq_v1(&quantize(w, out, k, group, Some(g_idx))).unwrap()
        }
    }
}

/// The config.json `quantization_config` of `layout` with groups of `group`.
pub fn quantization_config(layout: Layout, group: usize) -> Value {
    match layout {
        Layout::Awq => {
            json!({"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm"})
        }
        Layout::GptqActOrder => json!({"quant_method": "gptq", "bits": 4, "group_size": group,
                                       "desc_act": true, "sym": false}),
    }
}

/// F32 data as the checkpoint tensor `(F32, shape, bytes)`.
pub fn f32_tensor(shape: Vec<usize>, data: &[f32]) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    (Dtype::F32, shape, bytes)
}

/// `tensors` as `dir`/model.safetensors.
pub fn write_safetensors(dir: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Asymmetric 4-bit rounding of w: [out, in] per group (groups by `g_idx` when given), zero ≥ 1.
pub fn quantize(
    w: &[f32],
    out: usize,
    k: usize,
    group: usize,
    g_idx: Option<Vec<u32>>,
) -> QuantizedLinear {
    let groups = k.div_ceil(group);
    let group_of = |i: usize| g_idx.as_ref().map_or(i / group, |g| g[i] as usize);
    let (mut scales, mut zeros) = (vec![0f32; out * groups], vec![0u8; out * groups]);
    let mut q = vec![0u8; out * k];
    for o in 0..out {
        let row = &w[o * k..(o + 1) * k];
        for g in 0..groups {
            let members = (0..k).filter(|&i| group_of(i) == g);
            let (lo, hi) =
                members.fold((0f32, 0f32), |(lo, hi), i| (lo.min(row[i]), hi.max(row[i])));
            let s = ((hi - lo) / 15.0).max(1e-6);
            scales[o * groups + g] = s;
            zeros[o * groups + g] = (-lo / s).round().clamp(1.0, 15.0) as u8;
        }
        for i in 0..k {
            let gi = o * groups + group_of(i);
            q[o * k + i] = (row[i] / scales[gi] + zeros[gi] as f32)
                .round()
                .clamp(0.0, 15.0) as u8;
        }
    }
    QuantizedLinear {
        bits: 4,
        group_size: group,
        in_features: k,
        out_features: out,
        q,
        scales,
        zeros,
        g_idx,
    }
}
