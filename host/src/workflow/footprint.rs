//! The footprints of a run (olive/engine/footprint.py): every model tried — the input and each pass output — with
//! its parent, the pass and config that made it, its metrics and whether it is on the Pareto front, written as
//! `footprints.json` in the output folder.

use std::collections::BTreeMap;
use std::path::Path;

use olive_pass_api::Model;
use serde::Serialize;
use serde_json::Value;

use super::output::model_config;
use crate::evaluate::result::MetricResult;
use crate::files::write_atomic;

/// One model of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub model_id: String,
    pub parent_model_id: Option<String>,
    /// The workflow's pass name and the pass type that made the model (None for the input model).
    pub pass_name: Option<String>,
    pub from_pass: Option<String>,
    pub pass_run_config: Option<Value>,
    pub model_config: Value,
    pub metrics: Option<NodeMetrics>,
    pub is_pareto_frontier: bool,
    /// Whether the model came from the cache.
    pub cache_hit: bool,
    pub start_time: Option<f64>,
    pub end_time: Option<f64>,
}

/// A node's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    pub value: MetricResult,
    pub if_goals_met: bool,
}

/// The footprints, keyed by model id in the order models appeared.
#[derive(Debug, Default, Serialize)]
pub struct Footprints {
    pub workflow_id: String,
    pub input_model_id: Option<String>,
    pub nodes: BTreeMap<String, Node>,
    /// The objectives the search ranked by: `<metric>-<sub_type>` → {higher_is_better, goal, priority}.
    pub objective_dict: BTreeMap<String, Value>,
    pub output_model_ids: Vec<String>,
}

impl Footprints {
    /// Records the input model.
    pub fn input(&mut self, id: &str, model: &Model) {
        self.input_model_id = Some(id.to_owned());
        self.nodes.entry(id.to_owned()).or_insert_with(|| Node {
            model_id: id.to_owned(),
            parent_model_id: None,
            pass_name: None,
            from_pass: None,
            pass_run_config: None,
            model_config: model_config(model),
            metrics: None,
            is_pareto_frontier: false,
            cache_hit: false,
            start_time: None,
            end_time: None,
        });
    }

    /// Records a model a pass made (a model reached again through the cache keeps its first record).
    pub fn record(&mut self, node: Node) {
        self.nodes.entry(node.model_id.clone()).or_insert(node);
    }

    /// Attaches an evaluation to a model.
    pub fn evaluated(&mut self, id: &str, value: MetricResult, if_goals_met: bool) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.metrics = Some(NodeMetrics {
                value,
                if_goals_met,
            });
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}
