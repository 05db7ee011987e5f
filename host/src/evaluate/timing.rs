//! Timed runs for latency and throughput (Olive's warm-up, repeat and sleep counts, applied to LLM steps):
//! `decode` times `repeat_test_num` single-token decode steps after `warmup_num` untimed ones, all in one greedy
//! generation after the prompt (the KV cache grows by one each step); `prefill` times `repeat_test_num` runs of
//! the whole prompt from an empty cache to its first token, after `warmup_num` untimed ones.

use std::time::Duration;

use super::metric::{LatencyConfig, LatencyMode};
use super::runner::Runner;

/// Seconds of each timed run.
pub fn timed_runs(
    runner: &mut Runner,
    prompt: &[u32],
    config: &LatencyConfig,
) -> anyhow::Result<Vec<f64>> {
    let sleep = Duration::from_secs_f64(config.sleep_num);
    let (warmup, repeat) = (config.warmup_num, config.repeat_test_num);
    let mut samples = Vec::with_capacity(repeat);
    match config.mode {
        LatencyMode::Decode => {
            // step 0 is the prefill, steps 1..=warmup warm up, the next `repeat` are timed
            runner.timed_generate(prompt, 1 + warmup + repeat, sleep, |step, d| {
                if step > warmup {
                    samples.push(d.as_secs_f64());
                }
            })?;
        }
        LatencyMode::Prefill => {
            for run in 0..warmup + repeat {
                runner.timed_generate(prompt, 1, sleep, |_, d| {
                    if run >= warmup {
                        samples.push(d.as_secs_f64());
                    }
                })?;
            }
        }
    }
    Ok(samples)
}

/// Tokens one timed run processes: 1 per decode step, the prompt per prefill.
pub fn tokens_per_run(config: &LatencyConfig) -> f64 {
    match config.mode {
        LatencyMode::Decode => 1.0,
        LatencyMode::Prefill => config.prompt_length as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::stats::latency_ms;
    use olive_pass_api::Model;

    fn tiny() -> Runner {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/out/mistral/model");
        if !dir.is_dir() {
            panic!(
                "{} is missing: run scripts/test.sh (it writes the golden models)",
                dir.display()
            );
        }
        Runner::load(&Model::new("hf", dir), crate::device::Device::Cpu)
            .expect("loading the tiny mistral")
    }

    #[test]
    fn decode_and_prefill_latencies_are_sane_on_a_tiny_model() {
        let mut runner = tiny();
        let prompt: Vec<u32> = (1..=24).collect();
        for mode in [LatencyMode::Decode, LatencyMode::Prefill] {
            let config = LatencyConfig {
                warmup_num: 2,
                repeat_test_num: 9,
                sleep_num: 0.0,
                mode,
                prompt_length: prompt.len(),
            };
            let s = timed_runs(&mut runner, &prompt, &config).unwrap();
            assert_eq!(s.len(), 9, "{mode:?}");
            assert!(s.iter().all(|&x| x > 0.0), "{mode:?}: {s:?}");
            let get = |sub| latency_ms(&s, sub).unwrap();
            assert!(
                get("min") <= get("p50") && get("p50") <= get("p90") && get("p90") <= get("max"),
                "{s:?}"
            );
        }
        // past the context length (128 for the tiny mistral): a clear error, not a panic
        let config = LatencyConfig {
            warmup_num: 100,
            repeat_test_num: 100,
            ..LatencyConfig::default()
        };
        let e = timed_runs(&mut runner, &prompt, &config).unwrap_err();
        assert!(e.to_string().contains("context length"), "{e}");
    }
}
