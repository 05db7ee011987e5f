//! AVX-512 VNNI int4 × int8 GEMM for batches (MLAS QGEMM-style register blocking, int8 activations as
//! ONNX Runtime's MatMulNBits accuracy level 4): a tile of 32 weight rows × 512 inputs is unpacked once to
//! u8 in "VNNI order" (one zmm = 16 rows × 4 consecutive inputs), then every group of up to 6 batch items
//! runs over it with 2 × 6 int32 accumulators (the group's activations interleaved once per call so each
//! slot's items sit side by side): per 4 inputs two weight loads, one 4-byte activation
//! broadcast per item and 12 `vpdpbusd`; per block the int32 sums are scaled (weight × activation scale)
//! into fp32 accumulators and the zero-point term `s · z · block_sum` is taken off. The next tile's rows are
//! prefetched into L2 a share per KC step (batch 16's steps are too short to hide a cold tile's loads).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{ActRow, Int4Matrix, SUB};

/// Weight rows per tile (two zmm of 16 output lanes).
pub(super) const TILE_ROWS: usize = 32;
/// Inputs unpacked at a time (a multiple of every block size).
const KC: usize = 512;
/// Batch items per register block.
const NR: usize = 6;

/// The activations of up to NR batch items interleaved for broadcasting: for each 4-input slot of the
/// unpacked tile order, the items' 4 int8 values side by side; per block the items' scales and sums.
pub(super) struct Group {
    nb: usize,
    /// [k_pad / 32][8 slots][nb] (slot d < 4: inputs 4d..4d+3 of the sub-block, else 16 + 4(d − 4)..).
    q: Vec<i32>,
    /// [blocks][nb] activation scale.
    xs: Vec<f32>,
    /// [blocks][nb] scale · Σ xq.
    bsum: Vec<f32>,
}

/// `acts` (any number) in groups of NR for [`gemm_i8`].
pub(super) fn groups(acts: &[ActRow], k: usize, bs: usize) -> Vec<Group> {
    let k_pad = k.div_ceil(128) * 128;
    let blocks = k / bs;
    acts.par_chunks(NR)
        .map(|g| {
            let nb = g.len();
            let mut q = vec![0i32; k_pad / 4 * nb];
            for (i, a) in g.iter().enumerate() {
                let halves = a.lo.chunks_exact(16).zip(a.hi.chunks_exact(16));
                for (s, (l, h)) in halves.enumerate() {
                    for d in 0..4 {
                        let w = |v: &[i8]| {
                            i32::from_le_bytes([
                                v[4 * d] as u8,
                                v[4 * d + 1] as u8,
                                v[4 * d + 2] as u8,
                                v[4 * d + 3] as u8,
                            ])
                        };
                        q[(s * 8 + d) * nb + i] = w(l);
                        q[(s * 8 + 4 + d) * nb + i] = w(h);
                    }
                }
            }
            let (mut xs, mut bsum) = (vec![0f32; blocks * nb], vec![0f32; blocks * nb]);
            for (i, a) in g.iter().enumerate() {
                for b in 0..blocks {
                    xs[b * nb + i] = a.lane_scale[b * bs / 8];
                    bsum[b * nb + i] = a.block_sum[b];
                }
            }
            Group { nb, q, xs, bsum }
        })
        .collect()
}

/// `out [rows, batch] = W[o0 .. o0 + rows] · x_bᵀ` for every item of `groups`, rows ≤ TILE_ROWS.
pub(super) fn gemm_i8(w: &Int4Matrix, o0: usize, groups: &[Group], out: &mut [f32]) {
    let batch: usize = groups.iter().map(|g| g.nb).sum();
    let rows = out.len() / batch.max(1);
    assert!(rows <= TILE_ROWS && o0 + rows <= w.n() && out.len() == rows * batch);
    let k = w.k();
    let (k_pad, blocks) = (k.div_ceil(128) * 128, k / w.block_size());
    assert!(groups.iter().all(|g| g.nb <= NR
        && g.q.len() == k_pad / 4 * g.nb
        && g.xs.len() == blocks * g.nb
        && g.bsum.len() == blocks * g.nb));
    // SAFETY: the caller checked Isa::Avx512 (with VNNI) is available; shapes are asserted above and in
    // the kernels.
    unsafe {
        match w.block_size() {
            32 => gemm_tile::<32>(w, o0, rows, groups, batch, out),
            64 => gemm_tile::<64>(w, o0, rows, groups, batch, out),
            _ => gemm_tile::<128>(w, o0, rows, groups, batch, out),
        }
    }
}

/// A tile's unpacked weights for KC inputs: [KC / 32 sub-blocks][8 slots][2 halves][64 bytes] (slot d < 4:
/// inputs 4d..4d+3 of the sub-block, slot 4 + d: inputs 16 + 4d..), scales and s · z [KC / BS][2][16].
struct Tile {
    w: Vec<__m512i>,
    ws: Vec<__m512>,
    sz: Vec<__m512>,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn gemm_tile<const BS: usize>(
    w: &Int4Matrix,
    o0: usize,
    rows: usize,
    groups: &[Group],
    batch: usize,
    out: &mut [f32],
) {
    let k = w.k();
    let mut tile = Tile {
        w: vec![_mm512_setzero_si512(); KC / SUB * 8 * 2],
        ws: vec![_mm512_setzero_ps(); KC / BS * 2],
        sz: vec![_mm512_setzero_ps(); KC / BS * 2],
    };
    // fp32 accumulators [batch][2][16].
    let mut c = vec![_mm512_setzero_ps(); batch * 2];
    // Rows past the matrix repeat its last row; their outputs are not stored.
    let row_of = |r: usize| (o0 + r).min(w.n() - 1);
    // The next tile's rows (contiguous nibbles, scales, zero points) are fetched into L2 a share per KC
    // step: at small batches a step's compute is too short to hide a cold tile's first loads.
    let (nibbles, scales, zeros, _) = w.parts();
    let next = (o0 + TILE_ROWS).min(w.n());
    let next_end = (o0 + 2 * TILE_ROWS).min(w.n());
    let (steps, blocks) = (k.div_ceil(KC), k / BS);
    for (st, kb) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - kb);
        let share = |base: *const u8, len: usize| {
            let (a, b) = (st * len / steps, (st + 1) * len / steps);
            for off in (a..b).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(off).cast());
            }
        };
        share(
            nibbles.as_ptr().wrapping_add(next * k / 2),
            (next_end - next) * k / 2,
        );
        share(
            scales.as_ptr().wrapping_add(next * blocks).cast(),
            (next_end - next) * blocks * 2,
        );
        share(
            zeros.as_ptr().wrapping_add(next * blocks),
            (next_end - next) * blocks,
        );
        unpack::<BS>(w, &row_of, kb, kc, &mut tile);
        let mut i0 = 0;
        for g in groups {
            let cg = &mut c[2 * i0..2 * (i0 + g.nb)];
            match g.nb {
                1 => micro::<BS, 1>(&tile, g, kb, kc, cg),
                2 => micro::<BS, 2>(&tile, g, kb, kc, cg),
                3 => micro::<BS, 3>(&tile, g, kb, kc, cg),
                4 => micro::<BS, 4>(&tile, g, kb, kc, cg),
                5 => micro::<BS, 5>(&tile, g, kb, kc, cg),
                _ => micro::<BS, 6>(&tile, g, kb, kc, cg),
            }
            i0 += g.nb;
        }
    }
    let mut lane = [0f32; TILE_ROWS];
    for (i, cv) in c.chunks_exact(2).enumerate() {
        _mm512_storeu_ps(lane.as_mut_ptr(), cv[0]);
        _mm512_storeu_ps(lane.as_mut_ptr().add(16), cv[1]);
        for (r, v) in lane[..rows].iter().enumerate() {
            out[r * batch + i] = *v;
        }
    }
}

/// Unpacks inputs kb..kb + kc of the tile's 32 rows into `t` (see [`Tile`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn unpack<const BS: usize>(
    w: &Int4Matrix,
    row_of: &impl Fn(usize) -> usize,
    kb: usize,
    kc: usize,
    t: &mut Tile,
) {
    let m0f = _mm512_set1_epi8(0x0F);
    // Stage 1: rows 0..7 of dwords (d, d + 1) from two zmm of 4 rows × 4 dwords each.
    let pair = |d: i32| {
        let e = |j: i32| {
            if j < 4 {
                j * 4 + d
            } else {
                16 + (j - 4) * 4 + d
            }
        };
        let f = |j: i32| e(j) + 1;
        _mm512_setr_epi32(
            e(0),
            e(1),
            e(2),
            e(3),
            e(4),
            e(5),
            e(6),
            e(7),
            f(0),
            f(1),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            f(7),
        )
    };
    let (p01, p23) = (pair(0), pair(2));
    // Stage 2: rows 0..7 from the first source, rows 8..15 from the second (low or high 8 lanes).
    let lo8 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    let hi8 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    let blocks = w.k() / BS;
    for h in 0..2 {
        let rows: [usize; 16] = std::array::from_fn(|r| row_of(16 * h + r));
        let nib: [*const u8; 16] = std::array::from_fn(|r| w.row(rows[r]).0.as_ptr());
        // The next KC inputs of each row (KC / 2 bytes) are fetched while these are used.
        for p in nib {
            for line in (0..KC / 2).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add((kb + KC) / 2 + line).cast());
            }
        }
        for s in 0..kc / SUB {
            let off = (kb / SUB + s) * 16;
            // z[q]: rows 4q..4q + 3, 16 bytes (4 dwords) each.
            let z: [__m512i; 4] = std::array::from_fn(|q| {
                let v = _mm512_castsi128_si512(_mm_loadu_si128(nib[4 * q].add(off).cast()));
                let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(nib[4 * q + 1].add(off).cast()));
                let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(nib[4 * q + 2].add(off).cast()));
                _mm512_inserti32x4::<3>(v, _mm_loadu_si128(nib[4 * q + 3].add(off).cast()))
            });
            let a01 = _mm512_permutex2var_epi32(z[0], p01, z[1]);
            let a23 = _mm512_permutex2var_epi32(z[0], p23, z[1]);
            let b01 = _mm512_permutex2var_epi32(z[2], p01, z[3]);
            let b23 = _mm512_permutex2var_epi32(z[2], p23, z[3]);
            // d[j]: dword j of all 16 rows.
            let d = [
                _mm512_permutex2var_epi32(a01, lo8, b01),
                _mm512_permutex2var_epi32(a01, hi8, b01),
                _mm512_permutex2var_epi32(a23, lo8, b23),
                _mm512_permutex2var_epi32(a23, hi8, b23),
            ];
            for (j, v) in d.into_iter().enumerate() {
                t.w[(s * 8 + j) * 2 + h] = _mm512_and_si512(v, m0f);
                t.w[(s * 8 + 4 + j) * 2 + h] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m0f);
            }
        }
        // The 16 rows' scales gathered (row stride `blocks`; a dword at each half, its low half the scale,
        // decoded and times the row's 2^-e), zero points inserted byte by byte: scalar stores read back as a
        // vector stalled on store forwarding (a quarter of block 32's tile time).
        let (_, scales, zeros, row_scale) = w.parts();
        assert!(w.n() * blocks < i32::MAX as usize && scales.len() > w.n() * blocks);
        let idx = _mm512_loadu_epi32(
            std::array::from_fn::<i32, 16, _>(|r| (rows[r] * blocks) as i32).as_ptr(),
        );
        let mul =
            _mm512_loadu_ps(std::array::from_fn::<f32, 16, _>(|r| row_scale[rows[r]]).as_ptr());
        for blk in 0..kc / BS {
            let b = kb / BS + blk;
            debug_assert!(b < blocks);
            // SAFETY: rows[r] < n and b < blocks, so every index is inside scales / zeros [n · blocks]; the
            // dword at the last half reads the padding half after it.
            let half = _mm512_i32gather_epi32::<2>(idx, scales.as_ptr().add(b).cast());
            let s = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(half)), mul);
            let z = |r: usize| *zeros.get_unchecked(rows[r] * blocks + b) as i8;
            let z = _mm_setr_epi8(
                z(0),
                z(1),
                z(2),
                z(3),
                z(4),
                z(5),
                z(6),
                z(7),
                z(8),
                z(9),
                z(10),
                z(11),
                z(12),
                z(13),
                z(14),
                z(15),
            );
            let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(z));
            t.ws[blk * 2 + h] = s;
            t.sz[blk * 2 + h] = _mm512_mul_ps(s, z);
        }
    }
}

/// `NB` items (≤ NR) over the unpacked tile: c[2i + h] += Σ_blocks (ws·xs · Σ q·xq − s·z · block_sum).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
// Indexed loops over the const-size accumulator arrays (2 × NB registers), unrolled by the compiler.
#[allow(clippy::needless_range_loop)]
unsafe fn micro<const BS: usize, const NB: usize>(
    t: &Tile,
    g: &Group,
    kb: usize,
    kc: usize,
    c: &mut [__m512],
) {
    assert!(g.nb == NB && c.len() == 2 * NB && t.w.len() >= kc / SUB * 16);
    assert!(g.q.len() >= (kb + kc) / 4 * NB && g.xs.len() >= (kb + kc) / BS * NB);
    let mut f: [[__m512; NB]; 2] = std::array::from_fn(|h| std::array::from_fn(|i| c[2 * i + h]));
    // SAFETY (pointer reads below): slots up to (kb + kc) / 4 and blocks up to (kb + kc) / BS, asserted.
    let qp = g.q.as_ptr().add(kb / 4 * NB);
    let wp = t.w.as_ptr();
    for blk in 0..kc / BS {
        let mut acc = [[_mm512_setzero_si512(); NB]; 2];
        for s in blk * BS / SUB..(blk + 1) * BS / SUB {
            for slot in 0..8 {
                let w0 = *wp.add((s * 8 + slot) * 2);
                let w1 = *wp.add((s * 8 + slot) * 2 + 1);
                let xq = qp.add((s * 8 + slot) * NB);
                for i in 0..NB {
                    let xb = _mm512_set1_epi32(*xq.add(i));
                    acc[0][i] = _mm512_dpbusd_epi32(acc[0][i], w0, xb);
                    acc[1][i] = _mm512_dpbusd_epi32(acc[1][i], w1, xb);
                }
            }
        }
        let b = kb / BS + blk;
        let (ws0, ws1) = (t.ws[blk * 2], t.ws[blk * 2 + 1]);
        let (sz0, sz1) = (t.sz[blk * 2], t.sz[blk * 2 + 1]);
        for i in 0..NB {
            let xs = _mm512_set1_ps(*g.xs.as_ptr().add(b * NB + i));
            let bsum = _mm512_set1_ps(*g.bsum.as_ptr().add(b * NB + i));
            f[0][i] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc[0][i]),
                _mm512_mul_ps(ws0, xs),
                f[0][i],
            );
            f[0][i] = _mm512_fnmadd_ps(sz0, bsum, f[0][i]);
            f[1][i] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc[1][i]),
                _mm512_mul_ps(ws1, xs),
                f[1][i],
            );
            f[1][i] = _mm512_fnmadd_ps(sz1, bsum, f[1][i]);
        }
    }
    for i in 0..NB {
        c[2 * i] = f[0][i];
        c[2 * i + 1] = f[1][i];
    }
}
