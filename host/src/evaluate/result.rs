//! Olive's evaluation result (olive/evaluator/metric_result.py: `{"<metric>-<sub_type>": {value, priority,
//! higher_is_better}}`) and its goals (olive/engine/engine.py `resolve_goals`: a goal against the input model
//! becomes a threshold; olive/search/search_results.py `meets_goals`: a candidate meets it when
//! `m·value ≥ m·threshold`, m = +1 if higher is better else −1; only sub types with priority > 0 count).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

use super::metric::{GoalType, Metric};

/// Olive's key delimiter.
pub const DELIMITER: &str = "-";

/// `<metric>-<sub_type>`.
pub fn joint_key(metric: &str, sub_type: &str) -> String {
    format!("{metric}{DELIMITER}{sub_type}")
}

/// One measured sub type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubMetricResult {
    /// Written as an integer when it is one (bytes), as Olive's `Union[float, int]` prints it.
    #[serde(serialize_with = "integral_or_float")]
    pub value: f64,
    pub priority: i64,
    pub higher_is_better: bool,
}

fn integral_or_float<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Every measured sub type of a model, keyed `<metric>-<sub_type>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MetricResult(pub BTreeMap<String, SubMetricResult>);

impl MetricResult {
    /// The value of each key, as Olive prints a result.
    pub fn values(&self) -> BTreeMap<&str, f64> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.value)).collect()
    }
}

/// Thresholds keyed `<metric>-<sub_type>`, one per sub type with priority > 0 and a goal.
pub type Goals = BTreeMap<String, f64>;

/// Olive's `resolve_goals`: the threshold of each goal, computed from `baseline` (the input model's result)
/// for the goals other than `threshold`. `baseline` may be None only when every goal is a threshold.
pub fn resolve_goals(metrics: &[Metric], baseline: Option<&MetricResult>) -> anyhow::Result<Goals> {
    let mut goals = Goals::new();
    for m in metrics {
        for sub in m.sub_types.iter().filter(|s| s.priority > 0) {
            let Some(goal) = sub.goal else { continue };
            let key = joint_key(&m.name, &sub.name);
            let multiplier = if m.higher_is_better(sub) { 1.0 } else { -1.0 };
            let base = || -> anyhow::Result<f64> {
                let b = baseline.ok_or_else(|| {
                    anyhow!("{key}: a {:?} goal is relative to the input model, whose result is missing; \
                             evaluate the input model first", goal.kind)
                })?;
                b.0.get(&key)
                    .map(|r| r.value)
                    .ok_or_else(|| anyhow!("{key}: the input model's result has no such key"))
            };
            let threshold = match goal.kind {
                GoalType::Threshold => goal.value,
                GoalType::MaxDegradation => base()? - multiplier * goal.value,
                GoalType::MinImprovement => base()? + multiplier * goal.value,
                GoalType::PercentMaxDegradation => {
                    base()? * (1.0 - multiplier * goal.value / 100.0)
                }
                GoalType::PercentMinImprovement => {
                    base()? * (1.0 + multiplier * goal.value / 100.0)
                }
            };
            goals.insert(key, threshold);
        }
    }
    Ok(goals)
}

/// The keys of `goals` that `result` misses (empty: every goal met). A key absent from `result` is skipped,
/// as Olive skips it.
pub fn unmet_goals(result: &MetricResult, goals: &Goals) -> Vec<String> {
    goals
        .iter()
        .filter(|(key, &threshold)| match result.0.get(*key) {
            Some(r) => {
                let m = if r.higher_is_better { 1.0 } else { -1.0 };
                m * r.value < m * threshold
            }
            None => false,
        })
        .map(|(key, _)| key.clone())
        .collect()
}

/// Whether `result` meets every goal (Olive's `meets_goals`).
pub fn meets_goals(result: &MetricResult, goals: &Goals) -> bool {
    unmet_goals(result, goals).is_empty()
}

/// Olive's rounding of reported values: 5 decimals.
pub fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// Adds `value` under `<metric>-<sub>`; a key already there is an error (two metrics of one name).
pub fn insert(
    result: &mut MetricResult,
    metric: &str,
    sub: &super::metric::PlannedSub,
    value: f64,
) -> anyhow::Result<()> {
    let key = joint_key(metric, &sub.name);
    if result.0.contains_key(&key) {
        bail!("{key} was measured twice");
    }
    result.0.insert(
        key,
        SubMetricResult {
            value,
            priority: sub.priority,
            higher_is_better: sub.higher_is_better,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(pairs: &[(&str, f64, bool)]) -> MetricResult {
        MetricResult(
            pairs
                .iter()
                .map(|&(k, value, higher_is_better)| {
                    (
                        k.to_string(),
                        SubMetricResult {
                            value,
                            priority: 1,
                            higher_is_better,
                        },
                    )
                })
                .collect(),
        )
    }

    fn metrics(goal_type: &str, value: f64) -> Vec<Metric> {
        serde_json::from_value(json!([
            {"name": "acc", "type": "accuracy", "sub_types": [
                {"name": "accuracy_score", "priority": 1, "goal": {"type": goal_type, "value": value}},
                {"name": "perplexity", "priority": 2, "goal": {"type": goal_type, "value": value}},
                {"name": "x", "goal": {"type": "threshold", "value": 1e9}}]}
        ]))
        .unwrap()
    }

    #[test]
    fn goals_resolve_as_olive_engine_resolves_them() {
        // baseline: accuracy 0.8 (higher better), perplexity 20 (lower better)
        let base = result(&[
            ("acc-accuracy_score", 0.8, true),
            ("acc-perplexity", 20.0, false),
        ]);
        let cases = [
            ("threshold", 0.5, 0.5, 0.5),
            ("max-degradation", 0.1, 0.8 - 0.1, 20.0 + 0.1),
            ("min-improvement", 0.1, 0.8 + 0.1, 20.0 - 0.1),
            ("percent-max-degradation", 10.0, 0.8 * 0.9, 20.0 * 1.1),
            ("percent-min-improvement", 10.0, 0.8 * 1.1, 20.0 * 0.9),
        ];
        for (t, v, acc, ppl) in cases {
            let g = resolve_goals(&metrics(t, v), Some(&base)).unwrap();
            assert_eq!(
                g.len(),
                2,
                "{t}: the reported-only sub type's goal is ignored"
            );
            assert!((g["acc-accuracy_score"] - acc).abs() < 1e-12, "{t}: {g:?}");
            assert!((g["acc-perplexity"] - ppl).abs() < 1e-12, "{t}: {g:?}");
        }
        assert!(resolve_goals(&metrics("threshold", 1.0), None).is_ok());
        let e = resolve_goals(&metrics("max-degradation", 1.0), None).unwrap_err();
        assert!(
            e.to_string().contains("evaluate the input model first"),
            "{e}"
        );
    }

    #[test]
    fn a_candidate_meets_goals_in_each_direction() {
        let base = result(&[
            ("acc-accuracy_score", 0.8, true),
            ("acc-perplexity", 20.0, false),
        ]);
        let goals = resolve_goals(&metrics("percent-max-degradation", 10.0), Some(&base)).unwrap();
        // thresholds: accuracy >= 0.72, perplexity <= 22
        let at = |acc, ppl| {
            result(&[
                ("acc-accuracy_score", acc, true),
                ("acc-perplexity", ppl, false),
            ])
        };
        assert!(
            meets_goals(
                &at(goals["acc-accuracy_score"], goals["acc-perplexity"]),
                &goals
            ),
            "equal to the threshold meets it"
        );
        assert!(meets_goals(&at(0.9, 15.0), &goals));
        assert_eq!(unmet_goals(&at(0.7, 22.0), &goals), ["acc-accuracy_score"]);
        assert_eq!(unmet_goals(&at(0.75, 22.5), &goals), ["acc-perplexity"]);
        // a key the candidate lacks is skipped, as Olive skips it
        assert!(meets_goals(
            &result(&[("acc-accuracy_score", 0.75, true)]),
            &goals
        ));
    }

    #[test]
    fn results_serialize_in_olive_form() {
        let r = result(&[("lat-avg", 1.5, false)]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            json!({"lat-avg": {"value": 1.5, "priority": 1, "higher_is_better": false}})
        );
        assert_eq!(serde_json::from_value::<MetricResult>(v).unwrap(), r);
        let bytes = result(&[("size-bytes", 540199654.0, false)]);
        let text = serde_json::to_string(&bytes).unwrap();
        assert!(text.contains(r#""value":540199654,"#), "{text}");
        assert_eq!(serde_json::from_str::<MetricResult>(&text).unwrap(), bytes);
        assert_eq!(r.values()[joint_key("lat", "avg").as_str()], 1.5);
        assert_eq!(round5(1.234_567_8), 1.23457);
    }
}
