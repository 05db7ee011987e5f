//! Samplers over one search space (olive/search/samplers): sequential (every index in order), random (uniform
//! without replacement, seeded) and TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization",
//! one categorical `tpe` crate optimizer per parameter, seeded). Points that are invalid are skipped.

use std::cmp::Ordering;
use std::collections::HashSet;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

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

/// Tries for TPE to propose an untried valid point before a uniform pick among the untried ones.
const TPE_TRIES: usize = 32;

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
    /// TPE: every proposal's digits and its rank key (None for failed or invalid).
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
        for _ in 0..TPE_TRIES {
            let digits = self.ask_tpe(&radices, rank);
            let index = sub.index(&digits);
            if sub.decode(index).is_none() {
                // Invalid: told as a failure so TPE learns to avoid it.
                self.history.push((digits, None));
            } else if !self.suggested.contains(&index) {
                return Some(index);
            }
        }
        self.pick_random()
    }

    /// One TPE proposal: the optimizers are rebuilt from the history each time, its values being ranks, since
    /// the ranking (goals, then priorities) has no fixed scalar and TPE only uses the order.
    fn ask_tpe(
        &mut self,
        radices: &[usize],
        rank: &dyn Fn(&[f64], &[f64]) -> Ordering,
    ) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.history.len()).collect();
        let key = |i: usize| self.history[i].1.as_deref();
        let cmp = |a: usize, b: usize| match (key(a), key(b)) {
            (Some(x), Some(y)) => rank(x, y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        order.sort_by(|&a, &b| cmp(a, b));
        // Ties share a rank.
        let mut ranks = vec![0.0; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            ranks[i] = match pos {
                0 => 0.0,
                _ if cmp(order[pos - 1], i) == Ordering::Equal => ranks[order[pos - 1]],
                _ => pos as f64,
            };
        }
        radices
            .iter()
            .enumerate()
            .map(|(p, &radix)| {
                let Ok(range) = tpe::categorical_range(radix) else {
                    return 0;
                };
                let mut optim = tpe::TpeOptimizer::new(tpe::histogram_estimator(), range);
                for ((digits, _), &r) in self.history.iter().zip(&ranks) {
                    // In range by construction, so tell cannot fail.
                    let _ = optim.tell(digits[p] as f64, r);
                }
                match optim.ask(&mut self.rng) {
                    Ok(x) => (x.max(0.0) as usize).min(radix - 1),
                    Err(never) => match never {},
                }
            })
            .collect()
    }

    /// Tells the sampler a suggested point's result (None: failed); only TPE uses it.
    pub fn record(&mut self, sub: &Subspace, index: usize, key: Option<Vec<f64>>) {
        if self.kind == SamplerKind::Tpe {
            self.history.push((sub.digits(index), key));
        }
    }
}
