//! Causal GQA attention over whole sequences for training, as transformers' eager attention with a
//! padding mask computes it (`softmax(q·kᵀ·scale + mask)·v`; key j hidden from query t when j > t,
//! when `t − j ≥ sliding_window`, or when its attention_mask is 0), and its backward pass
//! (`dS = P ⊙ (dP − rowsum(P ⊙ dP))`, the softmax Jacobian). Each (sequence, head) block runs as
//! dense matmuls; probabilities are recomputed in the backward pass instead of being kept.

use olive_kernels::cpu::{matmul_strided, softmax, View};
use rayon::prelude::*;

/// Where q, k and v sit in a fused qkv row and how the heads share keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QkvLayout {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Floats of one token's qkv row: heads·head_dim + 2·kv_heads·head_dim.
    pub width: usize,
    pub window: Option<usize>,
    pub scale: f32,
    /// Queries per block ([`QUERY_BLOCK`] outside tests).
    pub query_block: usize,
}

impl QkvLayout {
    fn q_col(&self, h: usize) -> usize {
        h * self.head_dim
    }

    fn k_col(&self, g: usize) -> usize {
        (self.heads + g) * self.head_dim
    }

    fn v_col(&self, g: usize) -> usize {
        (self.heads + self.kv_heads + g) * self.head_dim
    }
}

/// Queries per block: a block's scores reach only the keys up to its last query, which skips
/// most of the causal mask's upper triangle.
pub(crate) const QUERY_BLOCK: usize = 64;

/// The first key query `t` may see: 0, or the start of its sliding window.
fn visible_from(window: Option<usize>, t: usize) -> usize {
    window.map_or(0, |w| (t + 1).saturating_sub(w))
}

/// Query blocks of a sequence: (q0, q1, k0) with keys k0 .. q1 visible to some query of q0 .. q1.
fn blocks(seq: usize, l: QkvLayout) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..seq).step_by(l.query_block.max(1)).map(move |q0| {
        (
            q0,
            (q0 + l.query_block.max(1)).min(seq),
            visible_from(l.window, q0),
        )
    })
}

/// probs: [q1 − q0, q1 − k0] = softmax of the masked scores of queries q0 .. q1 of head h over keys
/// k0 .. q1 in one sequence; rows with no visible key are all zeros. qkv: [seq, width] of that
/// sequence; key_mask: [seq].
fn probabilities(
    qkv: &[f32],
    l: QkvLayout,
    key_mask: &[u8],
    h: usize,
    (q0, q1, k0): (usize, usize, usize),
    probs: &mut Vec<f32>,
) {
    let (nq, nk) = (q1 - q0, q1 - k0);
    let g = h / (l.heads / l.kv_heads);
    probs.resize(nq * nk, 0.0);
    matmul_strided(
        nq,
        nk,
        l.head_dim,
        View::rows(&qkv[q0 * l.width + l.q_col(h)..], l.width),
        View::transposed(&qkv[k0 * l.width + l.k_col(g)..], l.width),
        probs,
        nk,
        l.scale,
        false,
    );
    for (i, row) in probs.chunks_exact_mut(nk).enumerate() {
        let t = q0 + i;
        let (lo, hi) = (visible_from(l.window, t) - k0, t - k0);
        // Keys outside lo ..= hi get probability 0; padded keys inside are masked to −inf.
        row[..lo].fill(0.0);
        row[hi + 1..].fill(0.0);
        let visible = &mut row[lo..=hi];
        let mut any = false;
        for (s, m) in visible.iter_mut().zip(&key_mask[k0 + lo..=k0 + hi]) {
            if *m == 0 {
                *s = f32::NEG_INFINITY;
            } else {
                any = true;
            }
        }
        if any {
            softmax(visible);
        } else {
            visible.fill(0.0);
        }
    }
}

/// Σ a·b with eight independent sums (the compiler vectorizes them).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, at) = a.split_at(a.len() - a.len() % 8);
    let (bc, bt) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>()
}

/// out: [rows·seq, heads·head_dim] = attention of each sequence of qkv ([rows·seq, width], q and k
/// already rotated); key_mask: [rows·seq] (the attention_mask).
pub(crate) fn attention_forward(
    qkv: &[f32],
    l: QkvLayout,
    key_mask: &[u8],
    seq: usize,
    out: &mut [f32],
) {
    let rows = key_mask.len() / seq;
    let q_width = l.heads * l.head_dim;
    let heads: Vec<Vec<f32>> = (0..rows * l.heads)
        .into_par_iter()
        .map_init(Vec::new, |probs: &mut Vec<f32>, idx| {
            let (b, h) = (idx / l.heads, idx % l.heads);
            let s_qkv = &qkv[b * seq * l.width..(b + 1) * seq * l.width];
            let mask = &key_mask[b * seq..(b + 1) * seq];
            let g = h / (l.heads / l.kv_heads);
            let mut o = vec![0.0; seq * l.head_dim]; // [seq, head_dim]
            for block in blocks(seq, l) {
                let (q0, q1, k0) = block;
                probabilities(s_qkv, l, mask, h, block, probs);
                matmul_strided(
                    q1 - q0,
                    l.head_dim,
                    q1 - k0,
                    View::rows(probs, q1 - k0),
                    View::rows(&s_qkv[k0 * l.width + l.v_col(g)..], l.width),
                    &mut o[q0 * l.head_dim..],
                    l.head_dim,
                    1.0,
                    false,
                );
            }
            o
        })
        .collect();
    for (idx, o) in heads.iter().enumerate() {
        let (b, h) = (idx / l.heads, idx % l.heads);
        for (t, row) in o.chunks_exact(l.head_dim).enumerate() {
            let at = (b * seq + t) * q_width + h * l.head_dim;
            out[at..at + l.head_dim].copy_from_slice(row);
        }
    }
}

/// d_qkv: [rows·seq, width] (overwritten) = the gradient of attention's inputs from d_out:
/// [rows·seq, heads·head_dim]; qkv and key_mask as in [`attention_forward`].
pub(crate) fn attention_backward(
    qkv: &[f32],
    l: QkvLayout,
    key_mask: &[u8],
    seq: usize,
    d_out: &[f32],
    d_qkv: &mut [f32],
) {
    let rows = key_mask.len() / seq;
    let group = l.heads / l.kv_heads;
    let q_width = l.heads * l.head_dim;
    let hd = l.head_dim;
    // One task per (sequence, query head): its dq, and its share of its kv head's dk and dv
    // (summed over the group below), so that every query head can run on its own core.
    let grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..rows * l.heads)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(probs, ds): &mut (Vec<f32>, Vec<f32>), idx| {
                let (b, h) = (idx / l.heads, idx % l.heads);
                let g = h / group;
                let s_qkv = &qkv[b * seq * l.width..(b + 1) * seq * l.width];
                let s_dout = &d_out[b * seq * q_width..(b + 1) * seq * q_width];
                let mask = &key_mask[b * seq..(b + 1) * seq];
                let mut dq = vec![0.0; seq * hd]; // [seq, head_dim]
                let mut dk = vec![0.0; seq * hd];
                let mut dv = vec![0.0; seq * hd];
                for block in blocks(seq, l) {
                    let (q0, q1, k0) = block;
                    let (nq, nk) = (q1 - q0, q1 - k0);
                    probabilities(s_qkv, l, mask, h, block, probs);
                    let d_o = View::rows(&s_dout[q0 * q_width + h * hd..], q_width);
                    // dP = dO · vᵀ: [nq, nk]
                    ds.resize(nq * nk, 0.0);
                    matmul_strided(
                        nq,
                        nk,
                        hd,
                        d_o,
                        View::transposed(&s_qkv[k0 * l.width + l.v_col(g)..], l.width),
                        ds,
                        nk,
                        1.0,
                        false,
                    );
                    for (r, (p_row, ds_row)) in probs
                        .chunks_exact(nk)
                        .zip(ds.chunks_exact_mut(nk))
                        .enumerate()
                    {
                        // dS = P ⊙ (dP − Σ P⊙dP); zero where P is.
                        let t = q0 + r;
                        let (lo, hi) = (visible_from(l.window, t) - k0, t - k0);
                        ds_row[..lo].fill(0.0);
                        ds_row[hi + 1..].fill(0.0);
                        let (p, d) = (&p_row[lo..=hi], &mut ds_row[lo..=hi]);
                        let pd = dot(p, d);
                        for (d, p) in d.iter_mut().zip(p) {
                            *d = p * (*d - pd);
                        }
                    }
                    // dq = scale · dS · k; dk += scale · dSᵀ · q; dv += Pᵀ · dO.
                    matmul_strided(
                        nq,
                        hd,
                        nk,
                        View::rows(ds, nk),
                        View::rows(&s_qkv[k0 * l.width + l.k_col(g)..], l.width),
                        &mut dq[q0 * hd..],
                        hd,
                        l.scale,
                        false,
                    );
                    matmul_strided(
                        nk,
                        hd,
                        nq,
                        View::transposed(ds, nk),
                        View::rows(&s_qkv[q0 * l.width + l.q_col(h)..], l.width),
                        &mut dk[k0 * hd..],
                        hd,
                        l.scale,
                        true,
                    );
                    matmul_strided(
                        nk,
                        hd,
                        nq,
                        View::transposed(probs, nk),
                        d_o,
                        &mut dv[k0 * hd..],
                        hd,
                        1.0,
                        true,
                    );
                }
                (dq, dk, dv)
            },
        )
        .collect();
    for b in 0..rows {
        let s_dqkv = &mut d_qkv[b * seq * l.width..(b + 1) * seq * l.width];
        for (h, (dq, _, _)) in grads[b * l.heads..(b + 1) * l.heads].iter().enumerate() {
            for (row, d) in s_dqkv.chunks_exact_mut(l.width).zip(dq.chunks_exact(hd)) {
                row[l.q_col(h)..l.q_col(h) + hd].copy_from_slice(d);
            }
        }
        // k and v columns: the sums over each group's query heads.
        for row in s_dqkv.chunks_exact_mut(l.width) {
            row[l.k_col(0)..].fill(0.0);
        }
        for g in 0..l.kv_heads {
            for (_, dk, dv) in &grads[b * l.heads + g * group..b * l.heads + (g + 1) * group] {
                for (t, row) in s_dqkv.chunks_exact_mut(l.width).enumerate() {
                    let (k, v) = (&dk[t * hd..(t + 1) * hd], &dv[t * hd..(t + 1) * hd]);
                    for (o, d) in row[l.k_col(g)..l.k_col(g) + hd].iter_mut().zip(k) {
                        *o += d;
                    }
                    for (o, d) in row[l.v_col(g)..l.v_col(g) + hd].iter_mut().zip(v) {
                        *o += d;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::tests::{numeric_grad, rel_err, values};
    use olive_kernels::cpu::{attention_ref, AttentionDims};

    fn layout(window: Option<usize>, query_block: usize) -> QkvLayout {
        QkvLayout {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            width: 4 * 4 + 2 * 2 * 4,
            window,
            scale: 0.5,
            query_block,
        }
    }

    #[test]
    fn forward_matches_kv_cache_attention_per_sequence() {
        let (rows, seq) = (2, 6);
        // One block of queries, and blocks of 4 (the last one short) that skip masked keys.
        for (window, block) in [(None, 64), (Some(3), 64), (None, 4), (Some(3), 4)] {
            let l = layout(window, block);
            let qkv = values(11, rows * seq * l.width);
            let mask = vec![1u8; rows * seq];
            let mut out = vec![0.0; rows * seq * 16];
            attention_forward(&qkv, l, &mask, seq, &mut out);
            for b in 0..rows {
                let s = &qkv[b * seq * l.width..(b + 1) * seq * l.width];
                let k: Vec<f32> = s.chunks(l.width).flat_map(|r| r[16..24].to_vec()).collect();
                let v: Vec<f32> = s.chunks(l.width).flat_map(|r| r[24..32].to_vec()).collect();
                let dims = AttentionDims {
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 4,
                    q_stride: l.width,
                };
                let want = attention_ref(s, &k, &v, dims, window, 0.5, seq);
                let got = &out[b * seq * 16..(b + 1) * seq * 16];
                assert!(
                    rel_err(got, &want) < 1e-5,
                    "window {window:?} block {block}"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_with_gqa_padding_and_window() {
        let (rows, seq) = (2, 5);
        // The second row is right-padded: its last two keys are hidden.
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        for (window, block) in [(None, 64), (Some(2), 64), (None, 2), (Some(2), 2)] {
            let l = layout(window, block);
            let qkv: Vec<f32> = values(12, rows * seq * l.width)
                .iter()
                .map(|v| 2.0 * v)
                .collect();
            let up = values(13, rows * seq * 16);
            let mut d_qkv = vec![0.0; qkv.len()];
            attention_backward(&qkv, l, &mask, seq, &up, &mut d_qkv);
            let num = numeric_grad(&qkv, 1e-2, &mut |x| {
                let mut out = vec![0.0; rows * seq * 16];
                attention_forward(x, l, &mask, seq, &mut out);
                out.iter()
                    .zip(&up)
                    .map(|(o, u)| *o as f64 * *u as f64)
                    .sum()
            });
            let e = rel_err(&d_qkv, &num);
            assert!(e < 2e-3, "window {window:?} block {block}: {e}");
        }
    }
}
