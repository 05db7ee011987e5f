//! AWQ's scale and clip search on the GPU (AutoAWQ `_compute_best_scale` / `_compute_best_clip`, as the CPU
//! search of the parent module computes them), for a [`Compute`] on a GPU holding the layer: each scale candidate's
//! weight Q(W·s)/s is fake-quantized by a kernel straight into the layer's held device copy, the inspected
//! module's output computed from it by cuBLAS, and the loss Σ(out − ref)² summed on the device into one f64 per
//! candidate: the candidates cost no host round trip (the attention block's RoPE and attention between its two
//! products run on the device too, in f32 like the host's forwards). The held weight is restored from a
//! device copy of the original afterwards. The clip search builds each input group's candidates Q(clamp(W)) − W,
//! their errors d·G·dᵀ and each row's best clip on the device; only the chosen clip maxima come back, applied to
//! the host weight as the CPU search applies them. Choices equal the CPU's except where two candidates' losses
//! tie within the float noise of the products (their summation order differs).

use olive_kernels::cuda::awq_search::{
    clip_best, clip_candidates, scaled_fake_quantize, squared_error_sum, ClipGroup, WeightGrid,
    PARTIALS,
};
use olive_kernels::cuda::gemm;
use olive_kernels::cuda::{CudaSlice, GpuError};
use olive_nn::{DecoderLayer, Linear, RopeTables};
use rayon::prelude::*;

use super::{choose, ratio_scales, weight_abs_mean, GroupInput, Inspect};
use crate::device::{Compute, OnDevice};
use crate::error::Result;
use crate::grid::QuantSpec;

/// The weight a scaling group searches (all rows of the inspected slot).
fn group_weight(layer: &DecoderLayer, inspect: Inspect) -> &Linear {
    match inspect {
        Inspect::Attention => &layer.qkv_proj,
        Inspect::O => &layer.o_proj,
        Inspect::Mlp => &layer.gate_up_proj,
        Inspect::Down => &layer.down_proj,
    }
}

/// `_compute_best_scale` on the GPU: the scales of the best ratio and that ratio, or `None` when `compute` is not
/// a GPU holding the layer (the CPU search runs then). The layer's host weights are not touched.
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    compute: &Compute,
    layer: &DecoderLayer,
    inspect: Inspect,
    input: &GroupInput,
    seq_len: usize,
    rope: &RopeTables,
    spec: &QuantSpec,
    opts: &super::AwqOptions,
) -> Result<Option<(Vec<f32>, f32, f64)>> {
    let l = group_weight(layer, inspect);
    let (rows, in_features) = (l.out_features, l.in_features);
    let host = &l.weight[..];
    let n = opts.n_grid.max(1);
    let losses = compute.on_device(|dev| {
        if dev.weight(host).is_none() {
            return Ok(None);
        }
        let w_mean = weight_abs_mean(host, rows, in_features, spec);
        let ratios: Vec<f32> = (0..n).map(|step| step as f32 / n as f32).collect();
        let scales: Vec<f32> = ratios
            .iter()
            .flat_map(|&r| ratio_scales(&input.abs_mean, &w_mean, r, opts.duo_scaling))
            .collect(); // [n, in]
        let gpu = dev.gpu;
        let x = gpu.upload(&input.loss)?; // [tokens, in]
        let tokens = input.loss.len() / in_features.max(1);
        let tables = dev.window_tables(rope, seq_len)?;
        let reference = inspect_on(dev, layer, inspect, &x, tokens, seq_len, &tables)?;
        let original = match dev.weight(host) {
            Some(w) => gpu.stream().clone_dtod(&w).map_err(GpuError::from)?,
            None => return Ok(None),
        };
        let all_s = gpu.upload(&scales)?;
        let mut partial = gpu.alloc::<f64>(PARTIALS)?;
        let mut sums = gpu.alloc::<f64>(n)?;
        let grid = WeightGrid {
            rows,
            in_features,
            group_len: spec.group_len(in_features),
            max_level: spec.max_level(),
            sym: spec.sym,
        };
        let mut grid_loop = |dev: &mut OnDevice<'_>| -> Result<()> {
            for step in 0..n {
                if let Some(mut trial) = dev.weight_mut(host) {
                    let s = all_s.slice(step * in_features..(step + 1) * in_features);
                    scaled_fake_quantize(gpu, &original.slice(..), &s, &mut trial, &grid)?;
                }
                let out = inspect_on(dev, layer, inspect, &x, tokens, seq_len, &tables)?;
                let mut slot = sums.slice_mut(step..step + 1);
                squared_error_sum(
                    gpu,
                    &out.slice(..),
                    &reference.slice(..),
                    &mut partial,
                    &mut slot,
                )?;
            }
            Ok(())
        };
        let searched = grid_loop(dev);
        let restored = match dev.weight_mut(host) {
            Some(mut w) => gpu
                .stream()
                .memcpy_dtod(&original, &mut w)
                .map_err(GpuError::from),
            None => Ok(()),
        };
        searched?;
        restored?;
        let sums = gpu.download(&sums)?;
        let count = reference.len().max(1) as f64;
        Ok(Some((sums, scales, count)))
    })?;
    let Some((sums, scales, count)) = losses.flatten() else {
        return Ok(None);
    };
    // The CPU search's rule on the mean squared errors.
    let losses: Vec<f64> = sums.iter().map(|sum| sum / count).collect();
    let (step, margin) = choose(&losses);
    let s = scales[step * in_features..(step + 1) * in_features].to_vec();
    Ok(Some((s, step as f32 / n as f32, margin)))
}

/// The inspected module's output ([tokens, hidden]) on x (whole windows of `seq_len` for the attention block),
/// as the parent's `inspect_output` computes it, all on the device (RoPE and attention in f32, like the host's);
/// `rope` holds a window's cos and sin tables on the device ([`OnDevice::window_tables`]).
fn inspect_on(
    dev: &OnDevice<'_>,
    layer: &DecoderLayer,
    inspect: Inspect,
    x: &CudaSlice<f32>,
    tokens: usize,
    seq_len: usize,
    rope: &(CudaSlice<f32>, CudaSlice<f32>),
) -> Result<CudaSlice<f32>> {
    match inspect {
        Inspect::O => dev.linear(&layer.o_proj, x, tokens),
        Inspect::Down => dev.linear(&layer.down_proj, x, tokens),
        Inspect::Mlp => {
            let act = dev.mlp_activation(layer, x, tokens)?; // [tokens, intermediate]
            dev.linear(&layer.down_proj, &act, tokens)
        }
        Inspect::Attention => {
            let qkv = dev.linear(&layer.qkv_proj, x, tokens)?; // [tokens, q + 2·kv]
            let ctx = dev.attend_windows(layer, &qkv, seq_len, rope)?; // [tokens, heads · head_dim]
            drop(qkv);
            dev.linear(&layer.o_proj, &ctx, tokens)
        }
    }
}

/// `_compute_best_clip` on the GPU for w: [rows, in] (a held weight, or part of one) with its clip input rows
/// x: [tokens, in]: the best clip max of every (input group, row), [groups, rows], or `None` when `compute` is not
/// a GPU holding w. The errors are d·G·dᵀ with G = XᵀX of the group's inputs, as on the CPU.
pub(super) fn clip_maxima(
    compute: &Compute,
    w: &[f32],
    (rows, in_features): (usize, usize),
    x: &[f32],
    spec: &QuantSpec,
    opts: &super::AwqOptions,
) -> Result<Option<Vec<f32>>> {
    let m = x.len() / in_features.max(1);
    let gl = spec.group_len(in_features).min(in_features);
    let steps = ((opts.max_shrink * opts.n_grid as f32) as usize).max(1);
    let found = compute.on_device(|dev| {
        let Some(wv) = dev.weight(w) else {
            return Ok(None);
        };
        let gpu = dev.gpu;
        // [in, m]: x transposed, so a group's inputs are contiguous rows.
        let mut xt = vec![0f32; in_features * m];
        xt.par_chunks_mut(m.max(1))
            .enumerate()
            .for_each(|(c, col)| {
                for (t, v) in col.iter_mut().enumerate() {
                    *v = x[t * in_features + c];
                }
            });
        let xt = gpu.upload(&xt)?;
        let groups = in_features.div_ceil(gl.max(1));
        let grid = WeightGrid {
            rows,
            in_features,
            group_len: gl,
            max_level: spec.max_level(),
            sym: spec.sym,
        };
        let mut best = gpu.alloc::<f32>(groups * rows)?; // [groups, rows]
        let mut g = gpu.alloc::<f32>(gl * gl)?; // [len, len]
        let mut d = gpu.alloc::<f32>(steps * rows * gl)?; // [steps · rows, len]
        let mut e = gpu.alloc::<f32>(steps * rows * gl)?; // [steps · rows, len]: d · G
        for (gi, c0) in (0..in_features).step_by(gl.max(1)).enumerate() {
            let len = gl.min(in_features - c0);
            let n = steps * rows * len;
            let group = ClipGroup {
                c0,
                len,
                steps,
                n_grid: opts.n_grid.max(1),
            };
            let xg = xt.slice(c0 * m..(c0 + len) * m);
            gemm::linear(
                gpu,
                &xg,
                &xg,
                &mut g.slice_mut(..len * len),
                (len, len, m),
                false,
            )?;
            clip_candidates(gpu, &wv, &grid, group, &mut d.slice_mut(..n))?;
            gemm::linear(
                gpu,
                &d.slice(..n),
                &g.slice(..len * len),
                &mut e.slice_mut(..n),
                (steps * rows, len, len),
                false,
            )?;
            let mut out = best.slice_mut(gi * rows..(gi + 1) * rows);
            clip_best(
                gpu,
                (&e.slice(..n), &d.slice(..n)),
                &wv,
                &grid,
                group,
                &mut out,
            )?;
        }
        Ok(Some(gpu.download(&best)?))
    })?;
    Ok(found.flatten())
}
