//! `olive-host benchmark`: Olive 0.13's `olive benchmark` (olive/cli/benchmark.py: one model, lm-eval tasks,
//! `--model_name_or_path --tasks --device --limit --output_path`) made a sweep — models × devices × settings
//! (prompt length and latency mode), each cell measured with the workflow evaluators (host/src/evaluate: Olive
//! `Metric`s, validated for every cell before anything runs) and written as one row of `benchmark.csv`,
//! `benchmark.md` and `benchmark.json`, with a plot of each metric's headline sub type per cell
//! (`benchmark.png`, `.svg`; plotters, the DejaVu Sans font of the search report).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use olive_pass_api::{kinds, Model};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{json, Value};

use super::common::resolve_hf_input;
use super::config_file::{workflow, ConfigFileArgs};
use crate::device::{first_gpu, Device};
use crate::evaluate::metric::{validate, Metric, Plan};
use crate::evaluate::{evaluate_with, MetricResult, Options};
use crate::files::write_atomic;

/// The metrics `--tasks` names, in Olive's names where Olive has one.
const TASKS: [&str; 6] = [
    "perplexity",
    "accuracy_score",
    "latency",
    "throughput",
    "size_on_disk",
    "memory",
];

#[derive(Args, Debug)]
pub struct BenchmarkArgs {
    /// A model to benchmark, repeatable: a Hugging Face folder, a .gguf file or an ONNX export folder, as
    /// `PATH` (labelled by its last path component) or `LABEL=PATH`.
    #[arg(long = "model_name_or_path", short = 'm', required = true)]
    pub models: Vec<String>,
    /// Devices, repeatable or comma-separated: cpu, gpu.
    #[arg(
        long = "device",
        value_enum,
        value_delimiter = ',',
        default_value = "cpu"
    )]
    pub devices: Vec<Device>,
    /// Metrics, comma-separated: perplexity, accuracy_score (the shipped multiple-choice set), latency (ms),
    /// throughput (tokens/s), size_on_disk (bytes), memory (peak RSS, bytes; on gpu also the peak device memory).
    #[arg(
        long = "tasks",
        value_delimiter = ',',
        default_value = "perplexity,latency,throughput,size_on_disk"
    )]
    pub tasks: Vec<String>,
    /// Prompt tokens of latency, throughput and memory, swept: repeatable or comma-separated.
    #[arg(long = "prompt_length", value_delimiter = ',', default_value = "128")]
    pub prompt_lengths: Vec<usize>,
    /// What latency and throughput time, swept: decode (one token after the prompt) and/or prefill.
    #[arg(
        long = "mode",
        value_enum,
        value_delimiter = ',',
        default_value = "decode"
    )]
    pub modes: Vec<Mode>,
    /// Tokens per perplexity window.
    #[arg(long = "max_length", default_value_t = 512)]
    pub max_length: usize,
    /// At most this many perplexity windows and multiple-choice questions.
    #[arg(long = "limit")]
    pub limit: Option<usize>,
    /// Untimed runs before the latency samples.
    #[arg(long = "warmup_num", default_value_t = 10)]
    pub warmup_num: usize,
    /// Timed runs.
    #[arg(long = "repeat_test_num", default_value_t = 20)]
    pub repeat_test_num: usize,
    /// Folder for benchmark.csv, .md, .json, .png and .svg.
    #[arg(long = "output_path", short = 'o', default_value = "benchmark-output")]
    pub output_path: PathBuf,
    #[command(flatten)]
    pub config_file: ConfigFileArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Decode,
    Prefill,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Decode => "decode",
            Mode::Prefill => "prefill",
        }
    }
}

/// A `--model_name_or_path` value: its label and the model as the evaluators take it.
#[derive(Debug, Clone)]
struct Subject {
    label: String,
    path: PathBuf,
    model: Model,
}

/// One cell of the sweep: a model, a device and a setting.
#[derive(Debug, Clone, PartialEq)]
struct Cell {
    model: usize,
    device: Device,
    prompt_length: usize,
    mode: Mode,
}

/// A table column: Olive's `<metric>-<sub_type>` key and its unit.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    key: String,
    unit: &'static str,
}

impl Column {
    fn header(&self) -> String {
        match self.unit {
            "" => self.key.clone(),
            unit => format!("{} ({unit})", self.key),
        }
    }
}

/// Splits `LABEL=PATH` (a label has no `/`), else labels `PATH` by its last component.
fn label_of(spec: &str) -> Result<(String, PathBuf)> {
    if let Some((label, path)) = spec.split_once('=') {
        if !label.is_empty() && !label.contains('/') && !path.is_empty() {
            return Ok((label.to_owned(), PathBuf::from(path)));
        }
    }
    let path = PathBuf::from(spec);
    let label = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow!("--model_name_or_path {spec:?}: no last path component to label it by; give LABEL=PATH")
        })?;
    Ok((label, path))
}

/// Resolves every `--model_name_or_path` (a missing path or a folder of no known kind is an error).
fn subjects(specs: &[String]) -> Result<Vec<Subject>> {
    let mut out: Vec<Subject> = Vec::new();
    for spec in specs {
        let (label, path) = label_of(spec)?;
        let at = || format!("--model_name_or_path {spec:?}");
        if !path.exists() {
            bail!("{}: {} does not exist", at(), path.display());
        }
        if out.iter().any(|s| s.label == label) {
            bail!(
                "{}: the label {label:?} is already used by another model; give LABEL=PATH",
                at()
            );
        }
        let model = if olive_runtime::is_onnx_folder(&path) {
            Model::new(kinds::ONNX, &path)
        } else {
            Model::new(kinds::HF, resolve_hf_input(&path).with_context(at)?)
        };
        out.push(Subject { label, path, model });
    }
    Ok(out)
}

/// The unit of a task's values.
fn unit(task: &str) -> &'static str {
    match task {
        "latency" => "ms",
        "throughput" => "tokens/s",
        "size_on_disk" | "memory" => "bytes",
        "accuracy_score" => "fraction",
        _ => "",
    }
}

/// Whether a task's value depends on the prompt length and mode.
fn per_setting(task: &str) -> bool {
    matches!(task, "latency" | "throughput" | "memory")
}

/// Olive's metric for `task` in cell `cell`.
fn metric_of(task: &str, cell: &Cell, args: &BenchmarkArgs) -> Result<Value> {
    let timing = json!({"warmup_num": args.warmup_num, "repeat_test_num": args.repeat_test_num,
                        "mode": cell.mode.name(), "prompt_length": cell.prompt_length});
    let subs = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|n| json!({"name": n, "metric_config": timing}))
            .collect()
    };
    let mut limited = serde_json::Map::new();
    Ok(match task {
        "perplexity" => {
            limited.insert("window".into(), json!(args.max_length));
            if let Some(n) = args.limit {
                limited.insert("max_windows".into(), json!(n));
            }
            json!({"name": task, "type": "accuracy",
                   "sub_types": [{"name": "perplexity", "metric_config": limited}]})
        }
        "accuracy_score" => {
            if let Some(n) = args.limit {
                limited.insert("max_samples".into(), json!(n));
            }
            json!({"name": task, "type": "accuracy",
                   "sub_types": [{"name": "accuracy_score", "metric_config": limited}]})
        }
        "latency" => json!({"name": task, "type": "latency",
                            "sub_types": subs(&["avg", "p50", "p90", "p99", "max"])}),
        "throughput" => json!({"name": task, "type": "throughput", "sub_types": subs(&["avg"])}),
        "size_on_disk" => {
            json!({"name": task, "type": "size_on_disk", "sub_types": [{"name": "bytes"}]})
        }
        "memory" => {
            let config = json!({"prompt_length": cell.prompt_length});
            let mut subs = vec![json!({"name": "peak_rss", "metric_config": config})];
            if cell.device == Device::Gpu {
                subs.push(json!({"name": "peak_device_memory", "metric_config": config}));
            }
            json!({"name": task, "type": "memory", "sub_types": subs})
        }
        other => bail!("--tasks {other:?}: choose among {}", TASKS.join(", ")),
    })
}

/// The checked flags: tasks, cells and each cell's metrics, before anything runs.
struct Sweep {
    tasks: Vec<String>,
    subjects: Vec<Subject>,
    cells: Vec<Cell>,
    /// Every metric of each cell (the first cell's are also the dry run's workflow).
    metrics: Vec<Vec<Metric>>,
    columns: Vec<Column>,
}

/// Checks the flags and builds every cell's metrics, naming the flag or model at fault.
fn plan(args: &BenchmarkArgs) -> Result<Sweep> {
    let mut tasks: Vec<String> = Vec::new();
    for t in &args.tasks {
        let t = t.trim();
        if !TASKS.contains(&t) {
            bail!("--tasks {t:?}: choose among {}", TASKS.join(", "));
        }
        if tasks.iter().any(|x| x == t) {
            bail!("--tasks {t:?}: listed twice");
        }
        tasks.push(t.to_owned());
    }
    if let Some(&n) = args.prompt_lengths.iter().find(|&&n| n == 0) {
        bail!("--prompt_length {n}: must be at least 1");
    }
    if args.max_length < 2 {
        bail!(
            "--max_length {}: a perplexity window needs 2 or more tokens",
            args.max_length
        );
    }
    if args.limit == Some(0) {
        bail!("--limit 0: give at least 1 (or leave it out for all windows and questions)");
    }
    let mut devices = args.devices.clone();
    devices.dedup();
    let mut lengths = args.prompt_lengths.clone();
    lengths.dedup();
    let mut modes = args.modes.clone();
    modes.dedup();
    // Settings change only latency, throughput and memory: one setting when none of them is measured.
    let settings: Vec<(usize, Mode)> = if tasks.iter().any(|t| per_setting(t)) {
        lengths
            .iter()
            .flat_map(|&l| modes.iter().map(move |&m| (l, m)))
            .collect()
    } else {
        vec![(lengths[0], modes[0])]
    };
    let subjects = subjects(&args.models)?;
    if let Some(onnx) = subjects.iter().find(|s| s.model.kind == kinds::ONNX) {
        if devices.contains(&Device::Gpu) {
            bail!(
                "--device gpu runs Hugging Face folders on olive-rs's CUDA kernels; {} is an ONNX model, which runs \
                 through ONNX Runtime's CPU execution provider here",
                onnx.path.display()
            );
        }
    }
    let mut cells = Vec::new();
    let mut metrics = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for &device in &devices {
            for &(prompt_length, mode) in &settings {
                let cell = Cell {
                    model: i,
                    device,
                    prompt_length,
                    mode,
                };
                let at = || {
                    format!(
                        "model {:?} ({}), --device {}, --prompt_length {prompt_length}, --mode {}",
                        s.label,
                        s.path.display(),
                        device.name(),
                        mode.name()
                    )
                };
                let values = tasks
                    .iter()
                    .map(|t| -> Result<Metric> {
                        Ok(serde_json::from_value(metric_of(t, &cell, args)?)?)
                    })
                    .collect::<Result<Vec<_>>>()
                    .with_context(at)?;
                validate(&values, &[], None).with_context(at)?;
                metrics.push(values);
                cells.push(cell);
            }
        }
    }
    // Every cell's sub types, in order of first appearance (a GPU cell adds the device memory).
    let mut columns: Vec<Column> = Vec::new();
    for m in metrics.iter().flatten() {
        for s in &m.sub_types {
            let key = crate::evaluate::result::joint_key(&m.name, &s.name);
            if !columns.iter().any(|c| c.key == key) {
                columns.push(Column {
                    key,
                    unit: unit(&m.name),
                });
            }
        }
    }
    Ok(Sweep {
        tasks,
        subjects,
        cells,
        metrics,
        columns,
    })
}

/// A measured cell.
#[derive(Debug, Clone)]
struct Row {
    label: String,
    path: PathBuf,
    device: Device,
    prompt_length: usize,
    mode: Mode,
    result: MetricResult,
}

impl Row {
    fn name(&self) -> String {
        format!(
            "{} · {} · {} tok {}",
            self.label,
            self.device.name(),
            self.prompt_length,
            self.mode.name()
        )
    }
}

/// Measures `wanted` of `cell`, saying so on stderr.
fn run_cell(sweep: &Sweep, cell: &Cell, wanted: &[Metric]) -> Result<MetricResult> {
    let subject = &sweep.subjects[cell.model];
    if wanted.is_empty() {
        return Ok(MetricResult::default());
    }
    let plans: Vec<Plan> = validate(wanted, &[], None)?;
    let names: Vec<&str> = wanted.iter().map(|m| m.name.as_str()).collect();
    eprintln!(
        "benchmark: {} on {} (prompt {}, {}): {}",
        subject.label,
        cell.device.name(),
        cell.prompt_length,
        cell.mode.name(),
        names.join(", ")
    );
    let options = Options {
        device: cell.device,
        ..Options::default()
    };
    let evaluation = evaluate_with(&plans, &subject.model, &options).with_context(|| {
        format!(
            "benchmarking {:?} ({})",
            subject.label,
            subject.path.display()
        )
    })?;
    Ok(evaluation.result)
}

/// Evaluates every cell; metrics that do not depend on the setting are measured once per model and device.
/// Memory goes first, for every cell, before this process loads any model: Linux records the spawning process's
/// peak RSS into a child's at exec, so a probe spawned after a big model was loaded here would report that peak.
fn measure(sweep: &Sweep) -> Result<Vec<Row>> {
    let is_memory = |m: &&Metric| m.name == "memory";
    let mut memory = Vec::new();
    for (cell, metrics) in sweep.cells.iter().zip(&sweep.metrics) {
        let wanted: Vec<Metric> = metrics.iter().filter(is_memory).cloned().collect();
        memory.push(run_cell(sweep, cell, &wanted)?);
    }
    let mut rows: Vec<Row> = Vec::new();
    for ((cell, metrics), memory) in sweep.cells.iter().zip(&sweep.metrics).zip(memory) {
        let subject = &sweep.subjects[cell.model];
        let earlier = rows
            .iter()
            .position(|r| r.label == subject.label && r.device == cell.device);
        let wanted: Vec<Metric> = metrics
            .iter()
            .filter(|m| !is_memory(m) && (earlier.is_none() || per_setting(&m.name)))
            .cloned()
            .collect();
        let mut result = run_cell(sweep, cell, &wanted)?;
        result.0.extend(memory.0);
        if let Some(i) = earlier {
            for (k, v) in &rows[i].result.0 {
                result.0.entry(k.clone()).or_insert(*v);
            }
        }
        rows.push(Row {
            label: subject.label.clone(),
            path: subject.path.clone(),
            device: cell.device,
            prompt_length: cell.prompt_length,
            mode: cell.mode,
            result,
        });
    }
    Ok(rows)
}

/// A value as the tables print it: integers whole, others to 5 significant digits at most.
fn cell_text(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => format!("{}", v as i64),
        Some(v) => {
            let digits = (4 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
            let text = format!("{v:.digits$}");
            match text.contains('.') {
                true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
                false => text,
            }
        }
    }
}

fn value(row: &Row, key: &str) -> Option<f64> {
    row.result.0.get(key).map(|r| r.value)
}

const KEY_HEADERS: [&str; 4] = ["model", "device", "prompt_length", "mode"];

fn key_fields(row: &Row) -> [String; 4] {
    [
        row.label.clone(),
        row.device.name().to_owned(),
        row.prompt_length.to_string(),
        row.mode.name().to_owned(),
    ]
}

/// RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// One line per cell; values at full precision.
fn to_csv(columns: &[Column], rows: &[Row]) -> String {
    let mut out: Vec<String> = KEY_HEADERS.iter().map(|h| (*h).to_owned()).collect();
    out.extend(columns.iter().map(|c| csv_field(&c.header())));
    let mut text = out.join(",") + "\n";
    for row in rows {
        let mut fields: Vec<String> = key_fields(row).iter().map(|f| csv_field(f)).collect();
        fields.extend(columns.iter().map(|c| match value(row, &c.key) {
            Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => format!("{}", v as i64),
            Some(v) => format!("{v}"),
            None => String::new(),
        }));
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    text
}

/// A Markdown table, one row per cell; `|` in labels escaped.
fn to_markdown(columns: &[Column], rows: &[Row]) -> String {
    let esc = |t: &str| t.replace('|', "\\|");
    let mut text = String::from("|");
    for h in KEY_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(columns.iter().map(Column::header))
    {
        let _ = write!(text, " {} |", esc(&h));
    }
    text.push_str("\n| --- | --- | ---: | --- |");
    text.push_str(&" ---: |".repeat(columns.len()));
    text.push('\n');
    for row in rows {
        text.push('|');
        for f in key_fields(row) {
            let _ = write!(text, " {} |", esc(&f));
        }
        for c in columns {
            let _ = write!(text, " {} |", cell_text(value(row, &c.key)));
        }
        text.push('\n');
    }
    text
}

fn to_json(sweep: &Sweep, rows: &[Row], args: &BenchmarkArgs) -> Value {
    let columns: Vec<Value> = sweep
        .columns
        .iter()
        .map(|c| json!({"key": c.key, "unit": c.unit, "header": c.header()}))
        .collect();
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"model": r.label, "model_path": r.path, "device": r.device.name(),
                   "prompt_length": r.prompt_length, "mode": r.mode.name(), "metrics": r.result})
        })
        .collect();
    json!({
        "tasks": sweep.tasks,
        "settings": {"max_length": args.max_length, "limit": args.limit, "warmup_num": args.warmup_num,
                     "repeat_test_num": args.repeat_test_num},
        "columns": columns,
        "rows": rows,
    })
}

/// The sub type each task's plot panel shows.
fn headline(task: &str) -> &'static str {
    match task {
        "perplexity" => "perplexity-perplexity",
        "accuracy_score" => "accuracy_score-accuracy_score",
        "latency" => "latency-avg",
        "throughput" => "throughput-avg",
        "size_on_disk" => "size_on_disk-bytes",
        _ => "memory-peak_rss",
    }
}

const FAMILY: &str = "sans-serif"; // the family crate::search::register_font embeds
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_size(tasks: usize, rows: usize) -> (u32, u32) {
    let grid_rows = tasks.div_ceil(2).max(1) as u32;
    (1300, 50 + grid_rows * (90 + 26 * rows as u32).max(220))
}

/// One horizontal bar panel per task (its headline sub type), one bar per cell, coloured by model.
fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    tasks: &[String],
    rows: &[Row],
) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    if rows.is_empty() {
        bail!("no measured cells to plot");
    }
    area.fill(&WHITE).map_err(e)?;
    let area = area
        .titled("olive-host benchmark", (FAMILY, 24))
        .map_err(e)?;
    let cols = if tasks.len() > 1 { 2 } else { 1 };
    let panels = area.split_evenly((tasks.len().div_ceil(cols), cols));
    let labels: Vec<String> = rows.iter().map(Row::name).collect();
    let mut models: Vec<&str> = Vec::new();
    for r in rows {
        if !models.contains(&r.label.as_str()) {
            models.push(&r.label);
        }
    }
    for (task, panel) in tasks.iter().zip(&panels) {
        let key = headline(task);
        let values: Vec<f64> = rows.iter().map(|r| value(r, key).unwrap_or(0.0)).collect();
        // fractions on a full 0..1 axis
        let floor = if task == "accuracy_score" { 0.8 } else { 1e-9 };
        let hi = values.iter().copied().fold(floor, f64::max) * 1.25;
        let unit = match unit(task) {
            "" => String::new(),
            u => format!(" ({u})"),
        };
        let better = if task == "perplexity"
            || matches!(task.as_str(), "latency" | "size_on_disk" | "memory")
        {
            "lower is better"
        } else {
            "higher is better"
        };
        let n = rows.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{key}{unit}, {better}"), (FAMILY, 17))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(250)
            // numeric ranges are inclusive in plotters: 0..n-1 is n slots, the first row on top
            .build_cartesian_2d(0.0..hi, (0..n - 1).into_segmented())
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(n - 1 - i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| cell_text(Some(*v)))
            .x_labels(5)
            .label_style((FAMILY, 13))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(rows.iter().zip(&values).enumerate().map(|(i, (r, &v))| {
                let colour = models.iter().position(|m| *m == r.label).unwrap_or(0);
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(n - 1 - i)),
                        (v, SegmentValue::Exact(n - i)),
                    ],
                    PALETTE[colour % PALETTE.len()].filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(e)?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                Text::new(
                    format!(" {}", cell_text(Some(v))),
                    (v, SegmentValue::CenterOf(n - 1 - i)),
                    TextStyle::from((FAMILY, 13).into_font()).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Left,
                            plotters::style::text_anchor::VPos::Center,
                        ),
                    ),
                )
            }))
            .map_err(e)?;
    }
    Ok(())
}

/// The plot as PNG or SVG bytes (plotters' bitmap encoder writes to a path: a temp file, read back).
fn plot(svg: bool, tasks: &[String], rows: &[Row]) -> Result<Vec<u8>> {
    crate::search::register_font()?;
    let size = plot_size(tasks.len(), rows.len());
    if svg {
        let mut text = String::new();
        {
            let area = SVGBackend::with_string(&mut text, size).into_drawing_area();
            draw(&area, tasks, rows)?;
            area.present().map_err(|e| anyhow!("{e}"))?;
        }
        return Ok(text.into_bytes());
    }
    let tmp = tempfile::Builder::new()
        .suffix(".png")
        .tempfile()
        .context("creating a temp file for the plot")?;
    {
        let area = BitMapBackend::new(tmp.path(), size).into_drawing_area();
        draw(&area, tasks, rows)?;
        area.present().map_err(|e| anyhow!("{e}"))?;
    }
    std::fs::read(tmp.path()).with_context(|| format!("reading {}", tmp.path().display()))
}

pub fn run(args: BenchmarkArgs) -> Result<()> {
    let sweep = plan(&args)?;
    // Absolute paths: `olive-host run` reads relative ones from the config file's folder.
    let model_path = std::path::absolute(&sweep.subjects[0].model.path)?;
    let input_model = match sweep.subjects[0].model.kind.as_str() {
        kinds::ONNX => json!({"type": "ONNXModel", "model_path": model_path}),
        _ => json!({"type": "HfModel", "model_path": model_path}),
    };
    let mut wf = workflow(
        input_model,
        "cpu",
        "CPUExecutionProvider",
        &[],
        &std::path::absolute(&args.output_path)?,
        crate::logging::current_level(),
    );
    wf["evaluators"] = json!({"benchmark": {"metrics": sweep.metrics[0]}});
    wf["evaluator"] = json!("benchmark");
    wf["evaluate_input_model"] = json!(true);
    if args.config_file.dry_run(&wf, &args.output_path)? {
        return Ok(());
    }
    if args.devices.contains(&Device::Gpu) {
        first_gpu()?;
    }
    let rows = measure(&sweep)?;
    let markdown = to_markdown(&sweep.columns, &rows);
    // Everything is made before the folder is: a failed run leaves none.
    let files = [
        ("benchmark.csv", to_csv(&sweep.columns, &rows).into_bytes()),
        ("benchmark.md", markdown.clone().into_bytes()),
        (
            "benchmark.json",
            serde_json::to_vec_pretty(&to_json(&sweep, &rows, &args))?,
        ),
        ("benchmark.png", plot(false, &sweep.tasks, &rows)?),
        ("benchmark.svg", plot(true, &sweep.tasks, &rows)?),
    ];
    let out = &args.output_path;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, bytes) in &files {
        write_atomic(&out.join(name), bytes)?;
    }
    args.config_file.save(&wf, out)?;
    print!("{markdown}");
    println!("Benchmark written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests;
