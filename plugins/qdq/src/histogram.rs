//! Histogram calibration as onnxruntime.quantization's `HistogramCalibrater` / `HistogramCollector` computes it
//! (calibrate.py, ORT 1.32; `EntropyCalibrater`, `PercentileCalibrater`), in numpy's arithmetic so the ranges are
//! ORT's:
//! - a round's values of a tensor (see [`crate::methods`]) make one histogram (numpy `histogram`: equal bins from
//!   `linspace` in float32, indices `((x - first) / (last - first)) * bins` in float32 then corrected against the
//!   edges; given edges: searchsorted), merged into the tensor's histogram so far;
//! - Entropy: the signed values over [-t, t] (t = the round's max |x|); a later round with a larger t widens the
//!   histogram by whole bins of the old width on both sides (`merge_histogram`); the range is the candidate
//!   [edge(z - i), edge(z + i + 1)] (z the middle bin, i from half the quantized bins up) whose histogram, merged
//!   into the quantized bins and expanded back (`get_entropy_threshold`), has the least KL divergence to the clipped
//!   histogram (both smoothed by `smooth_distribution`, float32 sums in numpy's pairwise order), clipped to the
//!   data's [min, max];
//! - Percentile: symmetric, the |x| over [min |x|, max |x|]; a later round with a larger max |x| extends the edges by
//!   the first bin's width (numpy `arange` of float32 scalars, in float64); the range is ±(the edge where the
//!   cumulative share first reaches the percentile); else the signed histogram as Entropy's and the edges that cut
//!   (100 - p)/200 off each side; clipped to [min, max].
//!
//! ORT reads every round's outputs into memory; here the model runs the samples twice (once for each round's
//! min / max / |x| bounds, once to count), which gives the same histograms for bounded memory.

use std::collections::HashMap;
use std::path::Path;

use olive_onnx::proto::ModelProto;
use olive_pass_sdk::Error;

use crate::calibrate::{Runner, Sample};

/// The histogram of each of `tensors` (signed, or of |x| when `absolute`; `num_bins` for a new one) over `samples`
/// collected in rounds of `stride` samples (see the module docs); None for a tensor no sample gave.
pub(crate) fn histograms(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Sample],
    scratch: &Path,
    stride: usize,
    num_bins: usize,
    absolute: bool,
) -> Result<Vec<Option<Hist>>, Error> {
    let mut runner = Runner::open(model, tensors, scratch)?;
    let index: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Pass 1: each round's bounds of each tensor.
    let mut bounds = vec![vec![Bounds::default(); tensors.len()]; samples.len().div_ceil(stride)];
    runner.run(samples, &mut |sample, name, data| {
        bounds[sample / stride][index[name]].add(data);
        Ok(())
    })?;
    // Pass 2: each round counted, then merged into the histogram so far.
    let mut hists: Vec<Option<Hist>> = vec![None; tensors.len()];
    let mut counting: Vec<Option<(usize, Counting)>> = vec![None; tensors.len()];
    runner.run(samples, &mut |sample, name, data| {
        let (t, round) = (index[name], sample / stride);
        if counting[t].as_ref().is_none_or(|(r, _)| *r != round) {
            if let Some((r, done)) = counting[t].take() {
                hists[t] = Some(done.merge(hists[t].take(), &bounds[r][t]));
            }
            let c = Counting::new(hists[t].as_ref(), &bounds[round][t], absolute, num_bins)
                .map_err(|e| Error::Failed(format!("calibration tensor `{name}`: {e}")))?;
            counting[t] = Some((round, c));
        }
        if let Some((_, c)) = counting[t].as_mut() {
            c.add(data, absolute);
        }
        Ok(())
    })?;
    Ok(counting
        .into_iter()
        .zip(hists)
        .enumerate()
        .map(|(t, (c, h))| c.map(|(r, done)| done.merge(h, &bounds[r][t])))
        .collect())
}

/// A round's bounds of one tensor (numpy nanmin / nanmax; |x| bounds for the absolute histogram).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: f32,
    max: f32,
    abs_min: f32,
    abs_max: f32,
    /// A NaN was seen (numpy's histogram of |x| fails on it; the signed one skips it).
    nan: bool,
    /// Values seen.
    count: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            abs_min: f32::INFINITY,
            abs_max: f32::NEG_INFINITY,
            nan: false,
            count: 0,
        }
    }
}

impl Bounds {
    fn add(&mut self, data: &[f32]) {
        for &x in data {
            if x.is_nan() {
                self.nan = true;
                continue;
            }
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            self.abs_min = self.abs_min.min(x.abs());
            self.abs_max = self.abs_max.max(x.abs());
        }
        self.count += data.len();
    }

    /// ORT's (min, max) of the round: 0 for a round without values.
    fn min_max(&self) -> (f32, f32) {
        if self.count == 0 || self.min > self.max {
            (0.0, 0.0)
        } else {
            (self.min, self.max)
        }
    }

    /// max(|min|, |max|): the signed histogram's half width.
    fn threshold(&self) -> f32 {
        let (lo, hi) = self.min_max();
        lo.abs().max(hi.abs())
    }
}

/// A tensor's histogram so far: counts, edges (float32 as ORT stores them), the values' min and max, and for the
/// signed histogram its half width.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hist {
    /// Values per bin.
    counts: Vec<i64>,
    /// counts.len() + 1 edges.
    edges: Vec<f32>,
    /// The smallest value.
    min: f32,
    /// The largest value.
    max: f32,
    /// The signed histogram spans [-threshold, threshold].
    threshold: f32,
}

/// How a round is counted: equal bins over [first, last] (numpy's fast path) or given edges (float64).
#[derive(Debug, Clone)]
enum Binning {
    Uniform {
        first: f32,
        last: f32,
        edges: Vec<f32>,
    },
    Edges(Vec<f64>),
}

/// A round being counted and how it merges into the histogram so far.
#[derive(Debug, Clone)]
struct Counting {
    binning: Binning,
    counts: Vec<i64>,
    /// Signed histograms: the merge (ORT merge_histogram's branch).
    merge: Merge,
}

#[derive(Debug, Clone)]
enum Merge {
    /// The first round (or an |x| round): the counts plus the old ones from bin 0.
    First { threshold: f32 },
    /// The round counted over the old range: counts added, the old edges kept.
    Same,
    /// The old histogram was all at 0: counts over the new range plus the old ones.
    FromZero { threshold: f32 },
    /// The range widened by `half` bins on each side; the old counts land in the middle.
    Widened { half: usize, threshold: f32 },
}

impl Counting {
    /// The counting of a round with `bounds` given the histogram so far (ORT collect_value / merge_histogram, or
    /// collect_absolute_value).
    fn new(
        old: Option<&Hist>,
        bounds: &Bounds,
        absolute: bool,
        num_bins: usize,
    ) -> Result<Counting, String> {
        if absolute {
            return Ok(match old {
                None if bounds.nan => {
                    return Err(
                        "a NaN value: the first histogram of |x| needs finite values (as numpy's)"
                            .into(),
                    )
                }
                None => {
                    let (lo, hi) = if bounds.count == 0 {
                        (0.0, 1.0)
                    } else {
                        (bounds.abs_min, bounds.abs_max)
                    };
                    Counting::uniform(lo, hi, num_bins, Merge::First { threshold: 0.0 })?
                }
                Some(h) => {
                    let mut edges: Vec<f64> = h.edges.iter().map(|&e| e as f64).collect();
                    let last = *h.edges.last().unwrap_or(&0.0);
                    if bounds.count > 0 && bounds.abs_max > last {
                        edges.extend(arange_f32(
                            last + (h.edges[1] - h.edges[0]),
                            bounds.abs_max + (h.edges[1] - h.edges[0]),
                            h.edges[1] - h.edges[0],
                        ));
                    }
                    Counting {
                        counts: vec![0; edges.len() - 1],
                        binning: Binning::Edges(edges),
                        merge: Merge::First { threshold: 0.0 },
                    }
                }
            });
        }
        let t = bounds.threshold();
        match old {
            None => Counting::uniform(-t, t, num_bins, Merge::First { threshold: t }),
            Some(h) if t <= h.threshold => {
                Counting::uniform(-h.threshold, h.threshold, h.counts.len(), Merge::Same)
            }
            Some(h) if h.threshold == 0.0 => {
                Counting::uniform(-t, t, h.counts.len(), Merge::FromZero { threshold: t })
            }
            Some(h) => {
                let n = h.counts.len();
                let stride = 2.0 * h.threshold / n as f32;
                let half = (floor_divide(t - h.threshold, stride) + 1.0) as usize;
                let threshold = half as f32 * stride + h.threshold;
                Counting::uniform(
                    -threshold,
                    threshold,
                    n + 2 * half,
                    Merge::Widened { half, threshold },
                )
            }
        }
    }

    /// Equal bins over [first, last] (numpy widens an empty range by 0.5 each side).
    fn uniform(
        mut first: f32,
        mut last: f32,
        bins: usize,
        merge: Merge,
    ) -> Result<Counting, String> {
        if !(first.is_finite() && last.is_finite()) {
            return Err(format!(
                "the histogram range [{first}, {last}] is not finite (as numpy's histogram refuses it)"
            ));
        }
        if first == last {
            (first, last) = (first - 0.5, last + 0.5);
        }
        let edges = linspace(first, last, bins + 1);
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "the histogram range [{first}, {last}] cannot be split into {bins} finite bins (numpy's histogram \
                 refuses it, so ORT's calibration fails too; an attention mask's -3.4e38 fill does this: calibrate \
                 with MinMax)"
            ));
        }
        Ok(Counting {
            binning: Binning::Uniform { first, last, edges },
            counts: vec![0; bins],
            merge,
        })
    }

    /// Counts `data` (its |x| when `absolute`).
    fn add(&mut self, data: &[f32], absolute: bool) {
        let value = |x: f32| if absolute { x.abs() } else { x };
        match &self.binning {
            Binning::Uniform { first, last, edges } => {
                for &x in data {
                    if let Some(i) = uniform_bin(value(x), *first, *last, edges) {
                        self.counts[i] += 1;
                    }
                }
            }
            Binning::Edges(edges) => {
                for &x in data {
                    if let Some(i) = edge_bin(value(x) as f64, edges) {
                        self.counts[i] += 1;
                    }
                }
            }
        }
    }

    /// The histogram after this round (`bounds` the round's).
    fn merge(self, old: Option<Hist>, bounds: &Bounds) -> Hist {
        let (lo, hi) = bounds.min_max();
        let edges: Vec<f32> = match self.binning {
            Binning::Uniform { edges, .. } => edges,
            Binning::Edges(edges) => edges.iter().map(|&e| e as f32).collect(),
        };
        let mut counts = self.counts;
        let Some(old) = old else {
            let threshold = match self.merge {
                Merge::First { threshold } => threshold,
                _ => 0.0,
            };
            return Hist {
                counts,
                edges,
                min: lo,
                max: hi,
                threshold,
            };
        };
        let (min, max) = (old.min.min(lo), old.max.max(hi));
        let (offset, edges, threshold) = match self.merge {
            Merge::First { threshold } | Merge::FromZero { threshold } => (0, edges, threshold),
            Merge::Same => (0, old.edges, old.threshold),
            Merge::Widened { half, threshold } => (half, edges, threshold),
        };
        for (i, c) in old.counts.iter().enumerate() {
            counts[offset + i] += c;
        }
        Hist {
            counts,
            edges,
            min,
            max,
            threshold,
        }
    }
}

/// numpy `linspace(first, last, n)` in float32: k · ((last - first) / (n - 1)) + first, the last one `last`.
fn linspace(first: f32, last: f32, n: usize) -> Vec<f32> {
    if n < 2 {
        return vec![first; n];
    }
    let div = (n - 1) as f32;
    let delta = last - first;
    let step = delta / div;
    let mut y: Vec<f32> = (0..n)
        .map(|k| {
            if step == 0.0 {
                (k as f32 / div) * delta + first
            } else {
                k as f32 * step + first
            }
        })
        .collect();
    y[n - 1] = last;
    y
}

/// numpy `arange(start, stop, step)` of float32 scalars: ceil((stop - start) / step) values (float32 arithmetic),
/// start + k · (float32(start + step) - start) in float64.
fn arange_f32(start: f32, stop: f32, step: f32) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let delta = (start + step) as f64 - start as f64;
    (0..len as usize)
        .map(|k| start as f64 + k as f64 * delta)
        .collect()
}

/// numpy's float32 floor division (npy_floor_dividef).
fn floor_divide(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = a % b;
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floor = div.floor();
        if div - floor > 0.5 {
            floor += 1.0;
        }
        floor
    } else {
        0.0f32.copysign(a / b)
    }
}

/// The bin of `x` among equal bins over [first, last] as numpy's histogram finds it (float32 index, corrected
/// against the edges; the last bin holds `last`), or None outside.
fn uniform_bin(x: f32, first: f32, last: f32, edges: &[f32]) -> Option<usize> {
    if !(x >= first && x <= last) {
        return None;
    }
    let n = edges.len() - 1;
    let f = ((x - first) / (last - first)) * n as f32;
    let mut i = (f as i64).clamp(0, n as i64) as usize;
    if i == n {
        i -= 1;
    }
    if x < edges[i] && i > 0 {
        i -= 1;
    }
    if x >= edges[i + 1] && i != n - 1 {
        i += 1;
    }
    Some(i)
}

/// The bin of `x` among `edges` (searchsorted: [e_i, e_i+1), the last bin closed), or None outside.
fn edge_bin(x: f64, edges: &[f64]) -> Option<usize> {
    let n = edges.len() - 1;
    if !(x >= edges[0] && x <= edges[n]) {
        return None;
    }
    let k = edges.partition_point(|&e| e <= x);
    Some((k - 1).min(n - 1))
}

/// numpy's float32 `sum` (pairwise: 8 accumulators up to 128 values, halves above).
pub(crate) fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0f32, |s, &x| s + x);
    }
    if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        return res;
    }
    let mut n2 = n / 2;
    n2 -= n2 % 8;
    pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
}

/// ORT's `smooth_distribution` (eps 1e-4) in float32: zeros become eps, the others lose eps · zeros / nonzeros;
/// None when all are zero.
fn smooth(p: &[i64]) -> Result<Option<Vec<f32>>, String> {
    let zeros = p.iter().filter(|&&x| x == 0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return Ok(None);
    }
    let eps = 0.0001f64;
    let eps1 = eps * zeros as f64 / nonzeros as f64;
    if eps1 >= 1.0 {
        return Err(format!(
            "smooth_distribution: {zeros} empty bins against {nonzeros} (ORT asserts eps1 < 1)"
        ));
    }
    let (add, sub) = (eps as f32, -(eps1 as f32));
    let out: Vec<f32> = p
        .iter()
        .map(|&x| x as f32 + if x == 0 { add } else { sub })
        .collect();
    if out.iter().any(|&x| x <= 0.0) {
        return Err("smooth_distribution gave a bin <= 0 (ORT asserts none)".into());
    }
    Ok(Some(out))
}

/// ORT's `entropy(p, q)` (scipy's KL divergence) in float32: both normalized by their pairwise sums,
/// sum(p · ln(p / q)).
fn kl_divergence(p: &[f32], q: &[f32]) -> f32 {
    let (sp, sq) = (pairwise_sum(p), pairwise_sum(q));
    let terms: Vec<f32> = p
        .iter()
        .zip(q)
        .map(|(&p, &q)| {
            let (p, q) = (1.0 * p / sp, 1.0 * q / sq);
            if p == 0.0 && q >= 0.0 {
                0.0
            } else if p > 0.0 && q > 0.0 {
                p * (p / q).ln()
            } else {
                f32::INFINITY
            }
        })
        .collect();
    pairwise_sum(&terms)
}

/// ORT's `get_entropy_threshold`: the [lo, hi] of the least-KL candidate, clipped to the data's [min, max].
pub(crate) fn entropy_threshold(h: &Hist, num_quantized_bins: usize) -> Result<(f32, f32), String> {
    let hist = &h.counts;
    let num_bins = hist.len();
    let zero = num_bins / 2;
    let half = num_quantized_bins / 2;
    if num_quantized_bins == 0 || zero < half {
        return Err(format!(
            "{num_bins} histogram bins are fewer than the {num_quantized_bins} quantized bins"
        ));
    }
    let mut best: Option<(f32, usize, usize)> = None;
    for i in half..=zero {
        let start = zero - i;
        let end = (zero + i + 1).min(num_bins);
        let sliced = &hist[start..end];
        let mut p = sliced.to_vec();
        let last = p.len() - 1;
        p[0] += hist[..start].iter().sum::<i64>();
        p[last] += hist[end..].iter().sum::<i64>();
        let merged = sliced.len() / num_quantized_bins;
        let mut quantized: Vec<i64> = (0..num_quantized_bins)
            .map(|k| sliced[k * merged..(k + 1) * merged].iter().sum())
            .collect();
        quantized[num_quantized_bins - 1] +=
            sliced[num_quantized_bins * merged..].iter().sum::<i64>();
        let mut q = vec![0i64; p.len()];
        for (k, &total) in quantized.iter().enumerate() {
            let range = k * merged..(k + 1) * merged;
            let norm = p[range.clone()].iter().filter(|&&x| x != 0).count();
            if norm != 0 {
                let v = (total as f64 / norm as f64) as i64;
                q[range].iter_mut().for_each(|x| *x = v);
            }
        }
        let div = match (smooth(&p)?, smooth(&q)?) {
            (Some(p), Some(q)) => kl_divergence(&p, &q),
            _ => f32::INFINITY,
        };
        // numpy argmin: the first minimum, a NaN first of all.
        let better = match best {
            None => true,
            Some((b, _, _)) => !b.is_nan() && (div.is_nan() || div < b),
        };
        if better {
            best = Some((div, start, end));
        }
    }
    let (_, start, end) = best.ok_or("no entropy candidate")?;
    Ok(clip((h.edges[start], h.edges[end]), h))
}

/// ORT's `compute_percentile`: the edges where the cumulative share (float64) first reaches the percentile — of |x|
/// when `absolute` (±edge), else cutting (100 - p)/200 off each side — clipped to the data's [min, max].
pub(crate) fn percentile_threshold(h: &Hist, percentile: f64, absolute: bool) -> (f32, f32) {
    let total: i64 = h.counts.iter().sum();
    let mut cdf = Vec::with_capacity(h.counts.len());
    let mut acc = 0f64;
    for &c in &h.counts {
        acc += c as f64 / total as f64;
        cdf.push(acc);
    }
    let search = |v: f64| cdf.partition_point(|&c| c < v);
    let range = if absolute {
        let e = h.edges[search(percentile / 100.0)];
        (-e, e)
    } else {
        let cut = (100.0 - percentile) / 200.0;
        (h.edges[search(cut)], h.edges[search(1.0 - cut)])
    };
    clip(range, h)
}

/// ORT: a threshold below the min is the min, above the max the max.
fn clip((mut lo, mut hi): (f32, f32), h: &Hist) -> (f32, f32) {
    if lo < h.min {
        lo = h.min;
    }
    if hi > h.max {
        hi = h.max;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(data: &[f32]) -> Bounds {
        let mut b = Bounds::default();
        b.add(data);
        b
    }

    /// One round of `data` into `old` (signed or |x|) with `bins` bins for a new histogram.
    fn round(old: Option<Hist>, data: &[f32], absolute: bool, bins: usize) -> Hist {
        let b = bounds(data);
        let mut c = Counting::new(old.as_ref(), &b, absolute, bins).unwrap();
        c.add(data, absolute);
        c.merge(old, &b)
    }

    // Every expected value below is what ORT 1.32's HistogramCollector (collect, compute_percentile,
    // get_entropy_threshold) gives for the same input.

    #[test]
    fn linspace_and_uniform_bins_follow_numpy() {
        assert_eq!(linspace(-2.0, 2.0, 5), vec![-2.0, -1.0, 0.0, 1.0, 2.0]);
        let h = round(None, &[-2.0, -1.5, -1.0, 0.0, 0.5, 2.0], false, 4);
        // [-2,-1) [-1,0) [0,1) [1,2]: the right edge is in the last bin, a value on an edge in the bin above it.
        assert_eq!(h.counts, vec![2, 1, 2, 1]);
        assert_eq!((h.min, h.max, h.threshold), (-2.0, 2.0, 2.0));
        // An all-zero round spans [-0.5, 0.5] but keeps the threshold 0.
        let z = round(None, &[0.0, 0.0], false, 2);
        assert_eq!(
            (z.edges.clone(), z.counts.clone(), z.threshold),
            (vec![-0.5, 0.0, 0.5], vec![0, 2], 0.0)
        );
    }

    #[test]
    fn a_range_too_wide_for_float32_bins_is_refused_as_numpy_does() {
        // [-3.4e38, 3.4e38]: the width overflows to inf, the edges are not increasing (numpy: "Too many bins").
        let e = Counting::new(None, &bounds(&[-3.4e38, 0.0]), false, 128).unwrap_err();
        assert!(e.contains("cannot be split into 128 finite bins"), "{e}");
    }

    #[test]
    fn a_wider_round_adds_whole_bins_of_the_old_width_on_both_sides() {
        // Old: 4 bins over [-2, 2] (width 1). New threshold 3.5: (3.5 - 2) // 1 + 1 = 2 bins a side -> 8 bins
        // over [-4, 4]; the old counts land in bins 2..6.
        let old = round(None, &[-2.0, -1.5, -1.0, 0.0, 0.5, 2.0], false, 4);
        let h = round(Some(old), &[3.5, -0.25], false, 4);
        assert_eq!(h.threshold, 4.0);
        assert_eq!(h.edges, linspace(-4.0, 4.0, 9));
        assert_eq!(h.counts, vec![0, 0, 2, 2, 2, 1, 0, 1]);
        assert_eq!((h.min, h.max), (-2.0, 3.5));
        // A narrower round is counted over the old range, edges kept.
        let same = round(Some(h.clone()), &[1.0], false, 4);
        assert_eq!(same.edges, h.edges);
        assert_eq!(same.counts, vec![0, 0, 2, 2, 2, 2, 0, 1]);
        assert_eq!(floor_divide(1.5, 1.0), 1.0);
        assert_eq!(floor_divide(2.0, 0.5), 4.0);
    }

    #[test]
    fn an_absolute_round_above_the_edges_extends_them_by_the_first_width() {
        let old = round(None, &[1.0, -2.0, 3.0], true, 2); // |x| 1..3: edges 1, 2, 3
        assert_eq!(old.edges, vec![1.0, 2.0, 3.0]);
        assert_eq!(old.counts, vec![1, 2]);
        // max |x| 4.5 > 3: arange(4, 5.5, 1) = 4, 5 -> edges 1..5; 0.5 is below the first edge and not counted.
        let h = round(Some(old), &[-4.5, 0.5, 1.5], true, 2);
        assert_eq!(h.edges, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(h.counts, vec![2, 2, 0, 1]);
        assert_eq!((h.min, h.max), (-4.5, 3.0));
    }

    #[test]
    fn percentile_cuts_at_the_edge_where_the_share_is_reached_and_clips_to_the_data() {
        // |x| histogram: 10 bins over [0, 10] with 90 values in the first 9 bins and 10 in the last.
        let mut counts = vec![10i64; 10];
        counts[9] = 10;
        let h = Hist {
            counts,
            edges: linspace(0.0, 10.0, 11),
            min: -9.5,
            max: 9.0,
            threshold: 0.0,
        };
        // cdf 0.1, 0.2, ...: 85% first reached at bin 8 (0.9) -> edge 8.
        assert_eq!(percentile_threshold(&h, 85.0, true), (-8.0, 8.0));
        // 100%: the edge is the last (10), clipped to the data: -10 -> min -9.5, 10 -> max 9.
        assert_eq!(percentile_threshold(&h, 100.0, true), (-9.5, 9.0));
        // Signed: 20% cut off each side of 10 bins over [-5, 5]: cdf >= 0.2 at bin 1 -> edge -4; the float64 cdf
        // at bin 7 is 0.7999999999999999 < 0.8, so the right cut is bin 8 -> edge 3.
        let s = Hist {
            edges: linspace(-5.0, 5.0, 11),
            min: -5.0,
            max: 5.0,
            ..h
        };
        assert_eq!(percentile_threshold(&s, 60.0, false), (-4.0, 3.0));
    }

    #[test]
    fn smoothing_and_kl_are_orts() {
        assert_eq!(smooth(&[0, 0, 0]).unwrap(), None);
        // 1 zero, 2 nonzero: zeros get 1e-4, the others lose 0.5e-4.
        let s = smooth(&[0, 2, 1]).unwrap().unwrap();
        assert_eq!(s, vec![1e-4f32, 2.0 - 5e-5f32, 1.0 - 5e-5f32]);
        assert_eq!(kl_divergence(&[1.0, 1.0], &[1.0, 1.0]), 0.0);
        // KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3)
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&[1.0, 1.0], &[1.0, 3.0]) as f64 - want).abs() < 1e-6);
        let v: Vec<f32> = (0..300).map(|i| (i as f32) * 0.1).collect();
        let naive: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((pairwise_sum(&v) as f64 - naive).abs() < 1e-2);
    }

    #[test]
    fn entropy_picks_the_candidate_that_keeps_the_mass_and_drops_a_lone_outlier() {
        // 8 bins over [-4, 4], 2 quantized bins: candidates i = 1..=4 -> [edge(3), edge(5)], ..., [edge(0), edge(8)].
        // The mass sits in the middle two bins; a single outlier in the last bin.
        let h = Hist {
            counts: vec![0, 0, 0, 50, 50, 0, 0, 1],
            edges: linspace(-4.0, 4.0, 9),
            min: -1.0,
            max: 3.9,
            threshold: 4.0,
        };
        // Candidate i = 1 is bins 3..6 ([edge 3, edge 6] = [-1, 2]): p = [50, 50, 1] (the outlier folded into the
        // last bin), q = the 2 quantized bins spread back over p's nonzero bins; the least divergence of the four.
        assert_eq!(entropy_threshold(&h, 2).unwrap(), (-1.0, 2.0));
        // Equal bins and quantized bins: the one candidate is the whole range, clipped to the data.
        let all = Hist {
            counts: vec![1, 2, 3, 4],
            edges: linspace(-2.0, 2.0, 5),
            min: -1.5,
            max: 2.0,
            threshold: 2.0,
        };
        assert_eq!(entropy_threshold(&all, 4).unwrap(), (-1.5, 2.0));
        assert!(entropy_threshold(&all, 16).is_err());
    }
}
