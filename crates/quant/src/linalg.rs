//! The "reversed" Cholesky factor of a symmetric positive definite matrix: upper triangular V with
//! A = V·Vᵀ. With J the exchange matrix, J·A·J = L·Lᵀ gives V = J·L·J; J·A·J of a row-major matrix is the
//! reversed flat buffer. V⁻¹ is the upper Cholesky factor of A⁻¹ (Vᵀ⁻¹·V⁻¹ = A⁻¹), the matrix GPTQ's
//! `cholesky(cholesky_inverse(cholesky(H)), upper=True)` computes; `gptq` works with V itself and never
//! forms an inverse (see there).
//!
//! L comes from a recursive blocked Cholesky in place, f32 storage: for A = [[P, Qᵀ], [Q, R]],
//! L₁₁ = chol(P), L₂₁ = Q·L₁₁⁻ᵀ (recursive triangular solve), L₂₂ = chol(R − L₂₁·L₂₁ᵀ); the products go
//! through the `gemm` crate, blocks of at most `BASE` are factored with f64 sums. ~n³/3 multiply-adds.

use rayon::prelude::*;

/// Blocks this size or smaller are factored directly.
const BASE: usize = 64;
/// Triangles this size or smaller are solved directly in `trsm`.
const TRSM_BASE: usize = 32;
/// Products with fewer multiply-adds than this run on one thread.
const PARALLEL_FLOPS: usize = 1 << 21;

/// A pivot that was not positive: its column (in the order of the input) and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NotPositive {
    pub column: usize,
    pub pivot: f32,
}

/// Replaces the symmetric positive definite `a` [n, n] (upper triangle read) with the upper triangular
/// V, V·Vᵀ = a (zeros below the diagonal).
pub(crate) fn reversed_cholesky(a: &mut [f32], n: usize) -> Result<(), NotPositive> {
    assert_eq!(a.len(), n * n, "reversed_cholesky: a must be [n, n]");
    a.reverse();
    chol(a, n, 0, n).map_err(|e| NotPositive {
        column: n - 1 - e.column,
        pivot: e.pivot,
    })?;
    a.reverse();
    Ok(())
}

/// Flat index of (r, c) in a row-major buffer with row length `ld`.
#[inline]
fn at(ld: usize, r: usize, c: usize) -> usize {
    r * ld + c
}

/// Block a[off.., off..] of size n (lower triangle read) → its lower Cholesky factor, zeros above.
fn chol(a: &mut [f32], ld: usize, off: usize, n: usize) -> Result<(), NotPositive> {
    if n <= BASE {
        return chol_base(a, ld, off, n);
    }
    let n1 = (n / 2).next_multiple_of(16).min(n - 1);
    let n2 = n - n1;
    let (p, r) = (off, off + n1);
    chol(a, ld, p, n1)?;
    // L₂₁ = Q·L₁₁⁻ᵀ in place of Q (rows r.., cols p..p+n1).
    trsm(a, ld, p, n1, r, n2);
    // SAFETY: Q = rows r..r+n2, cols p..p+n1 and R = rows r..r+n2, cols r..r+n2 are disjoint rectangles of
    // `a` [ld, ld] (r ≥ p + n1); Qᵀ is read with row stride 1, column stride ld; `a` is exclusively
    // borrowed here.
    unsafe {
        let base = a.as_mut_ptr();
        let q = base.add(at(ld, r, p));
        let rr = base.add(at(ld, r, r));
        let ld = ld as isize;
        // R −= L₂₁·L₂₁ᵀ (the recursion reads its lower triangle).
        product(
            n2,
            n2,
            n1,
            (rr, ld, 1),
            Some(1.0),
            (q, ld, 1),
            (q, 1, ld),
            -1.0,
        );
    }
    chol(a, ld, r, n2)?;
    for j in 0..n1 {
        a[at(ld, p + j, r)..at(ld, p + j, r + n2)].fill(0.0);
    }
    Ok(())
}

/// X ← X·L⁻ᵀ for L = a[lo.., lo..] lower triangular of size k and X = a[rows.., lo..] [m, k] below it.
fn trsm(a: &mut [f32], ld: usize, lo: usize, k: usize, rows: usize, m: usize) {
    if k <= TRSM_BASE {
        trsm_base(a, ld, lo, k, rows, m);
        return;
    }
    let k1 = (k / 2).next_multiple_of(16).min(k - 1);
    let k2 = k - k1;
    trsm(a, ld, lo, k1, rows, m);
    // SAFETY: X₁ = rows rows..rows+m, cols lo..lo+k1; X₂ = same rows, cols lo+k1..lo+k; B = rows
    // lo+k1..lo+k, cols lo..lo+k1 (read as Bᵀ: row stride 1, column stride ld). rows ≥ lo + k, so X₂ is
    // disjoint from X₁ and B; all inside `a` [ld, ld], exclusively borrowed.
    unsafe {
        let base = a.as_mut_ptr();
        let x1 = base.add(at(ld, rows, lo));
        let x2 = base.add(at(ld, rows, lo + k1));
        let b = base.add(at(ld, lo + k1, lo));
        let ld = ld as isize;
        // X₂ −= X₁·Bᵀ
        product(
            m,
            k2,
            k1,
            (x2, ld, 1),
            Some(1.0),
            (x1, ld, 1),
            (b, 1, ld),
            -1.0,
        );
    }
    trsm(a, ld, lo + k1, k2, rows, m);
}

/// Direct X ← X·L⁻ᵀ for a small L: substitution on each row of X (column-oriented, so the inner loop is a
/// contiguous axpy), rows in parallel.
fn trsm_base(a: &mut [f32], ld: usize, lo: usize, k: usize, rows: usize, m: usize) {
    let lt: Vec<f32> = (0..k * k)
        .map(|idx| a[at(ld, lo + idx % k, lo + idx / k)])
        .collect(); // [k, k] = Lᵀ, upper: lt[j·k + i] = L[i, j]
    a[rows * ld..(rows + m) * ld]
        .par_chunks_mut(ld)
        .with_min_len(16)
        .for_each(|row| {
            let x = &mut row[lo..lo + k];
            for j in 0..k {
                let xj = x[j] / lt[j * k + j];
                x[j] = xj;
                x[j + 1..]
                    .iter_mut()
                    .zip(&lt[j * k + j + 1..(j + 1) * k])
                    .for_each(|(xi, &lij)| *xi -= xj * lij);
            }
        });
}

/// Unblocked Cholesky of a block of at most `BASE` with f64 sums.
fn chol_base(a: &mut [f32], ld: usize, off: usize, n: usize) -> Result<(), NotPositive> {
    let mut l = vec![0f64; n * n]; // [n, n] lower
    for j in 0..n {
        let mut d = f64::from(a[at(ld, off + j, off + j)]);
        for k in 0..j {
            d -= l[j * n + k] * l[j * n + k];
        }
        if !d.is_finite() || d <= 0.0 {
            return Err(NotPositive {
                column: off + j,
                pivot: d as f32,
            });
        }
        let d = d.sqrt();
        l[j * n + j] = d;
        for i in j + 1..n {
            let mut s = f64::from(a[at(ld, off + i, off + j)]);
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        for j in 0..n {
            a[at(ld, off + i, off + j)] = l[i * n + j] as f32;
        }
    }
    Ok(())
}

/// `dst = alpha · dst + beta · lhs · rhs` (`alpha` None: dst is not read); dst [m, n], lhs [m, k],
/// rhs [k, n], each given as (pointer, row stride, column stride).
///
/// # Safety
/// The three strided views must lie inside live allocations, dst must not overlap lhs or rhs, and no
/// other reference may access dst while this runs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    alpha: Option<f32>,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    let parallelism = if m * n * k >= PARALLEL_FLOPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        alpha.is_some(),
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        alpha.unwrap_or(0.0),
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A = B·Bᵀ/k + I·0.1 from a deterministic pseudo-random B [n, k].
    fn spd(n: usize) -> Vec<f32> {
        let k = n + 7;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let b: Vec<f64> = (0..n * k)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect();
        let mut a = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..k).map(|t| b[i * k + t] * b[j * k + t]).sum();
                a[i * n + j] = (s / k as f64 + if i == j { 0.1 } else { 0.0 }) as f32;
            }
        }
        a
    }

    #[test]
    fn factor_reproduces_the_matrix() {
        for n in [1usize, 5, 64, 65, 150, 300] {
            let a = spd(n);
            let mut v = a.clone();
            reversed_cholesky(&mut v, n).unwrap();
            let mut worst = 0f64;
            for i in 0..n {
                assert!(v[i * n + i] > 0.0, "n {n}: diagonal {i}");
                for j in 0..n {
                    assert!(
                        j >= i || v[i * n + j] == 0.0,
                        "n {n}: V not upper at ({i}, {j})"
                    );
                    let s: f64 = (0..n)
                        .map(|k| f64::from(v[i * n + k]) * f64::from(v[j * n + k]))
                        .sum();
                    worst = worst.max((s - f64::from(a[i * n + j])).abs());
                }
            }
            assert!(worst < 1e-5, "n {n}: |V·Vᵀ − A| = {worst}");
        }
    }

    #[test]
    fn indefinite_matrix_names_its_pivot() {
        let n = 100;
        let mut a = spd(n);
        a[3 * n + 3] = -1.0;
        let err = reversed_cholesky(&mut a, n).unwrap_err();
        assert!(err.pivot <= 0.0);
        assert!(err.column <= 3, "column {}", err.column);
    }
}
