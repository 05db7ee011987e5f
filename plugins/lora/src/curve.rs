//! The loss curve of a training run: loss.csv (one row per optimizer step) and loss.png (training and evaluation
//! loss over the steps, the learning rate below), drawn with plotters; text uses DejaVu Sans embedded from the
//! `dejavu` crate through plotters' ab_glyph backend, so no system font or fontconfig is needed.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One optimizer step of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// 1-based optimizer step.
    pub step: usize,
    /// Mean training loss of the step.
    pub loss: f32,
    /// Learning rate the step used.
    pub learning_rate: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens per second over the step.
    pub tokens_per_second: f32,
    /// Loss on the held-out rows after the step, when evaluated.
    pub eval_loss: Option<f32>,
}

/// The CSV header.
pub const CSV_HEADER: &str = "step,loss,learning_rate,grad_norm,tokens_per_second,eval_loss";

/// loss.csv's text: [`CSV_HEADER`], a step-0 row holding only the evaluation loss before training (when given),
/// then one row per point (`eval_loss` empty when not evaluated).
pub fn csv(base_eval: Option<f32>, points: &[CurvePoint]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    if let Some(e) = base_eval {
        let _ = writeln!(out, "0,,,,,{e}");
    }
    for p in points {
        let eval = p.eval_loss.map(|e| e.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{eval}",
            p.step, p.loss, p.learning_rate, p.grad_norm, p.tokens_per_second
        );
    }
    out
}

const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process.
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())
        })
        .clone()
}

/// The [min, max] of `values`, widened when flat so the axis has a span.
fn span(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1e-6);
    (lo - pad, hi + pad)
}

/// Draws loss.png: training loss (and evaluation loss, from `base_eval` at step 0 when given) against the step,
/// learning rate below.
pub fn write_png(
    path: &Path,
    base_eval: Option<f32>,
    points: &[CurvePoint],
    title: &str,
) -> Result<(), String> {
    register_font()?;
    let err =
        |e: &dyn std::fmt::Display| format!("{}: cannot draw the loss curve: {e}", path.display());
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(470);
    let last = points.last().map_or(1, |p| p.step).max(1);
    let steps = 0f32..last as f32 + 0.5;
    // Integer steps: no more labels than steps.
    let x_labels = (last + 1).min(11);
    let evals: Vec<(f32, f32)> = base_eval
        .map(|e| (0.0, e))
        .into_iter()
        .chain(
            points
                .iter()
                .filter_map(|p| p.eval_loss.map(|e| (p.step as f32, e))),
        )
        .collect();
    let (lo, hi) = span(
        points
            .iter()
            .map(|p| p.loss)
            .chain(evals.iter().map(|e| e.1)),
    );
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(steps.clone(), lo..hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(x_labels)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("loss")
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.step as f32, p.loss)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("training loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    if !evals.is_empty() {
        chart
            .draw_series(LineSeries::new(evals.iter().copied(), RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("evaluation loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .draw_series(
                evals
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, RED.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let (lr_lo, lr_hi) = span(points.iter().map(|p| p.learning_rate));
    let mut lr_chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(steps, lr_lo.min(0.0)..lr_hi)
        .map_err(|e| err(&e))?;
    lr_chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(x_labels)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("learning rate")
        .y_labels(5)
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(|e| err(&e))?;
    lr_chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.step as f32, p.learning_rate)),
            GREEN.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(n: usize, eval_every: usize) -> Vec<CurvePoint> {
        (1..=n)
            .map(|step| CurvePoint {
                step,
                loss: 3.0 / step as f32 + 1.0,
                learning_rate: 2e-4 * (step as f32 / n as f32).min(1.0),
                grad_norm: 0.5,
                tokens_per_second: 800.0,
                eval_loss: (step % eval_every == 0).then(|| 3.5 / step as f32 + 1.1),
            })
            .collect()
    }

    #[test]
    fn csv_has_a_row_per_step_and_blank_eval_cells() {
        let text = csv(None, &points(4, 2));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1], "1,4,0.00005,0.5,800,");
        assert!(
            lines[2].starts_with("2,2.5,0.0001,0.5,800,2.85"),
            "{}",
            lines[2]
        );
        let text = csv(Some(4.5), &points(4, 2));
        assert_eq!(text.lines().nth(1), Some("0,,,,,4.5"));
    }

    /// The PNG decodes at its size and has dark pixels in the label areas (text was drawn) and blue ones (the curve).
    #[test]
    fn the_png_has_text_and_a_curve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        write_png(&path, Some(4.6), &points(30, 5), "LoRA fine-tuning").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1000, 700));
        // The caption band above the upper chart holds only text.
        let caption_dark = (0..1000)
            .flat_map(|x| (5..35).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count();
        assert!(
            caption_dark > 50,
            "no caption text: {caption_dark} dark pixels"
        );
        let blue = img.pixels().filter(|p| p.0 == [0, 0, 255]).count();
        let red = img.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        assert!(blue > 500 && red > 100, "blue {blue}, red {red}");
    }

    #[test]
    fn a_single_flat_point_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let mut p = points(1, 1);
        p[0].learning_rate = 0.0;
        write_png(&path, None, &p, "one step").unwrap();
        assert!(path.metadata().unwrap().len() > 1000);
    }
}
