//! General strided f32 matmul `out (+)= alpha · A·B` on views of row-major buffers (any row and column
//! stride, so transposes and column slices cost nothing): the products of training's backward pass
//! (`dX = dY·W`, `dW = dYᵀ·X`, per-head attention blocks), on the `gemm` crate's packed kernels.

/// Multiply-adds below which a product runs single-threaded.
const PARALLEL_MIN_MACS: usize = 1 << 23;

/// A read-only [rows, cols] view: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// `data` as a row-major matrix whose rows are `row_stride` apart (columns contiguous).
    pub fn rows(data: &'a [f32], row_stride: usize) -> Self {
        View {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of the row-major matrix `data` (rows `row_stride` apart): element (i, j) of
    /// the view is element (j, i) of `data`.
    pub fn transposed(data: &'a [f32], row_stride: usize) -> Self {
        View {
            data,
            row_stride: 1,
            col_stride: row_stride,
        }
    }

    /// Panics unless a [rows, cols] view fits in `data`.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
        assert!(
            last < self.data.len(),
            "matmul_strided: {what} [{rows}, {cols}] overflows its buffer of {}",
            self.data.len()
        );
    }
}

/// `out[i·out_stride + j] = (accumulate ? out[..] : 0) + alpha · Σ_p a(i, p) · b(p, j)`
/// for i < m, j < n, p < k; a: [m, k], b: [k, n], out: [m, n] with rows `out_stride` apart.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    out: &mut [f32],
    out_stride: usize,
    alpha: f32,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = (m - 1) * out_stride + n - 1;
    assert!(
        last < out.len(),
        "matmul_strided: out [{m}, {n}] (row stride {out_stride}) overflows its buffer of {}",
        out.len()
    );
    assert!(
        m == 1 || out_stride >= n,
        "matmul_strided: out rows overlap"
    );
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                out[row * out_stride..row * out_stride + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "a");
    b.check(k, n, "b");
    // Small products (per-head attention blocks, LoRA's rank-r factors) run on the calling
    // thread: they are usually one of many parallel tasks already, and splitting them costs more
    // than it gains.
    let parallelism = if m * n * k < PARALLEL_MIN_MACS {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    };
    // SAFETY: the asserts above keep every element the views and `out` address inside their
    // buffers; `out` is exclusively borrowed and its rows do not overlap (stride ≥ n), and the
    // inputs are shared borrows that gemm only reads.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0f32,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::testutil::{max_abs_diff, Rng};

    /// f32 sums of ≤ 300 products of values in [-1, 1) against f64 ones: ~1e-5.
    const TOL: f32 = 1e-4;

    #[test]
    fn strided_views_match_plain_loops() {
        let mut rng = Rng::new(17);
        let (m, n, k) = (7, 5, 300);
        // a given transposed: stored [k, m + 3]; b a column slice of a [k, n + 4] buffer at column 2.
        let a_store = rng.vec(k * (m + 3));
        let b_store = rng.vec(k * (n + 4));
        let a = View::transposed(&a_store, m + 3);
        let b = View {
            data: &b_store[2..],
            row_stride: n + 4,
            col_stride: 1,
        };
        let base = rng.vec(m * (n + 1));
        for accumulate in [false, true] {
            let mut out = base.clone();
            matmul_strided(m, n, k, a, b, &mut out, n + 1, 0.5, accumulate);
            let mut want = base.clone();
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|p| {
                            a_store[p * (m + 3) + i] as f64 * b_store[2 + p * (n + 4) + j] as f64
                        })
                        .sum();
                    let prev = if accumulate {
                        base[i * (n + 1) + j]
                    } else {
                        0.0
                    };
                    want[i * (n + 1) + j] = prev + 0.5 * s as f32;
                }
            }
            let d = max_abs_diff(&out, &want);
            assert!(d <= TOL, "accumulate={accumulate}: {d}");
        }
    }
}
