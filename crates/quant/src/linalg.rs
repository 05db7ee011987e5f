//! The upper Cholesky factor of the inverse of a symmetric positive definite matrix (what GPTQ's
//! `cholesky(cholesky_inverse(cholesky(H)), upper=True)` computes), in place in f32 storage.
//!
//! With J the exchange matrix, if J·A·J = L·Lᵀ then A⁻¹ = Uᵀ·U with U = J·L⁻¹·J upper triangular with a
//! positive diagonal, i.e. exactly the upper Cholesky factor of A⁻¹. J·A·J of a row-major matrix is the
//! reversed flat buffer. L⁻¹ comes from one recursive pass (`inv_chol`): for A = [[P, Qᵀ], [Q, R]],
//! M₁₁ = chol(P)⁻¹, L₂₁ = Q·M₁₁ᵀ, M₂₂ = chol(R − L₂₁·L₂₁ᵀ)⁻¹, M₂₁ = −M₂₂·L₂₁·M₁₁, the big products
//! through the `gemm` crate; blocks of at most `BASE` are factored and inverted with f64 sums. No
//! explicit inverse of A is formed and no memory beyond A is used: the redundant upper-right block holds
//! L₂₁ᵀ while it is needed. ~4/3·n³ flops, as GPTQ's three torch calls.

/// Blocks this size or smaller are factored and inverted directly (f64 sums).
const BASE: usize = 64;
/// Products with fewer multiply-adds than this run on one thread.
const PARALLEL_FLOPS: usize = 1 << 21;

/// A pivot that was not positive: its column (in the order of the input) and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NotPositive {
    pub column: usize,
    pub pivot: f32,
}

/// Replaces the symmetric positive definite `a` [n, n] (both triangles set) with the upper triangular
/// U, Uᵀ·U = a⁻¹ (zeros below the diagonal).
pub(crate) fn inverse_cholesky_upper(a: &mut [f32], n: usize) -> Result<(), NotPositive> {
    assert_eq!(a.len(), n * n, "inverse_cholesky_upper: a must be [n, n]");
    a.reverse();
    inv_chol(a, n, 0, n).map_err(|e| NotPositive {
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

/// Block a[off.., off..] of size n: symmetric (lower triangle read) → M = chol(block)⁻¹, lower
/// triangular, zeros above the diagonal of the block.
fn inv_chol(a: &mut [f32], ld: usize, off: usize, n: usize) -> Result<(), NotPositive> {
    if n <= BASE {
        return inv_chol_base(a, ld, off, n);
    }
    let n1 = (n / 2).next_multiple_of(16).min(n - 1);
    let n2 = n - n1;
    let (p, r) = (off, off + n1);
    inv_chol(a, ld, p, n1)?;
    let base = a.as_mut_ptr();
    // SAFETY (all products below): the three regions are disjoint rectangles of `a` [ld, ld]:
    // M₁₁ = rows p..p+n1, cols p..p+n1 (lower triangular, zeros above); Q = rows r..r+n2, cols p..p+n1;
    // the upper-right block rows p..p+n1, cols r..r+n2 holds a transposed [n2, n1] matrix (element (i, j)
    // at row p+j, col r+i: row stride 1, column stride ld); R = rows r..r+n2, cols r..r+n2. Every index
    // stays below off+n ≤ ld, and no product writes a region it reads.
    unsafe {
        let m11 = base.add(at(ld, p, p));
        let q = base.add(at(ld, r, p));
        let ur = base.add(at(ld, p, r));
        let rr = base.add(at(ld, r, r));
        let ld = ld as isize;
        // L₂₁ [n2, n1] = Q · M₁₁ᵀ, stored transposed in the upper-right block.
        product(n2, n1, n1, (ur, 1, ld), None, (q, ld, 1), (m11, 1, ld), 1.0);
        // R −= L₂₁ · L₂₁ᵀ (the lower triangle is what the recursion reads).
        product(
            n2,
            n2,
            n1,
            (rr, ld, 1),
            Some(1.0),
            (ur, 1, ld),
            (ur, ld, 1),
            -1.0,
        );
    }
    inv_chol(a, ld, r, n2)?;
    let base = a.as_mut_ptr();
    // SAFETY: as above; M₂₂ now sits where R was (lower triangular).
    unsafe {
        let m11 = base.add(at(ld, p, p));
        let q = base.add(at(ld, r, p));
        let ur = base.add(at(ld, p, r));
        let m22 = base.add(at(ld, r, r));
        let ld = ld as isize;
        // Q ← L₂₁ · M₁₁ [n2, n1].
        product(n2, n1, n1, (q, ld, 1), None, (ur, 1, ld), (m11, ld, 1), 1.0);
        // M₂₁ = −M₂₂ · (L₂₁ · M₁₁), stored transposed in the upper-right block.
        product(
            n2,
            n1,
            n2,
            (ur, 1, ld),
            None,
            (m22, ld, 1),
            (q, ld, 1),
            -1.0,
        );
    }
    // Move M₂₁ to the lower-left block and clear the upper-right one.
    for i in 0..n2 {
        for j in 0..n1 {
            a[at(ld, r + i, p + j)] = a[at(ld, p + j, r + i)];
        }
    }
    for j in 0..n1 {
        a[at(ld, p + j, r)..at(ld, p + j, r + n2)].fill(0.0);
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

/// Unblocked base case: Cholesky and triangular inverse of a block of at most `BASE` with f64 sums.
fn inv_chol_base(a: &mut [f32], ld: usize, off: usize, n: usize) -> Result<(), NotPositive> {
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
    // M = L⁻¹, lower: column by column forward substitution.
    let mut m = vec![0f64; n * n];
    for j in 0..n {
        m[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let mut s = 0.0;
            for k in j..i {
                s += l[i * n + k] * m[k * n + j];
            }
            m[i * n + j] = -s / l[i * n + i];
        }
    }
    for i in 0..n {
        for j in 0..n {
            a[at(ld, off + i, off + j)] = if j <= i { m[i * n + j] as f32 } else { 0.0 };
        }
    }
    Ok(())
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
    fn factor_times_matrix_is_identity() {
        for n in [1usize, 5, 64, 65, 150, 300] {
            let a = spd(n);
            let mut u = a.clone();
            inverse_cholesky_upper(&mut u, n).unwrap();
            // Uᵀ·U·A = I  ⇔  U·A·Uᵀ = I
            let mut worst = 0f64;
            let ua: Vec<f64> = (0..n * n)
                .map(|idx| {
                    let (i, j) = (idx / n, idx % n);
                    (0..n)
                        .map(|k| f64::from(u[i * n + k]) * f64::from(a[k * n + j]))
                        .sum()
                })
                .collect();
            for i in 0..n {
                for j in 0..n {
                    assert!(
                        j >= i || u[i * n + j] == 0.0,
                        "n {n}: U not upper at ({i}, {j})"
                    );
                    let s: f64 = (0..n)
                        .map(|k| ua[i * n + k] * f64::from(u[j * n + k]))
                        .sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    worst = worst.max((s - want).abs());
                }
                assert!(u[i * n + i] > 0.0);
            }
            assert!(worst < 1e-3, "n {n}: |U·A·Uᵀ − I| = {worst}");
        }
    }

    #[test]
    fn indefinite_matrix_names_its_pivot() {
        let n = 100;
        let mut a = spd(n);
        a[3 * n + 3] = -1.0;
        let err = inverse_cholesky_upper(&mut a, n).unwrap_err();
        assert!(err.pivot <= 0.0);
        assert!(err.column <= 3, "column {}", err.column);
    }
}
