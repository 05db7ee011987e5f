//! The search strategy (olive/search/search_strategy.py): `joint` searches one space over all passes;
//! `pass-by-pass` searches one pass's space at a time, fixes its best point and goes on to the next pass; once the
//! last pass's space is searched it steps back and searches the later passes again under the previous pass's next
//! best point, and so on, a depth-first walk over the passes' results in rank order (Olive's `_step_down` /
//! `_step_up`), bounded by each space's `max_samples`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::Value;

use super::config::{ExecutionOrder, SearchConfig};
use super::objective::{compare, meets_goals, Objective};
use super::sampler::Sampler;
use super::space::{PassPoint, SearchSpace, Subspace};

/// One point to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// Identifies the trial for [`Search::record`].
    pub id: usize,
    /// The chosen values of the passes in `configs` (earlier passes' at their best in pass-by-pass).
    pub point: Vec<PassPoint>,
    /// The passes to run, in order, each with its resolved config (pass-by-pass: up to the pass searched).
    pub configs: Vec<(String, Value)>,
}

/// What running a trial gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The objective values, in the order of [`Search::objectives`].
    Metrics(Vec<f64>),
    /// A pass or the evaluation failed.
    Failed,
}

impl Outcome {
    /// The objectives' values from an evaluation keyed `{metric}-{sub_type}`; a missing one is NaN, ranked worst
    /// (Olive fills a missing objective with the worst value).
    pub fn from_values(objectives: &[Objective], values: &BTreeMap<&str, f64>) -> Self {
        Outcome::Metrics(
            objectives
                .iter()
                .map(|o| values.get(o.name.as_str()).copied().unwrap_or(f64::NAN))
                .collect(),
        )
    }
}

/// A trial and its outcome, once recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialResult {
    /// The trial.
    pub trial: Trial,
    /// None until recorded.
    pub outcome: Option<Outcome>,
}

/// One space being searched: a pass (or all passes, joint) under fixed earlier passes.
struct Stage {
    /// Range of passes of this space.
    passes: std::ops::Range<usize>,
    sub: Subspace,
    sampler: Sampler,
    /// The earlier passes' points and configs this stage runs on.
    prefix: Vec<(PassPoint, Value)>,
    /// (trial id, subspace index) of this stage's trials.
    trials: Vec<(usize, usize)>,
    /// Trials already taken as the base of the next stage.
    taken: usize,
}

/// A search over a [`SearchSpace`]; ask [`Search::next`] for a trial, run it, [`Search::record`] its outcome.
pub struct Search {
    space: SearchSpace,
    objectives: Vec<Objective>,
    config: SearchConfig,
    stack: Vec<Stage>,
    results: Vec<TrialResult>,
    started: Option<Instant>,
}

impl Search {
    /// A search of `space` ranking results by `objectives` (best found by Olive's rule, see [`compare`]).
    pub fn new(
        space: SearchSpace,
        objectives: Vec<Objective>,
        config: SearchConfig,
    ) -> Result<Self> {
        let mut search = Self {
            space,
            objectives,
            config,
            stack: Vec::new(),
            results: Vec::new(),
            started: None,
        };
        if config.execution_order == ExecutionOrder::PassByPass {
            // Each pass's space is checked now rather than when the search reaches it.
            for pass in 0..search.space.passes().len() {
                search.space.subspace(pass..pass + 1)?;
            }
        }
        let first = search.stage(0, Vec::new())?;
        search.stack.push(first);
        Ok(search)
    }

    fn stage(&self, first_pass: usize, prefix: Vec<(PassPoint, Value)>) -> Result<Stage> {
        let passes = match self.config.execution_order {
            ExecutionOrder::Joint => 0..self.space.passes().len(),
            ExecutionOrder::PassByPass => {
                first_pass..(first_pass + 1).min(self.space.passes().len())
            }
        };
        let sub = self.space.subspace(passes.clone())?;
        let sampler = Sampler::new(self.config.sampler, &sub, self.config.seed);
        Ok(Stage {
            passes,
            sub,
            sampler,
            prefix,
            trials: Vec::new(),
            taken: 0,
        })
    }

    /// The objectives, in the order [`Outcome::Metrics`] gives their values.
    pub fn objectives(&self) -> &[Objective] {
        &self.objectives
    }

    /// The space searched.
    pub fn space(&self) -> &SearchSpace {
        &self.space
    }

    /// Every trial so far, in order, with its outcome once recorded.
    pub fn results(&self) -> &[TrialResult] {
        &self.results
    }

    fn key(&self, id: usize) -> Option<&[f64]> {
        match self.results.get(id)?.outcome.as_ref()? {
            Outcome::Metrics(m) => Some(m),
            Outcome::Failed => None,
        }
    }

    /// The next trial, or None when the search is done. Every earlier trial must be recorded first when this
    /// would move on to the next pass (pass-by-pass needs their results to pick the best).
    pub fn next(&mut self) -> Result<Option<Trial>> {
        if self.should_stop() {
            self.stack.clear();
        }
        self.started.get_or_insert_with(Instant::now);
        while let Some(top) = self.stack.len().checked_sub(1) {
            let cap = self.config.max_samples;
            let stage = &mut self.stack[top];
            if cap == 0 || stage.sampler.suggested() < cap {
                let objectives = &self.objectives;
                let rank = |a: &[f64], b: &[f64]| compare(objectives, Some(a), Some(b));
                if let Some(index) = stage.sampler.suggest(&stage.sub, &rank) {
                    return Ok(Some(self.trial(top, index)));
                }
            }
            let stage = &self.stack[top];
            if let Some((id, _)) = stage
                .trials
                .iter()
                .find(|(id, _)| self.results[*id].outcome.is_none())
            {
                bail!(
                    "trial {id} has no recorded outcome; record it before asking for the next pass"
                );
            }
            self.step()?;
        }
        Ok(None)
    }

    /// Olive's joint-only stop criteria, checked after each trial (so at least one runs).
    fn should_stop(&self) -> bool {
        let c = &self.config;
        let Some(last) = self.results.last() else {
            return false;
        };
        if c.execution_order != ExecutionOrder::Joint {
            return false;
        }
        let goals_met = match &last.outcome {
            Some(Outcome::Metrics(m)) => meets_goals(&self.objectives, m),
            _ => false,
        };
        (c.stop_when_goals_met && goals_met)
            || c.max_iter.is_some_and(|n| self.results.len() >= n)
            || c.max_time
                .zip(self.started)
                .is_some_and(|(limit, t)| t.elapsed() > limit)
    }

    /// Moves on from an exhausted stage to the next pass under its next best trial; the last pass's stage, or one
    /// with no trial left to build on, is dropped and its parent's next best is tried (Olive's `_step_down` /
    /// `_step_up`).
    fn step(&mut self) -> Result<()> {
        while let Some(top) = self.stack.len().checked_sub(1) {
            let stage = &self.stack[top];
            let mut ranked: Vec<usize> = stage
                .trials
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| self.key(*id).is_some())
                .collect();
            ranked.sort_by(|a, b| compare(&self.objectives, self.key(*a), self.key(*b)));
            let next_pass = stage.passes.end;
            match ranked.get(stage.taken) {
                Some(&id) if next_pass < self.space.passes().len() => {
                    self.stack[top].taken += 1;
                    let trial = &self.results[id].trial;
                    let prefix: Vec<(PassPoint, Value)> = trial
                        .point
                        .iter()
                        .cloned()
                        .zip(trial.configs.iter().map(|(_, c)| c.clone()))
                        .collect();
                    let next = self.stage(next_pass, prefix)?;
                    self.stack.push(next);
                    return Ok(());
                }
                _ => {
                    self.stack.pop();
                }
            }
        }
        Ok(())
    }

    fn trial(&mut self, top: usize, index: usize) -> Trial {
        let id = self.results.len();
        let stage = &mut self.stack[top];
        stage.trials.push((id, index));
        // A suggested index decodes (samplers only suggest valid ones).
        let values = stage.sub.decode(index).unwrap_or_default();
        let own = stage
            .sub
            .point(self.space.passes(), stage.passes.clone(), &values);
        let mut point: Vec<PassPoint> = stage.prefix.iter().map(|(p, _)| p.clone()).collect();
        let mut configs: Vec<(String, Value)> = stage
            .prefix
            .iter()
            .map(|(p, c)| (p.pass.clone(), c.clone()))
            .collect();
        for p in own {
            let config = self.space.pass_config(&p).unwrap_or(Value::Null);
            configs.push((p.pass.clone(), config));
            point.push(p);
        }
        let trial = Trial { id, point, configs };
        self.results.push(TrialResult {
            trial: trial.clone(),
            outcome: None,
        });
        trial
    }

    /// Records a trial's outcome; the metrics must have one value per objective.
    pub fn record(&mut self, trial_id: usize, outcome: Outcome) -> Result<()> {
        let Some(result) = self.results.get_mut(trial_id) else {
            bail!(
                "trial {trial_id}: no such trial ({} so far)",
                self.results.len()
            );
        };
        if result.outcome.is_some() {
            bail!("trial {trial_id}: its outcome is already recorded");
        }
        if let Outcome::Metrics(m) = &outcome {
            if m.len() != self.objectives.len() {
                bail!(
                    "trial {trial_id}: {} metric values, expected one per objective ({})",
                    m.len(),
                    self.objectives.len()
                );
            }
        }
        let key = match &outcome {
            Outcome::Metrics(m) => Some(m.clone()),
            Outcome::Failed => None,
        };
        result.outcome = Some(outcome);
        for stage in &mut self.stack {
            if let Some(&(_, index)) = stage.trials.iter().find(|(id, _)| *id == trial_id) {
                stage.sampler.record(&stage.sub, index, key);
                break;
            }
        }
        Ok(())
    }
}
