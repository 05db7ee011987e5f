//! Olive's metric schema (olive/evaluator/metric.py, metric_config.py of olive-ai 0.13): a metric has a name, a
//! type, sub types with a priority, a direction and a goal, a per-sub-type `metric_config`, a data config and a
//! `user_config`. [`validate`] checks what olive-host can measure, before anything runs, and turns each metric
//! into a [`Plan`] of typed settings.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::path::Path;

use crate::workflow::data_config::{DataConfigRef, ResolvedData, WorkflowDataConfig};

/// Olive's metric types, plus `memory` (olive-rs: peak resident memory; Olive has no equivalent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Perplexity or multiple-choice accuracy.
    Accuracy,
    /// Milliseconds per run.
    Latency,
    /// Tokens per second.
    Throughput,
    /// Bytes of the model's files.
    SizeOnDisk,
    /// Peak resident set size of loading the model and one forward pass (olive-rs addition).
    Memory,
    /// A user script (Olive runs Python; olive-host refuses it in [`validate`]).
    Custom,
}

impl MetricType {
    /// The sub types olive-host measures for this type.
    pub fn supported_sub_types(self) -> &'static [&'static str] {
        match self {
            MetricType::Accuracy => &["perplexity", "accuracy_score"],
            MetricType::Latency | MetricType::Throughput => &[
                "avg", "max", "min", "p50", "p75", "p90", "p95", "p99", "p999",
            ],
            MetricType::SizeOnDisk => &["bytes"],
            MetricType::Memory => &["peak_rss", "peak_device_memory"],
            MetricType::Custom => &[],
        }
    }

    /// Olive's default `higher_is_better` for a sub type (perplexity: lower is better, see [`SubMetric`]).
    pub fn default_higher_is_better(self, sub_type: &str) -> bool {
        match self {
            MetricType::Accuracy => !matches!(sub_type, "perplexity" | "wer"),
            MetricType::Throughput => true,
            _ => false,
        }
    }
}

/// Olive's goal types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoalType {
    /// The value itself must reach `value`.
    Threshold,
    /// At least `value` better than the input model.
    MinImprovement,
    /// At most `value` worse than the input model.
    MaxDegradation,
    /// At least `value` percent better than the input model.
    PercentMinImprovement,
    /// At most `value` percent worse than the input model.
    PercentMaxDegradation,
}

/// A sub metric's goal (`{"type": "max-degradation", "value": 0.5}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    #[serde(rename = "type")]
    pub kind: GoalType,
    pub value: f64,
}

/// One sub type of a metric. `higher_is_better` left out takes Olive's default for the type, except that
/// `perplexity` defaults to lower-is-better (Olive 0.13 defaults every accuracy sub type but `wer` to higher,
/// and its perplexity examples set `higher_is_better: false` by hand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubMetric {
    pub name: String,
    /// Per-type settings, checked by [`validate`] (see the module doc of [`crate::evaluate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_config: Option<Map<String, Value>>,
    /// Rank among the objectives (1 first); -1 (the default) or 0: reported only.
    #[serde(default = "reported_only")]
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higher_is_better: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
}

fn reported_only() -> i64 {
    -1
}

/// A metric as a workflow's `evaluators.<name>.metrics[i]` gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// Olive's metric backend; only `torch_metrics` (the default) has a meaning here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default)]
    pub sub_types: Vec<SubMetric>,
    /// Olive's user_config (scripts, inference settings): only `io_bind` and `shared_kv_buffer` (no effect on
    /// CPU) are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_config: Option<Map<String, Value>>,
    /// The name of a workflow data config, or one inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_config: Option<DataConfigRef>,
}

impl Metric {
    /// Whether higher is better for `sub`, explicit or by default.
    pub fn higher_is_better(&self, sub: &SubMetric) -> bool {
        sub.higher_is_better
            .unwrap_or_else(|| self.kind.default_higher_is_better(&sub.name))
    }
}

/// What a latency or throughput run times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMode {
    /// One sample = one decode step (one new token after the prompt, with the KV cache).
    Decode,
    /// One sample = the prompt of `prompt_length` tokens run from an empty cache to the first token.
    Prefill,
}

/// `metric_config` of latency and throughput: Olive's three counts plus what an LLM needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Runs (decode steps or prefills) before timing starts (Olive: 10).
    pub warmup_num: usize,
    /// Timed runs (Olive: 20).
    pub repeat_test_num: usize,
    /// Seconds slept after each run (Olive: 0); not timed.
    pub sleep_num: f64,
    /// olive-rs: decode (default) or prefill.
    pub mode: LatencyMode,
    /// olive-rs: prompt tokens, from the metric's data config or the project's evaluation text (default 128).
    pub prompt_length: usize,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            warmup_num: 10,
            repeat_test_num: 20,
            sleep_num: 0.0,
            mode: LatencyMode::Decode,
            prompt_length: 128,
        }
    }
}

/// `metric_config` of `perplexity`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerplexityConfig {
    /// Tokens per window (default: the data config's max_seq_len, else 512).
    pub window: Option<usize>,
    /// Score at most this many windows.
    pub max_windows: Option<usize>,
}

/// `metric_config` of `accuracy_score` (multiple choice).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChoiceConfig {
    /// Rank choices by log-likelihood per byte of the choice text (lm-eval's `acc_norm`) instead of the sum.
    pub length_normalized: bool,
    /// Score at most this many questions (the first ones).
    pub max_samples: Option<usize>,
}

/// `metric_config` of `memory` / `peak_rss` and `peak_device_memory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Tokens of the one forward pass after loading (default 128).
    pub prompt_length: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { prompt_length: 128 }
    }
}

/// What one metric measures, with its settings checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Perplexity(PerplexityConfig),
    Choice(ChoiceConfig),
    /// Latency (`throughput: false`) or throughput, from the same timed samples.
    Timing {
        config: LatencyConfig,
        throughput: bool,
    },
    SizeOnDisk,
    Memory(MemoryConfig),
}

/// One sub type to report.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSub {
    pub name: String,
    pub priority: i64,
    pub higher_is_better: bool,
}

/// A validated metric: what to run, over which data, and the sub types to report. Accuracy metrics with both
/// perplexity and accuracy_score become two plans of the same metric name.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub metric: String,
    pub measure: Measure,
    pub data: Option<ResolvedData>,
    pub subs: Vec<PlannedSub>,
}

/// Checks every metric against what olive-host measures and resolves its data config by name among
/// `data_configs` (relative data files from `base`); the error names the metric, the sub type and the key.
/// Call before running anything.
pub fn validate(
    metrics: &[Metric],
    data_configs: &[WorkflowDataConfig],
    base: Option<&Path>,
) -> anyhow::Result<Vec<Plan>> {
    let mut names = BTreeMap::new();
    let mut plans = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let at = format!("metrics[{i}] ({:?})", m.name);
        if let Some(j) = names.insert(m.name.clone(), i) {
            bail!("{at}: the name is also used by metrics[{j}]; metric names must be unique");
        }
        plans.extend(plan_metric(m, data_configs, base).with_context(|| at.clone())?);
    }
    Ok(plans)
}

fn plan_metric(
    m: &Metric,
    data_configs: &[WorkflowDataConfig],
    base: Option<&Path>,
) -> anyhow::Result<Vec<Plan>> {
    if m.kind == MetricType::Custom {
        bail!("type \"custom\" runs a user Python script (user_config.evaluate_func / metric_func), which \
               olive-host does not execute; use accuracy (perplexity, accuracy_score), latency, throughput, \
               size_on_disk or memory");
    }
    if let Some(b) = &m.backend {
        if b != "torch_metrics" {
            bail!("backend {b:?}: only \"torch_metrics\" (Olive's default) is supported");
        }
    }
    if let Some(uc) = &m.user_config {
        for (k, v) in uc {
            match k.as_str() {
                "io_bind" | "shared_kv_buffer" if v.is_boolean() || v.is_null() => {}
                _ if v.is_null() => {}
                _ => bail!(
                    "user_config.{k}: not supported (olive-host runs no user scripts or inference settings; \
                     accepted: io_bind, shared_kv_buffer)"
                ),
            }
        }
    }
    if m.sub_types.is_empty() {
        bail!(
            "sub_types is empty; give at least one of {:?}",
            m.kind.supported_sub_types()
        );
    }
    let data_config = match &m.data_config {
        None => None,
        Some(r) => Some(r.resolve(data_configs, base).context("data_config")?),
    };
    if m.kind == MetricType::SizeOnDisk && data_config.is_some() {
        bail!("data_config: size_on_disk reads no data; remove it");
    }
    if m.kind == MetricType::Memory && data_config.is_some() {
        bail!(
            "data_config: memory runs its forward pass on the project's evaluation text; remove it"
        );
    }
    // (plan, whether its settings came from an explicit metric_config)
    let mut by_measure: Vec<(Plan, bool)> = Vec::new();
    for (j, sub) in m.sub_types.iter().enumerate() {
        let at = format!("sub_types[{j}] ({:?})", sub.name);
        let measure = plan_sub(m.kind, sub).with_context(|| at.clone())?;
        let higher_is_better = m.higher_is_better(sub);
        check_goal(sub, higher_is_better).with_context(|| at.clone())?;
        if by_measure
            .iter()
            .any(|(p, _)| p.subs.iter().any(|s| s.name == sub.name))
        {
            bail!("{at}: listed twice");
        }
        let planned = PlannedSub {
            name: sub.name.clone(),
            priority: sub.priority,
            higher_is_better,
        };
        let explicit = sub.metric_config.is_some();
        let kind = std::mem::discriminant(&measure);
        match by_measure
            .iter_mut()
            .find(|(p, _)| std::mem::discriminant(&p.measure) == kind)
        {
            // Olive runs a latency metric once, with the first metric_config given; a later, different one
            // would be silently ignored there, so it is an error here
            Some((p, had)) => {
                if explicit && *had && p.measure != measure {
                    bail!(
                        "{at}: metric_config differs from an earlier sub type's; one metric runs one \
                         measurement: split it into two metrics"
                    );
                }
                if explicit && !*had {
                    p.measure = measure;
                    *had = true;
                }
                p.subs.push(planned);
            }
            None => by_measure.push((
                Plan {
                    metric: m.name.clone(),
                    measure,
                    data: data_config.clone(),
                    subs: vec![planned],
                },
                explicit,
            )),
        }
    }
    Ok(by_measure.into_iter().map(|(p, _)| p).collect())
}

fn typed<T: serde::de::DeserializeOwned + Default>(
    config: &Option<Map<String, Value>>,
) -> anyhow::Result<T> {
    match config {
        None => Ok(T::default()),
        Some(map) => serde_json::from_value(Value::Object(map.clone()))
            .map_err(|e| anyhow::anyhow!("metric_config: {e}")),
    }
}

/// Olive's accuracy metric_config holds torchmetrics arguments (Accuracy: task, num_classes, ...; Perplexity:
/// ignore_index), which describe classifier outputs or label padding; multiple-choice scoring and perplexity
/// over text have neither, so they are accepted and dropped, except a top_k other than 1 (a different metric).
fn without_torchmetrics(
    config: &Option<Map<String, Value>>,
    sub: &str,
) -> anyhow::Result<Option<Map<String, Value>>> {
    const TORCHMETRICS: &[&str] = &[
        "task",
        "num_classes",
        "num_labels",
        "threshold",
        "average",
        "multidim_average",
        "top_k",
        "ignore_index",
        "validate_args",
        "kwargs",
    ];
    let Some(map) = config else { return Ok(None) };
    if let Some(k) = map
        .get("top_k")
        .filter(|v| !v.is_null() && v.as_u64() != Some(1))
    {
        bail!("metric_config.top_k {k}: only top-1 accuracy is measured");
    }
    let mut kept = map.clone();
    kept.retain(|k, _| !TORCHMETRICS.contains(&k.as_str()));
    if kept.len() != map.len() {
        tracing::debug!("{sub}: torchmetrics arguments in metric_config have no effect on an LLM and are dropped");
    }
    Ok(Some(kept))
}

fn plan_sub(kind: MetricType, sub: &SubMetric) -> anyhow::Result<Measure> {
    let supported = kind.supported_sub_types();
    if !supported.contains(&sub.name.as_str()) {
        let olive_has = matches!(
            sub.name.as_str(),
            "f1_score"
                | "precision"
                | "recall"
                | "auroc"
                | "wer"
                | "rtfx"
                | "exact_match"
                | "relaxed_accuracy"
                | "word_sort_ratio"
        );
        let why = if olive_has && kind == MetricType::Accuracy {
            " (Olive computes it on classifier or speech/vision outputs; olive-host evaluates causal LMs)"
        } else {
            ""
        };
        bail!(
            "sub type {:?} is not supported for metric type {}{why}; supported: {}",
            sub.name,
            type_name(kind),
            supported.join(", ")
        );
    }
    Ok(match (kind, sub.name.as_str()) {
        (MetricType::Accuracy, "perplexity") => Measure::Perplexity(typed(&without_torchmetrics(
            &sub.metric_config,
            &sub.name,
        )?)?),
        (MetricType::Accuracy, _) => Measure::Choice(typed(&without_torchmetrics(
            &sub.metric_config,
            &sub.name,
        )?)?),
        (MetricType::Latency | MetricType::Throughput, _) => {
            let config: LatencyConfig = typed(&sub.metric_config)?;
            if config.repeat_test_num == 0 {
                bail!("metric_config.repeat_test_num: must be at least 1");
            }
            if config.prompt_length == 0 {
                bail!("metric_config.prompt_length: must be at least 1");
            }
            if !(config.sleep_num >= 0.0 && config.sleep_num.is_finite()) {
                bail!("metric_config.sleep_num: must be a nonnegative number of seconds");
            }
            Measure::Timing {
                config,
                throughput: kind == MetricType::Throughput,
            }
        }
        (MetricType::SizeOnDisk, _) => {
            typed::<Empty>(&sub.metric_config)?;
            Measure::SizeOnDisk
        }
        (MetricType::Memory, _) => {
            let config: MemoryConfig = typed(&sub.metric_config)?;
            if config.prompt_length == 0 {
                bail!("metric_config.prompt_length: must be at least 1");
            }
            Measure::Memory(config)
        }
        (MetricType::Custom, _) => bail!("custom metrics have no sub types olive-host measures"),
    })
}

/// size_on_disk takes no settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn type_name(kind: MetricType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Olive's checks of a goal: nonnegative deviations, percentages within the range that can be met.
fn check_goal(sub: &SubMetric, higher_is_better: bool) -> anyhow::Result<()> {
    let Some(goal) = sub.goal else { return Ok(()) };
    if !goal.value.is_finite() {
        bail!("goal.value: must be a finite number");
    }
    use GoalType::*;
    if matches!(
        goal.kind,
        MinImprovement | MaxDegradation | PercentMinImprovement | PercentMaxDegradation
    ) && goal.value < 0.0
    {
        bail!(
            "goal.value {}: must be nonnegative for {:?}",
            goal.value,
            goal.kind
        );
    }
    let upper = match (goal.kind, higher_is_better) {
        (PercentMinImprovement, false) | (PercentMaxDegradation, true) => Some(100.0),
        (PercentMinImprovement, true) | (PercentMaxDegradation, false) => Some(f64::INFINITY),
        _ => None,
    };
    if let Some(upper) = upper {
        if !(0.0 < goal.value && goal.value < upper) {
            bail!(
                "goal.value {}: a {} goal with higher_is_better={higher_is_better} must lie in (0, {upper})",
                goal.value,
                type_name_goal(goal.kind)
            );
        }
    }
    if sub.priority <= 0 {
        tracing::warn!(
            "sub type {:?} has a goal but priority {} (reported only): Olive ignores goals of reported-only sub \
             types, and so does olive-host",
            sub.name,
            sub.priority
        );
    }
    Ok(())
}

fn type_name_goal(kind: GoalType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics(v: Value) -> Vec<Metric> {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> String {
        match serde_json::from_value::<Vec<Metric>>(v) {
            Err(e) => e.to_string(),
            Ok(m) => format!("{:#}", validate(&m, &[], None).unwrap_err()),
        }
    }

    #[test]
    fn olive_metrics_parse_with_defaults() {
        let m = metrics(json!([
            {"name": "acc", "type": "accuracy", "sub_types": [
                {"name": "perplexity", "priority": 1, "goal": {"type": "max-degradation", "value": 0.5}},
                {"name": "accuracy_score", "metric_config": {"length_normalized": true, "task": "multiclass", "num_classes": 4, "top_k": 1}}]},
            {"name": "lat", "type": "latency", "sub_types": [
                {"name": "avg", "priority": 2, "metric_config": {"warmup_num": 1, "repeat_test_num": 3}},
                {"name": "p90"}]},
            {"name": "tp", "type": "throughput", "sub_types": [{"name": "avg"}]},
            {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes"}]},
            {"name": "mem", "type": "memory", "sub_types": [{"name": "peak_rss"}]}
        ]));
        let plans = validate(&m, &[], None).unwrap();
        assert_eq!(
            plans.len(),
            6,
            "accuracy splits into perplexity and accuracy_score"
        );
        assert_eq!(
            plans[0].subs[0],
            PlannedSub {
                name: "perplexity".into(),
                priority: 1,
                higher_is_better: false
            }
        );
        assert!(
            plans[1].subs[0].higher_is_better,
            "accuracy_score: higher is better"
        );
        assert_eq!(plans[1].subs[0].priority, -1);
        assert_eq!(
            plans[1].measure,
            Measure::Choice(ChoiceConfig {
                length_normalized: true,
                max_samples: None
            })
        );
        // the latency metric runs once, with the first metric_config, for both sub types
        let Measure::Timing {
            config,
            throughput: false,
        } = &plans[2].measure
        else {
            panic!("{:?}", plans[2])
        };
        assert_eq!(
            (config.warmup_num, config.repeat_test_num, config.mode),
            (1, 3, LatencyMode::Decode)
        );
        assert_eq!(plans[2].subs.len(), 2);
        assert!(!plans[2].subs[1].higher_is_better);
        let Measure::Timing {
            config,
            throughput: true,
        } = &plans[3].measure
        else {
            panic!("{:?}", plans[3])
        };
        assert_eq!(*config, LatencyConfig::default());
        assert!(
            plans[3].subs[0].higher_is_better,
            "throughput: higher is better"
        );
        assert_eq!(
            plans[5].measure,
            Measure::Memory(MemoryConfig { prompt_length: 128 })
        );
    }

    #[test]
    fn unsupported_metrics_are_refused_naming_the_metric() {
        let cases = [
            (json!([{"name": "f1", "type": "accuracy", "sub_types": [{"name": "f1_score"}]}]),
             "metrics[0] (\"f1\"): sub_types[0] (\"f1_score\"): sub type \"f1_score\" is not supported for metric type accuracy (Olive computes"),
            (json!([{"name": "c", "type": "custom", "sub_types": [{"name": "x"}],
                     "user_config": {"user_script": "u.py", "evaluate_func": "f"}}]),
             "metrics[0] (\"c\"): type \"custom\" runs a user Python script"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "p42"}]}]),
             "sub type \"p42\" is not supported for metric type latency; supported: avg, max"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg", "metric_config": {"warmup": 1}}]}]),
             "sub_types[0] (\"avg\"): metric_config: unknown field `warmup`"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg"}], "user_config": {"user_script": "a.py"}}]),
             "user_config.user_script: not supported"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg"}], "backend": "huggingface_metrics"}]),
             "backend \"huggingface_metrics\""),
            (json!([{"name": "l", "type": "latency", "sub_types": []}]), "sub_types is empty"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg"}], "data_config": "nope"}]),
             "data_config: data config \"nope\" is not among the workflow's data_configs (none defined)"),
            (json!([{"name": "a", "type": "latency", "sub_types": [{"name": "avg"}]},
                    {"name": "a", "type": "latency", "sub_types": [{"name": "avg"}]}]), "metrics[1] (\"a\"): the name is also used by metrics[0]"),
            (json!([{"name": "l", "type": "latency", "sub_types": [
                {"name": "avg", "metric_config": {"mode": "prefill"}}, {"name": "p90", "metric_config": {"mode": "decode"}}]}]),
             "sub_types[1] (\"p90\"): metric_config differs"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg"}, {"name": "avg"}]}]), "listed twice"),
            (json!([{"name": "a", "type": "accuracy", "sub_types": [
                {"name": "accuracy_score", "metric_config": {"task": "multiclass", "top_k": 5}}]}]),
             "metric_config.top_k 5: only top-1"),
            (json!([{"name": "l", "type": "lat", "sub_types": []}]), "unknown variant `lat`"),
            (json!([{"name": "l", "type": "latency", "sub_types": [], "extra": 1}]), "unknown field `extra`"),
            (json!([{"name": "l", "type": "latency", "sub_types": [{"name": "avg", "goal": {"type": "within", "value": 1}}]}]),
             "unknown variant `within`"),
        ];
        for (v, want) in cases {
            let got = err(v);
            assert!(got.contains(want), "want {want:?} in {got:?}");
        }
    }

    #[test]
    fn goals_are_checked_as_olive_checks_them() {
        let goal = |t: &str, value: f64, hib: bool| {
            err(json!([{"name": "m", "type": "latency",
                        "sub_types": [{"name": "avg", "priority": 1, "higher_is_better": hib,
                                       "goal": {"type": t, "value": value}}]}]))
        };
        let ok = |t: &str, value: f64, hib: bool| {
            let m = metrics(json!([{"name": "m", "type": "latency",
                "sub_types": [{"name": "avg", "priority": 1, "higher_is_better": hib, "goal": {"type": t, "value": value}}]}]));
            validate(&m, &[], None).is_ok()
        };
        assert!(goal("max-degradation", -1.0, false).contains("must be nonnegative"));
        // percent ranges (olive/evaluator/metric.py validate_goal)
        assert!(goal("percent-min-improvement", 100.0, false).contains("must lie in (0, 100)"));
        assert!(ok("percent-min-improvement", 99.0, false));
        assert!(ok("percent-min-improvement", 250.0, true));
        assert!(goal("percent-max-degradation", 100.0, true).contains("(0, 100)"));
        assert!(ok("percent-max-degradation", 250.0, false));
        assert!(goal("percent-max-degradation", 0.0, false).contains("(0, inf)"));
        assert!(ok("threshold", -5.0, true));
    }
}
