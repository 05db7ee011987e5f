//! GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers", 2022), following IST-DASLab/gptq `gptq.py` `GPTQ.add_batch` / `fasterquant` and
//! AutoGPTQ's g_idx: dead inputs, relative damping, the upper Cholesky factor of H⁻¹, column blocks with
//! lazy batch updates, per-group grids recomputed at each group start, act-order and static groups.
//!
//! Precision: H, H⁻¹'s factor and W are kept in f32 as the reference does (an [in, in] f32 matrix is
//! 822 MB at 14336 inputs; f64 would double it); the factorization sums small blocks in f64 and the
//! rest through `gemm` (see `linalg`).
//!
//! One deliberate difference: the reference recomputes a group's grid from `W[:, g:g+group]` *before*
//! the in-block updates of the current block are applied to it, so with groups shorter than the block
//! (group 32, block 128) its grids depend on the block size. Here a block never crosses a group start,
//! so every grid sees the updates of all earlier columns and the result does not depend on
//! `block_size`; whenever `block_size` divides the group size (group 128, block 128) the two agree.

use olive_model::quantized::QuantizedLinear;
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::grid::{dequantize_value, group_params, quantize_value, QuantSpec};
use crate::linalg::{inverse_cholesky_upper, product};
use crate::rtn::check_weight;

/// Rows one rayon task handles in the column loop: per block each row costs ~block²/2 multiply-adds.
const ROWS_PER_TASK: usize = 16;

/// H = 2/n · Σ xᵀx over the n calibration rows (tokens) seen so far, kept as a running average as GPTQ's
/// `add_batch` does; [in, in] row-major f32. add_batch counts sequences, not rows (a 2-D input is one):
/// a constant factor that leaves the quantized weight unchanged and only scales `GptqResult::error`.
#[derive(Debug, Clone)]
pub struct Hessian {
    n: usize,
    samples: usize,
    h: Vec<f32>,
}

impl Hessian {
    /// An empty Hessian for a linear with `in_features` inputs.
    pub fn new(in_features: usize) -> Self {
        Hessian {
            n: in_features,
            samples: 0,
            h: vec![0.0; in_features * in_features],
        }
    }

    /// Adds calibration rows x: [tokens, in]. Panics if `x.len()` is not a multiple of `in_features`.
    pub fn add(&mut self, x: &[f32]) {
        let n = self.n;
        assert!(
            n > 0 && x.len() % n == 0,
            "Hessian::add: x has {} values, not a multiple of in_features {n}",
            x.len()
        );
        let tokens = x.len() / n;
        if tokens == 0 {
            return;
        }
        let total = self.samples + tokens;
        let keep = (self.samples > 0).then_some(self.samples as f32 / total as f32);
        // SAFETY: h is [n, n] (row stride n); xᵀ [n, tokens] reads x [tokens, n] with row stride 1 and
        // column stride n; x [tokens, n] with row stride n; h is exclusively borrowed and disjoint from x.
        unsafe {
            product(
                n,
                n,
                tokens,
                (self.h.as_mut_ptr(), n as isize, 1),
                keep,
                (x.as_ptr(), 1, n as isize),
                (x.as_ptr(), n as isize, 1),
                2.0 / total as f32,
            );
        }
        self.samples = total;
    }

    /// Calibration rows added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Inputs of the linear (H is [in, in]).
    pub fn in_features(&self) -> usize {
        self.n
    }

    /// H: [in, in] row-major.
    pub fn matrix(&self) -> &[f32] {
        &self.h
    }
}

/// GPTQ settings (AutoGPTQ's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Columns per lazy-update block (128).
    pub block_size: usize,
    /// Damping λ = damp_percent · mean(diag H) added to diag H (0.01).
    pub damp_percent: f32,
    /// Quantize inputs in order of decreasing H_ii (`desc_act`); groups then follow that order (g_idx).
    pub act_order: bool,
    /// Grids of all groups fixed from the weight before any update, groups in input order.
    pub static_groups: bool,
    /// Quantize a layer's linears one after another, each with inputs from the already quantized ones;
    /// read by the layer driver, not by `gptq`.
    pub true_sequential: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            block_size: 128,
            damp_percent: 0.01,
            act_order: false,
            static_groups: false,
            true_sequential: true,
        }
    }
}

impl GptqOptions {
    /// Checks block_size > 0 and 0 ≤ damp_percent ≤ 1.
    pub fn validate(&self) -> Result<()> {
        if self.block_size == 0 {
            return Err(QuantError::BadOption {
                field: "block_size",
                value: "0".into(),
                expected: "a positive number of columns (128)",
            });
        }
        if !(0.0..=1.0).contains(&self.damp_percent) {
            return Err(QuantError::BadOption {
                field: "damp_percent",
                value: self.damp_percent.to_string(),
                expected: "a fraction of the mean Hessian diagonal in [0, 1] (0.01)",
            });
        }
        Ok(())
    }
}

/// A GPTQ-quantized linear and its loss.
#[derive(Debug, Clone)]
pub struct GptqResult {
    pub linear: QuantizedLinear,
    /// Σ over all weights of (w − ŵ)² / d² / 2 with d the diagonal of H⁻¹'s factor (GPTQ's `Losses`).
    pub error: f32,
}

/// How the grid of a column is found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grids {
    /// One grid per row, from the weight before anything else (GPTQ's first `find_params`).
    PerChannel,
    /// Grids fixed up front for groups of inputs in input order.
    Static,
    /// A grid per group of (permuted) columns, found when the column loop reaches the group.
    Dynamic,
}

/// GPTQ of weight [out, in] row-major with the calibration Hessian of its inputs.
pub fn gptq(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &Hessian,
    spec: &QuantSpec,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    check_weight(weight, out_features, in_features, spec)?;
    opts.validate()?;
    let n = in_features;
    if hessian.n != n {
        return Err(QuantError::HessianSize {
            hessian: hessian.n,
            in_features: n,
        });
    }
    if hessian.samples == 0 {
        return Err(QuantError::NoSamples(n));
    }
    let (gs, groups, bits, sym) = (spec.group_len(n), spec.n_groups(n), spec.bits, spec.sym);
    let grids = match (spec.group_size, opts.static_groups) {
        (None, _) => Grids::PerChannel,
        (Some(_), true) => Grids::Static,
        (Some(_), false) => Grids::Dynamic,
    };
    let mut scales = vec![0f32; out_features * groups]; // [out, groups]
    let mut zeros = vec![0u8; out_features * groups];
    let params_of = |w: &[f32], s: &mut [f32], z: &mut [u8]| {
        for (g, w) in w.chunks(gs).enumerate() {
            (s[g], z[g]) = group_params(w, bits, sym);
        }
    };
    if grids == Grids::PerChannel {
        per_row(weight, n, &mut scales, &mut zeros, groups, params_of);
    }

    let mut h = hessian.h.clone(); // [n, n]
    let mut w = weight.to_vec(); // [out, n]
    for j in 0..n {
        if h[j * n + j] != 0.0 {
            continue;
        }
        h[j * n + j] = 1.0;
        w.iter_mut().skip(j).step_by(n).for_each(|x| *x = 0.0);
    }
    if grids == Grids::Static {
        per_row(&w, n, &mut scales, &mut zeros, groups, params_of);
    }
    let perm: Option<Vec<usize>> = opts.act_order.then(|| {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
        perm
    });
    if let Some(perm) = &perm {
        w.par_chunks_mut(n).for_each(|row| {
            let orig = row.to_vec();
            row.iter_mut().zip(perm).for_each(|(x, &p)| *x = orig[p]);
        });
        let orig = std::mem::take(&mut h);
        h = (0..n * n)
            .map(|idx| orig[perm[idx / n] * n + perm[idx % n]])
            .collect();
    }
    let mean_diag = (0..n).map(|j| f64::from(h[j * n + j])).sum::<f64>() / n as f64;
    let damp = (f64::from(opts.damp_percent) * mean_diag) as f32;
    for j in 0..n {
        h[j * n + j] += damp;
    }
    inverse_cholesky_upper(&mut h, n).map_err(|e| QuantError::NotPositiveDefinite {
        n,
        damp_percent: opts.damp_percent,
        column: perm.as_ref().map_or(e.column, |p| p[e.column]),
        pivot: e.pivot,
        suggest: (opts.damp_percent * 10.0).clamp(0.01, 1.0),
    })?;
    let u = h; // [n, n] upper: Uᵀ·U = H⁻¹ (permuted)

    let mut q = vec![0u8; out_features * n]; // [out, n], permuted columns
    let mut losses = vec![0f64; out_features];
    let mut err = vec![0f32; out_features * opts.block_size.min(n)];
    let mut i1 = 0;
    while i1 < n {
        let mut i2 = (i1 + opts.block_size).min(n);
        if grids == Grids::Dynamic {
            i2 = i2.min((i1 / gs + 1) * gs);
        }
        let width = i2 - i1;
        let err = &mut err[..out_features * width]; // [out, width]
        w.par_chunks_mut(n)
            .zip(q.par_chunks_mut(n))
            .zip(err.par_chunks_mut(width))
            .zip(scales.par_chunks_mut(groups))
            .zip(zeros.par_chunks_mut(groups))
            .zip(losses.par_iter_mut())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(((((w, q), err), s), z), loss)| {
                if grids == Grids::Dynamic && i1 % gs == 0 {
                    let g = i1 / gs;
                    (s[g], z[g]) = group_params(&w[i1..(i1 + gs).min(n)], bits, sym);
                }
                for i in i1..i2 {
                    let g = match grids {
                        Grids::PerChannel => 0,
                        Grids::Static => perm.as_ref().map_or(i, |p| p[i]) / gs,
                        Grids::Dynamic => i / gs,
                    };
                    let x = w[i];
                    let level = quantize_value(x, s[g], z[g], bits);
                    let diff = x - dequantize_value(level, s[g], z[g]);
                    let d = u[i * n + i];
                    *loss += f64::from(diff * diff / (d * d)) / 2.0;
                    let e = diff / d;
                    q[i] = level;
                    err[i - i1] = e;
                    let urow = &u[i * n + i + 1..i * n + i2];
                    w[i + 1..i2]
                        .iter_mut()
                        .zip(urow)
                        .for_each(|(x, &uij)| *x -= e * uij);
                }
            });
        if i2 < n {
            // W[:, i2:] −= Err [out, width] · U[i1:i2, i2:]
            // SAFETY: w is [out, n] (row stride n), the view starts at column i2 and spans n − i2
            // columns; err is [out, width]; the U view is rows i1..i2, columns i2..n of u [n, n]. w is
            // exclusively borrowed and disjoint from err and u.
            unsafe {
                product(
                    out_features,
                    n - i2,
                    width,
                    (w.as_mut_ptr().add(i2), n as isize, 1),
                    Some(1.0),
                    (err.as_ptr(), width as isize, 1),
                    (u.as_ptr().add(i1 * n + i2), n as isize, 1),
                    -1.0,
                );
            }
        }
        i1 = i2;
    }

    let mut g_idx = None;
    if let Some(perm) = &perm {
        q.par_chunks_mut(n).for_each(|row| {
            let permuted = row.to_vec();
            perm.iter()
                .zip(permuted)
                .for_each(|(&p, level)| row[p] = level);
        });
        if grids == Grids::Dynamic {
            let mut idx = vec![0u32; n];
            perm.iter()
                .enumerate()
                .for_each(|(i, &p)| idx[p] = (i / gs) as u32);
            if idx.iter().enumerate().any(|(i, &g)| g as usize != i / gs) {
                g_idx = Some(idx);
            }
        }
    }
    Ok(GptqResult {
        linear: QuantizedLinear {
            bits,
            group_size: gs,
            in_features: n,
            out_features,
            q,
            scales,
            zeros,
            g_idx,
        },
        error: losses.iter().sum::<f64>() as f32,
    })
}

/// Runs `f(row, scales_row, zeros_row)` over the rows of w [out, n] in parallel.
fn per_row(
    w: &[f32],
    n: usize,
    scales: &mut [f32],
    zeros: &mut [u8],
    groups: usize,
    f: impl Fn(&[f32], &mut [f32], &mut [u8]) + Sync,
) {
    w.par_chunks(n)
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .for_each(|((w, s), z)| f(w, s, z));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indefinite_hessian_names_sizes_and_damping() {
        // [[1, 2], [2, 1]] has eigenvalues 3 and −1; 1% damping does not rescue it.
        let h = Hessian {
            n: 2,
            samples: 1,
            h: vec![1.0, 2.0, 2.0, 1.0],
        };
        let spec = QuantSpec {
            bits: 4,
            group_size: None,
            sym: false,
        };
        let err = gptq(&[0.1, -0.2], 1, 2, &h, &spec, &GptqOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::NotPositiveDefinite {
                    n: 2,
                    column: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("damp_percent 0.01") && msg.contains("[2, 2]"),
            "{msg}"
        );
    }
}
