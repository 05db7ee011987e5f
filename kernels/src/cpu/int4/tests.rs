//! Parity tests of the int4 CPU kernels: the packed layout against `W4Levels::dequantize`, every forced
//! instruction set against the f64 reference (fp32 path) and the scalar int8 path, and the int8 path
//! against the f64 reference within the error bound of per-block int8 activation quantization.

use super::*;
use crate::cpu::testutil::Rng;
use crate::cpu::w4a16::{w4a16_ref, W4Levels};

/// fp32 path: |y − ref| ≤ F32_REL · Σ_i |x_i · w_i| (+ F32_ABS), i.e. ~1e-5 relative to the products' size.
const F32_REL: f64 = 1e-5;
const F32_ABS: f64 = 1e-6;
/// int8 path vs the f64 reference: rounding x to the int8 grid of scale max|x_b|/127 moves each input by at
/// most half a step, max|x_b| / 254, so |y − ref| ≤ Σ_b (max|x_b| / 254) · Σ_{i∈b} |w_i| — the error ORT's
/// accuracy level 4 accepts by construction — plus the fp32 slack above.
const INT8_HALF_STEP: f64 = 1.0 / 254.0;

fn levels(rng: &mut Rng, n: usize, k: usize, gs: usize, act_order: bool) -> W4Levels {
    let groups = k.div_ceil(gs);
    let unit = |r: &mut Rng| (r.next_f32() * 0.5 + 0.5).clamp(0.0, 0.999);
    let q = (0..n * k).map(|_| (unit(rng) * 16.0) as u8).collect();
    let scales = (0..n * groups).map(|_| 0.01 + 0.05 * unit(rng)).collect();
    let zeros = (0..n * groups).map(|_| (unit(rng) * 17.0) as u8).collect();
    let g_idx = act_order.then(|| {
        // A random permutation of the inputs; input perm[j] falls in group j / gs.
        let mut perm: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            perm.swap(i, (unit(rng) * (i + 1) as f32) as usize);
        }
        let mut g = vec![0u32; k];
        for (j, &i) in perm.iter().enumerate() {
            g[i] = (j / gs) as u32;
        }
        g
    });
    W4Levels {
        n,
        k,
        group_size: gs,
        q,
        scales,
        zeros,
        g_idx,
    }
}

/// Σ_i |x_i w_i| per output [batch, n], and the int8 bound Σ_b max|x_b|/254 · Σ_{i∈b}|w_i|.
fn bounds(x: &[f32], batch: usize, m: &Int4Matrix) -> (Vec<f64>, Vec<f64>) {
    let (n, k, bs) = (m.n(), m.k(), m.block_size());
    let w = m.dequantize();
    let perm: Vec<usize> = match m.perm() {
        Some(p) => p.iter().map(|&i| i as usize).collect(),
        None => (0..k).collect(),
    };
    let (mut l1, mut q8) = (Vec::new(), Vec::new());
    for xb in x.chunks_exact(k).take(batch) {
        for row in w.chunks_exact(k) {
            let mut a = 0f64;
            let mut e = 0f64;
            for blk in perm.chunks_exact(bs) {
                let amax = blk.iter().fold(0f64, |m, &i| m.max(xb[i].abs() as f64));
                let wsum: f64 = blk.iter().map(|&i| row[i].abs() as f64).sum();
                a += blk
                    .iter()
                    .map(|&i| (xb[i] as f64 * row[i] as f64).abs())
                    .sum::<f64>();
                e += amax * INT8_HALF_STEP * wsum;
            }
            l1.push(a);
            q8.push(e);
        }
    }
    assert_eq!(l1.len(), batch * n);
    (l1, q8)
}

fn isas() -> Vec<Isa> {
    #[cfg(target_arch = "x86_64")]
    assert!(
        Isa::Avx2.available(),
        "x86-64 test machines are expected to have AVX2+FMA"
    );
    let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
    let have: Vec<Isa> = all.into_iter().filter(|i| i.available()).collect();
    if !have.contains(&Isa::Avx512) {
        eprintln!("int4 tests: no AVX-512/VNNI on this CPU, its path is not exercised here");
    }
    have
}

const SHAPES: [(usize, usize, usize, bool); 7] = [
    (45, 384, 128, false),
    (8, 128, 128, false),
    (12, 96, 32, false),
    (9, 160, 32, true),
    (16, 576, 64, false),
    (5, 256, 128, true),
    (7, 192, 192, false),
];

#[test]
fn layout_dequantizes_like_the_levels() {
    let mut rng = Rng::new(1);
    for (n, k, gs, ao) in SHAPES {
        let l = levels(&mut rng, n, k, gs, ao);
        let m = Int4Matrix::from_levels(&l).expect("pack");
        // The scales are kept as halves: (q − z) · ŝ within SCALE_REL of (q − z) · s, plus the f32 products'
        // own rounding (half an ulp each).
        for (i, (g, w)) in m.dequantize().iter().zip(l.dequantize()).enumerate() {
            let tol = (SCALE_REL + f64::from(f32::EPSILON)) * f64::from(w.abs());
            assert!(
                f64::from((g - w).abs()) <= tol,
                "n {n} k {k} group {gs} act-order {ao}: weight {i} {g} vs {w}"
            );
        }
        assert_eq!(m.perm().is_some(), ao);
    }
}

#[test]
fn half_scales_keep_eleven_bits_at_any_magnitude() {
    // Rows of tiny, ordinary and huge scales (each row its own power of two), a zero block, negative scales.
    let (n, k, gs) = (4usize, 128usize, 32usize);
    let row_scales: [[f32; 4]; 4] = [
        [3.1e-30, 7.7e-31, 1.0e-29, 2.2e-30],
        [0.0123, 0.0456, 0.0, 0.0789],
        [4.1e30, 1.3e31, 9.9e29, 2.5e31],
        [-0.5, 0.25, -0.125, 0.3333],
    ];
    let l = W4Levels {
        n,
        k,
        group_size: gs,
        q: (0..n * k).map(|i| (i * 7 % 16) as u8).collect(),
        scales: row_scales.iter().flatten().copied().collect(),
        zeros: vec![3; n * k / gs],
        g_idx: None,
    };
    let m = Int4Matrix::from_levels(&l).expect("pack");
    let mut s = vec![0f32; n * k / gs];
    m.decode_scales(0, &mut s);
    for (got, want) in s.iter().zip(&l.scales) {
        let tol = SCALE_REL * f64::from(want.abs());
        assert!(
            f64::from((got - want).abs()) <= tol,
            "scale {want} kept as {got}"
        );
    }
    assert_eq!(m.bytes(), n * k / 2 + 2 * n * k / gs + n * k / gs + 4 * n);
}

#[test]
fn row_tiles_dequantize_like_the_matrix() {
    let mut rng = Rng::new(11);
    for (n, k, gs, ao) in SHAPES {
        let m = Int4Matrix::from_levels(&levels(&mut rng, n, k, gs, ao)).expect("pack");
        let want = m.dequantize(); // [n, k], original input order
        let (first, rows) = (n / 3, n - n / 3);
        let mut got = vec![f32::NAN; rows * k]; // packed input order
        m.dequantize_rows_packed(first, &mut got);
        for (r, row) in got.chunks_exact(k).enumerate() {
            for (j, v) in row.iter().enumerate() {
                let i = m.perm().map_or(j, |p| p[j] as usize);
                assert_eq!(
                    v.to_bits(),
                    want[(first + r) * k + i].to_bits(),
                    "n {n} k {k} group {gs} act-order {ao}: row {} input {i}",
                    first + r
                );
            }
        }
    }
}

#[test]
fn reference_matches_w4a16_ref() {
    let mut rng = Rng::new(2);
    let l = levels(&mut rng, 9, 160, 32, true);
    let m = Int4Matrix::from_levels(&l).expect("pack");
    let x = rng.vec(2 * 160);
    let (a, b) = (int4_matmul_ref(&x, 2, &m), w4a16_ref(&x, 2, &l));
    let (l1, _) = bounds(&x, 2, &m);
    for ((p, q), s) in a.iter().zip(&b).zip(&l1) {
        // w4a16_ref has the f32 scales, the packed matrix their halves (SCALE_REL each).
        assert!(
            ((p - q) as f64).abs() <= (F32_REL + SCALE_REL) * s + F32_ABS,
            "{p} vs {q}"
        );
    }
}

#[test]
fn every_isa_matches_the_reference() {
    let mut rng = Rng::new(3);
    for (n, k, gs, ao) in SHAPES {
        let m = Int4Matrix::from_levels(&levels(&mut rng, n, k, gs, ao)).expect("pack");
        for batch in [1, 2, 5, 9, 20] {
            let x = rng.vec(batch * k);
            let want = int4_matmul_ref(&x, batch, &m);
            let (l1, q8) = bounds(&x, batch, &m);
            let int8_ref =
                int4_matmul_with(&x, batch, &m, Activations::Int8, Isa::Scalar).expect("scalar");
            for isa in isas() {
                let what = format!("{isa:?} n {n} k {k} group {gs} act-order {ao} batch {batch}");
                let f = int4_matmul_with(&x, batch, &m, Activations::F32, isa).expect("f32");
                let q = int4_matmul_with(&x, batch, &m, Activations::Int8, isa).expect("int8");
                for i in 0..batch * n {
                    let tol = F32_REL * l1[i] + F32_ABS;
                    let e = (f[i] - want[i]) as f64;
                    assert!(e.abs() <= tol, "fp32 {what} [{i}]: {} vs {}", f[i], want[i]);
                    let e = (q[i] - int8_ref[i]) as f64;
                    assert!(
                        e.abs() <= tol,
                        "int8 {what} [{i}]: {} vs scalar {}",
                        q[i],
                        int8_ref[i]
                    );
                    let e = (q[i] - want[i]) as f64;
                    assert!(
                        e.abs() <= q8[i] + tol,
                        "int8 {what} [{i}]: {} vs f64 {}, bound {}",
                        q[i],
                        want[i],
                        q8[i]
                    );
                }
            }
        }
    }
}

#[test]
fn bad_shapes_and_inputs_are_errors() {
    let mut rng = Rng::new(4);
    let mut l = levels(&mut rng, 4, 64, 32, false);
    l.group_size = 16;
    l.scales = vec![0.1; 4 * 4];
    l.zeros = vec![8; 4 * 4];
    assert!(matches!(
        Int4Matrix::from_levels(&l),
        Err(Int4PackError::Shape { .. })
    ));
    let mut l = levels(&mut rng, 4, 64, 32, false);
    l.q[5] = 16;
    assert!(matches!(
        Int4Matrix::from_levels(&l),
        Err(Int4PackError::Range { index: 5, .. })
    ));
    let mut l = levels(&mut rng, 4, 64, 32, true);
    if let Some(g) = l.g_idx.as_mut() {
        g[0] = 1 - g[0];
    }
    assert!(matches!(
        Int4Matrix::from_levels(&l),
        Err(Int4PackError::GIdx { .. })
    ));
    let m = Int4Matrix::from_levels(&levels(&mut rng, 4, 64, 32, false)).expect("pack");
    let r = int4_matmul_with(&[0.0; 63], 1, &m, Activations::F32, Isa::Scalar);
    assert_eq!(
        r,
        Err(Int4RunError::Input {
            batch: 1,
            k: 64,
            got: 63
        })
    );
}
