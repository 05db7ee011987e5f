//! GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers", 2022), following IST-DASLab/gptq `gptq.py` `GPTQ.add_batch` / `fasterquant` and
//! AutoGPTQ's g_idx: dead inputs, relative damping, the Cholesky factor of H⁻¹ (here its inverse V, see
//! `GptqSolver::quantize`), column blocks with lazy batch updates, per-group grids recomputed at each
//! group start, act-order and static groups.
//!
//! Precision and memory: H, V and W are kept in f32 as the reference does (an [in, in] f32 matrix is
//! 822 MB at 14336 inputs; f64 would double it); the factorization sums small blocks in f64 and the
//! rest through `gemm` (see `linalg`); it is done in place (`GptqSolver::from_hessian` reuses the
//! Hessian's buffer) and costs ~n³/3 multiply-adds against the reference's ~n³ for its three calls.
//!
//! One deliberate difference: the reference recomputes a group's grid from `W[:, g:g+group]` *before*
//! the in-block updates of the current block are applied to it, so with groups shorter than the block
//! (group 32, block 128) its grids depend on the block size. Here a block never crosses a group start,
//! so every grid sees the updates of all earlier columns and the result does not depend on
//! `block_size`; whenever `block_size` divides the group size (group 128, block 128) the two agree.

use olive_model::quantized::QuantizedLinear;
use rayon::prelude::*;

use crate::device::{Compute, GroupX};
use crate::error::{QuantError, Result};
use crate::grid::{dequantize_value, group_params, quantize_value, QuantSpec};
use crate::linalg::{product, reversed_cholesky};
use crate::rtn::check_weight;

/// Rows one rayon task handles in the column loop: per block each row costs ~block²/2 multiply-adds.
const ROWS_PER_TASK: usize = 16;
/// Rows of H computed per product in `Hessian::add` (lower-triangle blocks only).
const HESSIAN_ROWS: usize = 512;

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
        let tokens = x.len() / self.n.max(1);
        self.add_product(x, x, tokens);
    }

    /// Adds xᵀy for x, y: [rows, in] standing for `samples` calibration rows whose Σ aᵀa is xᵀy (symmetric; its
    /// lower triangle is read). Panics if the lengths differ or are not a multiple of `in_features`.
    pub(crate) fn add_product(&mut self, x: &[f32], y: &[f32], samples: usize) {
        let n = self.n;
        assert!(
            n > 0 && x.len().is_multiple_of(n) && y.len() == x.len(),
            "Hessian::add: x has {} values, y {}, not one multiple of in_features {n}",
            x.len(),
            y.len()
        );
        let rows = x.len() / n;
        if rows == 0 || samples == 0 {
            return;
        }
        let total = self.samples + samples;
        let keep = (self.samples > 0).then_some(self.samples as f32 / total as f32);
        // H is symmetric: only row blocks of the lower triangle are multiplied, then mirrored.
        for r0 in (0..n).step_by(HESSIAN_ROWS) {
            let r1 = (r0 + HESSIAN_ROWS).min(n);
            // H[r0..r1, 0..r1] = keep·H + 2/total · xᵀ[r0..r1] · y[:, 0..r1]
            // SAFETY: the H view is rows r0..r1, columns 0..r1 of h [n, n] (row stride n); xᵀ[r0..r1]
            // [r1 − r0, rows] reads x [rows, n] at column r0 with row stride 1, column stride n;
            // y[:, 0..r1] [rows, r1] has row stride n; h is exclusively borrowed, disjoint from x and y.
            unsafe {
                product(
                    r1 - r0,
                    r1,
                    rows,
                    (self.h.as_mut_ptr().add(r0 * n), n as isize, 1),
                    keep,
                    (x.as_ptr().add(r0), 1, n as isize),
                    (y.as_ptr(), n as isize, 1),
                    2.0 / total as f32,
                );
            }
        }
        mirror_lower(&mut self.h, n);
        self.samples = total;
    }

    /// [`Hessian::add`] with the product xᵀx computed by `compute` (the CPU, or cuBLAS f32 on a GPU).
    pub fn add_on(&mut self, compute: &Compute, x: &[f32]) -> Result<()> {
        let tokens = x.len() / self.n.max(1);
        self.add_product_on(compute, x, x, tokens)
    }

    /// [`Hessian::add_on`] for a group's input where the layer's forward left it (on a GPU, xᵀx is computed
    /// there and only the [in, in] product comes back).
    pub(crate) fn add_group(&mut self, compute: &Compute, x: &GroupX<'_>) -> Result<()> {
        let tokens = x.len() / self.n.max(1);
        match x.gram(compute, self.n)? {
            Some(g) => {
                self.add_gram(&g, tokens);
                Ok(())
            }
            None => self.add_on(compute, &x.to_host(compute)?),
        }
    }

    /// [`Hessian::add_product`] with the product xᵀy computed by `compute` (in place on the CPU; on the GPU
    /// the whole [in, in] product comes back and its lower triangle is folded in and mirrored, as here).
    pub(crate) fn add_product_on(
        &mut self,
        compute: &Compute,
        x: &[f32],
        y: &[f32],
        samples: usize,
    ) -> Result<()> {
        let n = self.n;
        let Some(g) = compute.gram(x, y, n)? else {
            compute.timed_cpu(|| self.add_product(x, y, samples));
            return Ok(());
        };
        if x.len() / n.max(1) > 0 {
            self.add_gram(&g, samples);
        }
        Ok(())
    }

    /// Folds in g = xᵀy ([in, in]) of `samples` rows: the lower triangle, then mirrored.
    fn add_gram(&mut self, g: &[f32], samples: usize) {
        let n = self.n;
        if samples == 0 {
            return;
        }
        let total = self.samples + samples;
        let keep = self.samples as f32 / total as f32;
        let c = 2.0 / total as f32;
        for (r, (h, g)) in self
            .h
            .chunks_exact_mut(n)
            .zip(g.chunks_exact(n))
            .enumerate()
        {
            for (h, g) in h[..=r].iter_mut().zip(&g[..=r]) {
                *h = keep * *h + c * g;
            }
        }
        mirror_lower(&mut self.h, n);
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

/// GPTQ of weight [out, in] row-major with the calibration Hessian of its inputs:
/// `GptqSolver::new(hessian, opts)?.quantize(weight, out_features, in_features, spec)`.
pub fn gptq(
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &Hessian,
    spec: &QuantSpec,
    opts: &GptqOptions,
) -> Result<GptqResult> {
    check_weight(weight, out_features, in_features, spec)?;
    GptqSolver::new(hessian, opts)?.quantize(weight, out_features, in_features, spec)
}

/// The factored Hessian of one input: quantizes any number of weights that read that input (q, k and v;
/// gate and up) without factoring H again. GPTQ treats output rows independently, so quantizing q, k
/// and v one by one with one solver equals quantizing their stacked rows.
#[derive(Debug, Clone)]
pub struct GptqSolver {
    n: usize,
    opts: GptqOptions,
    /// Inputs with H_ii = 0: their weights are zeroed.
    dead: Vec<usize>,
    /// Column order (act-order: by decreasing H_ii); `None` for input order.
    perm: Option<Vec<usize>>,
    /// [n, n] upper triangular V with V·Vᵀ = damped H (permuted); V⁻¹ is GPTQ's Cholesky factor of H⁻¹.
    v: Vec<f32>,
}

impl GptqSolver {
    /// Factors a copy of the Hessian.
    pub fn new(hessian: &Hessian, opts: &GptqOptions) -> Result<Self> {
        Self::factor(hessian.n, hessian.samples, hessian.h.clone(), opts)
    }

    /// Factors the Hessian in its own buffer (no [in, in] copy).
    pub fn from_hessian(hessian: Hessian, opts: &GptqOptions) -> Result<Self> {
        Self::factor(hessian.n, hessian.samples, hessian.h, opts)
    }

    /// Inputs of the weights this solver quantizes.
    pub fn in_features(&self) -> usize {
        self.n
    }

    fn factor(n: usize, samples: usize, mut h: Vec<f32>, opts: &GptqOptions) -> Result<Self> {
        opts.validate()?;
        if samples == 0 {
            return Err(QuantError::NoSamples(n));
        }
        if let Some(column) = (0..n).find(|&j| !h[j * n + j].is_finite()) {
            return Err(QuantError::NonFiniteHessian {
                n,
                column,
                value: h[column * n + column],
            });
        }
        let dead: Vec<usize> = (0..n).filter(|&j| h[j * n + j] == 0.0).collect();
        for &j in &dead {
            h[j * n + j] = 1.0;
        }
        let perm: Option<Vec<usize>> = opts.act_order.then(|| {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
            perm
        });
        if let Some(perm) = &perm {
            permute_symmetric(&mut h, n, perm);
        }
        let mean_diag = (0..n).map(|j| f64::from(h[j * n + j])).sum::<f64>() / n as f64;
        let damp = (f64::from(opts.damp_percent) * mean_diag) as f32;
        for j in 0..n {
            h[j * n + j] += damp;
        }
        reversed_cholesky(&mut h, n).map_err(|e| QuantError::NotPositiveDefinite {
            n,
            damp_percent: opts.damp_percent,
            column: perm.as_ref().map_or(e.column, |p| p[e.column]),
            pivot: e.pivot,
            suggest: (opts.damp_percent * 10.0).clamp(0.01, 1.0),
        })?;
        Ok(GptqSolver {
            n,
            opts: *opts,
            dead,
            perm,
            v: h,
        })
    }

    /// GPTQ of weight [out, in] row-major (in = the Hessian's inputs).
    ///
    /// The column loop works with V (V·Vᵀ = H) instead of U = V⁻¹ (Uᵀ·U = H⁻¹): GPTQ's errors
    /// e_j = (w'_j − q_j)/U_jj satisfy E·U = W − Q (the original weight), so E = (W − Q)·V and the
    /// updated weight at column j is w'_j = w_j + Σ_{i<j} (w_i − q_i)·V_ij / V_jj. The lazy block update
    /// accumulates Σ (w_i − q_i)·V_ij with `gemm`; a group's grid, which GPTQ takes from the weights
    /// updated by the columns before the group only, is w_j + (y·V_gg⁻¹)_j with y the accumulated sums
    /// and V_gg the group's diagonal block (a small triangular solve per row).
    pub fn quantize(
        &self,
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        spec: &QuantSpec,
    ) -> Result<GptqResult> {
        check_weight(weight, out_features, in_features, spec)?;
        let n = self.n;
        if in_features != n {
            return Err(QuantError::HessianSize {
                hessian: n,
                in_features,
            });
        }
        let (gs, groups, bits, sym) = (spec.group_len(n), spec.n_groups(n), spec.bits, spec.sym);
        let grids = match (spec.group_size, self.opts.static_groups) {
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
        let mut w = weight.to_vec(); // [out, n]; column j < current holds w_j − q_j once done
        for &j in &self.dead {
            w.iter_mut().skip(j).step_by(n).for_each(|x| *x = 0.0);
        }
        if grids == Grids::Static {
            per_row(&w, n, &mut scales, &mut zeros, groups, params_of);
        }
        let perm = self.perm.as_deref();
        if let Some(perm) = perm {
            w.par_chunks_mut(n).for_each(|row| {
                let orig = row.to_vec();
                row.iter_mut().zip(perm).for_each(|(x, &p)| *x = orig[p]);
            });
        }
        let v = &self.v;
        let mut acc = vec![0f32; out_features * n]; // [out, n]: Σ_{i<j done} (w_i − q_i)·V_ij
        let mut q = vec![0u8; out_features * n]; // [out, n], permuted columns
        let mut losses = vec![0f64; out_features];
        let mut i1 = 0;
        while i1 < n {
            let mut i2 = (i1 + self.opts.block_size).min(n);
            if grids == Grids::Dynamic {
                i2 = i2.min((i1 / gs + 1) * gs);
                if i1 % gs == 0 {
                    let g1 = (i1 + gs).min(n);
                    group_start_grids(&w, &acc, v, n, (i1, g1), &mut scales, &mut zeros, spec);
                }
            }
            w.par_chunks_mut(n)
                .zip(acc.par_chunks_mut(n))
                .zip(q.par_chunks_mut(n))
                .zip(scales.par_chunks_mut(groups))
                .zip(zeros.par_chunks_mut(groups))
                .zip(losses.par_iter_mut())
                .with_min_len(ROWS_PER_TASK)
                .for_each(|(((((w, acc), q), s), z), loss)| {
                    for j in i1..i2 {
                        let g = match grids {
                            Grids::PerChannel => 0,
                            Grids::Static => perm.map_or(j, |p| p[j]) / gs,
                            Grids::Dynamic => j / gs,
                        };
                        let vjj = v[j * n + j];
                        let x = w[j] + acc[j] / vjj;
                        let level = quantize_value(x, s[g], z[g], bits);
                        let deq = dequantize_value(level, s[g], z[g]);
                        let e = (x - deq) * vjj;
                        *loss += f64::from(e * e) / 2.0;
                        let delta = w[j] - deq;
                        q[j] = level;
                        w[j] = delta;
                        let vrow = &v[j * n + j + 1..j * n + i2];
                        acc[j + 1..i2]
                            .iter_mut()
                            .zip(vrow)
                            .for_each(|(a, &vjk)| *a += delta * vjk);
                    }
                });
            if i2 < n {
                // Acc[:, i2:] += (W − Q)[:, i1:i2] · V[i1:i2, i2:]
                // SAFETY: acc and w are [out, n] (row stride n); the acc view is columns i2..n, the w view
                // columns i1..i2, the V view rows i1..i2, columns i2..n of v [n, n]; acc is exclusively
                // borrowed and a different allocation from w and v.
                unsafe {
                    product(
                        out_features,
                        n - i2,
                        i2 - i1,
                        (acc.as_mut_ptr().add(i2), n as isize, 1),
                        Some(1.0),
                        (w.as_ptr().add(i1), n as isize, 1),
                        (v.as_ptr().add(i1 * n + i2), n as isize, 1),
                        1.0,
                    );
                }
            }
            i1 = i2;
        }
        drop((w, acc));

        let mut g_idx = None;
        if let Some(perm) = perm {
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
}

/// Grids of the group of columns g0..g1 (the same group index in every row), from the weights as GPTQ
/// sees them at the group start: updated by every column before g0 and by none after. With w the
/// original weights there and acc = Σ_{i<g0} (w_i − q_i)·V_ij, that is w + acc[:, g0..g1]·V_gg⁻¹,
/// V_gg = V[g0..g1, g0..g1] upper triangular (one small inverse, one `gemm`).
#[allow(clippy::too_many_arguments)]
fn group_start_grids(
    w: &[f32],
    acc: &[f32],
    v: &[f32],
    n: usize,
    (g0, g1): (usize, usize),
    scales: &mut [f32],
    zeros: &mut [u8],
    spec: &QuantSpec,
) {
    let (len, rows, groups) = (g1 - g0, w.len() / n, spec.n_groups(n));
    let g = g0 / spec.group_len(n);
    let mut updated = vec![0f32; rows * len]; // [rows, len]
    if g0 > 0 {
        let vinv = upper_inverse(v, n, g0, g1); // [len, len]
                                                // SAFETY: updated is [rows, len] (row stride len), exclusively borrowed; the acc view is columns
                                                // g0..g1 of acc [rows, n]; vinv is [len, len]; three separate allocations.
        unsafe {
            product(
                rows,
                len,
                len,
                (updated.as_mut_ptr(), len as isize, 1),
                None,
                (acc.as_ptr().add(g0), n as isize, 1),
                (vinv.as_ptr(), len as isize, 1),
                1.0,
            );
        }
    }
    updated
        .par_chunks_mut(len)
        .zip(w.par_chunks(n))
        .zip(scales.par_chunks_mut(groups))
        .zip(zeros.par_chunks_mut(groups))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((u, w), s), z)| {
            u.iter_mut().zip(&w[g0..g1]).for_each(|(u, &w)| *u += w);
            (s[g], z[g]) = group_params(u, spec.bits, spec.sym);
        });
}

/// The inverse [len, len] of the upper triangular block V[g0..g1, g0..g1] of v [n, n], f64 sums.
fn upper_inverse(v: &[f32], n: usize, g0: usize, g1: usize) -> Vec<f32> {
    let len = g1 - g0;
    let at = |i: usize, j: usize| f64::from(v[(g0 + i) * n + g0 + j]);
    let mut x = vec![0f64; len * len];
    for j in 0..len {
        x[j * len + j] = 1.0 / at(j, j);
        for i in (0..j).rev() {
            let s: f64 = (i + 1..=j).map(|k| at(i, k) * x[k * len + j]).sum();
            x[i * len + j] = -s / at(i, i);
        }
    }
    x.into_iter().map(|v| v as f32).collect()
}

/// Copies the lower triangle of h [n, n] onto the upper one, in square tiles (a column walk per row
/// would miss the cache on every element).
fn mirror_lower(h: &mut [f32], n: usize) {
    const TILE: usize = 64;
    for i0 in (0..n).step_by(TILE) {
        for j0 in (i0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n) {
                for j in j0.max(i + 1)..(j0 + TILE).min(n) {
                    h[i * n + j] = h[j * n + i];
                }
            }
        }
    }
}

/// h [n, n] ← h[perm][:, perm], in place: columns within each row, then rows along the cycles of perm.
fn permute_symmetric(h: &mut [f32], n: usize, perm: &[usize]) {
    h.par_chunks_mut(n).for_each(|row| {
        let orig = row.to_vec();
        row.iter_mut().zip(perm).for_each(|(x, &p)| *x = orig[p]);
    });
    // new row i = old row perm[i]: follow each cycle once, holding one row aside.
    let mut done = vec![false; n];
    let mut held = vec![0f32; n];
    for start in 0..n {
        if done[start] || perm[start] == start {
            continue;
        }
        held.copy_from_slice(&h[start * n..(start + 1) * n]);
        let mut i = start;
        loop {
            done[i] = true;
            let src = perm[i];
            if src == start {
                h[i * n..(i + 1) * n].copy_from_slice(&held);
                break;
            }
            h.copy_within(src * n..(src + 1) * n, i * n);
            i = src;
        }
    }
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

    #[test]
    fn overflowed_activations_are_named() {
        let mut h = Hessian::new(3);
        h.add(&[1.0, f32::INFINITY, 0.5]);
        let spec = QuantSpec {
            bits: 4,
            group_size: None,
            sym: false,
        };
        let err = gptq(&[0.1, -0.2, 0.3], 1, 3, &h, &spec, &GptqOptions::default()).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFiniteHessian { n: 3, .. }),
            "{err:?}"
        );
    }
}
