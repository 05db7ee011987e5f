//! Olive's evaluators for causal LMs (olive/evaluator/olive_evaluator.py of olive-ai 0.13), on a Hugging Face
//! folder (CPU transformer; PEFT adapters merged) or an ONNX export (ONNX Runtime), see [`runner`]. A workflow's metrics are checked with
//! [`metric::validate`] before anything runs, then measured with [`evaluate`] into Olive's [`MetricResult`]
//! (`{"<metric>-<sub_type>": {value, priority, higher_is_better}}`); [`result::resolve_goals`] and
//! [`result::meets_goals`] apply Olive's goals.
//!
//! | type | sub types | measures | metric_config |
//! | --- | --- | --- | --- |
//! | accuracy | `perplexity` (lower is better) | exp(mean NLL) over windows of the data config's texts joined by blank lines, or data/eval.txt | `window` (data's max_seq_len, else 512), `max_windows` |
//! | accuracy | `accuracy_score` | fraction right on a multiple-choice set (data/multiple_choice.jsonl, or a data config's JSON records), see [`choice`] | `length_normalized`, `max_samples` |
//! | latency | `avg` `min` `max` `p50` `p75` `p90` `p95` `p99` `p999` (ms) | per-token decode step (`mode: decode`, default) or prompt prefill to first token (`mode: prefill`), see [`timing`] | `warmup_num` 10, `repeat_test_num` 20, `sleep_num` 0, `mode`, `prompt_length` 128 |
//! | throughput | same names (tokens/s; min ↔ max) | tokens per timed run / its latency: decode 1, prefill `prompt_length` | as latency |
//! | size_on_disk | `bytes` | all files of the model folder and its adapters, see [`footprint`] | none |
//! | memory (olive-rs) | `peak_rss` (bytes) | peak RSS of a child that loads the model and runs one forward | `prompt_length` 128 |
//!
//! Percentiles are numpy's default (linear) as Olive uses them ([`stats`]). Prompts for latency and memory are
//! the first `prompt_length` tokens of the metric's data (or data/eval.txt). A latency and a throughput metric
//! with the same settings and data share one timed run. Texts are tokenized without special tokens. Everything
//! runs one sequence at a time: a data config's `dataloader_config.batch_size` does not scale throughput (Olive
//! multiplies by it because it times batches).

pub mod choice;
pub mod footprint;
pub mod metric;
pub mod perplexity;
pub mod result;
pub mod runner;
pub mod stats;
pub mod timing;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use olive_pass_api::Model;
use tokenizers::Tokenizer;

pub use metric::{Measure, Plan};
pub use result::MetricResult;

use crate::device::Device;
use crate::workflow::data_config::ResolvedData;
use choice::{Question, Scored};
use metric::LatencyConfig;
use runner::Runner;

/// What the evaluators fall back on.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The olive-host executable for the memory probe (None: [`footprint::olive_host_exe`]).
    pub olive_host: Option<PathBuf>,
    /// Text for perplexity and prompts of metrics without a data config (None: data/eval.txt).
    pub default_text: Option<String>,
    /// Questions of `accuracy_score` without a data config (None: data/multiple_choice.jsonl).
    pub default_questions: Option<Vec<Question>>,
    /// Where the model runs.
    pub device: Device,
}

/// A model's result and, for `accuracy_score`, how each question was scored.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub result: MetricResult,
    /// (metric name, scores) of each accuracy_score measured.
    pub choices: Vec<(String, Vec<Scored>)>,
}

/// Timed runs are shared by metrics of equal settings over the same data config.
type TimingKey = (LatencyConfig, Option<String>);

/// The model, its tokenizer and the timed runs already made, loaded on first use.
struct Session<'m> {
    model: &'m Model,
    device: Device,
    runner: Option<Runner>,
    tokenizer: Option<Tokenizer>,
    timings: Vec<(TimingKey, Vec<f64>)>,
}

impl Session<'_> {
    fn runner(&mut self) -> anyhow::Result<&mut Runner> {
        if self.runner.is_none() {
            self.runner = Some(Runner::load(self.model, self.device)?);
        }
        self.runner
            .as_mut()
            .ok_or_else(|| anyhow!("the model did not load"))
    }

    fn tokenizer(&mut self) -> anyhow::Result<&Tokenizer> {
        if self.tokenizer.is_none() {
            let folder = runner::model_folder(self.model)?;
            self.tokenizer = Some(olive_model::tokenizer::load(&folder)?);
        }
        self.tokenizer
            .as_ref()
            .ok_or_else(|| anyhow!("the tokenizer did not load"))
    }

    /// Token ids of the data's texts joined by blank lines, or of the default text.
    fn text_ids(
        &mut self,
        data: &Option<ResolvedData>,
        options: &Options,
    ) -> anyhow::Result<Vec<u32>> {
        let text = match data {
            Some(d) => {
                let folder = runner::model_folder(self.model)?;
                let config = olive_data::TokenizerConfig::load(&folder)?;
                d.data
                    .texts(&config)
                    .with_context(|| format!("data config {:?}", d.name))?
                    .join("\n\n")
            }
            None => options
                .default_text
                .clone()
                .unwrap_or_else(|| olive_data::DEFAULT_EVAL_TEXT.to_owned()),
        };
        let enc = self
            .tokenizer()?
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing the evaluation text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    fn prompt(
        &mut self,
        data: &Option<ResolvedData>,
        options: &Options,
        n: usize,
    ) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.text_ids(data, options)?;
        if ids.len() < n {
            bail!("prompt_length {n}: the text has only {} tokens", ids.len());
        }
        ids.truncate(n);
        Ok(ids)
    }
}

fn questions(data: &Option<ResolvedData>, options: &Options) -> anyhow::Result<Vec<Question>> {
    match data {
        None => match &options.default_questions {
            Some(q) => Ok(q.clone()),
            None => choice::parse_questions(choice::DEFAULT_CHOICES, "data/multiple_choice.jsonl"),
        },
        Some(d) => {
            let name: olive_data::DataName = d.data.data_name.parse()?;
            if name != olive_data::DataName::Json {
                bail!(
                    "data config {:?}: accuracy_score reads JSON records (data_name \"json\")",
                    d.name
                );
            }
            let files = olive_data::resolve_files(&d.data.data_files)?;
            let records = olive_data::load_records(name, &files, &d.data.split)?;
            let mut qs = records
                .iter()
                .map(|r| choice::question_of(&r.fields, &r.origin))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(n) = d.data.max_samples {
                qs.truncate(n);
            }
            Ok(qs)
        }
    }
}

/// Measures every plan of [`metric::validate`] on `model`.
pub fn evaluate_with(
    plans: &[Plan],
    model: &Model,
    options: &Options,
) -> anyhow::Result<Evaluation> {
    let mut s = Session {
        model,
        device: options.device,
        runner: None,
        tokenizer: None,
        timings: Vec::new(),
    };
    let mut out = Evaluation::default();
    for plan in plans {
        let at = || format!("metric {:?}", plan.metric);
        let values: Vec<f64> = match &plan.measure {
            Measure::Perplexity(c) => {
                let ids = s.text_ids(&plan.data, options).with_context(at)?;
                let window = c
                    .window
                    .or(plan.data.as_ref().map(|d| d.data.max_seq_len))
                    .unwrap_or(512);
                let max_windows = c
                    .max_windows
                    .or(plan.data.as_ref().and_then(|d| d.data.max_samples));
                let nll = perplexity::perplexity(s.runner()?, &ids, window, max_windows)
                    .with_context(at)?;
                vec![result::round5(nll.perplexity())]
            }
            Measure::Choice(c) => {
                let mut qs = questions(&plan.data, options).with_context(at)?;
                if let Some(n) = c.max_samples {
                    qs.truncate(n);
                }
                s.runner()?;
                s.tokenizer()?;
                let (Some(runner), Some(tok)) = (s.runner.as_mut(), s.tokenizer.as_ref()) else {
                    bail!("the model or its tokenizer did not load");
                };
                let (acc, scored) =
                    choice::accuracy(runner, tok, &qs, c.length_normalized).with_context(at)?;
                out.choices.push((plan.metric.clone(), scored));
                vec![result::round5(acc)]
            }
            Measure::Timing { config, throughput } => {
                let key = (config.clone(), plan.data.as_ref().map(|d| d.name.clone()));
                let samples = match s.timings.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let prompt = s
                            .prompt(&plan.data, options, config.prompt_length)
                            .with_context(at)?;
                        let v =
                            timing::timed_runs(s.runner()?, &prompt, config).with_context(at)?;
                        s.timings.push((key, v.clone()));
                        v
                    }
                };
                let units = timing::tokens_per_run(config);
                plan.subs
                    .iter()
                    .map(|sub| match throughput {
                        true => stats::throughput(&samples, &sub.name, units),
                        false => stats::latency_ms(&samples, &sub.name),
                    })
                    .collect::<anyhow::Result<_>>()
                    .with_context(at)?
            }
            Measure::SizeOnDisk => {
                let mut bytes =
                    footprint::size_on_disk(&runner::model_folder(model)?).with_context(at)?;
                for adapter in &model.adapter_paths {
                    bytes += footprint::size_on_disk(adapter).with_context(at)?;
                }
                vec![bytes as f64]
            }
            Measure::Memory(c) => {
                if options.device == Device::Cpu
                    && plan.subs.iter().any(|sub| sub.name == "peak_device_memory")
                {
                    bail!(
                        "{}: peak_device_memory is measured on --device gpu only",
                        at()
                    );
                }
                let exe = match &options.olive_host {
                    Some(p) => p.clone(),
                    None => footprint::olive_host_exe()?,
                };
                let measured =
                    footprint::memory_probe(&exe, model, c.prompt_length, options.device)
                        .with_context(at)?;
                plan.subs
                    .iter()
                    .map(|sub| match sub.name.as_str() {
                        "peak_device_memory" => measured.peak_device_memory.unwrap_or(0) as f64,
                        _ => measured.peak_rss as f64,
                    })
                    .collect()
            }
        };
        let values = if values.len() == 1 {
            vec![values[0]; plan.subs.len()]
        } else {
            values
        };
        for (sub, v) in plan.subs.iter().zip(values) {
            result::insert(&mut out.result, &plan.metric, sub, v)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
