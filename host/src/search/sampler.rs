//! Samplers over one search space (olive/search/samplers): sequential (every index in order), random (uniform
//! without replacement, seeded) and TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization",
//! the `tpe` crate's categorical densities per parameter, candidates scored jointly, seeded). Invalid points are
//! skipped.

use std::cmp::Ordering;
use std::collections::HashSet;

use rand::distr::Distribution;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tpe::density_estimation::{BuildDensityEstimator, DefaultEstimator, DensityEstimator};

use super::space::Subspace;

/// Which sampler a search uses (Olive's `search_strategy.sampler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Every point in index order.
    Sequential,
    /// Uniformly at random, without replacement.
    Random,
    /// Tree-structured Parzen Estimator.
    Tpe,
}

/// Rounds of TPE candidates before a uniform pick among the untried points.
const TPE_TRIES: usize = 8;
/// Candidates per round (the `tpe` crate's and optuna's default, 24).
const TPE_CANDIDATES: usize = 24;
/// Fraction of the history that forms the good density (the `tpe` crate's and optuna's default, 0.1).
const TPE_GAMMA: f64 = 0.1;

/// A sampler's state over one subspace.
pub(crate) struct Sampler {
    kind: SamplerKind,
    rng: Xoshiro256PlusPlus,
    /// Sequential: the next index to look at.
    cursor: usize,
    /// Random and TPE: valid indices, less those taken by random picks (TPE's own picks stay; skipped later).
    untried: Vec<usize>,
    /// Random and TPE: number of valid indices.
    valid: usize,
    /// TPE: every recorded trial's digits and its rank key (None for failed).
    history: Vec<(Vec<usize>, Option<Vec<f64>>)>,
    suggested: HashSet<usize>,
}

impl Sampler {
    pub fn new(kind: SamplerKind, sub: &Subspace, seed: u64) -> Self {
        let untried = match kind {
            SamplerKind::Sequential => Vec::new(),
            SamplerKind::Random | SamplerKind::Tpe => (0..sub.size())
                .filter(|&i| sub.decode(i).is_some())
                .collect(),
        };
        Self {
            kind,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            cursor: 0,
            valid: untried.len(),
            untried,
            history: Vec::new(),
            suggested: HashSet::new(),
        }
    }

    /// Number of points suggested so far.
    pub fn suggested(&self) -> usize {
        self.suggested.len()
    }

    /// The next valid untried index, or None when the space is exhausted. `rank` orders rank keys best first.
    pub fn suggest(
        &mut self,
        sub: &Subspace,
        rank: &dyn Fn(&[f64], &[f64]) -> Ordering,
    ) -> Option<usize> {
        let index = match self.kind {
            SamplerKind::Sequential => {
                let found = (self.cursor..sub.size()).find(|&i| sub.decode(i).is_some());
                self.cursor = found.map_or(sub.size(), |i| i + 1);
                found?
            }
            SamplerKind::Random => self.pick_random()?,
            SamplerKind::Tpe => self.pick_tpe(sub, rank)?,
        };
        self.suggested.insert(index);
        Some(index)
    }

    /// Takes a uniformly chosen untried index out of the list (Olive's `RandomSampler.suggest`).
    fn pick_random(&mut self) -> Option<usize> {
        while !self.untried.is_empty() {
            let at = self.rng.random_range(0..self.untried.len());
            let index = self.untried.swap_remove(at);
            if !self.suggested.contains(&index) {
                return Some(index);
            }
        }
        None
    }

    fn pick_tpe(
        &mut self,
        sub: &Subspace,
        rank: &dyn Fn(&[f64], &[f64]) -> Ordering,
    ) -> Option<usize> {
        if self.suggested.len() >= self.valid {
            return None;
        }
        let radices = sub.radices();
        let (good, bad) = self.estimators(&radices, rank);
        for _ in 0..TPE_TRIES {
            // Candidates drawn from the good density, scored by log l(x) - log g(x) summed over the parameters
            // (multivariate, as Olive's default optuna TPE); tried and invalid ones are dropped.
            let mut best: Option<(f64, usize)> = None;
            for _ in 0..TPE_CANDIDATES {
                let digits: Vec<usize> = good
                    .iter()
                    .zip(&radices)
                    .map(|(l, &r)| (l.sample(&mut self.rng).max(0.0) as usize).min(r - 1))
                    .collect();
                let index = sub.index(&digits);
                if self.suggested.contains(&index) || sub.decode(index).is_none() {
                    continue;
                }
                let score: f64 = digits
                    .iter()
                    .zip(good.iter().zip(&bad))
                    .map(|(&d, (l, g))| l.log_pdf(d as f64) - g.log_pdf(d as f64))
                    .sum();
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, index));
                }
            }
            if let Some((_, index)) = best {
                return Some(index);
            }
        }
        self.pick_random()
    }

    /// Per parameter, the `tpe` crate's histogram densities of the better fraction of the history (l) and of the
    /// rest (g). The history's order is the ranking (goals, then priorities), which has no fixed scalar.
    fn estimators(
        &self,
        radices: &[usize],
        rank: &dyn Fn(&[f64], &[f64]) -> Ordering,
    ) -> (Vec<DefaultEstimator>, Vec<DefaultEstimator>) {
        let mut order: Vec<&(Vec<usize>, Option<Vec<f64>>)> = self.history.iter().collect();
        order.sort_by(|a, b| match (&a.1, &b.1) {
            (Some(x), Some(y)) => rank(x, y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        });
        let split = (order.len() as f64 * TPE_GAMMA).ceil() as usize;
        let (good, bad) = order.split_at(split);
        let build = |set: &[&(Vec<usize>, Option<Vec<f64>>)]| -> Vec<DefaultEstimator> {
            radices
                .iter()
                .enumerate()
                .filter_map(|(p, &radix)| {
                    let range = tpe::categorical_range(radix).ok()?;
                    let xs = set.iter().map(|(digits, _)| digits[p] as f64);
                    match tpe::histogram_estimator().build_density_estimator(xs, range) {
                        Ok(e) => Some(e),
                        Err(never) => match never {},
                    }
                })
                .collect()
        };
        (build(good), build(bad))
    }

    /// Tells the sampler a suggested point's result (None: failed); only TPE uses it.
    pub fn record(&mut self, sub: &Subspace, index: usize, key: Option<Vec<f64>>) {
        if self.kind == SamplerKind::Tpe {
            self.history.push((sub.digits(index), key));
        }
    }
}
