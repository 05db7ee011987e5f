//! Gather (embedding) weights to com.microsoft `GatherBlockQuantized`, as Olive 0.13's `OnnxBlockWiseRtnQuantization`
//! does (olive/passes/onnx/rtn_quantization.py `_quantize_gather` / `_quantize_ndarray`, the numpy RTN of
//! onnxruntime's MatMulNBitsQuantizer `quantize_ndarray`): the float32 table is quantized in blocks of `block_size`
//! along its last axis (the one GatherBlockQuantized takes for packed uint8 data), in float32 arithmetic with
//! numpy's rounding (half to even):
//! - symmetric: scale = (the block's max or min, whichever is larger in magnitude) / qmin, q = round(x / scale)
//!   clipped to [qmin, qmax], stored unsigned as q + 2^(bits-1) (the zero point GatherBlockQuantized implies);
//! - asymmetric: scale = (max(max, 0) - min(min, 0)) / qmax, zero point = round(-min / scale), q = round(x / scale +
//!   zero point), both clipped to [0, qmax]; a zero scale gives q = zero point = 2^(bits-1).
//!
//! 4-bit values are packed two a byte along the last axis (first in the low nibble, an odd length padded with 0):
//! data `[..., K]` -> uint8 `[..., ceil(K/2)]`, scales `[..., ceil(K/block)]` float32, zero points uint8
//! `[..., ceil(ceil(K/block)/2)]`. 8-bit values take a byte each, shapes unpacked.

use std::collections::{HashMap, HashSet};

use olive_onnx::graph::{attr_int, inline_tensor, node};
use olive_onnx::proto::GraphProto;
use olive_onnx::rewrite::{Elements, Value};
use olive_onnx::tensor::DataType;

use crate::blockwise::BlockwiseOptions;
use crate::graph::{attr_i, Rewriter, MS_DOMAIN};

/// One table quantized: packed data, scales and (asymmetric) zero points, with their shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTable {
    pub data: Vec<u8>,
    pub data_dims: Vec<i64>,
    pub scales: Vec<f32>,
    pub scales_dims: Vec<i64>,
    pub zero_points: Option<Vec<u8>>,
    pub zero_points_dims: Vec<i64>,
}

/// Quantizes a float32 table of shape `dims` (rank >= 2) along its last axis.
pub fn quantize_table(
    values: &[f32],
    dims: &[i64],
    bits: u32,
    block_size: usize,
    symmetric: bool,
) -> Result<QuantizedTable, String> {
    let Some((&k, lead)) = dims.split_last() else {
        return Err("a scalar table".into());
    };
    if lead.is_empty() || k <= 0 || lead.iter().any(|&d| d <= 0) {
        return Err(format!(
            "shape {dims:?}: GatherBlockQuantized takes a table of rank 2 or more with sizes above 0"
        ));
    }
    if bits != 4 && bits != 8 {
        return Err(format!("bits {bits}: Gather quantization takes 4 or 8"));
    }
    let k = k as usize;
    let rows = values.len() / k;
    if rows * k != values.len() {
        return Err(format!(
            "shape {dims:?} does not hold {} values",
            values.len()
        ));
    }
    let blocks = k.div_ceil(block_size);
    let (qmin, qmax) = if symmetric {
        (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1)
    } else {
        (0, (1i32 << bits) - 1)
    };
    let mid = 1i32 << (bits - 1);
    let mut q = vec![0u8; rows * k];
    let mut scales = vec![0f32; rows * blocks];
    let mut zps = vec![0u8; if symmetric { 0 } else { rows * blocks }];
    for r in 0..rows {
        for b in 0..blocks {
            let (from, to) = (
                r * k + b * block_size,
                r * k + ((b + 1) * block_size).min(k),
            );
            let block = &values[from..to];
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let clip =
                |v: f32, lo: i32, hi: i32| v.round_ties_even().clamp(lo as f32, hi as f32) as i32;
            if symmetric {
                let abs_max = if max.abs() > min.abs() { max } else { min };
                let scale = abs_max / qmin as f32;
                scales[r * blocks + b] = scale;
                for (o, &x) in q[from..to].iter_mut().zip(block) {
                    let v = if scale == 0.0 {
                        0
                    } else {
                        clip(x / scale, qmin, qmax)
                    };
                    *o = (v + mid) as u8;
                }
            } else {
                let (lo, hi) = (min.min(0.0), max.max(0.0));
                let scale = (hi - lo) / qmax as f32;
                scales[r * blocks + b] = scale;
                let zp = if scale == 0.0 {
                    mid
                } else {
                    clip(-lo / scale, 0, qmax)
                };
                zps[r * blocks + b] = zp as u8;
                for (o, &x) in q[from..to].iter_mut().zip(block) {
                    let v = if scale == 0.0 {
                        mid
                    } else {
                        clip(x / scale + zp as f32, 0, qmax)
                    };
                    *o = v as u8;
                }
            }
        }
    }
    let with_last = |last: usize| {
        let mut d = lead.to_vec();
        d.push(last as i64);
        d
    };
    let (data, data_dims, zero_points, zero_points_dims) = if bits == 4 {
        (
            pack_rows(&q, k),
            with_last(k.div_ceil(2)),
            (!symmetric).then(|| pack_rows(&zps, blocks)),
            with_last(blocks.div_ceil(2)),
        )
    } else {
        (
            q,
            with_last(k),
            (!symmetric).then_some(zps),
            with_last(blocks),
        )
    };
    Ok(QuantizedTable {
        data,
        data_dims,
        scales,
        scales_dims: with_last(blocks),
        zero_points,
        zero_points_dims,
    })
}

/// 4-bit values packed two a byte within each row of `width` (low nibble first; an odd width padded with 0).
fn pack_rows(values: &[u8], width: usize) -> Vec<u8> {
    values
        .chunks_exact(width)
        .flat_map(|row| {
            row.chunks(2)
                .map(|p| (p[0] & 0xF) | (p.get(1).map_or(0, |h| h & 0xF) << 4))
        })
        .collect()
}

/// Replaces each Gather whose data is a float32 initializer of rank >= 2 (and no graph input) by
/// GatherBlockQuantized, honouring the node include/exclude lists; a table shared by several Gathers is quantized
/// once. Returns how many Gathers were replaced.
pub fn quantize_gathers(graph: &mut GraphProto, o: &BlockwiseOptions) -> Result<usize, String> {
    let inputs: HashSet<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    let bits = o.config.bits;
    let block_size = o.config.block_size;
    let mut r = Rewriter::new(graph);
    let mut done: HashMap<String, (Vec<String>, usize)> = HashMap::new();
    let mut new_tensors = Vec::new();
    let mut count = 0;
    for i in 0..r.node_count() {
        if !r.is(i, "Gather") {
            continue;
        }
        let n = r.node(i).clone();
        let name = n.name.clone().unwrap_or_default();
        if o.nodes_to_exclude.contains(&name)
            || (!o.nodes_to_include.is_empty() && !o.nodes_to_include.contains(&name))
        {
            continue;
        }
        let (Some(table), Some(indices), Some(y)) =
            (n.input.first(), n.input.get(1), n.output.first())
        else {
            continue;
        };
        if inputs.contains(table) {
            continue;
        }
        let (made, rank) = match done.get(table) {
            Some(made) => made.clone(),
            None => {
                let Some(Value {
                    dims,
                    elements: Elements::F32(w),
                }) = r.constant(table)
                else {
                    continue;
                };
                if dims.len() < 2 {
                    continue;
                }
                let t = quantize_table(&w, &dims, bits, block_size, o.config.symmetric)
                    .map_err(|e| format!("Gather {name} table {table}: {e}"))?;
                let data = r.fresh(&format!("{table}_Q{bits}"));
                let scales = r.fresh(&format!("{table}_scales"));
                new_tensors.push(inline_tensor(&data, DataType::Uint8, &t.data_dims, t.data));
                let scale_bytes = olive_onnx::tensor::f32_bytes(&t.scales);
                new_tensors.push(inline_tensor(
                    &scales,
                    DataType::Float,
                    &t.scales_dims,
                    scale_bytes,
                ));
                let mut made = vec![data, scales];
                if let Some(zp) = t.zero_points {
                    let zname = r.fresh(&format!("{table}_zero_point"));
                    new_tensors.push(inline_tensor(
                        &zname,
                        DataType::Uint8,
                        &t.zero_points_dims,
                        zp,
                    ));
                    made.push(zname);
                }
                done.insert(table.clone(), (made.clone(), dims.len()));
                (made, dims.len())
            }
        };
        // GatherBlockQuantized(data, indices, scales[, zero_points])
        let mut ins = vec![made[0].as_str(), indices.as_str()];
        ins.extend(made[1..].iter().map(String::as_str));
        let attrs = vec![
            attr_int("gather_axis", attr_i(&n, "axis").unwrap_or(0)),
            attr_int("quantize_axis", rank as i64 - 1),
            attr_int("block_size", block_size as i64),
            attr_int("bits", bits as i64),
        ];
        let node_name = r.fresh(&format!("{name}_Q{bits}"));
        r.replace(
            &[i],
            node(
                MS_DOMAIN,
                "GatherBlockQuantized",
                &node_name,
                &ins,
                &[y],
                attrs,
            ),
        );
        count += 1;
    }
    r.finish()?;
    graph.initializer.extend(new_tensors);
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::quantize_table;

    #[test]
    fn symmetric_and_asymmetric_blocks_follow_numpy() {
        // Two rows of 5, block 4: blocks [0..4) and [4..5).
        let w = [0.5, -1.0, 0.25, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, -2.0];
        let t = quantize_table(&w, &[2, 5], 4, 4, true).unwrap();
        // Row 0 block 0: abs max -1.0 -> scale 0.125; 0.5/0.125 = 4, -1/0.125 = -8, 2, 0 (+8 stored).
        assert_eq!(t.scales, vec![0.125, -0.375, 0.0, 0.25]);
        assert_eq!(t.data_dims, vec![2, 3]);
        // Row 0: [12, 0, 10, 8, 0(3/-0.375=-8 -> 0)] packed low first, padded.
        assert_eq!(t.data, vec![12, 10 | 8 << 4, 0, 8 | 8 << 4, 8 | 8 << 4, 0]);
        assert!(t.zero_points.is_none());
        let a = quantize_table(&w, &[2, 5], 4, 4, false).unwrap();
        // Zero points: row 0 [-1, 0.5] -> 10, [0, 3] -> 0; row 1 zeros -> 8, [-2, 0] -> 15.
        assert_eq!(a.scales[..2], [1.5f32 / 15.0, 3.0f32 / 15.0]);
        assert_eq!(a.zero_points, Some(vec![10, 8 | 15 << 4]));
        // Row 0, block 0: round(0.5 / 0.1 + 10) = 15, round(-1 / 0.1 + 10) = 0.
        assert_eq!(a.data[0], 15);
        assert_eq!(a.zero_points_dims, vec![2, 1]);
        let e = quantize_table(&w, &[10], 4, 4, true).unwrap_err();
        assert!(e.contains("rank 2"), "{e}");
    }
}
