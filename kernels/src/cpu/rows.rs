//! Row moves of a transformer's forward on row-major [rows, width] data, the CPU references of
//! kernels/cuda/rows.cu: the embedding lookup, a residual add, a bias on every row, a strided column copy, and
//! the mean |x| of every column (AWQ's input statistic, also the CPU's own path).

use rayon::prelude::*;

/// out: [ids.len(), width] = the rows `ids` of table: [vocab, width].
pub fn gather_rows_ref(table: &[f32], ids: &[u32], width: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| &table[id as usize * width..(id as usize + 1) * width])
        .copied()
        .collect()
}

/// x += y, element-wise.
pub fn add_assign_ref(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Every row of x: [rows, bias.len()] += bias.
pub fn add_bias_ref(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_assign_ref(row, bias);
    }
}

/// dst[r · dst_stride + c] = src[r · src_stride + c] for r < rows, c < width.
pub fn copy_columns_ref(
    dst: &mut [f32],
    dst_stride: usize,
    src: &[f32],
    src_stride: usize,
    rows: usize,
    width: usize,
) {
    for r in 0..rows {
        dst[r * dst_stride..r * dst_stride + width]
            .copy_from_slice(&src[r * src_stride..r * src_stride + width]);
    }
}

/// Columns per parallel task of [`column_abs_mean`]: each task adds its columns over the rows in row order.
const COLUMN_BLOCK: usize = 256;

/// The mean of |x| over the rows of x: [rows, width], per column, summed in f64 in row order (so the sums are a
/// serial row-by-row loop's, and the GPU's `column_abs_mean_f32`, one thread a column, equals it bit for bit).
pub fn column_abs_mean(x: &[f32], width: usize) -> Vec<f32> {
    if width == 0 {
        return Vec::new();
    }
    let mut sum = vec![0f64; width];
    sum.par_chunks_mut(COLUMN_BLOCK)
        .enumerate()
        .for_each(|(b, s)| {
            for row in x.chunks_exact(width) {
                for (acc, v) in s.iter_mut().zip(&row[b * COLUMN_BLOCK..]) {
                    *acc += f64::from(v.abs());
                }
            }
        });
    let rows = (x.len() / width).max(1) as f64;
    sum.iter().map(|s| (s / rows) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_move_as_documented() {
        let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [4, 3]
        assert_eq!(
            gather_rows_ref(&table, &[2, 0], 3),
            [6., 7., 8., 0., 1., 2.]
        );
        let mut x = vec![1., 2., 3., 4.];
        add_bias_ref(&mut x, &[10., 20.]);
        assert_eq!(x, [11., 22., 13., 24.]);
        let mut dst = vec![0.; 6]; // [2, 3]
        copy_columns_ref(&mut dst, 3, &table[1..], 3, 2, 2);
        assert_eq!(dst, [1., 2., 0., 4., 5., 0.]);
    }

    #[test]
    fn column_means_equal_serial_row_order_sums_bit_for_bit() {
        // Varied magnitudes; a width that is not a multiple of the column block.
        let (rows, width) = (37, 700);
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 2_654_435_761) % 10_007) as f32 / 997.0 - 5.0)
            .collect();
        let mut sum = vec![0f64; width];
        for row in x.chunks_exact(width) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += f64::from(v.abs());
            }
        }
        let want: Vec<f32> = sum.iter().map(|s| (s / rows as f64) as f32).collect();
        assert_eq!(column_abs_mean(&x, width), want);
        assert!(column_abs_mean(&[], 0).is_empty());
    }
}
