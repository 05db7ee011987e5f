//! Olive's latency summary (olive/evaluator/olive_evaluator.py `latency_helper`, `compute_throughput`):
//! avg, max, min and numpy's default percentile (method "linear": rank p/100·(n−1), linear interpolation
//! between the two nearest order statistics) of the timed samples, in milliseconds, rounded to 5 decimals;
//! throughput = units per sample / latency, with min and max swapped (the slowest run is the least throughput).

use anyhow::bail;

/// numpy.percentile(samples, p) with the default "linear" method; `sorted` ascending and non-empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 1 {
        return sorted[0];
    }
    let rank = p / 100.0 * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The value of latency sub type `sub` over `seconds` (one per timed run), in milliseconds.
pub fn latency_ms(seconds: &[f64], sub: &str) -> anyhow::Result<f64> {
    if seconds.is_empty() {
        bail!("no timed runs");
    }
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let s = match sub {
        "avg" => sorted.iter().sum::<f64>() / sorted.len() as f64,
        "max" => sorted[sorted.len() - 1],
        "min" => sorted[0],
        "p50" => percentile(&sorted, 50.0),
        "p75" => percentile(&sorted, 75.0),
        "p90" => percentile(&sorted, 90.0),
        "p95" => percentile(&sorted, 95.0),
        "p99" => percentile(&sorted, 99.0),
        "p999" => percentile(&sorted, 99.9),
        other => bail!("unknown latency sub type {other:?}"),
    };
    Ok(super::result::round5(s * 1000.0))
}

/// Throughput sub type `sub` in units (tokens) per second: `units` per run over the latency of the mirrored
/// sub type (Olive: min ↔ max).
pub fn throughput(seconds: &[f64], sub: &str, units: f64) -> anyhow::Result<f64> {
    let mirrored = match sub {
        "min" => "max",
        "max" => "min",
        other => other,
    };
    let ms = latency_ms(seconds, mirrored)?;
    if ms <= 0.0 {
        bail!("a timed run took {ms} ms, too short to give a throughput");
    }
    Ok(super::result::round5(units / ms * 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy 2.x `np.percentile(x, p)` of these samples (printed by the test venv's numpy).
    #[test]
    fn percentiles_match_numpy_linear() {
        let x = [0.3, 0.1, 0.7, 0.2, 0.5, 0.11, 0.9];
        let mut s = x.to_vec();
        s.sort_by(f64::total_cmp);
        // np.percentile([0.3, 0.1, 0.7, 0.2, 0.5, 0.11, 0.9], [50, 75, 90, 95, 99, 99.9])
        let want = [0.3, 0.6, 0.78, 0.84, 0.888, 0.8988];
        for (p, w) in [50.0, 75.0, 90.0, 95.0, 99.0, 99.9].iter().zip(want) {
            assert!(
                (percentile(&s, *p) - w).abs() < 1e-12,
                "p{p}: {} vs {w}",
                percentile(&s, *p)
            );
        }
        let four = [4.0, 1.0, 3.0, 2.0];
        // np.percentile([4, 1, 3, 2], 50) == 2.5, 90 -> 3.7
        assert!((latency_ms(&four, "p50").unwrap() - 2500.0).abs() < 1e-9);
        assert!((latency_ms(&four, "p90").unwrap() - 3700.0).abs() < 1e-9);
        assert_eq!(latency_ms(&[0.25], "p99").unwrap(), 250.0);
    }

    #[test]
    fn summary_orders_and_throughput_mirrors() {
        let x: Vec<f64> = (1..=20).map(|i| i as f64 * 1e-3).collect();
        let get = |s| latency_ms(&x, s).unwrap();
        assert!(get("min") <= get("p50") && get("p50") <= get("p90") && get("p90") <= get("max"));
        assert_eq!(get("avg"), 10.5);
        // 1 token per run: the fastest run (1 ms) is the max throughput
        assert_eq!(throughput(&x, "max", 1.0).unwrap(), 1000.0);
        assert_eq!(throughput(&x, "min", 1.0).unwrap(), 50.0);
        assert!(latency_ms(&x, "p42").is_err());
        assert!(latency_ms(&[], "avg").is_err());
    }
}
