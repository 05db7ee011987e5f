//! The workflow's evaluator: the engine's `evaluator` (a name in `evaluators`, or inline) as Olive's metrics,
//! checked against what olive-host measures when the workflow is read, then run on each model to evaluate.

use anyhow::anyhow;
use olive_pass_api::Model;
use serde_json::Value;

use super::config::Workflow;
use super::document::typed;
use crate::device::Device;
use crate::evaluate::metric::{validate, Metric, Plan};
use crate::evaluate::result::MetricResult;
use crate::evaluate::{evaluate_with, Options};

/// A checked evaluator.
#[derive(Debug, Clone)]
pub struct Evaluator {
    pub metrics: Vec<Metric>,
    plans: Vec<Plan>,
    /// The evaluator's JSON, part of the evaluation cache key.
    config: Value,
    /// Where models are measured: the target's device.
    device: Device,
}

impl Evaluator {
    /// The engine's evaluator, or None when the workflow has none.
    pub fn from_workflow(workflow: &Workflow) -> anyhow::Result<Option<Self>> {
        let Some((origin, config)) = workflow.evaluator_for(None)? else {
            return Ok(None);
        };
        let metrics_value = config
            .get("metrics")
            .ok_or_else(|| anyhow!("{origin}.metrics: missing; an evaluator lists its metrics"))?;
        let metrics: Vec<Metric> = typed(metrics_value, &format!("{origin}.metrics"))?;
        let plans = validate(&metrics, &workflow.data_configs, None)
            .map_err(|e| anyhow!("{origin}.{e:#}"))?;
        let device = match workflow.device.as_str() {
            "gpu" => Device::Gpu,
            _ => Device::Cpu,
        };
        Ok(Some(Evaluator {
            metrics,
            plans,
            config,
            device,
        }))
    }

    /// What identifies the measurements (for the evaluation cache).
    pub fn fingerprint(&self) -> &Value {
        &self.config
    }

    /// Measures every metric on `model`.
    pub fn evaluate(&self, model: &Model) -> anyhow::Result<MetricResult> {
        let options = Options {
            device: self.device,
            ..Options::default()
        };
        Ok(evaluate_with(&self.plans, model, &options)?.result)
    }

    /// How many metric sub types rank models (priority > 0).
    pub fn objectives_declared(&self) -> usize {
        self.metrics
            .iter()
            .flat_map(|m| &m.sub_types)
            .filter(|s| s.priority > 0)
            .count()
    }

    /// `name: value, ...` for the log.
    pub fn describe(&self, result: &MetricResult) -> String {
        let parts: Vec<String> = result
            .values()
            .iter()
            .map(|(k, v)| format!("{k} {v:.5}"))
            .collect();
        parts.join(", ")
    }
}
