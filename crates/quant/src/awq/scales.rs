//! AWQ's per-channel statistics and candidate scales (AutoAWQ awq/quantize/quantizer.py `_search_best_scale`:
//! x_mean = mean |x| per input channel, `olive_kernels::cpu::rows::column_abs_mean` (and its GPU twin); w_mean =
//! mean over rows of |w| / max |w| of its (row, group); and `_compute_best_scale`'s s = x_mean^r / (w_mean^(1−r) +
//! 1e-4) normalised by sqrt(max·min)). The means run their column blocks in parallel, each adding over the rows in
//! row order: the sums of a serial row-by-row loop.

use rayon::prelude::*;

use crate::grid::QuantSpec;

/// Columns per parallel task of the weight means below: each task adds its columns over the rows in row order, so
/// the sums are those of a serial row-by-row loop.
const COLUMN_BLOCK: usize = 256;

/// AutoAWQ's w_mean: |w| over the max |w| of its (row, group), averaged over rows (in row order): [in].
pub(super) fn weight_abs_mean(
    w: &[f32],
    rows: usize,
    in_features: usize,
    spec: &QuantSpec,
) -> Vec<f32> {
    if in_features == 0 {
        return Vec::new();
    }
    let gl = spec.group_len(in_features).max(1);
    let groups = in_features.div_ceil(gl);
    let max: Vec<f32> = w
        .par_chunks_exact(in_features)
        .flat_map_iter(|row| {
            row.chunks(gl)
                .map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6)
        })
        .collect(); // [rows, groups]
    let mut sum = vec![0f64; in_features];
    sum.par_chunks_mut(COLUMN_BLOCK)
        .enumerate()
        .for_each(|(b, s)| {
            let c0 = b * COLUMN_BLOCK;
            for (row, mx) in w.chunks_exact(in_features).zip(max.chunks_exact(groups)) {
                for (j, acc) in s.iter_mut().enumerate() {
                    let c = c0 + j;
                    *acc += f64::from(row[c].abs() / mx[c / gl]);
                }
            }
        });
    sum.iter()
        .map(|s| (s / rows.max(1) as f64) as f32)
        .collect()
}

/// AutoAWQ's candidate scales for `ratio`: [in].
pub(super) fn ratio_scales(x_mean: &[f32], w_mean: &[f32], ratio: f32, duo: bool) -> Vec<f32> {
    let mut s: Vec<f32> = x_mean
        .iter()
        .zip(w_mean)
        .map(|(x, w)| {
            let v = if duo {
                x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)
            } else {
                x.powf(ratio)
            };
            v.max(1e-4)
        })
        .collect();
    let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    let norm = (hi * lo).sqrt();
    for v in &mut s {
        *v /= norm;
        if !v.is_finite() {
            *v = 1.0;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x: [rows, width] of varied magnitudes (not multiples of the column block).
    fn data(rows: usize, width: usize) -> Vec<f32> {
        (0..rows * width)
            .map(|i| ((i * 2_654_435_761) % 10_007) as f32 / 997.0 - 5.0)
            .collect()
    }

    #[test]
    fn weight_means_equal_serial_row_order_sums_bit_for_bit() {
        let (rows, width) = (37, 700);
        let x = data(rows, width);
        for group_size in [Some(128), Some(100), None] {
            let spec = QuantSpec {
                bits: 4,
                group_size,
                sym: false,
            };
            let gl = spec.group_len(width);
            let mut sum = vec![0f64; width];
            for row in x.chunks_exact(width) {
                for (g, group) in row.chunks(gl).enumerate() {
                    let max = group.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                    for (i, v) in group.iter().enumerate() {
                        sum[g * gl + i] += f64::from(v.abs() / max);
                    }
                }
            }
            let want: Vec<f32> = sum.iter().map(|s| (s / rows as f64) as f32).collect();
            assert_eq!(
                weight_abs_mean(&x, rows, width, &spec),
                want,
                "{group_size:?}"
            );
        }
    }
}
