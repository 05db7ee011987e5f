//! AWQ's scale and clip search on the GPU (kernels/cuda/awq_search.cu; AutoAWQ `_compute_best_scale` /
//! `_compute_best_clip`): the fake quantization of a scale candidate Q(W·s)/s, the clip candidates
//! Q(clamp(W, ±f·max|W|)) − W of one input group over every shrink step, the best clip of each row from the
//! errors d·G·dᵀ, and a deterministic f64 sum of squared differences (the loss). The grid math is crates/quant's
//! `grid` (GPTQ's find_params), which is also the CPU reference the parity tests compare with bit for bit
//! (`olive_quant::awq::scaled_fake_quantize`, `clamped_fake_quantize`).

use cudarc::driver::{CudaView, CudaViewMut};

use super::float::as_i32;
use super::{CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("awq_search");
/// Threads per block (awq_search.cu's THREADS).
const THREADS: u32 = 256;
/// Blocks of the loss's first pass: the `partial` buffer of [`squared_error_sum`] holds this many f64.
pub const PARTIALS: usize = 1024;

/// The weight a grid works on: [rows, in_features] in groups of `group_len` inputs (the last may be shorter),
/// levels 0..=max_level, symmetric or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightGrid {
    /// Output channels.
    pub rows: usize,
    /// Inputs per row (the row stride).
    pub in_features: usize,
    /// Inputs per group.
    pub group_len: usize,
    /// 2^bits − 1.
    pub max_level: u8,
    /// Symmetric grid (zero point (max_level + 1) / 2).
    pub sym: bool,
}

/// One input group of the clip search: columns c0..c0+len, shrink steps 0..steps of 1/n_grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipGroup {
    /// First column.
    pub c0: usize,
    /// Columns.
    pub len: usize,
    /// Shrink steps tried (f = 1 − step/n_grid).
    pub steps: usize,
    /// The grid's denominator.
    pub n_grid: usize,
}

fn blocks(n: usize) -> Result<LaunchConfig, GpuError> {
    let grid = u32::try_from(n).map_err(|_| shape(format!("{n} blocks: more than 2^32")))?;
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn shape(why: String) -> GpuError {
    GpuError::Shape(format!("awq_search: {why}"))
}

fn need(what: &str, len: usize, expected: usize) -> Result<(), GpuError> {
    if len < expected {
        return Err(shape(format!(
            "{what} has {len} elements, expected at least {expected}"
        )));
    }
    Ok(())
}

impl WeightGrid {
    fn check(&self, w: usize) -> Result<(), GpuError> {
        if self.group_len == 0 || self.in_features == 0 || self.max_level == 0 {
            return Err(shape(format!("bad grid {self:?}")));
        }
        need("w", w, self.rows * self.in_features)
    }
}

/// out = Q(w·s)·(1/s): each (row, group) of w·s on its own min-max grid, as
/// `olive_quant::awq::scaled_fake_quantize` computes it. w, out: [rows, in_features]; s: [in_features].
pub fn scaled_fake_quantize(
    gpu: &Gpu,
    w: &CudaView<'_, f32>,
    s: &CudaView<'_, f32>,
    out: &mut CudaViewMut<'_, f32>,
    grid: &WeightGrid,
) -> Result<(), GpuError> {
    grid.check(w.len())?;
    need("s", s.len(), grid.in_features)?;
    need("out", out.len(), grid.rows * grid.in_features)?;
    let jobs = grid.rows * grid.in_features.div_ceil(grid.group_len);
    if jobs == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "awq_scaled_fake_quantize")?;
    let (rows, inf) = (as_i32(grid.rows, "rows")?, as_i32(grid.in_features, "in")?);
    let (gl, maxq, sym) = (
        as_i32(grid.group_len.min(grid.in_features), "group_len")?,
        i32::from(grid.max_level),
        i32::from(grid.sym),
    );
    // SAFETY: w and out hold rows·in_features f32, s in_features (checked above).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(w)
            .arg(s)
            .arg(&rows)
            .arg(&inf)
            .arg(&gl)
            .arg(&maxq)
            .arg(&sym)
            .launch(blocks(jobs)?)
    }?;
    Ok(())
}

/// d: [steps, rows, len] = Q(clamp(w[:, c0..c0+len], ±max|w_row|·(1 − step/n_grid))) − w[:, c0..c0+len], one grid
/// per row on the clamped values (`olive_quant::awq::clamped_fake_quantize` minus w).
pub fn clip_candidates(
    gpu: &Gpu,
    w: &CudaView<'_, f32>,
    grid: &WeightGrid,
    group: ClipGroup,
    d: &mut CudaViewMut<'_, f32>,
) -> Result<(), GpuError> {
    grid.check(w.len())?;
    check_group(grid, group)?;
    need("d", d.len(), group.steps * grid.rows * group.len)?;
    let jobs = group.steps * grid.rows;
    if jobs == 0 || group.len == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "awq_clip_candidates")?;
    let args = [
        as_i32(grid.in_features, "in")?,
        as_i32(group.c0, "c0")?,
        as_i32(grid.rows, "rows")?,
        as_i32(group.len, "len")?,
        as_i32(group.steps, "steps")?,
        as_i32(group.n_grid, "n_grid")?,
        i32::from(grid.max_level),
        i32::from(grid.sym),
    ];
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(d).arg(w);
    for a in &args {
        b.arg(a);
    }
    // SAFETY: w holds rows·in_features f32 with c0 + len ≤ in_features, d steps·rows·len (checked above).
    unsafe { b.launch(blocks(jobs)?) }?;
    Ok(())
}

fn check_group(grid: &WeightGrid, g: ClipGroup) -> Result<(), GpuError> {
    if g.c0 + g.len > grid.in_features || g.n_grid == 0 {
        return Err(shape(format!(
            "clip group {g:?} outside [0, {}) or n_grid 0",
            grid.in_features
        )));
    }
    Ok(())
}

/// best[r] = max|w[r, c0..c0+len]|·(1 − step/n_grid) of the step whose error Σ_j e[step, r, j]·d[step, r, j]
/// (f64) is smallest, the first of equal ones (the unclipped max when none is below +∞). e, d: [steps, rows, len].
pub fn clip_best(
    gpu: &Gpu,
    (e, d): (&CudaView<'_, f32>, &CudaView<'_, f32>),
    w: &CudaView<'_, f32>,
    grid: &WeightGrid,
    group: ClipGroup,
    best: &mut CudaViewMut<'_, f32>,
) -> Result<(), GpuError> {
    grid.check(w.len())?;
    check_group(grid, group)?;
    let n = group.steps * grid.rows * group.len;
    need("e", e.len(), n)?;
    need("d", d.len(), n)?;
    need("best", best.len(), grid.rows)?;
    if grid.rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, "awq_clip_best")?;
    let args = [
        as_i32(grid.in_features, "in")?,
        as_i32(group.c0, "c0")?,
        as_i32(grid.rows, "rows")?,
        as_i32(group.len, "len")?,
        as_i32(group.steps, "steps")?,
        as_i32(group.n_grid, "n_grid")?,
    ];
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(best).arg(e).arg(d).arg(w);
    for a in &args {
        b.arg(a);
    }
    // SAFETY: e and d hold steps·rows·len f32, w rows·in_features, best rows (checked above).
    unsafe { b.launch(blocks(grid.rows)?) }?;
    Ok(())
}

/// out[0] = Σ (a − b)² over a, b of equal length, each difference rounded to f32 and squared and summed in f64
/// in a fixed order (the same sum every run); `partial` is scratch of [`PARTIALS`] f64.
pub fn squared_error_sum(
    gpu: &Gpu,
    a: &CudaView<'_, f32>,
    b: &CudaView<'_, f32>,
    partial: &mut CudaSlice<f64>,
    out: &mut CudaViewMut<'_, f64>,
) -> Result<(), GpuError> {
    if a.len() != b.len() || partial.len() < PARTIALS || out.is_empty() {
        return Err(shape(format!(
            "squared_error_sum: a {} and b {} elements (must be equal), partial {} (>= {PARTIALS}), out {}",
            a.len(),
            b.len(),
            partial.len(),
            out.len()
        )));
    }
    let n = a.len() as i64;
    let first = gpu.function(&SOURCE, "awq_sq_diff_partial")?;
    // SAFETY: a and b hold n f32, partial PARTIALS f64 (one per block).
    unsafe {
        gpu.stream()
            .launch_builder(&first)
            .arg(&mut *partial)
            .arg(a)
            .arg(b)
            .arg(&n)
            .launch(blocks(PARTIALS)?)
    }?;
    let second = gpu.function(&SOURCE, "awq_sum_partials")?;
    let count = PARTIALS as i32;
    // SAFETY: partial holds PARTIALS f64, out at least one.
    unsafe {
        gpu.stream()
            .launch_builder(&second)
            .arg(out)
            .arg(&*partial)
            .arg(&count)
            .launch(blocks(1)?)
    }?;
    Ok(())
}
