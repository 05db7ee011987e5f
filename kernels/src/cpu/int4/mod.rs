//! CPU int4 weight-only matmul `y = x · Wᵀ` (W [n, k] int4 with per-block scale and zero point), after
//! ONNX Runtime's MatMulNBits CPU kernels (MLAS SQNBitGemm): a packed layout made once from the unpacked
//! levels of AWQ / GPTQ (act-order inputs permuted once) / MatMulNBits, an fp32-activation path and an
//! int8-activation path (activations quantized per block to int8 as ORT's accuracy level 4 does, integer
//! dot products with VNNI where present), each on AVX-512, AVX2 and a scalar reference, chosen at run time.
//! Batch 1 on AVX-512 int8 (a decode step) takes `gemv1` (pairs of rows read as one stream, `int4_matmul_into`
//! writes into the caller's buffer); batches of 8 and more the tiled GEMM (`avx512_gemm`).

mod avx2;
// AVX-512 intrinsics are stable since Rust 1.89 (the workspace's rust-version).
mod avx512;
mod avx512_gemm;
mod gemv1;
mod pack;
mod scalar;
#[cfg(test)]
mod tests;
mod w8;

pub use pack::{Int4Matrix, Int4PackError, SCALE_REL};
pub use scalar::{int4_matmul_ref, quantize_activations_ref};
pub use w8::{int8_matmul, int8_matmul_with, Int8Matrix, Int8PackError};

use rayon::prelude::*;

/// Inputs per sub-block: 16 bytes, byte j holding input j in its low nibble and input j + 16 in its high one.
pub const SUB: usize = 32;
/// Inputs per activation chunk the SIMD kernels step over (one 64-byte AVX-512 load of weights).
const CHUNK: usize = 128;

/// From this batch size on, the AVX-512 int8 path unpacks tiles of weights once and runs the register-blocked
/// GEMM (`avx512_gemm`); below it, the row kernels (faster for a few items, which cannot amortize the
/// unpacking).
const GEMM_MIN_BATCH: usize = 8;

/// How the activations enter the dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// fp32 activations times the int4 levels converted to f32.
    F32,
    /// Activations quantized per weight block to int8 (scale = max|x| / 127, round half to even), integer
    /// dot products, as ONNX Runtime's MatMulNBits with accuracy_level 4.
    Int8,
}

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, one element at a time (the reference).
    Scalar,
    /// AVX2 + FMA (+ F16C-free): 256-bit.
    Avx2,
    /// AVX-512 F/BW/VL, with AVX512-VNNI for the int8 path (and F16C, for the half scales): 512-bit.
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU runs, checked at run time.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.available())
            .unwrap_or(Isa::Scalar)
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Activations of one row prepared for a matrix: permuted to the packed input order, then either f32 with
/// per-block sums, or int8 split into the low/high-nibble halves each sub-block pairs with.
pub(crate) struct ActRow {
    /// f32 path: [k_pad] permuted activations (zero padded).
    pub x: Vec<f32>,
    /// int8 path: [k_pad / 2], `lo[16s + j] = xq[32s + j]`.
    pub lo: Vec<i8>,
    /// int8 path: [k_pad / 2], `hi[16s + j] = xq[32s + 16 + j]`.
    pub hi: Vec<i8>,
    /// int8 path: [k_pad / 8], the activation scale of each 4-byte lane (4 lanes per sub-block).
    pub lane_scale: Vec<f32>,
    /// [blocks]: Σ x over each weight block (int8 path: scale · Σ xq, what the integer dot used).
    pub block_sum: Vec<f32>,
}

/// The error of a forced instruction set the CPU lacks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Int4RunError {
    /// The requested instruction set is not on this CPU.
    #[error("int4 matmul: this CPU has no {0:?} (Isa::detect() gives what it has)")]
    Unavailable(Isa),
    /// x's length is not batch · k.
    #[error("int4 matmul: x has {got} elements, expected batch {batch} × k {k}")]
    Input {
        /// Rows of x.
        batch: usize,
        /// Input features of the matrix.
        k: usize,
        /// x's length.
        got: usize,
    },
}

/// `y [batch, n] = x [batch, k] · Wᵀ` on the fastest instruction set, rayon over output rows.
pub fn int4_matmul(x: &[f32], batch: usize, w: &Int4Matrix, act: Activations) -> Vec<f32> {
    match int4_matmul_with(x, batch, w, act, Isa::detect()) {
        Ok(y) => y,
        // detect() only returns what the CPU has; a wrong x length is the caller's bug.
        Err(e) => panic!("{e}"),
    }
}

/// [`int4_matmul`] into `out` [batch, n]: batch 1 on AVX-512 int8 (a decode step) allocates nothing.
pub fn int4_matmul_into(
    x: &[f32],
    batch: usize,
    w: &Int4Matrix,
    act: Activations,
    out: &mut [f32],
) {
    assert_eq!(
        out.len(),
        batch * w.n(),
        "int4_matmul_into: out must be [batch {batch}, n {}]",
        w.n()
    );
    #[cfg(target_arch = "x86_64")]
    if batch == 1 && x.len() == w.k() && gemv1_takes(w, act, Isa::detect()) {
        return gemv1::gemv_i8(x, w, out);
    }
    out.copy_from_slice(&int4_matmul(x, batch, w, act));
}

/// Whether the batch-1 stream GEMV (`gemv1`) runs this product.
#[cfg(target_arch = "x86_64")]
fn gemv1_takes(w: &Int4Matrix, act: Activations, isa: Isa) -> bool {
    isa == Isa::Avx512 && act == Activations::Int8 && gemv1::takes(w.k())
}

/// [`int4_matmul`] on a forced instruction set (tests, benches).
pub fn int4_matmul_with(
    x: &[f32],
    batch: usize,
    w: &Int4Matrix,
    act: Activations,
    isa: Isa,
) -> Result<Vec<f32>, Int4RunError> {
    if !isa.available() {
        return Err(Int4RunError::Unavailable(isa));
    }
    let (n, k) = (w.n(), w.k());
    if x.len() != batch * k {
        return Err(Int4RunError::Input {
            batch,
            k,
            got: x.len(),
        });
    }
    #[cfg(target_arch = "x86_64")]
    if batch == 1 && gemv1_takes(w, act, isa) {
        let mut y = vec![0f32; n];
        gemv1::gemv_i8(x, w, &mut y);
        return Ok(y);
    }
    let acts: Vec<ActRow> = (0..batch)
        .into_par_iter()
        .map(|b| prepare(&x[b * k..(b + 1) * k], w, act, isa))
        .collect();
    // Output tiles of rows: [n, batch] so each tile is contiguous; transposed at the end.
    let threads = rayon::current_num_threads().max(1);
    let mut yt = vec![0f32; n * batch];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && act == Activations::Int8 && batch >= GEMM_MIN_BATCH {
        // Tiles of 32 rows unpacked once for every batch item.
        let tile = avx512_gemm::TILE_ROWS;
        let groups = avx512_gemm::groups(&acts, k, w.block_size());
        yt.par_chunks_mut(tile * batch)
            .enumerate()
            .for_each(|(t, out)| avx512_gemm::gemm_i8(w, t * tile, &groups, out));
        return Ok(transpose(yt, n, batch));
    }
    let rows_per_task = (n / (threads * 8)).clamp(4, 64);
    yt.par_chunks_mut(rows_per_task * batch)
        .enumerate()
        .for_each(|(t, out)| {
            let r0 = t * rows_per_task;
            let rows = out.len() / batch;
            // Batch items in groups of 4 share each weight load; AVX-512 int8 takes rows in pairs.
            let pair = isa == Isa::Avx512 && act == Activations::Int8;
            let group = 4;
            let mut b0 = 0;
            while b0 < batch {
                let nb = (batch - b0).min(group);
                let mut r = 0;
                while r < rows {
                    let rr = if pair && r + 1 < rows { 2 } else { 1 };
                    let mut dots = [0f32; 16];
                    row_dots(
                        w,
                        r0 + r,
                        rr,
                        &acts[b0..b0 + nb],
                        act,
                        isa,
                        &mut dots[..rr * nb],
                    );
                    for j in 0..rr {
                        for i in 0..nb {
                            out[(r + j) * batch + b0 + i] = dots[j * nb + i];
                        }
                    }
                    r += rr;
                }
                b0 += nb;
            }
        });
    Ok(transpose(yt, n, batch))
}

/// [n, batch] → [batch, n] in tiles of 8 items × 16 outputs, rayon over groups of items. Row by row, a large
/// batch's strided writes missed the cache on every element (1.5M of them for [3072, 576] × 512 items took longer
/// than the GEMM); 8 items keep the tile's output lines within the L1 ways even when n · 4 bytes is a multiple
/// of 4 KiB.
fn transpose(yt: Vec<f32>, n: usize, batch: usize) -> Vec<f32> {
    const TB: usize = 8;
    const TO: usize = 16;
    if batch == 1 {
        return yt;
    }
    let mut y = vec![0f32; n * batch];
    y.par_chunks_mut(TB * n).enumerate().for_each(|(bt, rows)| {
        let b0 = bt * TB;
        let nb = rows.len() / n;
        for o0 in (0..n).step_by(TO) {
            let no = TO.min(n - o0);
            for b in 0..nb {
                let dst = &mut rows[b * n + o0..b * n + o0 + no];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = yt[(o0 + j) * batch + b0 + b];
                }
            }
        }
    });
    y
}

/// Rows `o..o + rr`'s dot products with `acts` (1..=4 of them, AVX-512 int8 1..=8) into `out` [rr, acts], zero points included.
fn row_dots(
    w: &Int4Matrix,
    o: usize,
    rr: usize,
    acts: &[ActRow],
    act: Activations,
    isa: Isa,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && act == Activations::Int8 {
        return avx512::rows_i8(w, o, rr, acts, out);
    }
    for (j, out) in out.chunks_exact_mut(acts.len()).enumerate() {
        row_dots1(w, o + j, acts, act, isa, out);
    }
}

/// Row `o`'s dot products with `acts` into `out`.
fn row_dots1(
    w: &Int4Matrix,
    o: usize,
    acts: &[ActRow],
    act: Activations,
    isa: Isa,
    out: &mut [f32],
) {
    let (nib, zeros) = w.row(o);
    let bs = w.block_size();
    w.with_scales(o, 1, |scales| {
        let zero_term = |a: &ActRow| -> f32 {
            // Zero points: Σ_b s_b · z_b · Σ_{i∈b} x_i.
            scales
                .iter()
                .zip(zeros)
                .zip(&a.block_sum)
                .map(|((&s, &z), &xs)| s * f32::from(z) * xs)
                .sum()
        };
        match (isa, act) {
            (Isa::Scalar, Activations::F32) => {
                for (d, a) in out.iter_mut().zip(acts) {
                    *d = scalar::row_f32(nib, scales, bs, &a.x) - zero_term(a);
                }
            }
            (Isa::Scalar, Activations::Int8) => {
                for (d, a) in out.iter_mut().zip(acts) {
                    *d = scalar::row_i8(nib, scales, bs, a) - zero_term(a);
                }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Activations::F32) => avx2::rows_f32(nib, scales, zeros, bs, acts, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Activations::Int8) => avx2::rows_i8(nib, scales, zeros, bs, acts, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Activations::F32) => avx512::rows_f32(nib, scales, zeros, bs, acts, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Activations::Int8) => avx512::rows_i8(w, o, 1, acts, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only Isa::Scalar is available off x86-64"),
        }
    })
}

/// Activations of one row for `w`: permuted, padded, and (int8) quantized per weight block.
pub(crate) fn prepare(x: &[f32], w: &Int4Matrix, act: Activations, isa: Isa) -> ActRow {
    let k = w.k();
    let k_pad = k.div_ceil(CHUNK) * CHUNK;
    let mut xp = vec![0f32; k_pad];
    match w.perm() {
        Some(p) => xp.iter_mut().zip(p).for_each(|(d, &i)| *d = x[i as usize]),
        None => xp[..k].copy_from_slice(x),
    }
    let bs = w.block_size();
    match act {
        Activations::F32 => {
            let block_sum = xp[..k].chunks_exact(bs).map(|c| c.iter().sum()).collect();
            ActRow {
                x: xp,
                lo: Vec::new(),
                hi: Vec::new(),
                lane_scale: Vec::new(),
                block_sum,
            }
        }
        #[cfg(target_arch = "x86_64")]
        Activations::Int8 if isa == Isa::Avx512 => {
            let mut a = ActRow {
                x: Vec::new(),
                lo: vec![0i8; k_pad / 2],
                hi: vec![0i8; k_pad / 2],
                lane_scale: vec![0f32; k_pad / 8],
                block_sum: vec![0f32; k / bs],
            };
            avx512::quantize_i8(
                &xp[..k],
                bs,
                &mut a.lo,
                &mut a.hi,
                &mut a.lane_scale,
                &mut a.block_sum,
            );
            a
        }
        Activations::Int8 => {
            let (xq, scales) = scalar::quantize_activations_ref(&xp[..k], bs);
            let mut lo = vec![0i8; k_pad / 2];
            let mut hi = vec![0i8; k_pad / 2];
            for (s, sub) in xq.chunks_exact(SUB).enumerate() {
                lo[16 * s..16 * s + 16].copy_from_slice(&sub[..16]);
                hi[16 * s..16 * s + 16].copy_from_slice(&sub[16..]);
            }
            let mut lane_scale = vec![0f32; k_pad / 8];
            for (l, v) in lane_scale[..k / 8].iter_mut().enumerate() {
                *v = scales[l * 8 / bs];
            }
            let block_sum = xq
                .chunks_exact(bs)
                .zip(&scales)
                .map(|(c, &s)| s * c.iter().map(|&q| i32::from(q)).sum::<i32>() as f32)
                .collect();
            ActRow {
                x: Vec::new(),
                lo,
                hi,
                lane_scale,
                block_sum,
            }
        }
    }
}
