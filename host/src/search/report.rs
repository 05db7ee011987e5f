//! The result of a search: every trial with its metrics, the Pareto front over the objectives (Olive's
//! `Footprint._mark_pareto_frontier`) and the best trial, as a Markdown table, JSON, and a PNG/SVG scatter plot
//! drawn with plotters (text in DejaVu Sans embedded from the `dejavu` crate, as plugins/lora's loss curve does).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::{json, Map, Value};

use super::objective::{compare, meets_goals, pareto_front, Objective};
use super::param::IGNORED;
use super::space::PassPoint;
use super::strategy::{Outcome, Search};
use crate::files::{write_atomic, write_atomic_with};

/// One recorded trial.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The trial id.
    pub trial: usize,
    /// The chosen values, per pass.
    pub point: Vec<PassPoint>,
    /// The objective values; None when the trial failed.
    pub metrics: Option<Vec<f64>>,
    /// Whether it ran every pass (pass-by-pass trials of earlier passes did not).
    pub complete: bool,
    /// Whether it is on the Pareto front (among complete trials).
    pub on_front: bool,
}

/// A search's trials, front and best.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The objectives, in priority order.
    pub objectives: Vec<Objective>,
    /// The recorded trials, in order.
    pub rows: Vec<Row>,
    /// The best complete trial by Olive's ranking.
    pub best: Option<usize>,
}

impl Report {
    /// The report of the recorded trials of `search`.
    pub fn new(search: &Search) -> Self {
        let passes = search.space().passes().len();
        let mut rows: Vec<Row> = search
            .results()
            .iter()
            .filter_map(|r| {
                let metrics = match r.outcome.as_ref()? {
                    Outcome::Metrics(m) => Some(m.clone()),
                    Outcome::Failed => None,
                };
                Some(Row {
                    trial: r.trial.id,
                    point: r.trial.point.clone(),
                    metrics,
                    complete: r.trial.configs.len() == passes,
                    on_front: false,
                })
            })
            .collect();
        let objectives = search.objectives().to_vec();
        let candidates: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].complete && rows[i].metrics.is_some())
            .collect();
        let values: Vec<&[f64]> = candidates
            .iter()
            .filter_map(|&i| rows[i].metrics.as_deref())
            .collect();
        let front = pareto_front(&objectives, &values);
        for (&i, on) in candidates.iter().zip(front) {
            rows[i].on_front = on;
        }
        let best = candidates
            .iter()
            .min_by(|&&a, &&b| {
                compare(
                    &objectives,
                    rows[a].metrics.as_deref(),
                    rows[b].metrics.as_deref(),
                )
            })
            .map(|&i| rows[i].trial);
        Self {
            objectives,
            rows,
            best,
        }
    }

    /// The trials as a Markdown table: point, objective values, front and best marks.
    pub fn table(&self) -> String {
        let mut out = String::from("| trial | point |");
        for o in &self.objectives {
            let _ = write!(
                out,
                " {} ({}) |",
                o.name,
                if o.higher_is_better {
                    "higher"
                } else {
                    "lower"
                }
            );
        }
        out.push_str(" pareto |\n|---:|---|");
        out.push_str(&"---:|".repeat(self.objectives.len()));
        out.push_str("---|\n");
        for r in &self.rows {
            let _ = write!(out, "| {} | {} |", r.trial, point_text(&r.point));
            match &r.metrics {
                Some(m) => m.iter().for_each(|v| {
                    let _ = write!(out, " {} |", number(*v));
                }),
                None => out.push_str(&" failed |".repeat(self.objectives.len())),
            }
            let mark = match (r.on_front, self.best == Some(r.trial)) {
                (true, true) => "yes (best)",
                (true, false) => "yes",
                (false, _) if !r.complete => "(earlier pass)",
                _ => "",
            };
            let _ = writeln!(out, " {mark} |");
        }
        out
    }

    /// The report as JSON: objectives, trials (point, metrics, goals met, on the front), the front's trial ids and
    /// the best.
    pub fn to_json(&self) -> Value {
        let trials: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let metrics = r.metrics.as_ref().map(|m| {
                    let named: Map<String, Value> =
                        self.objectives.iter().zip(m).map(|(o, v)| (o.name.clone(), json!(v))).collect();
                    Value::Object(named)
                });
                json!({
                    "id": r.trial,
                    "point": point_json(&r.point),
                    "status": if r.metrics.is_some() { "succeeded" } else { "failed" },
                    "metrics": metrics,
                    "complete": r.complete,
                    "meets_goals": r.metrics.as_deref().is_some_and(|m| meets_goals(&self.objectives, m)),
                    "pareto_front": r.on_front,
                })
            })
            .collect();
        let objectives: Vec<Value> = self
            .objectives
            .iter()
            .map(|o| {
                json!({"name": o.name, "higher_is_better": o.higher_is_better, "priority": o.priority, "goal": o.goal})
            })
            .collect();
        let front: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| r.on_front)
            .map(|r| r.trial)
            .collect();
        json!({"objectives": objectives, "trials": trials, "pareto_front": front, "best": self.best})
    }

    /// Writes [`Report::to_json`] to `path` (temp file, then rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json())?;
        write_atomic(path, text.as_bytes())
    }

    /// Draws the front as a PNG or SVG (by `path`'s extension): two objectives as a scatter with the front
    /// highlighted; more, on the top two priorities (the caption says so); one, against the trial id.
    pub fn write_plot(&self, path: &Path, title: &str) -> Result<()> {
        register_font()?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => write_atomic_with(path, |tmp| {
                let area = BitMapBackend::new(tmp, SIZE).into_drawing_area();
                self.draw(&area, title)?;
                area.present().map_err(|e| anyhow!("{e}"))
            }),
            Some("svg") => {
                let mut svg = String::new();
                {
                    let area = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                    self.draw(&area, title)?;
                    area.present().map_err(|e| anyhow!("{e}"))?;
                }
                write_atomic(path, svg.as_bytes())
            }
            _ => bail!(
                "{}: expected a .png or .svg file name for the plot",
                path.display()
            ),
        }
        .with_context(|| format!("{}: cannot draw the Pareto plot", path.display()))
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, title: &str) -> Result<()> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
        area.fill(&WHITE).map_err(e)?;
        let done: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.complete && r.metrics.is_some())
            .collect();
        let value = |r: &Row, i: usize| {
            r.metrics
                .as_ref()
                .and_then(|m| m.get(i))
                .copied()
                .unwrap_or(f64::NAN)
        };
        // (x, y) per row; one objective is drawn against the trial id.
        let (xy, x_desc, y_desc): (Vec<(f64, f64)>, String, String) = match self.objectives.len() {
            0 => bail!("no objectives to plot"),
            1 => (
                done.iter().map(|r| (r.trial as f64, value(r, 0))).collect(),
                "trial".into(),
                axis_name(&self.objectives[0]),
            ),
            _ => (
                done.iter().map(|r| (value(r, 0), value(r, 1))).collect(),
                axis_name(&self.objectives[0]),
                axis_name(&self.objectives[1]),
            ),
        };
        let caption = match self.objectives.len() {
            1 | 2 => format!(
                "{} trials, {} on the Pareto front",
                done.len(),
                done.iter().filter(|r| r.on_front).count()
            ),
            n => format!(
                "front over all {n} objectives, drawn on the top two priorities ({}, {})",
                self.objectives[0].name, self.objectives[1].name
            ),
        };
        let (x_lo, x_hi) = span(xy.iter().map(|p| p.0));
        let (y_lo, y_hi) = span(xy.iter().map(|p| p.1));
        let (top, bottom) = area.split_vertically(SIZE.1 - 30);
        bottom.titled(&caption, (FAMILY, 16)).map_err(e)?;
        let mut chart = ChartBuilder::on(&top)
            .caption(title, (FAMILY, 22))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .x_label_formatter(&|v| match self.objectives.len() {
                1 => format!("{v:.0}"),
                _ => number(*v),
            })
            .y_desc(y_desc)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(e)?;
        let mut front: Vec<(f64, f64)> = done
            .iter()
            .zip(&xy)
            .filter(|(r, _)| r.on_front)
            .map(|(_, p)| *p)
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(
                done.iter()
                    .zip(&xy)
                    .filter(|(r, _)| !r.on_front)
                    .map(|(_, &p)| Circle::new(p, 4, GREY_DOT.filled())),
            )
            .map_err(e)?
            .label("dominated")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, GREY_DOT.filled()));
        if self.objectives.len() == 2 {
            // Only a two-objective front is a curve in these axes.
            chart
                .draw_series(LineSeries::new(front.iter().copied(), RED.stroke_width(1)))
                .map_err(e)?;
        }
        chart
            .draw_series(front.iter().map(|&p| Circle::new(p, 6, RED.filled())))
            .map_err(e)?
            .label("Pareto front")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, RED.filled()));
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

const SIZE: (u32, u32) = (900, 650);
const FAMILY: &str = "sans-serif";
const GREY_DOT: RGBColor = RGBColor(140, 140, 140);

/// Registers the embedded font once per process.
pub(crate) fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn axis_name(o: &Objective) -> String {
    format!(
        "{} ({} is better)",
        o.name,
        if o.higher_is_better {
            "higher"
        } else {
            "lower"
        }
    )
}

/// The [min, max] of the finite values, widened so points sit inside the axes.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.01).max(1e-9);
    (lo - pad, hi + pad)
}

fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.4e}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

fn point_text(point: &[PassPoint]) -> String {
    let parts: Vec<String> = point
        .iter()
        .flat_map(|p| {
            p.values
                .iter()
                .filter(|(_, v)| v != IGNORED)
                .map(move |(path, v)| match v {
                    Value::String(text) => format!("{}.{path}={text}", p.pass),
                    _ => format!("{}.{path}={v}", p.pass),
                })
        })
        .collect();
    if parts.is_empty() {
        "(defaults)".into()
    } else {
        parts.join(", ")
    }
}

fn point_json(point: &[PassPoint]) -> Value {
    let passes: Map<String, Value> = point
        .iter()
        .map(|p| {
            let values: Map<String, Value> = p
                .values
                .iter()
                .filter(|(_, v)| v != IGNORED)
                .map(|(path, v)| (path.to_string(), v.clone()))
                .collect();
            (p.pass.clone(), Value::Object(values))
        })
        .collect();
    Value::Object(passes)
}
