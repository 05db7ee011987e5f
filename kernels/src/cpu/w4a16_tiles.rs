//! The device layout of int4 weights for `kernels/cuda/w4a16.cu` (its file doc gives the bit layout; this is the
//! one-time host repacking from [`W4Levels`], which every on-disk layout unpacks to), and the CPU reference of the
//! GPU `dequantize`: the same tiles back to dense [n, k] weights rounded as the kernel rounds them.

use crate::cuda::float::Half;
use rayon::prelude::*;

use super::w4a16::{W4Error, W4Levels};

const L: &str = "W4A16 device layout";

/// Int4 weights repacked for the GPU kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct W4Tiles {
    /// Output features N (a multiple of 16).
    pub n: usize,
    /// Input features K (a multiple of 64).
    pub k: usize,
    /// Inputs per group (a multiple of 16).
    pub group_size: usize,
    /// [n/16 tiles][k/64 chunks][32 slots][4 words]: lane l's words in slot [`tile_slot`]`(l)`, those of k16 steps
    /// 0, 2, 1, 3 in that order (`WORD_AT`), nibbles as the .cu file's doc says.
    pub tiles: Vec<u32>,
    /// Scales [groups, n] (groups along the permuted inputs when `perm` is set).
    pub scales: Vec<f32>,
    /// Zero points [groups, n].
    pub zeros: Vec<u8>,
    /// Act-order: stored input j is original input `perm[j]`.
    pub perm: Option<Vec<u32>>,
}

impl W4Tiles {
    /// Number of groups along K.
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }

    /// Repacks `w`; a GPTQ act-order `g_idx` becomes a permutation of the inputs into group order, which
    /// must give every group `group_size` inputs (the last may be short), as GPTQ's act-order does.
    pub fn from_levels(w: &W4Levels) -> Result<Self, W4Error> {
        let (n, k, gs) = (w.n, w.k, w.group_size);
        if n % 16 != 0 || k % 64 != 0 || gs % 16 != 0 || gs == 0 {
            return Err(W4Error::Shape {
                layout: L,
                reason: format!(
                    "needs out_features % 16 == 0, in_features % 64 == 0 and group size % 16 == 0; got {n}, {k}, {gs}"
                ),
            });
        }
        if let Some(&z) = w.zeros.iter().find(|&&z| z > 16) {
            return Err(W4Error::Shape {
                layout: L,
                reason: format!("zero point {z} is over 16"),
            });
        }
        let groups = w.groups();
        let perm = match &w.g_idx {
            None => None,
            Some(g_idx) => Some(group_order(g_idx, gs)?),
        };
        // Stored input j of row o.
        let level = |o: usize, j: usize| -> u32 {
            let i = perm.as_ref().map_or(j, |p| p[j] as usize);
            u32::from(w.q[o * k + i] & 0xF)
        };
        let chunks = k / 64;
        let mut tiles = vec![0u32; n / 16 * chunks * 128];
        tiles
            .par_chunks_mut(chunks * 128)
            .enumerate()
            .for_each(|(tile, out)| {
                for c in 0..chunks {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        let (r0, r1) = (tile * 16 + g, tile * 16 + g + 8);
                        for j in 0..4 {
                            let k0 = c * 64 + 16 * t + 4 * j;
                            // nibble: 0,4 = row g inputs +0,+1; 1,5 = row g+8 +0,+1; 2,6 = row g +2,+3; 3,7 = row g+8 +2,+3
                            let nib = [
                                level(r0, k0),
                                level(r1, k0),
                                level(r0, k0 + 2),
                                level(r1, k0 + 2),
                                level(r0, k0 + 1),
                                level(r1, k0 + 1),
                                level(r0, k0 + 3),
                                level(r1, k0 + 3),
                            ];
                            out[(c * 32 + tile_slot(lane)) * 4 + WORD_AT[j]] = nib
                                .iter()
                                .enumerate()
                                .fold(0, |acc, (p, &v)| acc | v << (4 * p));
                        }
                    }
                }
            });
        let mut scales = vec![0f32; groups * n];
        let mut zeros = vec![0u8; groups * n];
        for o in 0..n {
            for g in 0..groups {
                scales[g * n + o] = w.scales[o * groups + g];
                zeros[g * n + o] = w.zeros[o * groups + g];
            }
        }
        Ok(Self {
            n,
            k,
            group_size: gs,
            tiles,
            scales,
            zeros,
            perm,
        })
    }

    /// The level of row `o`, stored input `j` (inverse of the packing; for tests of the layout).
    pub fn level(&self, o: usize, j: usize) -> u8 {
        let (tile, g) = (o / 16, o % 16);
        let (c, t, j4, e) = (j / 64, (j % 64) / 16, (j % 16) / 4, j % 4);
        let lane = (g % 8) * 4 + t;
        let word =
            self.tiles[((tile * (self.k / 64) + c) * 32 + tile_slot(lane)) * 4 + WORD_AT[j4]];
        // e 0,1,2,3 -> nibble 0,4,2,6 for row g; 1,5,3,7 for row g+8
        let nib = [0, 4, 2, 6][e] + usize::from(g >= 8);
        ((word >> (4 * nib)) & 0xF) as u8
    }
}

/// Where k16 step j's word sits among a slot's 4: steps 0, 2, 1, 3 in order, so that steps j and j + 2, which the
/// Hopper kernel with activations in their own order reads together, are 8 contiguous bytes.
const WORD_AT: [usize; 4] = [0, 2, 1, 3];

/// Where lane `lane`'s 16 bytes sit among the 32 of a (tile, chunk): lane ^ (lane / 8), its own inverse. A warp
/// reading its own slots (16 bytes a lane) and one reading the words of quad lane s (`t` ↔ `s`, the Hopper kernel
/// with activations in their own order) both hit 32 different shared-memory banks (kernels/cuda/w4a16.cu).
pub const fn tile_slot(lane: usize) -> usize {
    lane ^ (lane >> 3)
}

/// The permutation sorting inputs by group (stable), checked to give group g the stored inputs
/// g·gs .. (g+1)·gs.
fn group_order(g_idx: &[u32], gs: usize) -> Result<Vec<u32>, W4Error> {
    let mut perm: Vec<u32> = (0..g_idx.len() as u32).collect();
    perm.sort_by_key(|&i| g_idx[i as usize]);
    if let Some(j) = (0..perm.len()).find(|&j| g_idx[perm[j] as usize] as usize != j / gs) {
        return Err(W4Error::Shape {
            layout: L,
            reason: format!(
                "g_idx does not give every group {gs} inputs (sorted input {j} has group {}, expected {})",
                g_idx[perm[j] as usize],
                j / gs
            ),
        });
    }
    Ok(perm)
}

/// Dense weights [n, k] in the original input order, each `((q − z) · s)` with s rounded to `H` and the product
/// rounded once to `H` — what the GPU `dequantize` (and the GEMM's in-register dequantization) computes.
pub fn dequantize<H: Half>(w: &W4Tiles) -> Vec<H> {
    let zero = H::from_f32(0.0);
    let mut out = vec![zero; w.n * w.k];
    out.par_chunks_mut(w.k).enumerate().for_each(|(o, row)| {
        for j in 0..w.k {
            let g = j / w.group_size;
            let s = H::from_f32(w.scales[g * w.n + o]).to_f32();
            let d = f32::from(w.level(o, j)) - f32::from(w.zeros[g * w.n + o]);
            // d is an integer in -16..=15 and s has at most 11 significant bits: d · s is exact in f32.
            let i = w.perm.as_ref().map_or(j, |p| p[j] as usize);
            row[i] = H::from_f32(d * s);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::Rng;
    use half::f16;

    fn levels(n: usize, k: usize, gs: usize, seed: u64, act_order: bool) -> W4Levels {
        let mut rng = Rng::new(seed);
        let groups = k.div_ceil(gs);
        let u = |rng: &mut Rng, m: u32| ((rng.next_f32() + 1.0) * 0.5 * m as f32) as u32 % m;
        let g_idx = act_order.then(|| {
            // A GPTQ act-order g_idx: a random permutation `order`, group of input order[r] = r / gs.
            let mut order: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                order.swap(i, u(&mut rng, i as u32 + 1) as usize);
            }
            let mut g = vec![0u32; k];
            for (r, &i) in order.iter().enumerate() {
                g[i] = (r / gs) as u32;
            }
            g
        });
        W4Levels {
            n,
            k,
            group_size: gs,
            q: (0..n * k).map(|_| u(&mut rng, 16) as u8).collect(),
            scales: (0..n * groups)
                .map(|_| 0.01 + rng.next_f32().abs() * 0.02)
                .collect(),
            zeros: (0..n * groups).map(|_| u(&mut rng, 17) as u8).collect(),
            g_idx,
        }
    }

    #[test]
    fn tiles_hold_every_level_where_level_reads_it() {
        let w = levels(32, 192, 32, 3, false);
        let t = W4Tiles::from_levels(&w).unwrap();
        for o in 0..32 {
            for j in 0..192 {
                assert_eq!(t.level(o, j), w.q[o * 192 + j], "row {o} input {j}");
            }
        }
    }

    #[test]
    fn dequantize_matches_the_levels_in_original_order_with_act_order() {
        // Ragged last group (192 = 2·80 + 32) and a permuted g_idx.
        for act_order in [false, true] {
            let w = levels(16, 192, 80, 5, act_order);
            let t = W4Tiles::from_levels(&w).unwrap();
            assert_eq!(t.perm.is_some(), act_order);
            let want = w.dequantize();
            let got: Vec<f32> = dequantize::<f16>(&t).iter().map(|v| v.to_f32()).collect();
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                // f16 scale and product roundings: relative 2^-11 each.
                assert!((g - r).abs() <= r.abs() * 1.1e-3 + 1e-7, "{i}: {g} vs {r}");
            }
        }
    }

    #[test]
    fn bad_shapes_and_uneven_g_idx_are_refused() {
        let w = levels(16, 100, 16, 1, false);
        assert!(W4Tiles::from_levels(&w).is_err());
        let mut w = levels(16, 128, 32, 1, true);
        let g = w.g_idx.as_mut().unwrap();
        g[0] = (g[0] + 1) % 4; // that group now has 33 inputs
        let e = W4Tiles::from_levels(&w).unwrap_err();
        assert!(
            e.to_string().contains("g_idx does not give every group"),
            "{e}"
        );
    }
}
