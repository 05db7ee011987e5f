//! Int4 weights for the tests: asymmetric min-max rounding of a float weight into the unpacked levels that
//! crates/model's AutoAWQ GEMM and GPTQ v1 packers take.

use olive_model::quantized::QuantizedLinear;

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
