//! Launchers of kernels/cuda/w4a16.cu: int4 weight-only products `y = x · Wᵀ` (GEMV at batch 1, GEMM up to any
//! batch) and `dequantize`, over weights repacked once on the host into the kernels' tile layout
//! ([`crate::cpu::w4a16_tiles::W4Tiles`], from any on-disk layout via [`crate::cpu::w4a16`]'s unpackers).

use std::marker::PhantomData;

use super::float::Half;
use cudarc::driver::sys::CUfunction_attribute;

use super::rmsnorm::InputNorm;
use super::{CudaFunction, CudaSlice, CudaStream, Gpu, GpuError, LaunchConfig, PushKernelArg};
use crate::cpu::w4a16_tiles::W4Tiles;
use cudarc::driver::{DevicePtr, DevicePtrMut, SyncOnDrop};

/// w4a16.cu with w4a16_sm90.cu appended (its wgmma kernel uses the first's helpers), compiled for sm_90a on Hopper
/// and for the device's plain target elsewhere (where the wgmma kernel compiles to nothing).
const SOURCE: super::KernelSource = super::KernelSource {
    file: "w4a16.cu",
    code: concat!(
        include_str!("../../cuda/prelude.cuh"),
        include_str!("../../cuda/w4a16.cu"),
        include_str!("../../cuda/w4a16_sm90.cu")
    ),
    arch_specific: true,
};

/// Int4 weights on the device, for activations of type `T`.
pub struct W4Weight<T: Half> {
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

impl<T: Half> W4Weight<T> {
    /// Uploads repacked weights (scales rounded to `T`).
    pub fn upload(gpu: &Gpu, w: &W4Tiles) -> Result<Self, GpuError> {
        let meta: Vec<u32> = w
            .scales
            .iter()
            .zip(&w.zeros)
            .map(|(&s, &z)| {
                u32::from(T::from_f32(s).to_bits())
                    | u32::from(T::from_f32(f32::from(z)).to_bits()) << 16
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

/// How a W4A16 product splits its work. With `stages == 0` (the split-K kernel for small batches) a block of
/// `wk · wn · wb` warps covers `16 · rt · wn` output rows and `8 · nb8 · wb` batch columns, its `wk` warps
/// splitting the inputs and adding up at the end, each warp keeping `prefetch` chunks' loads in flight. With
/// `stages > 0` (the pipelined kernels for larger batches, `wk = 0`) a block of `wn · wb` warps covers the same
/// tile over a range of inputs, `stages` chunks of weights and activations in flight through shared memory; the
/// launcher splits K over blocks when the tiles are too few. `producer` marks the Hopper (sm_90a) warp-specialised
/// wgmma kernel: `wn / 4` consumer warpgroups, `wb = 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmConfig {
    /// 16-row weight tiles per warp.
    pub rt: u32,
    /// 8-column batch tiles per warp.
    pub nb8: u32,
    /// Warps splitting K (0 for the pipelined kernel).
    pub wk: u32,
    /// Warps along the output rows.
    pub wn: u32,
    /// Warps along the batch.
    pub wb: u32,
    /// Shared-memory stages of the pipelined kernel; 0 for the split-K kernel.
    pub stages: u32,
    /// Blocks a multiprocessor the pipelined kernel is compiled to fit (its register cap).
    pub min_blocks: u32,
    /// Blocks of a thread-block cluster splitting K in the warp-specialised kernel (1: none).
    pub cluster: u32,
    /// The warp-specialised wgmma kernel: a producer warpgroup fills the stages by bulk copies, `wn / 4`
    /// consumer warpgroups of `64 · rt` rows each (activations laid out once per call by `w4_xperm_u16`, unless
    /// `natural_x`).
    pub producer: bool,
    /// The warp-specialised kernel reading x in its own order by tensor copies, with no layout pass (weights with
    /// groups of whole 64-input chunks and no act-order only: [`MmConfig::accepts`]).
    pub natural_x: bool,
    /// Chunks (64 inputs each) a shared-memory stage of the warp-specialised kernel holds (1 elsewhere).
    pub stage_chunks: u32,
    /// Chunks whose weight loads a warp of the split-K kernel keeps in flight (1 elsewhere).
    pub prefetch: u32,
}

const fn cfg(rt: u32, nb8: u32, wk: u32, wn: u32, wb: u32) -> MmConfig {
    MmConfig {
        rt,
        nb8,
        wk,
        wn,
        wb,
        stages: 0,
        min_blocks: 1,
        cluster: 1,
        producer: false,
        natural_x: false,
        stage_chunks: 1,
        prefetch: 1,
    }
}

/// `c` with `prefetch` chunks' weight loads in flight a warp.
const fn pf(c: MmConfig, prefetch: u32) -> MmConfig {
    MmConfig { prefetch, ..c }
}

const fn pipe(rt: u32, nb8: u32, wn: u32, wb: u32, stages: u32) -> MmConfig {
    MmConfig {
        rt,
        nb8,
        wk: 0,
        wn,
        wb,
        stages,
        min_blocks: 1,
        cluster: 1,
        producer: false,
        natural_x: false,
        stage_chunks: 1,
        prefetch: 1,
    }
}

/// The warp-specialised Hopper kernel: `warpgroups` consumers of `64 · rt` rows each, `cols` batch columns (16 to
/// 128), `stages` stages of `stage_chunks` chunks in flight, at least `min_blocks` an SM.
const fn ws(
    warpgroups: u32,
    rt: u32,
    cols: u32,
    (stages, stage_chunks): (u32, u32),
    min_blocks: u32,
) -> MmConfig {
    MmConfig {
        rt,
        min_blocks,
        producer: true,
        stage_chunks,
        ..pipe(1, cols / 8, 4 * warpgroups, 1, stages)
    }
}

/// [`ws`] (one block an SM) whose thread-block clusters of `cluster` blocks split K, adding up through distributed
/// shared memory instead of partial sums in device memory.
const fn wsc(warpgroups: u32, rt: u32, cols: u32, stages: (u32, u32), cluster: u32) -> MmConfig {
    MmConfig {
        cluster,
        ..ws(warpgroups, rt, cols, stages, 1)
    }
}

/// `c` (a warp-specialised configuration) reading x in its own order by tensor copies.
const fn nx(c: MmConfig) -> MmConfig {
    MmConfig {
        natural_x: true,
        ..c
    }
}

/// A pipelined configuration compiled for two blocks a multiprocessor.
const fn pipe2(rt: u32, nb8: u32, wn: u32, wb: u32, stages: u32) -> MmConfig {
    MmConfig {
        min_blocks: 2,
        ..pipe(rt, nb8, wn, wb, stages)
    }
}

/// Every configuration compiled in kernels/cuda/w4a16.cu (its `W4_MM_BOTH` and `W4_MMP_BOTH` lines) and
/// w4a16_sm90.cu (`W4_WS`, `W4_WSC`, `W4_WSX`); [`MmConfig::runs_on`] says which a device has.
pub const CONFIGS: [MmConfig; 55] = [
    cfg(1, 1, 8, 1, 1),
    cfg(1, 1, 16, 1, 1),
    cfg(2, 1, 8, 1, 1),
    cfg(2, 1, 16, 1, 1),
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
    pf(cfg(1, 1, 16, 1, 1), 2),
    pipe(2, 8, 4, 2, 3),
    pipe(2, 8, 4, 2, 4),
    pipe(2, 4, 4, 2, 4),
    pipe(2, 8, 8, 1, 4),
    pipe(1, 8, 8, 2, 3),
    pipe(2, 2, 4, 2, 4),
    pipe2(2, 8, 4, 2, 3),
    pipe2(2, 8, 4, 2, 4),
    pipe2(1, 8, 4, 2, 4),
    pipe2(2, 4, 4, 2, 3),
    ws(2, 1, 64, (3, 2), 2),
    ws(2, 1, 64, (3, 4), 1),
    ws(2, 1, 128, (4, 2), 1),
    ws(2, 2, 128, (3, 2), 1),
    wsc(2, 1, 64, (3, 4), 2),
    wsc(2, 1, 64, (3, 4), 4),
    wsc(2, 1, 128, (4, 2), 2),
    wsc(2, 1, 128, (4, 2), 4),
    wsc(2, 1, 64, (3, 4), 3),
    wsc(2, 1, 128, (4, 2), 3),
    nx(ws(2, 1, 64, (3, 2), 2)),
    nx(ws(2, 1, 64, (3, 4), 1)),
    nx(ws(2, 1, 128, (4, 2), 1)),
    nx(ws(2, 2, 128, (3, 2), 1)),
    nx(wsc(2, 1, 64, (3, 4), 2)),
    nx(wsc(2, 1, 64, (3, 4), 4)),
    nx(wsc(2, 1, 128, (4, 2), 2)),
    nx(wsc(2, 1, 128, (4, 2), 4)),
    nx(wsc(2, 1, 64, (3, 4), 3)),
    nx(wsc(2, 1, 128, (4, 2), 3)),
    wsc(3, 1, 64, (3, 2), 2),
    nx(wsc(3, 1, 64, (3, 4), 2)),
    wsc(1, 1, 64, (3, 4), 2),
    nx(wsc(1, 1, 64, (3, 4), 2)),
    wsc(1, 1, 128, (4, 2), 2),
    nx(wsc(1, 1, 128, (4, 2), 2)),
];

impl MmConfig {
    /// Threads of one block.
    pub fn threads(&self) -> u32 {
        32 * self.wk.max(1) * self.wn * self.wb + if self.producer { 128 } else { 0 }
    }

    /// Batch columns one block covers.
    pub fn cols(&self) -> usize {
        (8 * self.nb8 * self.wb) as usize
    }

    /// Output rows one block covers.
    pub fn rows(&self) -> usize {
        (16 * self.rt * self.wn) as usize
    }

    /// Whether a device of compute capability `arch` has this configuration's kernel: clusters need sm_90 or
    /// later, the wgmma kernel exactly sm_90 (compiled as sm_90a).
    pub fn runs_on(&self, arch: (u32, u32)) -> bool {
        (self.cluster == 1 || arch.0 >= 9) && (!self.producer || arch == (9, 0))
    }

    /// Whether this configuration can multiply `w`: reading x in its own order needs groups of whole 64-input
    /// chunks and no act-order.
    pub fn accepts<T: Half>(&self, w: &W4Weight<T>) -> bool {
        !self.natural_x || (w.perm.is_none() && w.group_size.is_multiple_of(64))
    }

    /// Dynamic shared memory of the pipelined kernels (their STAGE bytes times the stages).
    fn shared_bytes(&self) -> usize {
        let (rows, cols) = (self.rows(), self.cols());
        if self.producer {
            // Weights, metadata slices (4, or 1 with natural_x) and activations a chunk, and the full/empty mbarriers
            // (8 bytes each); natural_x stages are 1024-byte aligned (the swizzle's period), and so is their base (up
            // to 1 KiB in). A cluster adds its receive mbarrier (16 bytes with padding) and buffer: the sums of each
            // other block for this block's 8-column blocks (at most cols / 8 / cluster, rounded up), 16 bytes a
            // consumer thread and m64 tile.
            let slices = if self.natural_x { 1 } else { 4 };
            let stage =
                (rows * 32 + slices * (rows + 8) * 4 + cols * 128) * self.stage_chunks as usize;
            let stages = self.stages as usize;
            let cluster = self.cluster as usize;
            let receive = if cluster > 1 {
                let own = (cols / 8).div_ceil(cluster);
                16 + self.rt as usize * (cluster - 1) * own * 32 * self.wn as usize * 16
            } else {
                0
            };
            if self.natural_x {
                return stage.next_multiple_of(1024) * stages + 16 * stages + receive + 1024;
            }
            return stage * stages + 16 * stages + receive;
        }
        (rows / 16 * 512 + 4 * (rows + 8) * 4 + cols * 72 * 2) * self.stages as usize
    }

    /// A decode configuration's kernel with RMSNorm folded into its input, `w4_mm_norm_*` (name and instance), or
    /// with `swiglu` also SwiGLU's gating into its write-out, `w4_mm_norm_swiglu_*` (two row tiles a warp); None for
    /// the other kinds.
    fn normed_kernel<T: Half>(&self, swiglu: bool, group: usize) -> Option<(String, String)> {
        if self.stages != 0 || self.producer || (swiglu && self.rt != 2) {
            return None;
        }
        let (kernel, instance) = self.kernel::<T>(group);
        let (prefix, macro_call) = if swiglu {
            ("w4_mm_norm_swiglu_", "W4_MM_NORM_SWIGLU(")
        } else {
            ("w4_mm_norm_", "W4_MM_NORM(")
        };
        Some((
            kernel.replacen("w4_mm_", prefix, 1),
            instance.replacen("W4_MM(", macro_call, 1),
        ))
    }

    /// The kernel's name and the w4a16.cu macro call that builds it (NVRTC's `-DW4_INSTANCE=`, one product
    /// kernel a compile), side by side so the two cannot drift apart; for weights of `group` inputs a group (the
    /// split-K kernel's loop: its sums scaled after the mma at small batch tiles with groups of whole chunks, and a
    /// shift for a power-of-two group, each kernel holding one loop's registers).
    fn kernel<T: Half>(&self, group: usize) -> (String, String) {
        let MmConfig {
            rt,
            nb8,
            wk,
            wn,
            wb,
            stages,
            min_blocks,
            cluster,
            producer,
            natural_x,
            stage_chunks,
            prefetch,
        } = *self;
        let (ty, name) = (T::CUDA_TYPE, T::SUFFIX);
        if producer {
            let (nwg, cols) = (wn / 4, 8 * nb8);
            let kernel =
                format!("w4_ws_{name}_{nwg}_{rt}_{cols}_{stages}_{stage_chunks}_{min_blocks}");
            let head =
                format!("{ty},{name},{nwg},{rt},{cols},{stages},{stage_chunks},{min_blocks}");
            if natural_x {
                (
                    format!("{kernel}_c{cluster}_x"),
                    format!("W4_WSX({head},{cluster})"),
                )
            } else if cluster > 1 {
                (
                    format!("{kernel}_c{cluster}"),
                    format!("W4_WSC({head},{cluster})"),
                )
            } else {
                (kernel, format!("W4_WS({head})"))
            }
        } else if stages == 0 {
            let scale_after = nb8 <= 2 && group.is_multiple_of(64);
            let mode = 2 * u32::from(scale_after) + u32::from(group.is_power_of_two());
            (
                format!("w4_mm_{name}_{rt}_{nb8}_{wk}_{wn}_{wb}_p{prefetch}_m{mode}"),
                format!("W4_MM({ty},{name},{rt},{nb8},{wk},{wn},{wb},{prefetch},{mode})"),
            )
        } else {
            (
                format!("w4_mm_{name}_{rt}_{nb8}_0_{wn}_{wb}_{stages}_{min_blocks}"),
                format!("W4_MMP({ty},{name},{rt},{nb8},{wn},{wb},{stages},{min_blocks})"),
            )
        }
    }

    /// The configuration [`w4a16`] uses for `batch` rows on a GPU of `sm_count` multiprocessors and compute
    /// capability `arch` (from gpu-bench's per-configuration times on an H100, see benches/RESULTS.md). Up to 32
    /// rows the split-K kernel: the first configuration of a ladder, least split first, that gives every
    /// multiprocessor its number of warps (batch 1..8: 8 warps splitting K at 20, else 16; 9..16: the same with two
    /// tiles of columns; two row tiles a warp or a second chunk's loads in flight no longer pay since w4_mm keeps
    /// its addressing in registers, 73 registers for two row tiles: see benches/RESULTS.md). Larger batches on
    /// Hopper the warp-specialised wgmma kernel: 128-row blocks of 64 or 128 columns (256-row blocks over 16384
    /// rows at batch > 64, 192-row blocks at batch 33-64 where 128-row tiles would fill the GPU only once and only
    /// in part, 64-row blocks of one consumer warpgroup where they fill more of it), with few tiles K split over a
    /// thread-block cluster where that pays (below); it reads x in its own order (`natural_x`, no layout pass:
    /// 0.5-2 µs faster at batch 64, 2-6 µs at 128) except over 16384 rows, where the tiles alone fill the GPU and
    /// the layout pass's one copy of x a stage, instead of one a chunk, is 2-4% faster. Elsewhere the mma.sync
    /// kernels.
    pub fn pick(batch: usize, n: usize, k: usize, sm_count: u32, arch: (u32, u32)) -> MmConfig {
        Self::pick_for(batch, n, k, sm_count, arch, true)
    }

    /// [`MmConfig::pick`], with `natural` false for weights the natural order does not accept (their choice among
    /// the layout-pass configurations).
    fn pick_for(
        batch: usize,
        n: usize,
        k: usize,
        sm_count: u32,
        arch: (u32, u32),
        natural: bool,
    ) -> MmConfig {
        let hopper = arch == (9, 0);
        let sm = sm_count as usize;
        let nx = |c: MmConfig| MmConfig {
            natural_x: natural,
            ..c
        };
        // (configuration, warps a multiprocessor it needs); the last is taken when none fills the GPU.
        // The warp-specialised kernel with few tiles: K split over a cluster (on-chip sums) where the partial-sum
        // split would cut it 2 or 3 ways, or 4 ways when 4-block clusters of every tile still fit in 3/4 of the
        // multiprocessors (more do not all fit the GPCs at once: measured 1.3-1.5x slower at 128 blocks on 132
        // SMs), or else 3 ways under 8192 inputs or at 64 columns (Llama-3-8B o: 1.05-1.08x faster than 4 partial
        // sums; Llama down at batch 64 1.02-1.07x; at 128 columns with more inputs a split's run is long and the 4
        // partial sums win, Llama down 1.01-1.04x); otherwise the plain kernel (its partial sums are cheaper than a
        // second wave).
        let clustered = |c: MmConfig| {
            let tiles = n.div_ceil(c.rows()) * batch.div_ceil(c.cols());
            let cl = match sm / tiles.max(1) {
                2 | 3 => 2,
                s if s >= 4 && 16 * tiles <= 3 * sm => 4,
                s if s >= 4 && (k < 8192 || c.cols() <= 64) => 3,
                _ => 1,
            };
            if cl > 1 && k / 64 >= 2 * cl {
                MmConfig {
                    cluster: cl as u32,
                    ..c
                }
            } else {
                c
            }
        };
        // One consumer warpgroup of 64 rows a block, K split 2 ways over a cluster, instead of the 128-row `wide`
        // choice: where that fills more multiprocessors in one wave and a split's run is short (4096 inputs or
        // fewer: one warpgroup hides less of its dequantization's latency, which long runs pay for), or at 128
        // columns (`even`) also with as many (a 2-block cluster adds up for less than a 3- or 4-block one). At 128
        // columns Llama-3-8B o 16.0 -> 14.7 us (128 blocks for 96), Phi-3.5 o 13.0 -> 12.5-12.8 (96 for 96); at 64
        // Llama-3-8B o 12.4-12.8 -> 12.1-12.5; Llama-3-8B down (14336 inputs) is slower this way (25 -> 26.5 at 64).
        let narrow_pays = |wide: MmConfig, cols: usize, even: bool| {
            let narrow = 2 * n.div_ceil(64) * batch.div_ceil(cols);
            let wide = wide.blocks(batch, n, k, sm_count);
            k / 64 >= 4 && k <= 4096 && narrow <= sm && (narrow > wide || (even && narrow == wide))
        };
        // 128-row tiles that fill over half the multiprocessors, one each (too many for a cluster split): 192-row
        // tiles (three consumer warpgroups) split 2 ways over a cluster occupy more of them (Phi-3.5 qkv at batch
        // 64: 72 blocks -> 96, 20.8 -> 17.7 us on an H100).
        let tiles_128 = n.div_ceil(128);
        let wide_split =
            2 * tiles_128 > sm && tiles_128 <= sm && 2 * n.div_ceil(192) <= sm && k / 64 >= 4;
        let ladder: &[(MmConfig, usize)] = match batch {
            0..=8 => &[(cfg(1, 1, 8, 1, 1), 20), (cfg(1, 1, 16, 1, 1), 0)],
            9..=16 => &[(cfg(1, 2, 8, 1, 1), 20), (cfg(1, 2, 16, 1, 1), 0)],
            17..=32 => &[(cfg(1, 4, 8, 1, 1), 0)],
            33..=64 if hopper && n > 16384 => return ws(2, 1, 64, (3, 4), 1),
            // (The layout-pass kernel's 4 metadata slices a chunk and the cluster's receive buffer leave no room for
            // three stages of 4 chunks of 192 rows: stages of 2 chunks there.)
            33..=64 if hopper && wide_split && natural => return nx(wsc(3, 1, 64, (3, 4), 2)),
            33..=64 if hopper && wide_split => return wsc(3, 1, 64, (3, 2), 2),
            33..=64 if hopper => {
                let wide = clustered(ws(2, 1, 64, (3, 4), 1));
                return nx(if narrow_pays(wide, 64, false) {
                    wsc(1, 1, 64, (3, 4), 2)
                } else {
                    wide
                });
            }
            _ if hopper && n > 16384 => return ws(2, 2, 128, (3, 2), 1),
            _ if hopper => {
                let wide = clustered(ws(2, 1, 128, (4, 2), 1));
                return nx(if narrow_pays(wide, 128, true) {
                    wsc(1, 1, 128, (4, 2), 2)
                } else {
                    wide
                });
            }
            33..=64 if k <= 4096 && n <= 16384 => &[
                (cfg(2, 8, 2, 4, 1), 4),
                (cfg(2, 8, 4, 2, 1), 4),
                (cfg(1, 8, 4, 2, 1), 0),
            ],
            33..=64 => return pipe(2, 4, 4, 2, 4),
            _ => return pipe2(2, 8, 4, 2, 3),
        };
        let warps = |c: &MmConfig| n.div_ceil(c.rows()) * c.threads() as usize / 32;
        ladder
            .iter()
            .find(|(c, per_sm)| warps(c) >= per_sm * sm_count as usize)
            .or(ladder.last())
            .map_or(CONFIGS[0], |&(c, _)| c)
    }

    /// Blocks of one call: the output tiles times the K splits (a cluster's blocks or the partial sums).
    fn blocks(&self, batch: usize, n: usize, k: usize, sm_count: u32) -> usize {
        let tiles = batch.div_ceil(self.cols()) * n.div_ceil(self.rows());
        tiles * self.k_split(batch, n, k, sm_count).0 * self.cluster as usize
    }

    /// How a launch of the pipelined kernels splits K: (partial-sum splits, chunks a split). A cluster's blocks
    /// split K evenly among themselves and add up on chip (one split); otherwise [`MmConfig::splits`] ranges of
    /// whole chunks, the last possibly shorter.
    fn k_split(&self, batch: usize, n: usize, k: usize, sm_count: u32) -> (usize, usize) {
        let chunks = k / 64;
        if self.producer && self.cluster > 1 {
            return (1, chunks.div_ceil(self.cluster as usize));
        }
        let per_split = chunks.div_ceil(self.splits(batch, n, k, sm_count));
        (chunks.div_ceil(per_split), per_split)
    }

    /// K splits of the pipelined kernels, each at least 2 · stages chunks: enough blocks for every
    /// multiprocessor (`min_blocks` each); the warp-specialised wgmma kernel splits only as far as whole waves of
    /// tiles still fit (its partial sums cost more than a partly idle last wave) and keeps at least 4 chunks a split
    /// (its producer has no pipeline to fill first).
    fn splits(&self, batch: usize, n: usize, k: usize, sm_count: u32) -> usize {
        let tiles = batch.div_ceil(self.cols()) * n.div_ceil(self.rows());
        let chunks = k / 64;
        let most = if self.producer {
            chunks / 4
        } else {
            chunks / (2 * self.stages as usize)
        }
        .max(1);
        let slots = self.min_blocks.max(1) as usize * sm_count as usize;
        let splits = if self.producer {
            slots / tiles
        } else {
            slots.div_ceil(tiles)
        };
        splits.clamp(1, most)
    }
}

fn check_io<T: Half>(
    w: &W4Weight<T>,
    x: &CudaSlice<T>,
    batch: usize,
    y: &CudaSlice<T>,
) -> Result<(), GpuError> {
    check_shapes("w4a16", w, x, batch, (y, "n", w.n))
}

/// x [batch, k] and y [batch, `y_cols`] (`y_name` in the message), and the kernels' 32-bit indexing bound.
fn check_shapes<T: Half>(
    op: &str,
    w: &W4Weight<T>,
    x: &CudaSlice<T>,
    batch: usize,
    (y, y_name, y_cols): (&CudaSlice<T>, &str, usize),
) -> Result<(), GpuError> {
    if x.len() != batch * w.k || y.len() != batch * y_cols {
        return Err(GpuError::Shape(format!(
            "{op}: x must be [batch {batch}, k {}] ({} elements, got {}) and y [batch, {y_name} {y_cols}] ({} \
             elements, got {})",
            w.k,
            batch * w.k,
            x.len(),
            batch * y_cols,
            y.len()
        )));
    }
    if batch > i32::MAX as usize / w.k.max(w.n) {
        return Err(GpuError::Shape(format!(
            "{op}: batch {batch} too large for 32-bit indexing"
        )));
    }
    Ok(())
}

/// y [batch, n] = x [batch, k] · Wᵀ with the configuration [`MmConfig::pick`] chooses.
pub fn w4a16<T: Half>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    w4a16_with(gpu, picked(gpu, batch, w), x, batch, w, y)
}

/// y [batch, n] += x [batch, k] · Wᵀ (the fp32 product plus y, rounded once where the picked configuration is a
/// decode kernel, `w4_mm`, which adds in its write-out; the larger batches' kernels write the product to a
/// temporary that is then added).
pub fn w4a16_add<T: Half>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let config = picked(gpu, batch, w);
    if config.stages == 0 {
        return run(gpu, config, x, batch, w, y, true);
    }
    check_io(w, x, batch, y)?;
    let mut product = gpu.alloc::<T>(batch * w.n)?;
    run(gpu, config, x, batch, w, &mut product, false)?;
    super::rows::add_assign(gpu, y, &product)
}

/// The configuration [`MmConfig::pick`] chooses for `w` on this GPU.
fn picked<T: Half>(gpu: &Gpu, batch: usize, w: &W4Weight<T>) -> MmConfig {
    let (sm, arch) = (gpu.sm_count(), gpu.arch());
    let config = MmConfig::pick(batch, w.n, w.k, sm, arch);
    if config.accepts(w) {
        config
    } else {
        MmConfig::pick_for(batch, w.n, w.k, sm, arch, false)
    }
}

/// [`w4a16`] with an explicit configuration (one of [`CONFIGS`]).
pub fn w4a16_with<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    run(gpu, config, x, batch, w, y, false)
}

/// [`w4a16_with`], adding the product to y with `accumulate` (the decode kernels only: `config.stages == 0`).
fn run<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
    accumulate: bool,
) -> Result<(), GpuError> {
    check_io(w, x, batch, y)?;
    if !CONFIGS.contains(&config) {
        return Err(GpuError::Shape(format!(
            "w4a16: {config:?} is not compiled (see CONFIGS)"
        )));
    }
    if !config.runs_on(gpu.arch()) {
        return Err(GpuError::Shape(format!(
            "w4a16: {config:?} needs a newer GPU than sm_{}{}",
            gpu.arch().0,
            gpu.arch().1
        )));
    }
    if !config.accepts(w) {
        return Err(GpuError::Shape(format!(
            "w4a16: {config:?} reads x in its own order and needs groups of whole 64-input chunks and no \
             act-order (got group size {}{})",
            w.group_size,
            if w.perm.is_some() { ", act-order" } else { "" }
        )));
    }
    if config.producer && w.k / 64 < config.cluster as usize {
        return Err(GpuError::Shape(format!(
            "w4a16: {config:?} splits K over {} blocks and needs in_features >= {} (got {})",
            config.cluster,
            64 * config.cluster,
            w.k
        )));
    }
    if batch == 0 {
        return Ok(());
    }
    let gathered;
    let x = match &w.perm {
        // The warp-specialised kernel's activation layout pass gathers act-order inputs itself.
        Some(_) if config.producer => x,
        None => x,
        Some(perm) => {
            gathered = gather(gpu, x, perm, batch, w.k)?;
            &gathered
        }
    };
    let (kernel, instance) = config.kernel::<T>(w.group_size);
    let f = gpu.function_with(&SOURCE, &[("W4_INSTANCE", &instance)], &kernel)?;
    if config.stages > 0 {
        debug_assert!(!accumulate, "only the decode kernels add to y");
        return launch_pipe(gpu, config, &f, x, batch, w, y);
    }
    launch_mm(gpu, config, &f, x, batch, w, y, accumulate, None)
}

/// y [batch, n] = rmsnorm(x [batch, k]) · Wᵀ, the norm folded into the decode kernel (`w4_mm_norm_*`: decode's
/// norm and the product after it in one launch). `Ok(false)`, nothing launched, where the configuration
/// [`MmConfig::pick`] chooses is not a decode kernel or W has act-order (its x is gathered into group order first).
pub fn w4a16_normed<T: Half>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    norm: InputNorm<'_, T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<bool, GpuError> {
    check_io(w, x, batch, y)?;
    norm.check("w4a16_normed", w.k)?;
    if w.perm.is_some() {
        return Ok(false);
    }
    run_normed(gpu, picked(gpu, batch, w), false, x, norm, batch, w, y)
}

/// act [batch, n / 2] = silu(gate) ⊙ up with [gate | up] = rmsnorm(x [batch, k]) · Wᵀ, W SwiGLU's gate_up
/// projection (its first n / 2 rows gate, then up, as `silu_mul` takes the product): decode's norm, gate_up product
/// and silu_mul in one launch (`w4_mm_norm_swiglu_*`, gate and up rounded as the product writes them, then gated as
/// silu_mul computes it). Each warp takes a gate tile and the up tile of the same rows: the configuration
/// [`MmConfig::pick`] chooses with two row tiles a warp. `Ok(false)`, nothing launched, where that is not a
/// compiled decode configuration, W has act-order or its halves are not whole 16-row tiles.
pub fn w4a16_normed_swiglu<T: Half>(
    gpu: &Gpu,
    x: &CudaSlice<T>,
    norm: InputNorm<'_, T>,
    batch: usize,
    w: &W4Weight<T>,
    act: &mut CudaSlice<T>,
) -> Result<bool, GpuError> {
    check_shapes("w4a16_normed_swiglu", w, x, batch, (act, "n / 2", w.n / 2))?;
    norm.check("w4a16_normed_swiglu", w.k)?;
    if w.perm.is_some() || !w.n.is_multiple_of(32) {
        return Ok(false);
    }
    let config = MmConfig {
        rt: 2,
        ..picked(gpu, batch, w)
    };
    if !CONFIGS.contains(&config) {
        return Ok(false);
    }
    run_normed(gpu, config, true, x, norm, batch, w, act)
}

/// Launches decode configuration `config`'s normed kernel (with `swiglu` its SwiGLU write-out) on x, checked by the
/// caller; `Ok(false)`, nothing launched, where `config` has none.
#[allow(clippy::too_many_arguments)]
fn run_normed<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    swiglu: bool,
    x: &CudaSlice<T>,
    norm: InputNorm<'_, T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<bool, GpuError> {
    let Some((kernel, instance)) = config.normed_kernel::<T>(swiglu, w.group_size) else {
        return Ok(false);
    };
    if batch > 0 {
        let f = gpu.function_with(&SOURCE, &[("W4_INSTANCE", &instance)], &kernel)?;
        launch_mm(gpu, config, &f, x, batch, w, y, false, Some(norm))?;
    }
    Ok(true)
}

/// Launches `f`, decode kernel `config` (`w4_mm_*`, or `w4_mm_norm_*` / `w4_mm_norm_swiglu_*` with `norm`), on x
/// [batch, k] in W's input order, checked by the caller.
#[allow(clippy::too_many_arguments)]
fn launch_mm<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    f: &CudaFunction,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
    accumulate: bool,
    norm: Option<InputNorm<'_, T>>,
) -> Result<(), GpuError> {
    let launch = LaunchConfig {
        grid_dim: (
            w.n.div_ceil(config.rows()) as u32,
            batch.div_ceil(config.cols()) as u32,
            1,
        ),
        block_dim: (config.threads(), 1, 1),
        shared_mem_bytes: 0,
    };
    let (b, n, k, g) = (batch as i32, w.n as i32, w.k as i32, w.group_size as i32);
    let acc = i32::from(accumulate);
    let mut builder = gpu.stream().launch_builder(f);
    builder
        .arg(y)
        .arg(x)
        .arg(&w.tiles)
        .arg(&w.meta)
        .arg(&b)
        .arg(&n)
        .arg(&k)
        .arg(&g)
        .arg(&acc);
    if let Some(norm) = &norm {
        builder.arg(norm.weight).arg(&norm.eps);
    }
    // SAFETY: x is [batch, k] and y [batch, n] (checked), tiles/meta were sized by `upload` for n, k and the
    // group size, which the kernel indexes by, the norm's weight has k elements (checked); the block size matches
    // the kernel's launch bounds; the norm's two arguments go to the `w4_mm_norm_*` kernel only.
    unsafe { builder.launch(launch) }?;
    Ok(())
}

/// The pipelined kernel, over `splits` ranges of K; more than one writes f32 partial sums that `w4_reduce_*` adds.
fn launch_pipe<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    f: &CudaFunction,
    x: &CudaSlice<T>,
    batch: usize,
    w: &W4Weight<T>,
    y: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let (splits, chunks_per_split) = config.k_split(batch, w.n, w.k, gpu.sm_count());
    let smem = config.shared_bytes();
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )?;
    let launch = LaunchConfig {
        grid_dim: (
            batch.div_ceil(config.cols()) as u32,
            w.n.div_ceil(config.rows()) as u32,
            (splits * config.cluster as usize) as u32,
        ),
        block_dim: (config.threads(), 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (b, n, k, g) = (batch as i32, w.n as i32, w.k as i32, w.group_size as i32);
    let cps = chunks_per_split as i32;
    let mut part = if splits > 1 {
        // SAFETY: uninitialised on purpose (no memset per call): every split's block writes each of its
        // [batch, n] partial sums before w4_reduce reads them.
        Some(unsafe { gpu.stream().alloc::<f32>(splits * batch * w.n) }?)
    } else {
        None
    };
    if config.producer {
        launch_ws(gpu, config, f, x, w, batch, y, part.as_mut(), launch, cps)?;
    } else {
        let mut builder = gpu.stream().launch_builder(f);
        builder.arg(&mut *y);
        let null = 0u64;
        match part.as_mut() {
            Some(p) => builder.arg(p),
            // Unread with one split: a null pointer.
            None => builder.arg(&null),
        };
        builder
            .arg(x)
            .arg(&w.tiles)
            .arg(&w.meta)
            .arg(&b)
            .arg(&n)
            .arg(&k)
            .arg(&g)
            .arg(&cps);
        // SAFETY: x is [batch, k], y [batch, n], part [splits, batch, n] when there are splits; tiles/meta as sized
        // by `upload`; the dynamic shared memory is what the kernel's S stages take.
        unsafe { builder.launch(launch) }?;
    }
    let Some(part) = part else {
        return Ok(());
    };
    let reduce = gpu.function(&SOURCE, &format!("w4_reduce_{}", T::SUFFIX))?;
    let len = (batch * w.n) as i64;
    let (z, cfg) = (
        splits as i32,
        LaunchConfig {
            grid_dim: (
                (batch * w.n).div_ceil(256).min(gpu.sm_count() as usize * 8) as u32,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        },
    );
    // SAFETY: y holds len elements, part splits · len.
    unsafe {
        gpu.stream()
            .launch_builder(&reduce)
            .arg(y)
            .arg(&part)
            .arg(&z)
            .arg(&len)
            .launch(cfg)
    }?;
    Ok(())
}

/// The warp-specialised kernel's outputs and weights as device pointers, taken before any of a call's launches,
/// with cudarc's guards held until all are queued (where a context tracks per-buffer events the guards record them
/// on drop; `Gpu` turns tracking off, so they record nothing).
struct WsBuffers<'a> {
    y: u64,
    /// Unread with one split: a null pointer.
    part: u64,
    tiles: u64,
    meta: u64,
    _records: [Option<SyncOnDrop<'a>>; 4],
}

impl<'a> WsBuffers<'a> {
    fn take<T: Half>(
        stream: &'a CudaStream,
        w: &'a W4Weight<T>,
        y: &'a mut CudaSlice<T>,
        part: Option<&'a mut CudaSlice<f32>>,
    ) -> Self {
        let (y, y_record) = y.device_ptr_mut(stream);
        let (part, part_record) = match part {
            Some(p) => {
                let (ptr, record) = p.device_ptr_mut(stream);
                (ptr, Some(record))
            }
            None => (0, None),
        };
        let (tiles, tiles_record) = w.tiles.device_ptr(stream);
        let (meta, meta_record) = w.meta.device_ptr(stream);
        Self {
            y,
            part,
            tiles,
            meta,
            _records: [
                Some(y_record),
                part_record,
                Some(tiles_record),
                Some(meta_record),
            ],
        }
    }

    /// Launches `f` (`after_previous`: as a programmatic dependent launch) with `x_arg` (the address of its
    /// activation argument) between these buffers and the sizes.
    ///
    /// # Safety
    /// `x_arg` points at the argument of the type the kernel takes there, describing activations laid out as it
    /// reads them; `launch` fits the kernel (block size, dynamic shared memory) and `part` holds the splits it
    /// writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch<T: Half>(
        &self,
        gpu: &Gpu,
        f: &CudaFunction,
        launch: LaunchConfig,
        after_previous: bool,
        x_arg: *mut std::ffi::c_void,
        w: &W4Weight<T>,
        batch: usize,
        chunks_per_split: i32,
    ) -> Result<(), GpuError> {
        let (b, n, k, g) = (batch as i32, w.n as i32, w.k as i32, w.group_size as i32);
        // SAFETY: the arguments are in the kernel's order and types; the caller vouches for x_arg and the launch.
        unsafe {
            gpu.launch_ex(
                f,
                launch,
                after_previous,
                &mut [
                    arg(&self.y),
                    arg(&self.part),
                    x_arg,
                    arg(&self.tiles),
                    arg(&self.meta),
                    arg(&b),
                    arg(&n),
                    arg(&k),
                    arg(&g),
                    arg(&chunks_per_split),
                ],
            )
        }
    }
}

/// The warp-specialised kernel. With `natural_x` it reads x [batch, k] itself through a tensor map
/// ([`x_tensor_map`]). Otherwise it reads xp, which `w4_xperm_u16` lays out first: per `cols`-column block and
/// 64-input chunk, the wgmma B core matrices in the tiles' input order (act-order inputs gathered, zeros past the
/// batch). The product is then a programmatic dependent launch of the layout kernel: its blocks start, and copy
/// their weights, while the layout still runs, and wait for it (griddepcontrol.wait) only before copying
/// activations. A stream operation between the two launches would make it an ordinary launch, so every pointer is
/// taken before the first launch (under event tracking, which `Gpu` turns off, that is where cudarc would wait for
/// the buffers' events, and it would record them after the second).
#[allow(clippy::too_many_arguments)]
fn launch_ws<T: Half>(
    gpu: &Gpu,
    config: MmConfig,
    f: &CudaFunction,
    x: &CudaSlice<T>,
    w: &W4Weight<T>,
    batch: usize,
    y: &mut CudaSlice<T>,
    part: Option<&mut CudaSlice<f32>>,
    launch: LaunchConfig,
    chunks_per_split: i32,
) -> Result<(), GpuError> {
    let stream = gpu.stream();
    let (x_ptr, _x) = x.device_ptr(stream);
    let cols = config.cols();
    if config.natural_x {
        let map = x_tensor_map::<T>(x_ptr, w.k, batch, cols)?;
        let buffers = WsBuffers::take(stream, w, y, part);
        // SAFETY: the map describes x and goes by value (128 bytes), as the kernel takes it; the launch is sized by
        // `launch_pipe` for this configuration.
        return unsafe {
            buffers.launch(gpu, f, launch, false, arg(&map), w, batch, chunks_per_split)
        };
    }
    let len = batch.div_ceil(cols) * cols * w.k;
    // SAFETY: uninitialised on purpose: w4_xperm_u16 writes every element (zeros past the batch).
    let mut xp = unsafe { stream.alloc::<T>(len) }?;
    let xperm = gpu.function(&SOURCE, "w4_xperm_u16")?;
    // Read only with has_perm; otherwise x stands in for the pointer.
    let (perm_ptr, _perm) = match &w.perm {
        Some(p) => {
            let (ptr, record) = p.device_ptr(stream);
            (ptr, Some(record))
        }
        None => (x_ptr, None),
    };
    let (xp_ptr, _xp) = xp.device_ptr_mut(stream);
    let buffers = WsBuffers::take(stream, w, y, part);
    let has_perm = i32::from(w.perm.is_some());
    let (b, k, c) = (batch as i32, w.k as i32, cols as i32);
    let layout = LaunchConfig {
        grid_dim: (
            (len / 8).div_ceil(256).min(gpu.sm_count() as usize * 16) as u32,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: xp holds [batch rounded up to cols, k] elements, written as 16-byte pieces (k % 64 == 0); x is
    // [batch, k]; perm (when has_perm) holds k indices below k. The arguments are in the kernel's order and types.
    unsafe {
        gpu.launch_ex(
            &xperm,
            layout,
            false,
            &mut [
                arg(&xp_ptr),
                arg(&x_ptr),
                arg(&perm_ptr),
                arg(&has_perm),
                arg(&b),
                arg(&k),
                arg(&c),
            ],
        )
    }?;
    // SAFETY: xp as laid out above, a pointer as the kernel takes; the launch is sized by `launch_pipe` for this
    // configuration; the kernel waits for the layout kernel before it reads xp.
    unsafe {
        buffers.launch(
            gpu,
            f,
            launch,
            true,
            arg(&xp_ptr),
            w,
            batch,
            chunks_per_split,
        )
    }
}

/// The tensor map of x [batch, k] at `x_ptr` for the warp-specialised kernel reading it in its own order: boxes
/// of 64 inputs x `cols` rows (one 2-D tensor copy a chunk and column block), 128-byte swizzle, rows past the batch
/// zero-filled.
fn x_tensor_map<T: Half>(
    x_ptr: u64,
    k: usize,
    batch: usize,
    cols: usize,
) -> Result<cudarc::driver::sys::CUtensorMap, GpuError> {
    use cudarc::driver::sys;
    let dims = [k as u64, batch as u64];
    let row_bytes = [(k * 2) as u64];
    let boxed = [64u32, cols as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: the arrays hold rank (2) entries, rank - 1 for the strides; x is [batch, k] 16-bit elements at a
    // 16-byte aligned address with rows of k · 2 bytes (k % 64 == 0), the box 128 bytes wide as the swizzle needs.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            T::TENSOR_MAP_TYPE,
            2,
            x_ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            row_bytes.as_ptr(),
            boxed.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()?;
    // SAFETY: cuTensorMapEncodeTiled succeeded, so it wrote the map.
    Ok(unsafe { map.assume_init() })
}

/// A kernel argument for [`Gpu::launch_ex`]: the address of its value.
fn arg<V>(value: &V) -> *mut std::ffi::c_void {
    (value as *const V).cast_mut().cast()
}

/// x [batch, k] with its columns in the stored (group) order.
fn gather<T: Half>(
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
pub fn dequantize<T: Half>(gpu: &Gpu, w: &W4Weight<T>) -> Result<CudaSlice<T>, GpuError> {
    let mut out = gpu.alloc::<T>(w.n * w.k)?;
    let f = gpu.function(&SOURCE, &format!("w4_dequantize_{}", T::SUFFIX))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration's shared memory fits an sm_90 block (227 KiB of dynamic shared memory); the smaller
    /// GPUs' pipelined configurations fit their 99-100 KiB.
    #[test]
    fn every_configuration_fits_its_shared_memory() {
        for c in CONFIGS {
            let limit = if c.producer { 227 } else { 99 } << 10;
            assert!(
                c.shared_bytes() <= limit,
                "{c:?}: {} bytes",
                c.shared_bytes()
            );
        }
    }

    /// Every configuration `pick` returns is compiled, and so is the layout-pass one [`w4a16`] falls back to for
    /// weights the natural order does not accept.
    #[test]
    fn every_pick_and_its_layout_pass_fallback_are_compiled() {
        let shapes = [
            (9216, 3072),
            (3072, 3072),
            (16384, 3072),
            (3072, 8192),
            (6144, 4096),
            (4096, 4096),
            (28672, 4096),
            (4096, 14336),
            (272, 640),
            (2048, 2048),
        ];
        for arch in [(8, 0), (8, 9), (9, 0)] {
            for sm_count in [78, 114, 132] {
                for (n, k) in shapes {
                    for batch in 1..=260 {
                        let c = MmConfig::pick(batch, n, k, sm_count, arch);
                        assert!(CONFIGS.contains(&c), "{c:?} (batch {batch}, n {n}, k {k})");
                        let fallback = MmConfig::pick_for(batch, n, k, sm_count, arch, false);
                        assert!(
                            CONFIGS.contains(&fallback) && !fallback.natural_x,
                            "{fallback:?} (batch {batch}, n {n}, k {k})"
                        );
                        assert!(c.runs_on(arch), "{c:?} on {arch:?}");
                    }
                }
            }
        }
    }
}
