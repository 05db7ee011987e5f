//! The asymmetric / symmetric min-max grid of GPTQ's `Quantizer.find_params` (IST-DASLab/gptq quant.py,
//! AutoGPTQ quantizer.py, per channel, `weight=True`) and its `quantize`: the range always holds 0,
//! an all-zero group gets the range [-1, 1], symmetric grids centre the zero point at 2^(bits-1).

use crate::error::{QuantError, Result};

/// Bit width, inputs per group and symmetry of a quantized linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// Bits per weight: 2, 3, 4 or 8.
    pub bits: u8,
    /// Inputs per group; `None` for one group per output channel (Olive/GPTQ `-1`).
    pub group_size: Option<usize>,
    /// Symmetric grid (zero point fixed at 2^(bits-1)).
    pub sym: bool,
}

impl QuantSpec {
    /// Checks `bits` ∈ {2, 3, 4, 8} and a positive `group_size`.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.bits, 2 | 3 | 4 | 8) {
            return Err(QuantError::Bits(self.bits));
        }
        if self.group_size == Some(0) {
            return Err(QuantError::GroupSize);
        }
        Ok(())
    }

    /// Inputs per group: `group_size`, or `in_features` for per-channel.
    pub fn group_len(&self, in_features: usize) -> usize {
        self.group_size.unwrap_or(in_features)
    }

    /// ceil(in_features / group_len): the last group may be shorter (ragged).
    pub fn n_groups(&self, in_features: usize) -> usize {
        match self.group_len(in_features) {
            0 => 0,
            g => in_features.div_ceil(g),
        }
    }

    /// Largest level, 2^bits − 1.
    pub fn max_level(&self) -> u8 {
        max_level(self.bits)
    }
}

/// 2^bits − 1.
pub(crate) fn max_level(bits: u8) -> u8 {
    ((1u16 << bits) - 1) as u8
}

/// Scale and zero point of one group of weights, as GPTQ's `find_params` computes them: the range is
/// [min(w, 0), max(w, 0)] (symmetric: ±max|w|, or [0, max] when no weight is negative), [-1, 1] when it
/// is empty; scale = range / (2^bits − 1); zero = round(−min / scale) (half to even, as torch.round),
/// or 2^(bits−1) when symmetric.
pub fn group_params(w: &[f32], bits: u8, sym: bool) -> (f32, u8) {
    let maxq = f32::from(max_level(bits));
    let (mut xmin, mut xmax) = w
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if sym {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let scale = (xmax - xmin) / maxq;
    let zero = if sym {
        (maxq + 1.0) / 2.0
    } else {
        round_half_even(-xmin / scale)
    };
    (scale, zero as u8)
}

/// The level of `x`: clamp(round(x / scale) + zero, 0, 2^bits − 1), rounding half to even.
#[inline]
pub fn quantize_value(x: f32, scale: f32, zero: u8, bits: u8) -> u8 {
    let maxq = f32::from(max_level(bits));
    (round_half_even(x / scale) + f32::from(zero)).clamp(0.0, maxq) as u8
}

/// Round half to even (torch.round) without SSE4.1's `roundps`, which baseline x86-64 lacks (there
/// `f32::round_ties_even` is a libm call per value): for |x| < 2^22, x + 1.5·2^23 lands where the f32
/// spacing is exactly 1, so the addition itself rounds x half to even.
#[inline]
fn round_half_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23
    if x.abs() < 4_194_304.0 {
        (x + SHIFT) - SHIFT
    } else {
        round_large(x)
    }
}

/// `round_ties_even` out of line: inlined, the compiler evaluates its libm call for every value of a
/// vectorised loop, whichever branch is taken.
#[cold]
#[inline(never)]
fn round_large(x: f32) -> f32 {
    x.round_ties_even()
}

/// The float value of `level`: (level − zero) · scale, as `QuantizedLinear::dequantize` computes it.
#[inline]
pub(crate) fn dequantize_value(level: u8, scale: f32, zero: u8) -> f32 {
    (f32::from(level) - f32::from(zero)) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asym_params_span_min_to_max_with_zero_inside() {
        let w = [-0.5f32, 0.25, 1.0];
        for bits in [2u8, 3, 4, 8] {
            let maxq = f32::from(max_level(bits));
            let (scale, zero) = group_params(&w, bits, false);
            assert_eq!(scale, 1.5 / maxq, "bits {bits}");
            assert_eq!(zero, (0.5 / scale).round_ties_even() as u8, "bits {bits}");
            assert_eq!(quantize_value(-0.5, scale, zero, bits), 0);
            assert_eq!(quantize_value(1.0, scale, zero, bits), max_level(bits));
            assert_eq!(quantize_value(0.0, scale, zero, bits), zero);
        }
    }

    #[test]
    fn asym_range_always_holds_zero() {
        let (scale, zero) = group_params(&[0.5, 1.0], 4, false);
        assert_eq!((scale, zero), (1.0 / 15.0, 0));
        let (scale, zero) = group_params(&[-1.0, -0.5], 4, false);
        assert_eq!((scale, zero), (1.0 / 15.0, 15));
    }

    #[test]
    fn sym_params_centre_the_zero_point() {
        for bits in [2u8, 3, 4, 8] {
            let maxq = f32::from(max_level(bits));
            let (scale, zero) = group_params(&[-0.25, 0.75], bits, true);
            assert_eq!(scale, 1.5 / maxq, "bits {bits}");
            assert_eq!(u16::from(zero), 1u16 << (bits - 1), "bits {bits}");
            assert_eq!(quantize_value(0.0, scale, zero, bits), zero);
            assert_eq!(quantize_value(-0.75, scale, zero, bits), 0);
            assert_eq!(quantize_value(0.75, scale, zero, bits), max_level(bits));
        }
        // No negative weight: GPTQ keeps the range [0, max] (half the levels unused).
        let (scale, zero) = group_params(&[0.5, 1.5], 4, true);
        assert_eq!((scale, zero), (0.1, 8));
    }

    #[test]
    fn all_zero_group_gets_unit_range() {
        // zero = round(1 / (2 / maxq)) in f32: 1.5 → 2, but 3.4999998 → 3, 7.4999995 → 7 and 127.49999 → 127,
        // the values torch computes for GPTQ's find_params.
        for (bits, zero) in [(2u8, 2u8), (3, 3), (4, 7), (8, 127)] {
            let (scale, z) = group_params(&[0.0; 4], bits, false);
            assert_eq!(scale, 2.0 / f32::from(max_level(bits)), "bits {bits}");
            assert_eq!(z, zero, "bits {bits}");
        }
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        let mut x = -70_000.0f32;
        while x < 70_000.0 {
            for v in [x, x + 0.5, x + 0.49999997, x + 0.50000006] {
                assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
            }
            x += 0.75;
        }
        for v in [5e6f32, -5e6, 1e30, -0.0, 4_194_303.5, -4_194_302.5] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(quantize_value(2.5, 1.0, 0, 4), 2);
        assert_eq!(quantize_value(3.5, 1.0, 0, 4), 4);
        assert_eq!(quantize_value(-100.0, 1.0, 3, 4), 0);
        assert_eq!(quantize_value(100.0, 1.0, 3, 4), 15);
    }

    #[test]
    fn spec_validation_and_groups() {
        let spec = |bits, group_size| QuantSpec {
            bits,
            group_size,
            sym: false,
        };
        assert!(spec(4, Some(128)).validate().is_ok());
        assert!(matches!(spec(5, None).validate(), Err(QuantError::Bits(5))));
        assert!(matches!(
            spec(4, Some(0)).validate(),
            Err(QuantError::GroupSize)
        ));
        assert_eq!(spec(4, Some(32)).n_groups(100), 4);
        assert_eq!(spec(4, Some(32)).group_len(100), 32);
        assert_eq!(spec(4, None).n_groups(100), 1);
        assert_eq!(spec(4, None).group_len(100), 100);
    }
}
