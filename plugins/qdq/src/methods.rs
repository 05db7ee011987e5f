//! Calibration methods and ORT's calibration extra options, as onnxruntime.quantization reads them (quantize.py
//! `quantize_static` -> calibrate.py `create_calibrator`, ORT 1.32; Olive's `OnnxQuantization` passes
//! `calibrate_method` and `extra_options` through):
//! - MinMax: [`calibrate::min_max`]; with `CalibTensorRangeSymmetric` [-max |x|, max |x|]; with
//!   `CalibMovingAverage` each round's mean of the samples' min and max (numpy nanmean: a float32 pairwise sum over
//!   the count), the rounds' exponential moving average old + c · (new - old) (`CalibMovingAverageConstant` c,
//!   default 0.01) in float32 (`MinMaxCalibrater.compute_data` / `merge_range`);
//! - Entropy (128 bins, 128 quantized bins; ORT's Entropy ignores `CalibTensorRangeSymmetric`) and Percentile
//!   (2048 bins, `CalibPercentile` default 99.999, `CalibTensorRangeSymmetric` default true): histograms, see
//!   [`histogram`]. quantize_static passes no bin counts to the calibrator (create_calibrator's `num_bins` /
//!   `num_quantized_bins` stay at their defaults), so Olive cannot set them and neither can this pass. Entropy over a
//!   single round is MinMax (128 bins, 128 quantized bins: one candidate, the whole range); with
//!   `CalibStridedMinMax` each wider round adds bins and the KL search has candidates to choose from;
//! - a round is every sample, or `CalibStridedMinMax` samples at a time (it must divide the sample count, as ORT
//!   asks);
//! - Distribution (float8's mean / std) is refused: olive-rs writes no float8 types.

use std::collections::HashMap;
use std::path::Path;

use olive_onnx::proto::ModelProto;
use olive_pass_sdk::Error;
use serde_json::{Map, Value};

use crate::calibrate::{self, Runner, Sample};
use crate::histogram::{self, pairwise_sum, Hist};

/// The `extra_options` keys read here (ORT's calibration options; as ORT, the histogram methods do not use the
/// moving-average ones).
pub const EXTRA_OPTIONS: &[&str] = &[
    "CalibTensorRangeSymmetric",
    "CalibPercentile",
    "CalibStridedMinMax",
    "CalibMovingAverage",
    "CalibMovingAverageConstant",
    "CalibMaxIntermediateOutputs",
];

/// A calibration method with ORT's parameters (create_calibrator's defaults; quantize_static cannot change the bin
/// counts).
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// The min and max of the values.
    MinMax {
        /// `CalibMovingAverage`'s constant: each round's mean of the samples' min / max, and the rounds'
        /// exponential moving average.
        moving_average: Option<f64>,
    },
    /// The KL-divergence threshold search.
    Entropy {
        /// Bins of a new histogram.
        num_bins: usize,
        /// Bins the candidates are merged into.
        num_quantized_bins: usize,
    },
    /// The percentile of the values (of |x| when symmetric).
    Percentile {
        /// Bins of a new histogram.
        num_bins: usize,
        /// In [0, 100].
        percentile: f64,
    },
}

/// How the activation ranges are calibrated.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The method.
    pub method: Method,
    /// `CalibTensorRangeSymmetric` (ORT's default: true for Percentile, false otherwise).
    pub symmetric: bool,
    /// `CalibStridedMinMax`: samples a collection round.
    pub stride: Option<usize>,
}

impl Calibration {
    /// The calibration `calibrate_method` and the `Calib*` keys of `extra_options` ask for; `pass` names the pass in
    /// errors.
    pub fn parse(
        pass: &str,
        method: &str,
        extra: Option<&Map<String, Value>>,
    ) -> Result<Calibration, Error> {
        let bad = |key: &str, expected: &str, got: &Value| {
            Error::InvalidConfig(format!(
                "{pass}: extra_options `{key}`: expected {expected}, got {got}"
            ))
        };
        let get = |key: &str| extra.and_then(|m| m.get(key)).filter(|v| !v.is_null());
        let flag = |key: &str| -> Result<Option<bool>, Error> {
            get(key)
                .map(|v| v.as_bool().ok_or_else(|| bad(key, "true or false", v)))
                .transpose()
        };
        let percentile = match get("CalibPercentile") {
            Some(v) => match v.as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => p,
                _ => return Err(bad("CalibPercentile", "a number in [0, 100]", v)),
            },
            None => 99.999,
        };
        let stride = match get("CalibStridedMinMax") {
            Some(v) => match v.as_u64() {
                // ORT: a stride of 0 is no stride.
                Some(0) => None,
                Some(s) => Some(s as usize),
                None => {
                    return Err(bad(
                        "CalibStridedMinMax",
                        "a whole number of samples a round",
                        v,
                    ))
                }
            },
            None => None,
        };
        let moving = flag("CalibMovingAverage")?.unwrap_or(false);
        let constant = match get("CalibMovingAverageConstant") {
            Some(v) => match v.as_f64() {
                Some(c) if (0.0..=1.0).contains(&c) => c,
                _ => return Err(bad("CalibMovingAverageConstant", "a number in [0, 1]", v)),
            },
            None => 0.01,
        };
        if let Some(v) = get("CalibMaxIntermediateOutputs") {
            if v.as_u64().is_none_or(|n| n == 0) {
                return Err(bad(
                    "CalibMaxIntermediateOutputs",
                    "a whole number of samples above 0",
                    v,
                ));
            }
        }
        let (method, default_symmetric) = match method {
            "MinMax" => {
                // ORT's MinMax with CalibMaxIntermediateOutputs drops the outputs collected when the count is
                // reached (calibrate.py collect_data): those samples do not count.
                if get("CalibMaxIntermediateOutputs").is_some() {
                    return Err(Error::InvalidConfig(format!(
                        "{pass}: extra_options `CalibMaxIntermediateOutputs` with calibrate_method MinMax is not \
                         supported by olive-rs (ORT drops the outputs collected so far each time the count is \
                         reached); leave it out"
                    )));
                }
                (
                    Method::MinMax {
                        moving_average: moving.then_some(constant),
                    },
                    false,
                )
            }
            "Entropy" => (
                Method::Entropy {
                    num_bins: 128,
                    num_quantized_bins: 128,
                },
                false,
            ),
            "Percentile" => (
                Method::Percentile {
                    num_bins: 2048,
                    percentile,
                },
                true,
            ),
            "Distribution" => {
                return Err(Error::InvalidConfig(format!(
                    "{pass}: calibrate_method `Distribution`: ORT uses it only for float8 (FLOAT8E4M3FN) \
                     activations or weights (their scale from the values' standard deviation), and olive-rs \
                     writes no float8 types; use MinMax, Entropy or Percentile"
                )))
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "{pass}: calibrate_method `{other}`: expected MinMax, Entropy or Percentile"
                )))
            }
        };
        Ok(Calibration {
            method,
            symmetric: flag("CalibTensorRangeSymmetric")?.unwrap_or(default_symmetric),
            stride,
        })
    }

    /// The [min, max] range of each of `tensors` over `samples` (see the module docs); `pass` names the pass in
    /// errors.
    pub fn ranges(
        &self,
        pass: &str,
        model: &ModelProto,
        tensors: &[String],
        samples: &[Sample],
        scratch: &Path,
    ) -> Result<HashMap<String, (f32, f32)>, Error> {
        if let Some(stride) = self.stride {
            if !samples.len().is_multiple_of(stride) {
                return Err(Error::InvalidConfig(format!(
                    "{pass}: extra_options `CalibStridedMinMax`: expected a divisor of the {} calibration samples, got {stride}",
                    samples.len()
                )));
            }
        }
        let stride = self.stride.unwrap_or(samples.len()).max(1);
        // The bins of a new histogram, whether it counts |x| (ORT: Percentile with symmetric ranges), the range it
        // gives.
        type Pick = Box<dyn Fn(&Hist) -> Result<(f32, f32), String>>;
        let (num_bins, absolute, pick): (usize, bool, Pick) = match self.method {
            Method::MinMax {
                moving_average: Some(constant),
            } => {
                return moving_min_max(
                    model,
                    tensors,
                    samples,
                    scratch,
                    stride,
                    constant as f32,
                    self.symmetric,
                )
            }
            Method::MinMax {
                moving_average: None,
            } => {
                let mut ranges = calibrate::min_max(model, tensors, samples, scratch)?;
                if self.symmetric {
                    for (lo, hi) in ranges.values_mut() {
                        let m = lo.abs().max(hi.abs());
                        (*lo, *hi) = (-m, m);
                    }
                }
                return Ok(ranges);
            }
            Method::Entropy {
                num_bins,
                num_quantized_bins,
            } => (
                num_bins,
                false,
                Box::new(move |h| histogram::entropy_threshold(h, num_quantized_bins)),
            ),
            Method::Percentile {
                num_bins,
                percentile,
            } => {
                let absolute = self.symmetric;
                (
                    num_bins,
                    absolute,
                    Box::new(move |h| Ok(histogram::percentile_threshold(h, percentile, absolute))),
                )
            }
        };
        let hists =
            histogram::histograms(model, tensors, samples, scratch, stride, num_bins, absolute)?;
        let mut ranges = HashMap::new();
        for (name, h) in tensors.iter().zip(hists) {
            let Some(h) = h else { continue };
            let range =
                pick(&h).map_err(|e| Error::Failed(format!("calibration tensor `{name}`: {e}")))?;
            ranges.insert(name.clone(), range);
        }
        Ok(ranges)
    }
}

/// MinMax with `CalibMovingAverage` (see the module docs): the [min, max] of each of `tensors`.
fn moving_min_max(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Sample],
    scratch: &Path,
    stride: usize,
    constant: f32,
    symmetric: bool,
) -> Result<HashMap<String, (f32, f32)>, Error> {
    let index: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // Per tensor: the current round, its samples' mins and maxes, the average of the rounds before.
    let mut rounds: Vec<(usize, Vec<f32>, Vec<f32>)> =
        vec![(0, Vec::new(), Vec::new()); tensors.len()];
    let mut ranges: Vec<Option<(f32, f32)>> = vec![None; tensors.len()];
    Runner::open(model, tensors, scratch)?.run(samples, &mut |sample, name, data| {
        let t = index[name];
        let (round, mins, maxes) = &mut rounds[t];
        if *round != sample / stride {
            ranges[t] = Some(moving_average(ranges[t], mins, maxes, constant, symmetric));
            (*round, *mins, *maxes) = (sample / stride, Vec::new(), Vec::new());
        }
        mins.push(data.iter().copied().fold(f32::INFINITY, f32::min));
        maxes.push(data.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        Ok(())
    })?;
    let mut out = HashMap::new();
    for (t, name) in tensors.iter().enumerate() {
        let (_, mins, maxes) = &rounds[t];
        if !mins.is_empty() {
            let range = moving_average(ranges[t], mins, maxes, constant, symmetric);
            out.insert(name.clone(), range);
        }
    }
    Ok(out)
}

/// A round of samples' `mins` and `maxes` averaged (numpy nanmean in float32), made symmetric if asked, merged into
/// the rounds before: old + c · (new - old).
fn moving_average(
    old: Option<(f32, f32)>,
    mins: &[f32],
    maxes: &[f32],
    constant: f32,
    symmetric: bool,
) -> (f32, f32) {
    let mean = |v: &[f32]| (pairwise_sum(v) as f64 / v.len() as f64) as f32;
    let (mut lo, mut hi) = (mean(mins), mean(maxes));
    if symmetric {
        let m = lo.abs().max(hi.abs());
        (lo, hi) = (-m, m);
    }
    match old {
        None => (lo, hi),
        Some((a, b)) => (a + constant * (lo - a), b + constant * (hi - b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_with_orts_defaults_and_bad_values_named() {
        let p = |m: &str, extra: serde_json::Value| {
            Calibration::parse("OnnxStaticQuantization", m, extra.as_object())
        };
        let c = p("Percentile", serde_json::json!({})).unwrap();
        assert_eq!(
            c,
            Calibration {
                method: Method::Percentile {
                    num_bins: 2048,
                    percentile: 99.999
                },
                symmetric: true,
                stride: None
            }
        );
        let c = p("Entropy", serde_json::json!({"CalibStridedMinMax": 2})).unwrap();
        assert!(!c.symmetric && c.stride == Some(2));
        for (m, extra, words) in [
            (
                "Percentile",
                serde_json::json!({"CalibPercentile": 101}),
                "`CalibPercentile`: expected a number in [0, 100], got 101",
            ),
            (
                "Entropy",
                serde_json::json!({"CalibTensorRangeSymmetric": "yes"}),
                "expected true or false",
            ),
            (
                "Entropy",
                serde_json::json!({"CalibStridedMinMax": -1}),
                "expected a whole number",
            ),
            (
                "MinMax",
                serde_json::json!({"CalibMaxIntermediateOutputs": 4}),
                "not supported by olive-rs",
            ),
            (
                "MinMax",
                serde_json::json!({"CalibMovingAverageConstant": 2}),
                "`CalibMovingAverageConstant`: expected a number in [0, 1], got 2",
            ),
            ("Distribution", serde_json::json!({}), "float8"),
            (
                "KL",
                serde_json::json!({}),
                "expected MinMax, Entropy or Percentile",
            ),
        ] {
            let e = p(m, extra).unwrap_err().to_string();
            assert!(
                e.starts_with("OnnxStaticQuantization: ") && e.contains(words),
                "{e}"
            );
        }
    }

    #[test]
    fn a_moving_average_is_the_rounds_mean_then_their_ema() {
        // Round 1: mins 1, 3 -> 2; maxes 5, 7 -> 6. Round 2 (c 0.5): mean min 4 -> 2 + 0.5 (4 - 2) = 3.
        let first = moving_average(None, &[1.0, 3.0], &[5.0, 7.0], 0.5, false);
        assert_eq!(first, (2.0, 6.0));
        assert_eq!(
            moving_average(Some(first), &[4.0], &[10.0], 0.5, false),
            (3.0, 8.0)
        );
        // Symmetric: each round's [-max |x|, max |x|] before the average.
        assert_eq!(
            moving_average(None, &[-9.0], &[1.0], 0.5, true),
            (-9.0, 9.0)
        );
    }
}
