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

/// probs: [seq, seq] = softmax of the masked scores of query head h in one sequence; rows with no
/// visible key are all zeros. qkv: [seq, width] of that sequence; key_mask: [seq].
fn probabilities(qkv: &[f32], l: QkvLayout, key_mask: &[u8], h: usize, probs: &mut [f32]) {
    let seq = key_mask.len();
    let g = h / (l.heads / l.kv_heads);
    matmul_strided(
        seq,
        seq,
        l.head_dim,
        View::rows(&qkv[l.q_col(h)..], l.width),
        View::transposed(&qkv[l.k_col(g)..], l.width),
        probs,
        seq,
        l.scale,
        false,
    );
    for (t, row) in probs.chunks_exact_mut(seq).enumerate() {
        let lo = visible_from(l.window, t);
        // Keys outside lo ..= t get probability 0; padded keys inside are masked to −inf.
        row[..lo].fill(0.0);
        row[t + 1..].fill(0.0);
        let visible = &mut row[lo..=t];
        let mut any = false;
        for (s, m) in visible.iter_mut().zip(&key_mask[lo..=t]) {
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

/// The first key query `t` may see: 0, or the start of its sliding window.
fn visible_from(window: Option<usize>, t: usize) -> usize {
    window.map_or(0, |w| (t + 1).saturating_sub(w))
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
    let blocks: Vec<Vec<f32>> = (0..rows * l.heads)
        .into_par_iter()
        .map_init(Vec::new, |probs: &mut Vec<f32>, idx| {
            let (b, h) = (idx / l.heads, idx % l.heads);
            let s_qkv = &qkv[b * seq * l.width..(b + 1) * seq * l.width];
            probs.resize(seq * seq, 0.0); // [seq, seq], reused across the tasks of a thread
            probabilities(s_qkv, l, &key_mask[b * seq..(b + 1) * seq], h, probs);
            let g = h / (l.heads / l.kv_heads);
            let mut o = vec![0.0; seq * l.head_dim]; // [seq, head_dim]
            matmul_strided(
                seq,
                l.head_dim,
                seq,
                View::rows(probs, seq),
                View::rows(&s_qkv[l.v_col(g)..], l.width),
                &mut o,
                l.head_dim,
                1.0,
                false,
            );
            o
        })
        .collect();
    for (idx, o) in blocks.iter().enumerate() {
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
    // One task per (sequence, kv head): it owns dk and dv of that head and dq of its query heads.
    let blocks: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..rows * l.kv_heads)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(probs, ds): &mut (Vec<f32>, Vec<f32>), idx| {
                let (b, g) = (idx / l.kv_heads, idx % l.kv_heads);
                let s_qkv = &qkv[b * seq * l.width..(b + 1) * seq * l.width];
                let s_dout = &d_out[b * seq * q_width..(b + 1) * seq * q_width];
                let mask = &key_mask[b * seq..(b + 1) * seq];
                let mut dq = vec![0.0; group * seq * hd]; // [group, seq, head_dim]
                let mut dk = vec![0.0; seq * hd]; // [seq, head_dim]
                let mut dv = vec![0.0; seq * hd];
                // [seq, seq] each, reused across the tasks of a thread.
                probs.resize(seq * seq, 0.0);
                ds.resize(seq * seq, 0.0);
                for (i, dq) in dq.chunks_exact_mut(seq * hd).enumerate() {
                    let h = g * group + i;
                    probabilities(s_qkv, l, mask, h, probs);
                    let d_o = View::rows(&s_dout[h * hd..], q_width);
                    // dP = dO · vᵀ: [seq, seq]
                    matmul_strided(
                        seq,
                        seq,
                        hd,
                        d_o,
                        View::transposed(&s_qkv[l.v_col(g)..], l.width),
                        ds,
                        seq,
                        1.0,
                        false,
                    );
                    for (t, (p_row, ds_row)) in probs
                        .chunks_exact(seq)
                        .zip(ds.chunks_exact_mut(seq))
                        .enumerate()
                    {
                        // dS = P ⊙ (dP − Σ P⊙dP); zero where P is.
                        let lo = visible_from(l.window, t);
                        ds_row[..lo].fill(0.0);
                        ds_row[t + 1..].fill(0.0);
                        let (p, d) = (&p_row[lo..=t], &mut ds_row[lo..=t]);
                        let pd = dot(p, d);
                        for (d, p) in d.iter_mut().zip(p) {
                            *d = p * (*d - pd);
                        }
                    }
                    // dq = scale · dS · k; dk += scale · dSᵀ · q; dv += Pᵀ · dO.
                    matmul_strided(
                        seq,
                        hd,
                        seq,
                        View::rows(ds, seq),
                        View::rows(&s_qkv[l.k_col(g)..], l.width),
                        dq,
                        hd,
                        l.scale,
                        false,
                    );
                    matmul_strided(
                        seq,
                        hd,
                        seq,
                        View::transposed(ds, seq),
                        View::rows(&s_qkv[l.q_col(h)..], l.width),
                        &mut dk,
                        hd,
                        l.scale,
                        true,
                    );
                    matmul_strided(
                        seq,
                        hd,
                        seq,
                        View::transposed(probs, seq),
                        d_o,
                        &mut dv,
                        hd,
                        1.0,
                        true,
                    );
                }
                (dq, dk, dv)
            },
        )
        .collect();
    for (idx, (dq, dk, dv)) in blocks.iter().enumerate() {
        let (b, g) = (idx / l.kv_heads, idx % l.kv_heads);
        for t in 0..seq {
            let row = &mut d_qkv[(b * seq + t) * l.width..(b * seq + t + 1) * l.width];
            for i in 0..group {
                let h = g * group + i;
                row[l.q_col(h)..l.q_col(h) + hd]
                    .copy_from_slice(&dq[(i * seq + t) * hd..(i * seq + t + 1) * hd]);
            }
            row[l.k_col(g)..l.k_col(g) + hd].copy_from_slice(&dk[t * hd..(t + 1) * hd]);
            row[l.v_col(g)..l.v_col(g) + hd].copy_from_slice(&dv[t * hd..(t + 1) * hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::tests::{numeric_grad, rel_err, values};
    use olive_kernels::cpu::{attention_ref, AttentionDims};

    fn layout(window: Option<usize>) -> QkvLayout {
        QkvLayout {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            width: 4 * 4 + 2 * 2 * 4,
            window,
            scale: 0.5,
        }
    }

    #[test]
    fn forward_matches_kv_cache_attention_per_sequence() {
        let (rows, seq) = (2, 6);
        for window in [None, Some(3)] {
            let l = layout(window);
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
                assert!(rel_err(got, &want) < 1e-5, "window {window:?}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences_with_gqa_padding_and_window() {
        let (rows, seq) = (2, 5);
        // The second row is right-padded: its last two keys are hidden.
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        for window in [None, Some(2)] {
            let l = layout(window);
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
            assert!(e < 2e-3, "window {window:?}: {e}");
        }
    }
}
