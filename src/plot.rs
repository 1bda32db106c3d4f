//! Training curves: the validations a run logged in `RUN_DIR/metrics.jsonl` (one JSON line per
//! validation: step, mean training loss since the previous one, validation metrics) drawn as
//! one SVG with four panels (training loss, validation AUC, GAUC and logloss against steps), one
//! line per run, so several runs compare on one chart.

use crate::error::{Error, Result};
use crate::train::EvalRecord;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One run's validations, in the order they were logged.
#[derive(Debug, Clone)]
pub struct RunCurves {
    /// The label of the run in the legend (its directory name).
    pub name: String,
    /// Its validations.
    pub evals: Vec<EvalRecord>,
}

/// The metrics file of a run directory.
pub fn metrics_file(run_dir: &Path) -> PathBuf {
    crate::checkpoint::RunDir::new(run_dir).metrics()
}

/// Reads a run directory's `metrics.jsonl`.
///
/// # Errors
/// [`Error::Io`] naming a missing or unreadable file; [`Error::Value`] naming the line that is
/// not a validation record; [`Error::InvalidArgument`] when the file holds no validation.
pub fn read_run(run_dir: &Path) -> Result<RunCurves> {
    let path = metrics_file(run_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut evals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: EvalRecord = serde_json::from_str(line).map_err(|e| Error::Value {
            path: path.clone(),
            row: i,
            column: "(line)".into(),
            reason: format!("not a validation record: {e}"),
        })?;
        evals.push(rec);
    }
    if evals.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no validation logged yet (train validates every epoch or every `eval_every` steps)",
            path.display()
        )));
    }
    let name = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run_dir.display().to_string());
    Ok(RunCurves { name, evals })
}

/// The four panels: title, the value of a validation (`None`: not defined, e.g. AUC with one
/// class), and whether the metric rises as training goes (its legend then sits low, away from
/// where the curves end).
type Panel = (&'static str, fn(&EvalRecord) -> Option<f64>, bool);

const PANELS: [Panel; 4] = [
    ("training loss", |r| Some(r.train_loss), false),
    ("validation AUC", |r| r.valid.auc, true),
    ("validation GAUC", |r| r.valid.gauc, true),
    ("validation logloss", |r| Some(r.valid.logloss), false),
];

/// The SVG text of `runs`' curves (`width` × `height` pixels).
///
/// # Errors
/// [`Error::InvalidArgument`] for no runs, or a drawing error.
pub fn render_svg(runs: &[RunCurves], width: u32, height: u32) -> Result<String> {
    if runs.is_empty() {
        return Err(Error::InvalidArgument("no runs to plot".into()));
    }
    let draw_err = |e: String| Error::InvalidArgument(format!("drawing the curves: {e}"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let areas = root.split_evenly((2, 2));
        let max_step = runs
            .iter()
            .flat_map(|r| r.evals.iter().map(|e| e.step))
            .max()
            .unwrap_or(1)
            .max(1);
        for (area, (title, value, rises)) in areas.iter().zip(PANELS) {
            let ys: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.evals.iter().filter_map(value))
                .filter(|y| y.is_finite())
                .collect();
            let (lo, hi) = ys
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                    (a.min(y), b.max(y))
                });
            let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
            let pad = ((hi - lo) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(0u64..max_step, (lo - pad)..(hi + pad))
                .map_err(|e| draw_err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| draw_err(e.to_string()))?;
            for (i, run) in runs.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let pts: Vec<(u64, f64)> = run
                    .evals
                    .iter()
                    .filter_map(|e| value(e).filter(|y| y.is_finite()).map(|y| (e.step, y)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| draw_err(e.to_string()))?
                    .label(run.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| draw_err(e.to_string()))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(if rises {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .draw()
                .map_err(|e| draw_err(e.to_string()))?;
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    Ok(svg)
}

/// Draws `runs`' curves into `out` (SVG), atomically.
///
/// # Errors
/// As [`render_svg`]; [`Error::Io`] naming `out`.
pub fn plot_runs(runs: &[RunCurves], out: &Path) -> Result<()> {
    let svg = render_svg(runs, 1100, 760)?;
    crate::atomic::atomic_write_bytes(out, svg.as_bytes())
}
