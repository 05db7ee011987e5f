//! Dense f32 matmul in PyTorch `nn.Linear` layout: `y = x · Wᵀ`, x: [m, k], W: [n, k] row-major,
//! y: [m, n]. m = 1 (decode) is a GEMV split over output rows with rayon; larger m goes to the
//! `gemm` crate (BLIS-style packed kernels).

use rayon::prelude::*;

use super::dot::dot_rows;

/// Output rows one rayon task computes in the GEMV path: small enough that two cores share even
/// a 576-row projection, large enough that the task overhead stays far below the row work.
const GEMV_ROWS_PER_TASK: usize = 32;

/// `out = x · Wᵀ`; x: [m, k], w: [n, k], out: [m, n].
pub fn matmul(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    assert_eq!(x.len(), m * k, "matmul: x must be [m, k]");
    assert_eq!(w.len(), n * k, "matmul: w must be [n, k]");
    assert_eq!(out.len(), m * n, "matmul: out must be [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    if m == 1 {
        gemv(x, w, out, k);
        return;
    }
    // SAFETY: the pointers cover x [m, k] (row stride k, column stride 1), Wᵀ viewed as [k, n]
    // (row stride 1, column stride k) and out [m, n] (row stride n, column stride 1), all checked
    // by the length asserts above; `out` is exclusively borrowed and read_dst is false.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// out: [n] = W [n, k] · x [k], output rows split across rayon tasks.
fn gemv(x: &[f32], w: &[f32], out: &mut [f32], k: usize) {
    out.par_chunks_mut(GEMV_ROWS_PER_TASK)
        .zip(w.par_chunks(GEMV_ROWS_PER_TASK * k))
        .for_each(|(o, rows)| dot_rows(x, rows, o));
}

/// Plain triple loop with f64 sums: the reference `matmul` is checked against.
pub fn matmul_ref(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += x[i * k + p] as f64 * w[j * k + p] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// f32 accumulation of up to 1536 products of values in [-1, 1) (packed/blocked order in
    /// gemm, lane order in the GEMV) against f64 sums: errors stay near sqrt(k)·eps·|terms|,
    /// about 1e-5; 2e-4 leaves room without hiding an indexing bug (those are O(1)).
    const MATMUL_TOL: f32 = 2e-4;

    #[test]
    fn matmul_matches_reference() {
        let mut rng = Rng::new(7);
        for (m, k, n) in [
            (1, 576, 576),
            (1, 576, 1000),
            (1, 13, 37),
            (2, 64, 33),
            (5, 576, 192),
            (17, 1536, 576),
            (64, 100, 300),
        ] {
            let x = rng.vec(m * k);
            let w = rng.vec(n * k);
            let mut out = vec![f32::NAN; m * n];
            matmul(&x, &w, &mut out, m, k, n);
            let want = matmul_ref(&x, &w, m, k, n);
            let d = max_abs_diff(&out, &want);
            assert!(d <= MATMUL_TOL, "m={m} k={k} n={n}: max abs diff {d}");
        }
    }

    #[test]
    fn empty_k_gives_zeros() {
        let mut out = vec![f32::NAN; 6];
        matmul(&[], &[], &mut out, 2, 0, 3);
        assert!(out.iter().all(|v| *v == 0.0));
    }
}
