//! Launchers of kernels/cuda/w4a16.cu: int4 weight-only products `y = x · Wᵀ` (GEMV at batch 1, GEMM up to any
//! batch) and `dequantize`, over weights repacked once on the host into the kernels' tile layout
//! ([`crate::cpu::w4a16_tiles::W4Tiles`], from any on-disk layout via [`crate::cpu::w4a16`]'s unpackers).

use std::marker::PhantomData;

use super::convert::Half;
use super::{bf16, f16, CudaSlice, Gpu, GpuError, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use crate::cpu::w4a16_tiles::{Half16, W4Tiles};

const SOURCE: super::KernelSource = crate::cuda_source!("w4a16");

/// An activation dtype of the W4A16 kernels (f16 or bf16).
pub trait W4Act: Half + Half16 + ValidAsZeroBits {
    /// The dtype's name in the kernels' names.
    const NAME: &'static str;
    /// Its bit pattern.
    fn bits(self) -> u16;
}

impl W4Act for f16 {
    const NAME: &'static str = "f16";
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl W4Act for bf16 {
    const NAME: &'static str = "bf16";
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

/// Int4 weights on the device, for activations of type `T`.
pub struct W4Weight<T: W4Act> {
    n: usize,
    k: usize,
    group_size: usize,
    /// [n/16][k/64][32][4] words.
    tiles: CudaSlice<u32>,
    /// [groups, n]: scale bits (T) | zero point as a T << 16.
    meta: CudaSlice<u32>,
    /// Act-order: stored input j is input perm[j].
    perm: Option<CudaSlice<u32>>,
    _dtype: PhantomData<T>,
}

impl<T: W4Act> W4Weight<T> {
    /// Uploads repacked weights (scales rounded to `T`).
    pub fn upload(gpu: &Gpu, w: &W4Tiles) -> Result<Self, GpuError> {
        let meta: Vec<u32> = w
            .scales
            .iter()
            .zip(&w.zeros)
            .map(|(&s, &z)| {
                u32::from(T::from_f32(s).bits()) | u32::from(T::from_f32(f32::from(z)).bits()) << 16
            })
            .collect();
        Ok(Self {
            n: w.n,
            k: w.k,
            group_size: w.group_size,
            tiles: gpu.upload(&w.tiles)?,
            meta: gpu.upload(&meta)?,
            perm: w.perm.as_deref().map(|p| gpu.upload(p)).transpose()?,
            _dtype: PhantomData,
        })
    }

    /// Output features.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes the kernels read for the weights: tiles and group metadata.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * 4 + self.meta.len() * 4
    }
}

/// How a W4A16 product splits its work: a block of `wk · wn · wb` warps covers `16 · rt · wn` output rows and
/// `8 · nb8 · wb` batch columns; its `wk` warps split the inputs and add up at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmConfig {
    /// 16-row weight tiles per warp.
    pub rt: u32,
    /// 8-column batch tiles per warp.
    pub nb8: u32,
    /// Warps splitting K.
    pub wk: u32,
    /// Warps along the output rows.
    pub wn: u32,
    /// Warps along the batch.
    pub wb: u32,
}

const fn cfg(rt: u32, nb8: u32, wk: u32, wn: u32, wb: u32) -> MmConfig {
    MmConfig {
        rt,
        nb8,
        wk,
        wn,
        wb,
    }
}

/// Every configuration compiled in kernels/cuda/w4a16.cu (its `W4_MM_BOTH` lines).
pub const CONFIGS: [MmConfig; 17] = [
    cfg(1, 1, 8, 1, 1),
    cfg(1, 1, 16, 1, 1),
    cfg(2, 1, 8, 1, 1),
    cfg(1, 1, 4, 2, 1),
    cfg(1, 2, 8, 1, 1),
    cfg(2, 2, 8, 1, 1),
    cfg(1, 2, 16, 1, 1),
    cfg(2, 2, 4, 2, 1),
    cfg(2, 4, 4, 2, 1),
    cfg(1, 4, 8, 1, 1),
    cfg(2, 8, 2, 4, 1),
    cfg(2, 8, 4, 2, 1),
    cfg(1, 8, 4, 2, 1),
    cfg(2, 8, 1, 8, 1),
    cfg(2, 8, 1, 4, 2),
    cfg(2, 8, 2, 2, 2),
    cfg(1, 8, 2, 4, 2),
];

impl MmConfig {
    /// Batch columns one block covers.
    pub fn cols(&self) -> usize {
        (8 * self.nb8 * self.wb) as usize
    }

    /// Output rows one block covers.
    pub fn rows(&self) -> usize {
        (16 * self.rt * self.wn) as usize
    }

    fn kernel<T: W4Act>(&self) -> String {
        let MmConfig {
            rt,
            nb8,
            wk,
            wn,
            wb,
        } = *self;
        format!("w4_mm_{}_{rt}_{nb8}_{wk}_{wn}_{wb}", T::NAME)
    }

    /// The configuration [`w4a16`] uses for `batch` rows: the smallest batch tile that holds the batch (up to
    /// 128), split along K enough to give the GPU some 12 warps a multiprocessor.
    pub fn pick(batch: usize, n: usize, sm_count: u32) -> MmConfig {
        let candidates: &[MmConfig] = match batch {
            0..=8 => &[cfg(1, 1, 8, 1, 1), cfg(1, 1, 16, 1, 1)],
            9..=16 => &[cfg(1, 2, 8, 1, 1), cfg(1, 2, 16, 1, 1)],
            17..=32 => &[cfg(1, 4, 8, 1, 1), cfg(2, 4, 4, 2, 1)],
            33..=64 => &[cfg(1, 8, 4, 2, 1), cfg(2, 8, 2, 4, 1)],
            _ => &[cfg(2, 8, 2, 2, 2), cfg(2, 8, 1, 4, 2)],
        };
        let warps_wanted = 12 * sm_count as usize;
        let warps = |c: &MmConfig| n.div_ceil(c.rows()) * (c.wk * c.wn * c.wb) as usize;
        // The first (least split) candidate that fills the GPU, else the one with most warps.
        candidates
            .iter()
            .copied()
            .find(|c| warps(c) >= warps_wanted)
            .unwrap_or_else(|| {
                candidates
                    .iter()
                    .copied()
                    .max_by_key(warps)
                    .unwrap_or(CONFIGS[0])
            })
    }
}

fn check_io<T: W4Act>(
    w: &W4Weight<T>,
    x: &CudaSlice<T>,
    batch: usize,
    y: &CudaSlice<T>,
) -> Result<(), GpuError> {
    if x.len() != batch * w.k || y.len() != batch * w.n {
        return Err(GpuError::Shape(format!(
            "w4a16: x must be [batch {batch}, k {}] ({} elements, got {}) and y [batch, n {}] ({} elements, got {})",
            w.k,
            batch * w.k,
            x.len(),
            w.n,
            batch * w.n,
            y.len()
        )));
    }
    if batch > i32::MAX as usize / w.k.max(w.n) {
        return Err(GpuError::Shape(format!(
            "w4a16: batch {batch} too large for 32-bit indexing"
        )));
    }
    Ok(())
}

/// y [batch, n] = x [batch, k] · Wᵀ with the configuration [`MmConfig::pick`] chooses.
pub fn w4a16<T: W4Act>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let config = MmConfig::pick(batch, w.n, gpu.sm_count());
    w4a16_with(gpu, config, x, batch, w, y)
}

/// [`w4a16`] with an explicit configuration (one of [`CONFIGS`]).
pub fn w4a16_with<T: W4Act>(
    gpu: &Gpu,
    config: MmConfig,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    check_io(w, x, batch, y)?;
    if !CONFIGS.contains(&config) {
        return Err(GpuError::Shape(format!(
            "w4a16: {config:?} is not compiled (see CONFIGS)"
        )));
    }
    if batch == 0 {
        return Ok(());
    }
    let gathered;
    let x = match &w.perm {
        None => x,
        Some(perm) => {
            gathered = gather(gpu, x, perm, batch, w.k)?;
            &gathered
        }
    };
    let f = gpu.function(&SOURCE, &config.kernel::<T>())?;
    let launch = LaunchConfig {
        grid_dim: (
            w.n.div_ceil(config.rows()) as u32,
            batch.div_ceil(config.cols()) as u32,
            1,
        ),
        block_dim: (32 * config.wk * config.wn * config.wb, 1, 1),
        shared_mem_bytes: 0,
    };
    let (b, n, k, g) = (batch as i32, w.n as i32, w.k as i32, w.group_size as i32);
    // SAFETY: x is [batch, k] and y [batch, n] (checked), tiles/meta were sized by `upload` for n, k and the
    // group size, which the kernel indexes by; the block size matches the kernel's launch bounds.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(y)
            .arg(x)
            .arg(&w.tiles)
            .arg(&w.meta)
            .arg(&b)
            .arg(&n)
            .arg(&k)
            .arg(&g)
            .launch(launch)
    }?;
    Ok(())
}

/// x [batch, k] with its columns in the stored (group) order.
fn gather<T: W4Act>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    perm: &CudaSlice<u32>,
    batch: usize,
    k: usize,
) -> Result<CudaSlice<T>, GpuError> {
    let mut out = gpu.alloc::<T>(batch * k)?;
    let f = gpu.function(&SOURCE, "w4_gather_u16")?;
    let (b, kk) = (batch as i32, k as i32);
    let total = batch * k;
    let cfg = LaunchConfig {
        grid_dim: (total.div_ceil(256).min(4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: out and x are [batch, k] 16-bit elements, perm holds k indices below k.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(x)
            .arg(perm)
            .arg(&b)
            .arg(&kk)
            .launch(cfg)
    }?;
    Ok(out)
}

/// Dense W [n, k] (original input order) of type `T`: `(q − z) · s` rounded once, the values the products use.
pub fn dequantize<T: W4Act>(gpu: &Gpu, w: &W4Weight<T>) -> Result<CudaSlice<T>, GpuError> {
    let mut out = gpu.alloc::<T>(w.n * w.k)?;
    let f = gpu.function(&SOURCE, &format!("w4_dequantize_{}", T::NAME))?;
    let total = w.tiles.len() / 4;
    let cfg = LaunchConfig {
        grid_dim: (
            total.div_ceil(256).min(gpu.sm_count() as usize * 16) as u32,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let has_perm = i32::from(w.perm.is_some());
    // The kernel reads perm only when has_perm; otherwise any buffer stands in for the pointer.
    let perm = w.perm.as_ref().unwrap_or(&w.tiles);
    let (n, k, g) = (w.n as i32, w.k as i32, w.group_size as i32);
    // SAFETY: out is [n, k]; tiles/meta/perm were sized by `upload` for n, k and the group size.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(&w.tiles)
            .arg(&w.meta)
            .arg(perm)
            .arg(&has_perm)
            .arg(&n)
            .arg(&k)
            .arg(&g)
            .launch(cfg)
    }?;
    Ok(out)
}
