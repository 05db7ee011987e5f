//! Runs a workflow (olive/engine/engine.py): everything is resolved and checked first; then the input model is
//! evaluated when asked, the passes run in order through the cache (each in a worker process), and the output
//! model, its metrics and the footprints are written to `output_dir`. With a search strategy, each point the
//! search proposes runs the chain of passes (finished prefixes come from the cache), is evaluated, and the best
//! model by the objectives' priorities is the output, with the Pareto front beside it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use olive_pass_api::Model;
use serde_json::{json, Map, Value};

use super::config::Workflow;
use super::footprint::{Footprints, Node};
use super::output::{model_config, save_model};
use super::resolve::{resolve, ResolvedPass, CHOICE_KEY};
use crate::cache::{key_of, Cache, Entry, Outcome};
use crate::engine::{self, PassRun};
use crate::evaluate::result::{meets_goals, resolve_goals, MetricResult};
use crate::plugins::Discovery;
use crate::search::{
    apply_point, objectives_from_metrics, split_pass_config, Conditional, ExecutionOrder,
    MetricSubType, Outcome as TrialOutcome, ParamPath, PassSpace, Report as SearchReport,
    SamplerKind, Search, SearchConfig, SearchParam, SearchSpace, IGNORED, INVALID,
};

/// A model reached by the run: its cache key and where it is.
#[derive(Debug, Clone)]
pub struct Reached {
    pub id: String,
    pub model: Model,
}

/// A workflow with its passes resolved and its input located, ready to run.
pub struct Prepared {
    pub workflow: Workflow,
    pub passes: Vec<ResolvedPass>,
    pub input: Model,
    pub evaluator: Option<super::evaluator::Evaluator>,
    /// The search strategy and each pass's fixed values and search parameters, when the workflow searches.
    pub search: Option<(SearchConfig, SearchSpace)>,
    /// The `(device, provider)` whose execution provider must run the output model before it is saved (auto-opt).
    pub output_check: Option<(String, String)>,
}

/// Resolves and checks everything a run needs; nothing runs and nothing is written.
pub fn prepare(workflow: Workflow, found: &Discovery) -> anyhow::Result<Prepared> {
    let passes = resolve(&workflow, found)?;
    let mut spaces = Vec::new();
    for pass in &passes {
        let space = pass_space(pass)?;
        check_space(pass, &space)?;
        spaces.push(space);
    }
    let input = input_model(&workflow)?;
    let evaluator = super::evaluator::Evaluator::from_workflow(&workflow)?;
    let search = match search_config(&workflow)? {
        Some(config) => {
            if evaluator
                .as_ref()
                .is_none_or(|e| e.objectives_declared() == 0)
            {
                bail!(
                    "search_strategy: a search ranks models by the evaluator's metrics; give an `evaluator` with at \
                     least one sub type of priority > 0"
                );
            }
            Some((config, SearchSpace::new(spaces)?))
        }
        None => {
            if let Some(space) = spaces.iter().find(|s| !s.params.is_empty()) {
                let (path, _) = &space.params[0];
                bail!(
                    "passes.{}.{path}: a search parameter, but the workflow has no search_strategy (add one, or give \
                     the CLI --enable_search)",
                    space.pass
                );
            }
            None
        }
    };
    Ok(Prepared {
        workflow,
        passes,
        input,
        evaluator,
        search,
        output_check: None,
    })
}

/// The engine's search strategy: a mapping, `true` (Olive: joint TPE) or false/absent (no search).
fn search_config(workflow: &Workflow) -> anyhow::Result<Option<SearchConfig>> {
    match &workflow.engine.search_strategy {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(SearchConfig::new(
            ExecutionOrder::Joint,
            SamplerKind::Tpe,
        ))),
        Some(value) => Ok(Some(SearchConfig::from_json(value, "search_strategy")?)),
    }
}

/// A pass's fixed values and search parameters. A pass with alternatives gets a first parameter, `type`, choosing
/// among them (Olive searches the index of a pass's configs), and each key of the alternatives becomes a parameter
/// conditional on it: the alternative's value or values, or left out (IGNORED) where it has none.
fn pass_space(pass: &ResolvedPass) -> anyhow::Result<PassSpace> {
    if let [only] = pass.choices.as_slice() {
        return split_pass_config(
            &pass.name,
            &Value::Object(only.config.clone()),
            &pass.path(),
        );
    }
    let choice_param = ParamPath(vec![CHOICE_KEY.to_owned()]);
    let labels: Vec<String> = pass.choices.iter().map(|c| c.label.clone()).collect();
    let mut keys: Vec<String> = Vec::new();
    let mut splits = Vec::new();
    for (i, choice) in pass.choices.iter().enumerate() {
        let at = format!("{}[{i}]", pass.path());
        let split = split_pass_config(&pass.name, &Value::Object(choice.config.clone()), &at)?;
        for (path, param) in &split.params {
            if path.0.len() != 1 || matches!(param, SearchParam::Conditional(_)) {
                bail!(
                    "{at}.{path}: inside a list of alternative pass configs, only top-level Categorical or Boolean \
                     search parameters are supported"
                );
            }
        }
        let fixed_keys = split
            .fixed
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys().cloned());
        let param_keys = split.params.iter().map(|(p, _)| p.0[0].clone());
        for key in fixed_keys.chain(param_keys) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        splits.push(split);
    }
    let mut params = vec![(
        choice_param.clone(),
        SearchParam::Categorical(labels.iter().map(|l| Value::String(l.clone())).collect()),
    )];
    let mut fixed = Map::new();
    for key in keys {
        let per_choice: Vec<Vec<Value>> = splits
            .iter()
            .map(|split| {
                let searched = split.params.iter().find(|(p, _)| p.0[0] == key);
                match (searched, split.fixed.get(&key)) {
                    (Some((_, SearchParam::Categorical(values))), _) => values.clone(),
                    (_, Some(value)) => vec![value.clone()],
                    _ => vec![Value::String(IGNORED.to_owned())],
                }
            })
            .collect();
        // A value every alternative shares stays fixed.
        if per_choice
            .iter()
            .all(|v| v.len() == 1 && v == &per_choice[0])
        {
            fixed.insert(key, per_choice[0][0].clone());
            continue;
        }
        let branches = labels
            .iter()
            .zip(per_choice)
            .map(|(label, values)| (vec![label.clone()], values))
            .collect();
        params.push((
            ParamPath(vec![key]),
            SearchParam::Conditional(Conditional {
                parents: vec![choice_param.clone()],
                branches,
                default: vec![Value::String(INVALID.to_owned())],
            }),
        ));
    }
    Ok(PassSpace {
        pass: pass.name.clone(),
        fixed: Value::Object(fixed),
        params,
    })
}

/// Checks the pass's fixed values with each value of each search parameter (the others at their first value), so
/// a wrong value anywhere in the space is reported before anything runs.
fn check_space(pass: &ResolvedPass, space: &PassSpace) -> anyhow::Result<()> {
    let usable = |v: &Value| !matches!(v.as_str(), Some(INVALID) | Some(IGNORED));
    let first: Vec<(ParamPath, Value)> = space
        .params
        .iter()
        .filter_map(|(path, param)| {
            param_values(param)
                .into_iter()
                .find(|v| usable(v))
                .map(|v| (path.clone(), v))
        })
        .collect();
    let check = |values: &[(ParamPath, Value)]| -> anyhow::Result<()> {
        match apply_point(&space.fixed, values) {
            Value::Object(config) => pass.check(&config),
            other => bail!("{}: expected a mapping, found {other}", pass.path()),
        }
    };
    check(&first)?;
    for (path, param) in &space.params {
        for value in param_values(param).into_iter().filter(|v| usable(v)) {
            let mut values = first.clone();
            if let Some(slot) = values.iter_mut().find(|(p, _)| p == path) {
                slot.1 = value;
            }
            check(&values)?;
        }
    }
    Ok(())
}

/// Every value a search parameter can take (all branches of a conditional).
fn param_values(param: &SearchParam) -> Vec<Value> {
    match param {
        SearchParam::Categorical(values) => values.clone(),
        SearchParam::Conditional(c) => c
            .branches
            .iter()
            .flat_map(|(_, values)| values.iter().cloned())
            .chain(c.default.iter().cloned())
            .collect(),
    }
}

/// The input model as a model reference: a .gguf converted once into the model cache, a hub id from the local
/// Hugging Face cache, `models:/<name>/<version>` downloaded once from the registry at MLFLOW_TRACKING_URI.
fn input_model(workflow: &Workflow) -> anyhow::Result<Model> {
    let input = &workflow.input_model;
    let mut model = if input.kind == olive_pass_api::kinds::HF {
        let path = crate::cli::resolve_hf_input(&input.model_path)
            .with_context(|| "input_model.model_path")?;
        Model::new(&input.kind, path)
    } else {
        let folder = crate::cli::resolve_models_uri(&input.model_path.to_string_lossy())
            .with_context(|| "input_model.model_path")?
            .unwrap_or_else(|| input.model_path.clone());
        let path = match &input.onnx_file_name {
            Some(name) => folder.join(name),
            None => folder,
        };
        if !path.exists() {
            bail!("input_model.model_path: {} does not exist", path.display());
        }
        Model::new(&input.kind, path)
    };
    if let Some(adapter) = &input.adapter_path {
        if !adapter.join("adapter_config.json").is_file() {
            bail!(
                "input_model.adapter_path: {} is not a PEFT adapter folder (no adapter_config.json)",
                adapter.display()
            );
        }
        model.kind = olive_pass_api::kinds::HF_ADAPTER.to_owned();
        model.adapter_paths = vec![adapter.clone()];
    }
    Ok(model)
}

/// The summary a run prints.
#[derive(Debug)]
pub struct Report {
    pub output: Option<Model>,
    pub output_dir: PathBuf,
    pub ran: usize,
    pub hits: usize,
}

/// One run over a cache.
struct Run<'a> {
    prepared: &'a Prepared,
    cache: Cache,
    footprints: Footprints,
    ran: usize,
    hits: usize,
}

/// Runs a prepared workflow.
pub fn execute(prepared: &Prepared) -> anyhow::Result<Report> {
    let workflow = &prepared.workflow;
    let cache = Cache::open(workflow.cache_dir())?;
    if workflow.clean_cache() {
        let removed = cache.clean(false)?;
        tracing::info!("clean_cache: removed {removed} cache entries");
    } else if workflow.clean_evaluation_cache() {
        cache.clean(true)?;
    }
    let mut run = Run {
        prepared,
        cache,
        footprints: Footprints {
            workflow_id: workflow.workflow_id.clone(),
            ..Footprints::default()
        },
        ran: 0,
        hits: 0,
    };
    let output_dir = workflow.output_dir();
    let input_id = run.cache.input_key(&prepared.input)?;
    let input = Reached {
        id: input_id.clone(),
        model: prepared.input.clone(),
    };
    run.footprints.input(&input_id, &input.model);
    let mut input_result = None;
    if let Some(evaluator) = prepared
        .evaluator
        .as_ref()
        .filter(|_| workflow.engine.evaluate_input_model)
    {
        let result = run.evaluate(&input)?;
        input_result = Some(result.clone());
        tracing::info!("input model: {}", evaluator.describe(&result));
        run.footprints.evaluated(&input_id, result.clone(), true);
        if !workflow.engine.no_artifacts {
            write_json(
                &output_dir.join("input_model_metrics.json"),
                &serde_json::to_value(&result)?,
            )?;
        }
    }
    if prepared.passes.is_empty() {
        tracing::info!("no passes: nothing to run");
        run.write_footprints(&output_dir)?;
        return Ok(Report {
            output: None,
            output_dir,
            ran: 0,
            hits: 0,
        });
    }
    if let Some((config, space)) = &prepared.search {
        return run.search(
            &input,
            input_result.as_ref(),
            *config,
            space.clone(),
            &output_dir,
        );
    }
    let configs: Vec<Map<String, Value>> = prepared
        .passes
        .iter()
        .map(|p| p.choices[0].config.clone())
        .collect();
    let reached = run.chain(&input, &configs)?;
    let last = reached
        .last()
        .ok_or_else(|| anyhow!("the chain of passes made no model"))?;
    if prepared.evaluator.is_some() {
        let result = run.evaluate(last)?;
        run.footprints.evaluated(&last.id, result.clone(), true);
        if !workflow.engine.no_artifacts {
            write_json(
                &output_dir.join("metrics.json"),
                &serde_json::to_value(&result)?,
            )?;
        }
    }
    run.footprints.output_model_ids = vec![last.id.clone()];
    run.check_output(&last.model)?;
    let saved = save_model(&last.model, &output_dir)?;
    run.write_footprints(&output_dir)?;
    run.package(&last.id, &saved, &output_dir)?;
    Ok(Report {
        output: Some(saved),
        output_dir,
        ran: run.ran,
        hits: run.hits,
    })
}

fn write_json(path: &std::path::Path, value: &Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::files::write_atomic(path, &serde_json::to_vec_pretty(value)?)
}

impl Run<'_> {
    /// Runs the passes in order on `input` with one config each; every pass output is a cache entry.
    fn chain(
        &mut self,
        input: &Reached,
        configs: &[Map<String, Value>],
    ) -> anyhow::Result<Vec<Reached>> {
        let workflow = &self.prepared.workflow;
        let mut current = input.clone();
        let mut reached = Vec::new();
        for (pass, config) in self.prepared.passes.iter().zip(configs) {
            let (choice, config) = pass.choose(config)?;
            let config = Value::Object(config);
            let key = key_of(&json!({
                "parent": current.id,
                "pass": choice.manifest.name,
                "pass_version": choice.manifest.version,
                "plugin": choice.plugin.manifest.name,
                "plugin_version": choice.plugin.manifest.version,
                "config": config,
                "device": workflow.device,
            }));
            let entry = Entry {
                key: key.clone(),
                parent: current.id.clone(),
                pass_name: pass.name.clone(),
                pass_type: choice.manifest.name.clone(),
                pass_version: choice.manifest.version.clone(),
                plugin: choice.plugin.manifest.name.clone(),
                plugin_version: choice.plugin.manifest.version.clone(),
                device: workflow.device.clone(),
                config: config.clone(),
                model: Model::new("", ""),
                started: 0.0,
                finished: 0.0,
            };
            let model = current.model.clone();
            let (entry, outcome) = self.cache.run(entry, |output_path| {
                tracing::info!("running pass {} ({})", pass.name, choice.manifest.name);
                engine::run_pass(&PassRun {
                    plugin: &choice.plugin,
                    pass: choice.manifest.name.clone(),
                    model,
                    config_json: config.to_string(),
                    output_path: output_path.to_path_buf(),
                    device: workflow.device.clone(),
                    timeout: None,
                    grace: Duration::from_secs(5),
                })
                .with_context(|| format!("passes.{}", pass.name))
            })?;
            match outcome {
                Outcome::Hit => {
                    self.hits += 1;
                    tracing::info!(
                        "pass {} ({}): from the cache",
                        pass.name,
                        choice.manifest.name
                    );
                }
                Outcome::Ran => self.ran += 1,
            }
            self.footprints.record(Node {
                model_id: key.clone(),
                parent_model_id: Some(current.id.clone()),
                pass_name: Some(pass.name.clone()),
                from_pass: Some(choice.manifest.name.clone()),
                pass_run_config: Some(config),
                model_config: model_config(&entry.model),
                metrics: None,
                is_pareto_frontier: false,
                cache_hit: outcome == Outcome::Hit,
                start_time: Some(entry.started),
                end_time: Some(entry.finished),
            });
            current = Reached {
                id: key,
                model: entry.model,
            };
            reached.push(current.clone());
        }
        Ok(reached)
    }

    /// The evaluator's result for a model, from the cache when it was measured before with the same metrics.
    fn evaluate(&mut self, model: &Reached) -> anyhow::Result<MetricResult> {
        let evaluator = self
            .prepared
            .evaluator
            .as_ref()
            .ok_or_else(|| anyhow!("no evaluator"))?;
        let key = key_of(&json!({
            "model": model.id,
            "evaluator": evaluator.fingerprint(),
            "device": self.prepared.workflow.device,
        }));
        if let Some(stored) = self.cache.evaluation(&key) {
            if let Ok(result) = serde_json::from_value::<MetricResult>(stored) {
                tracing::info!("evaluation of {}: from the cache", model.id);
                return Ok(result);
            }
        }
        let result = evaluator.evaluate(&model.model)?;
        self.cache
            .store_evaluation(&key, &serde_json::to_value(&result)?)?;
        Ok(result)
    }

    /// Runs the search: each trial's passes through the cache, then its evaluation; the best model by the
    /// objectives' priorities is saved, and the Pareto front is written as a table, JSON and plots.
    fn search(
        mut self,
        input: &Reached,
        input_result: Option<&MetricResult>,
        config: SearchConfig,
        space: SearchSpace,
        output_dir: &std::path::Path,
    ) -> anyhow::Result<Report> {
        let evaluator = self
            .prepared
            .evaluator
            .as_ref()
            .ok_or_else(|| anyhow!("a search needs an evaluator"))?;
        let goals = resolve_goals(&evaluator.metrics, input_result)?;
        let subs: Vec<MetricSubType> = evaluator
            .metrics
            .iter()
            .flat_map(|m| {
                m.sub_types.iter().map(|sub| {
                    let key = crate::evaluate::result::joint_key(&m.name, &sub.name);
                    MetricSubType {
                        metric: m.name.clone(),
                        sub_type: sub.name.clone(),
                        higher_is_better: m.higher_is_better(sub),
                        priority: sub.priority,
                        goal: goals.get(&key).copied(),
                    }
                })
            })
            .collect();
        let objectives = objectives_from_metrics(&subs);
        for o in &objectives {
            self.footprints.objective_dict.insert(
                o.name.clone(),
                json!({"higher_is_better": o.higher_is_better, "goal": o.goal, "priority": o.priority}),
            );
        }
        let mut search = Search::new(space, objectives, config)?;
        let mut models: Vec<Option<Reached>> = Vec::new();
        while let Some(trial) = search.next()? {
            let configs: Vec<Map<String, Value>> = trial
                .configs
                .iter()
                .map(|(_, c)| c.as_object().cloned().unwrap_or_default())
                .collect();
            let values: Vec<String> = trial
                .point
                .iter()
                .flat_map(|p| {
                    p.values
                        .iter()
                        .filter(|(_, v)| v != IGNORED)
                        .map(move |(k, v)| format!("{}.{k}={v}", p.pass))
                })
                .collect();
            tracing::info!("trial {}: {}", trial.id, values.join(", "));
            let outcome = self.trial(input, &configs).and_then(|last| {
                let result = self.evaluate(&last)?;
                self.footprints
                    .evaluated(&last.id, result.clone(), meets_goals(&result, &goals));
                tracing::info!("trial {}: {}", trial.id, evaluator.describe(&result));
                Ok((last, result))
            });
            let recorded = match outcome {
                Ok((last, result)) => {
                    let values = result.values();
                    models.resize(trial.id + 1, None);
                    models[trial.id] = Some(last);
                    TrialOutcome::from_values(search.objectives(), &values)
                }
                Err(err) => {
                    tracing::warn!("trial {} failed: {err:#}", trial.id);
                    TrialOutcome::Failed
                }
            };
            search.record(trial.id, recorded)?;
        }
        let report = SearchReport::new(&search);
        println!("{}", report.table());
        let mut front = Vec::new();
        for row in report.rows.iter().filter(|r| r.on_front) {
            if let Some(Some(model)) = models.get(row.trial) {
                if let Some(node) = self.footprints.nodes.get_mut(&model.id) {
                    node.is_pareto_frontier = true;
                }
                front.push(model.id.clone());
            }
        }
        self.footprints.output_model_ids = front;
        let best = report
            .best
            .and_then(|id| models.get(id).cloned().flatten())
            .ok_or_else(|| anyhow!("no trial of the search succeeded; see the warnings above"))?;
        self.check_output(&best.model)?;
        let saved = save_model(&best.model, output_dir)?;
        if !self.prepared.workflow.engine.no_artifacts {
            report.write_json(&output_dir.join("search_results.json"))?;
            for ext in ["png", "svg"] {
                report.write_plot(
                    &output_dir.join(format!("pareto_frontier.{ext}")),
                    "Pareto front",
                )?;
            }
        }
        self.write_footprints(output_dir)?;
        self.package(&best.id, &saved, output_dir)?;
        Ok(Report {
            output: Some(saved),
            output_dir: output_dir.to_path_buf(),
            ran: self.ran,
            hits: self.hits,
        })
    }

    /// Runs the output model through the execution provider of `output_check`, when there is one.
    fn check_output(&self, model: &Model) -> anyhow::Result<()> {
        match &self.prepared.output_check {
            Some((device, provider)) => crate::ep::check_in_child(&model.path, device, provider),
            None => Ok(()),
        }
    }

    /// The last model of a trial's chain of passes.
    fn trial(
        &mut self,
        input: &Reached,
        configs: &[Map<String, Value>],
    ) -> anyhow::Result<Reached> {
        for (pass, config) in self.prepared.passes.iter().zip(configs) {
            pass.check(config)?;
        }
        self.chain(input, configs)?
            .pop()
            .ok_or_else(|| anyhow!("the trial ran no pass"))
    }

    /// Writes the zips of `packaging_config` of the output model `saved` (reached as `id`), with its metrics, the
    /// input model's and the passes that made it, from the footprints.
    fn package(&self, id: &str, saved: &Model, output_dir: &std::path::Path) -> anyhow::Result<()> {
        let workflow = &self.prepared.workflow;
        let configs = workflow.packaging()?;
        if configs.is_empty() {
            return Ok(());
        }
        let nodes = &self.footprints.nodes;
        let metrics_of = |id: &str| -> anyhow::Result<Option<Value>> {
            Ok(match nodes.get(id).and_then(|n| n.metrics.as_ref()) {
                Some(m) => Some(serde_json::to_value(&m.value)?),
                None => None,
            })
        };
        let mut history = Vec::new();
        let mut at = nodes.get(id);
        while let Some(node) = at.filter(|n| n.from_pass.is_some()) {
            history.push(json!({"model_id": node.model_id, "pass_name": node.pass_name,
                                "from_pass": node.from_pass, "pass_run_config": node.pass_run_config}));
            at = node.parent_model_id.as_deref().and_then(|p| nodes.get(p));
        }
        history.reverse();
        let input_metrics = match &self.footprints.input_model_id {
            Some(input) => metrics_of(input)?,
            None => None,
        };
        let provider = workflow
            .execution_providers
            .first()
            .map_or("CPUExecutionProvider", String::as_str);
        let candidate = crate::package::Candidate {
            model: saved,
            device: &workflow.device,
            execution_provider: provider,
            metrics: metrics_of(id)?,
            input_metrics,
            history: Value::Array(history),
        };
        for config in configs {
            let zip = crate::package::write_zip(output_dir, &config.name, &candidate)?;
            eprintln!("Packaged the output model into {}", zip.display());
        }
        Ok(())
    }

    fn write_footprints(&self, output_dir: &std::path::Path) -> anyhow::Result<()> {
        if self.prepared.workflow.engine.no_artifacts {
            return Ok(());
        }
        std::fs::create_dir_all(output_dir)?;
        self.footprints.write(&output_dir.join("footprints.json"))
    }
}
