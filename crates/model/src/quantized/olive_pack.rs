//! The writer of Olive's `quant_method: "olive"` layout (olive-ai 0.13 `olive/common/quant/nn.py` QuantModule,
//! shared by QuantLinear and QuantEmbedding, packed by `utils.py` pack_to_uint8): `qweight` uint8
//! [rows, ceil(cols·bits/8)] along the columns, lowest bits first, each row zero-padded; `qzeros` uint8
//! [rows, ceil(G·bits/8)] the same way, the zero point itself, left out when symmetric; `scales` [rows, G] in
//! the model dtype. An embedding [vocab, hidden] is stored exactly as a linear [out, in].

use rayon::prelude::*;
use safetensors::Dtype;

use super::{unsupported, PackError, PackedTensor, QuantizedLinear};

/// `levels` [rows, cols] (each < 2^bits) → uint8 [rows, ceil(cols·bits/8)]: value c at bits (c % per)·bits of
/// byte c / per, per = 8 / bits.
fn pack_to_uint8(levels: &[u8], rows: usize, cols: usize, bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let width = cols.div_ceil(per);
    let mut out = vec![0u8; rows * width];
    out.par_chunks_mut(width.max(1))
        .zip(levels.par_chunks(cols.max(1)))
        .take(rows)
        .for_each(|(out, levels)| {
            for (c, &v) in levels.iter().enumerate() {
                out[c / per] |= v << (bits * (c % per));
            }
        });
    out
}

/// Olive tensors (`qweight`, `qzeros` unless `symmetric`, `scales` as `scale_dtype`: F32, F16 or BF16). Bits 2,
/// 4, 8; the group must divide in_features (Olive has no ragged last group); no act-order; symmetric means
/// every zero point is 2^(bits−1).
pub fn pack_olive(
    l: &QuantizedLinear,
    symmetric: bool,
    scale_dtype: Dtype,
) -> std::result::Result<Vec<PackedTensor>, PackError> {
    const L: &str = "Olive (quant_method olive)";
    let (k, n, groups) = (l.in_features, l.out_features, l.n_groups());
    if ![2, 4, 8].contains(&l.bits) {
        return Err(unsupported(
            L,
            format!("bits must be 2, 4 or 8, not {}", l.bits),
        ));
    }
    if k % l.group_size != 0 {
        return Err(unsupported(
            L,
            format!(
                "group size {} does not divide in_features {k} (Olive has no ragged last group)",
                l.group_size
            ),
        ));
    }
    if l.g_idx.is_some() {
        return Err(unsupported(
            L,
            "act-order (a permuted g_idx) has no Olive layout".into(),
        ));
    }
    l.check_levels().map_err(|r| unsupported(L, r))?;
    let max = 1u16 << l.bits;
    if let Some(z) = l.zeros.iter().find(|&&z| u16::from(z) >= max) {
        return Err(unsupported(
            L,
            format!("zero point {z} does not fit {} bits", l.bits),
        ));
    }
    let mid = 1u8 << (l.bits - 1);
    if symmetric && l.zeros.iter().any(|&z| z != mid) {
        return Err(unsupported(
            L,
            format!("symmetric, but a zero point is not {mid}"),
        ));
    }
    let bits = usize::from(l.bits);
    let scales: Vec<u8> = match scale_dtype {
        Dtype::F32 => l.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        Dtype::F16 => l
            .scales
            .iter()
            .flat_map(|s| half::f16::from_f32(*s).to_le_bytes())
            .collect(),
        Dtype::BF16 => l
            .scales
            .iter()
            .flat_map(|s| half::bf16::from_f32(*s).to_le_bytes())
            .collect(),
        other => {
            return Err(unsupported(
                L,
                format!("scales dtype {other:?}, expected F32, F16 or BF16"),
            ))
        }
    };
    let mut out = vec![
        (
            "qweight".into(),
            Dtype::U8,
            vec![n, k.div_ceil(8 / bits)],
            pack_to_uint8(&l.q, n, k, bits),
        ),
        ("scales".into(), scale_dtype, vec![n, groups], scales),
    ];
    if !symmetric {
        out.push((
            "qzeros".into(),
            Dtype::U8,
            vec![n, groups.div_ceil(8 / bits)],
            pack_to_uint8(&l.zeros, n, groups, bits),
        ));
    }
    Ok(out)
}
