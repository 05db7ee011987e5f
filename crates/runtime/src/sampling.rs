//! Next-token choice as onnxruntime-genai's CPU search does it (src/search.cpp `GreedySearch_Cpu`):
//! greedy argmax, or sampling with temperature, top-k then top-p (nucleus, Holtzman et al. 2019)
//! from a seeded generator (xoshiro256**, Blackman & Vigna 2018, seeded through SplitMix64).

use crate::error::{Result, RuntimeError};

/// How to pick each next token and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Longest sequence, prompt included.
    pub max_length: usize,
    /// Sample instead of taking the most likely token.
    pub do_sample: bool,
    /// Sample among the k most likely tokens; 0 means the whole vocabulary, 1 is greedy.
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to top_p (1.0: no cut).
    pub top_p: f32,
    /// Logits are divided by it before the softmax.
    pub temperature: f32,
    /// Seed of the generator; None draws one from the clock.
    pub seed: Option<u64>,
    /// Ids that end generation (they are still reported).
    pub eos_token_ids: Vec<u32>,
}

pub use olive_kernels::cpu::argmax;

/// Picks next tokens from logits according to [`SearchOptions`].
#[derive(Debug)]
pub struct Sampler {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Greedy,
    Sample {
        top_k: usize,
        top_p: f32,
        temperature: f32,
        rng: Xoshiro256,
        /// Scratch: candidate ids, most likely first.
        order: Vec<u32>,
        /// Scratch: their probabilities.
        probs: Vec<f64>,
    },
}

impl Sampler {
    /// Checks the options and seeds the generator.
    pub fn new(options: &SearchOptions) -> Result<Self> {
        if !options.do_sample || options.top_k == 1 {
            return Ok(Sampler { mode: Mode::Greedy });
        }
        if !(options.temperature > 0.0 && options.temperature.is_finite()) {
            return Err(RuntimeError::Search {
                option: "--temperature",
                reason: format!("{} is not a positive number", options.temperature),
            });
        }
        if !(options.top_p > 0.0 && options.top_p <= 1.0) {
            return Err(RuntimeError::Search {
                option: "--top_p",
                reason: format!("{} is not in (0, 1]", options.top_p),
            });
        }
        let seed = options.seed.unwrap_or_else(clock_seed);
        tracing::debug!(seed, "sampling seed");
        Ok(Sampler {
            mode: Mode::Sample {
                top_k: options.top_k,
                top_p: options.top_p,
                temperature: options.temperature,
                rng: Xoshiro256::new(seed),
                order: Vec::new(),
                probs: Vec::new(),
            },
        })
    }

    /// The next token for `logits` ([vocab]).
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        match &mut self.mode {
            Mode::Greedy => argmax(logits),
            Mode::Sample {
                top_k,
                top_p,
                temperature,
                rng,
                order,
                probs,
            } => {
                let n = logits.len();
                let k = if *top_k == 0 || *top_k >= n {
                    n
                } else {
                    *top_k
                };
                candidates(logits, k, order);
                // probs: softmax(logits / temperature) over the k candidates, largest first.
                let max = f64::from(logits[order[0] as usize]);
                probs.clear();
                probs.extend(order.iter().map(|&i| {
                    ((f64::from(logits[i as usize]) - max) / f64::from(*temperature)).exp()
                }));
                let total: f64 = probs.iter().sum();
                // Nucleus: the shortest prefix whose probability reaches top_p.
                let mut kept = 0;
                let mut mass = 0.0;
                for p in probs.iter() {
                    mass += p / total;
                    kept += 1;
                    if mass >= f64::from(*top_p) {
                        break;
                    }
                }
                let kept_sum: f64 = probs[..kept].iter().sum();
                let mut threshold = rng.next_f64() * kept_sum;
                for (i, p) in probs[..kept].iter().enumerate() {
                    threshold -= p;
                    if threshold < 0.0 {
                        return order[i];
                    }
                }
                order[kept - 1]
            }
        }
    }
}

/// Fills `order` with the ids of the `k` largest logits, largest first (lower id first on ties).
fn candidates(logits: &[f32], k: usize, order: &mut Vec<u32>) {
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    order.clear();
    order.extend(0..logits.len() as u32);
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    order.sort_unstable_by(by_logit);
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// xoshiro256** with its state filled by SplitMix64 from one seed.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut split_mix = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [split_mix(), split_mix(), split_mix(), split_mix()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(
        do_sample: bool,
        top_k: usize,
        top_p: f32,
        temperature: f32,
        seed: u64,
    ) -> SearchOptions {
        SearchOptions {
            max_length: 16,
            do_sample,
            top_k,
            top_p,
            temperature,
            seed: Some(seed),
            eos_token_ids: vec![],
        }
    }

    /// Logits of a 6-token vocabulary with probabilities .636 (id 1), .234 (3), .086 (0), .032 (4),
    /// .012 (5), .0006 (2) at T=1.
    const LOGITS: [f32; 6] = [1.0, 3.0, -4.0, 2.0, 0.0, -1.0];

    fn draws(options: &SearchOptions, n: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(options).expect("valid options");
        (0..n).map(|_| sampler.next(&LOGITS)).collect()
    }

    #[test]
    fn greedy_without_do_sample_or_with_top_k_1() {
        assert!(draws(&options(false, 50, 0.5, 0.7, 1), 20)
            .iter()
            .all(|&t| t == 1));
        assert!(draws(&options(true, 1, 1.0, 1.0, 1), 20)
            .iter()
            .all(|&t| t == 1));
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let a = draws(&options(true, 0, 1.0, 1.0, 7), 200);
        assert_eq!(a, draws(&options(true, 0, 1.0, 1.0, 7), 200));
        assert_ne!(a, draws(&options(true, 0, 1.0, 1.0, 8), 200));
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let seen = draws(&options(true, 2, 1.0, 1.0, 3), 2000);
        assert!(
            seen.iter().all(|&t| t == 1 || t == 3),
            "only ids 1 and 3 are in the top 2"
        );
        let share_of_1 = seen.iter().filter(|&&t| t == 1).count() as f64 / seen.len() as f64;
        // renormalized over the top 2: e^3 / (e^3 + e^2) = 0.731
        assert!((share_of_1 - 0.731).abs() < 0.04, "{share_of_1}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // p = 0.85 keeps ids 1 and 3 (.636 + .234 = .870 >= 0.85).
        let seen = draws(&options(true, 0, 0.85, 1.0, 5), 2000);
        assert!(seen.iter().all(|&t| t == 1 || t == 3), "{seen:?}");
        // p small: only the most likely token.
        assert!(draws(&options(true, 0, 0.1, 1.0, 5), 200)
            .iter()
            .all(|&t| t == 1));
    }

    #[test]
    fn temperature_flattens_the_distribution() {
        let share = |temperature| {
            let seen = draws(&options(true, 0, 1.0, temperature, 11), 4000);
            seen.iter().filter(|&&t| t == 1).count() as f64 / seen.len() as f64
        };
        let (cold, warm) = (share(0.5), share(2.0));
        // id 1: .865 at T=0.5, .423 at T=2.
        assert!(cold > 0.83 && warm < 0.5, "cold {cold}, warm {warm}");
    }

    #[test]
    fn bad_options_are_refused() {
        let err = Sampler::new(&options(true, 50, 1.0, 0.0, 1)).expect_err("temperature 0");
        assert!(err.to_string().contains("--temperature"), "{err}");
        let err = Sampler::new(&options(true, 50, 1.5, 1.0, 1)).expect_err("top_p > 1");
        assert!(err.to_string().contains("--top_p"), "{err}");
    }
}
