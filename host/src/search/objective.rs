//! Objectives from metrics and the ranking of results: Olive's `Engine.resolve_objectives` (each metric sub-type
//! with priority > 0), `SearchResults.sort` (goals first, then lexicographic in priority order) and
//! `Footprint._mark_pareto_frontier` (the Pareto front over the candidates that meet their goals).

use std::cmp::Ordering;

/// One objective: a metric sub-type with a priority.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// Olive's joint key `{metric}-{sub_type}`, e.g. `latency-avg`.
    pub name: String,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// 1 is the most important.
    pub priority: u32,
    /// The goal as an absolute threshold, when the metric has one (resolved against the input model).
    pub goal: Option<f64>,
}

/// A metric sub-type as the workflow's evaluator declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSubType {
    /// The metric name.
    pub metric: String,
    /// The sub-type name (e.g. `avg`, `p90`, `perplexity`).
    pub sub_type: String,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// Olive's priority; only sub-types with priority > 0 are objectives.
    pub priority: i64,
    /// The goal resolved to an absolute threshold.
    pub goal: Option<f64>,
}

/// The objectives, ordered by (priority, name) as Olive's `SearchResults` orders them.
pub fn objectives_from_metrics(subs: &[MetricSubType]) -> Vec<Objective> {
    let mut out: Vec<Objective> = subs
        .iter()
        .filter_map(|s| {
            Some(Objective {
                name: format!("{}-{}", s.metric, s.sub_type),
                higher_is_better: s.higher_is_better,
                priority: u32::try_from(s.priority).ok().filter(|&p| p > 0)?,
                goal: s.goal,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    out
}

/// `v` scaled so that larger is better; NaN is the worst value.
fn oriented(o: &Objective, v: f64) -> f64 {
    if v.is_nan() {
        f64::NEG_INFINITY
    } else if o.higher_is_better {
        v
    } else {
        -v
    }
}

/// Whether every objective with a goal meets it (Olive's `SearchResults.meets_goals`).
pub fn meets_goals(objectives: &[Objective], values: &[f64]) -> bool {
    objectives.iter().zip(values).all(|(o, &v)| match o.goal {
        Some(goal) => oriented(o, v) >= oriented(o, goal),
        None => true,
    })
}

/// Orders results best first. Olive's `SearchResults.sort(apply_goals=True)` keeps the results that meet their
/// goals (all of them when none does) and sorts them with `np.lexsort` in priority order; ranking the ones that
/// meet their goals first, then lexicographically, picks the same best. A failed trial (None) is last.
pub fn compare(objectives: &[Objective], a: Option<&[f64]>, b: Option<&[f64]>) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    let goals = meets_goals(objectives, b).cmp(&meets_goals(objectives, a));
    goals.then_with(|| {
        objectives
            .iter()
            .zip(a.iter().zip(b))
            .map(|(o, (&x, &y))| oriented(o, y).total_cmp(&oriented(o, x)))
            .find(|c| c.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

/// Whether `a` dominates `b`: at least as good in every objective and better in one.
fn dominates(objectives: &[Objective], a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (o, (&x, &y)) in objectives.iter().zip(a.iter().zip(b)) {
        let (x, y) = (oriented(o, x), oriented(o, y));
        if x < y {
            return false;
        }
        better |= x > y;
    }
    better
}

/// For each point, whether it is on the Pareto front: it meets its goals and no other such point dominates it.
/// Equal points do not dominate one another, so ties are all on the front (as in Olive).
pub fn pareto_front(objectives: &[Objective], points: &[&[f64]]) -> Vec<bool> {
    let candidate: Vec<bool> = points.iter().map(|p| meets_goals(objectives, p)).collect();
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            candidate[i]
                && !points
                    .iter()
                    .enumerate()
                    .any(|(j, q)| j != i && candidate[j] && dominates(objectives, q, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn obj(name: &str, higher_is_better: bool, priority: u32) -> Objective {
        Objective {
            name: name.into(),
            higher_is_better,
            priority,
            goal: None,
        }
    }

    #[test]
    fn objectives_keep_positive_priorities_in_order() {
        let sub = |metric: &str, sub_type: &str, priority| MetricSubType {
            metric: metric.into(),
            sub_type: sub_type.into(),
            higher_is_better: false,
            priority,
            goal: None,
        };
        let objectives = objectives_from_metrics(&[
            sub("latency", "p90", 2),
            sub("latency", "avg", -1),
            sub("quality", "perplexity", 1),
            sub("size", "bytes", 0),
        ]);
        let names: Vec<&str> = objectives.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["quality-perplexity", "latency-p90"]);
    }

    #[test]
    fn ranking_is_goals_first_then_lexicographic() {
        let mut objectives = vec![obj("acc", true, 1), obj("lat", false, 2)];
        let c = |a: &[f64], b: &[f64], o: &[Objective]| compare(o, Some(a), Some(b));
        assert_eq!(c(&[0.9, 10.0], &[0.8, 1.0], &objectives), Ordering::Less);
        assert_eq!(c(&[0.9, 10.0], &[0.9, 1.0], &objectives), Ordering::Greater);
        assert_eq!(
            compare(&objectives, None, Some(&[0.0, 99.0])),
            Ordering::Greater
        );
        objectives[1].goal = Some(5.0);
        assert_eq!(c(&[0.9, 10.0], &[0.8, 1.0], &objectives), Ordering::Greater);
    }

    /// The O(n^2) front against a plain restatement of the definition, on random sets with many ties (values drawn
    /// from a few levels), in 2 to 4 objectives of mixed directions.
    #[test]
    fn front_matches_brute_force_dominance_with_ties() {
        for seed in 0..200u64 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let dims = rng.random_range(2..5usize);
            let objectives: Vec<Objective> = (0..dims)
                .map(|d| obj(&format!("m{d}"), rng.random_bool(0.5), d as u32 + 1))
                .collect();
            let n = rng.random_range(1..40usize);
            let points: Vec<Vec<f64>> = (0..n)
                .map(|_| {
                    (0..dims)
                        .map(|_| rng.random_range(0..5u32) as f64)
                        .collect()
                })
                .collect();
            let refs: Vec<&[f64]> = points.iter().map(Vec::as_slice).collect();
            let front = pareto_front(&objectives, &refs);
            let sign = |d: usize| {
                if objectives[d].higher_is_better {
                    1.0
                } else {
                    -1.0
                }
            };
            for (i, p) in points.iter().enumerate() {
                let dominated = points.iter().any(|q| {
                    (0..dims).all(|d| sign(d) * q[d] >= sign(d) * p[d])
                        && (0..dims).any(|d| sign(d) * q[d] > sign(d) * p[d])
                });
                assert_eq!(
                    front[i], !dominated,
                    "seed {seed}, point {i}: {p:?} in {points:?}"
                );
            }
            assert!(
                front.iter().any(|&f| f),
                "seed {seed}: a non-empty set has a front"
            );
        }
    }

    #[test]
    fn points_missing_their_goal_are_off_the_front() {
        let mut objectives = vec![obj("acc", true, 1), obj("lat", false, 2)];
        objectives[0].goal = Some(0.5);
        let points: [&[f64]; 3] = [&[0.9, 10.0], &[0.4, 1.0], &[0.6, 5.0]];
        assert_eq!(pareto_front(&objectives, &points), [true, false, true]);
    }
}
