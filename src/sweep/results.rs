//! Each trial's record (`trial.json`) and row, and the results table (`results.tsv`).

use super::*;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Not started.
    Pending,
    /// Started and not finished (or the sweep was killed while it ran).
    Running,
    /// Its `train` process exited with success.
    Done,
    /// Its `train` process failed.
    Failed,
}

impl TrialStatus {
    fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A trial's `trial.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The trial's name.
    pub trial: String,
    /// Its overrides (after the sweep's `--set`s).
    pub overrides: Vec<String>,
    /// Where it stands.
    pub status: TrialStatus,
    /// Why it failed: the last line of its log, or how the process ended.
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds of the `train` process that ended last (a resumed trial: since its resume).
    #[serde(default)]
    pub wall_secs: Option<f64>,
    /// `train` processes started for it.
    #[serde(default)]
    pub attempts: u32,
    /// Whether the last one continued from `last.safetensors` (`train --resume`).
    #[serde(default)]
    pub resumed: bool,
}

/// Reads `dir/trial.json`; `None` when there is none.
///
/// # Errors
/// [`Error::Corrupt`] naming a file that does not parse; [`Error::Io`].
pub fn read_record(dir: &Path) -> Result<Option<TrialRecord>> {
    let path = dir.join(TRIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::corrupt(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

pub(crate) fn write_record(dir: &Path, rec: &TrialRecord) -> Result<()> {
    let json = serde_json::to_string_pretty(rec).map_err(|e| invalid(e.to_string()))?;
    crate::atomic::atomic_write_bytes(&dir.join(TRIAL_FILE), json.as_bytes())
}

/// Whether a trial's run directory is complete: its record says done and its
/// `last.safetensors` exists.
pub fn is_complete(dir: &Path) -> bool {
    matches!(read_record(dir), Ok(Some(r)) if r.status == TrialStatus::Done)
        && RunDir::new(dir).last().is_file()
}

/// The validation with the best AUC (the first of equals, as the trainer keeps it); `None` when
/// no validation has an AUC.
pub fn best_eval(evals: &[EvalRecord]) -> Option<&EvalRecord> {
    let mut best: Option<&EvalRecord> = None;
    for e in evals {
        if let Some(a) = e.valid.auc {
            if best.and_then(|b| b.valid.auc).is_none_or(|b| a > b) {
                best = Some(e);
            }
        }
    }
    best
}

/// One row of the results table.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    /// The trial.
    pub trial: Trial,
    /// Its run directory.
    pub dir: PathBuf,
    /// Where it stands.
    pub status: TrialStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// The best validation AUC of its `metrics.jsonl`.
    pub best_auc: Option<f64>,
    /// The validation logloss at that validation.
    pub logloss: Option<f64>,
    /// The step of that validation.
    pub best_step: Option<u64>,
    /// Steps trained (from `last.safetensors`).
    pub steps: Option<u64>,
    /// Seconds of its last `train` process.
    pub wall_secs: Option<f64>,
}

/// Reads a trial's row from its run directory `out/<name>`: status from `trial.json`, the best
/// validation from `metrics.jsonl`, steps from `last.safetensors`' header. What is missing or
/// unreadable is left empty.
pub fn read_row(out: &Path, trial: &Trial) -> TrialRow {
    let dir = out.join(&trial.name);
    let rec = read_record(&dir).ok().flatten();
    let curves = plot::metrics_file(&dir)
        .exists()
        .then(|| plot::read_run(&dir).ok())
        .flatten();
    let best = curves.as_ref().and_then(|c| best_eval(&c.evals));
    let steps = read_metadata(&RunDir::new(&dir).last())
        .ok()
        .and_then(|m| m.get(KEY_PROGRESS).cloned())
        .and_then(|p| serde_json::from_str::<TrainerState>(&p).ok())
        .map(|s| s.step);
    TrialRow {
        trial: trial.clone(),
        status: rec.as_ref().map_or(TrialStatus::Pending, |r| r.status),
        reason: rec.as_ref().and_then(|r| r.reason.clone()),
        wall_secs: rec.as_ref().and_then(|r| r.wall_secs),
        best_auc: best.and_then(|b| b.valid.auc),
        logloss: best.map(|b| b.valid.logloss),
        best_step: best.map(|b| b.step),
        steps,
        dir,
    }
}

/// The order of the table: finished trials with an AUC by AUC, highest first; then finished ones
/// without, failed, running and pending ones; ties in trial order. Indices into `rows`.
pub fn ranking(rows: &[TrialRow]) -> Vec<usize> {
    let class = |r: &TrialRow| match (r.status, r.best_auc) {
        (TrialStatus::Done, Some(_)) => 0,
        (TrialStatus::Done, None) => 1,
        (TrialStatus::Failed, _) => 2,
        (TrialStatus::Running, _) => 3,
        (TrialStatus::Pending, _) => 4,
    };
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by(|&a, &b| {
        let (ra, rb) = (&rows[a], &rows[b]);
        class(ra).cmp(&class(rb)).then_with(|| {
            let (x, y) = (ra.best_auc.unwrap_or(0.0), rb.best_auc.unwrap_or(0.0));
            if class(ra) == 0 {
                y.total_cmp(&x)
            } else {
                std::cmp::Ordering::Equal
            }
        })
    });
    idx
}

/// The best trial: the first of [`ranking`] when it finished with an AUC.
pub fn best(rows: &[TrialRow]) -> Option<&TrialRow> {
    let first = &rows[*ranking(rows).first()?];
    (first.status == TrialStatus::Done && first.best_auc.is_some()).then_some(first)
}

/// A table cell: tabs and line breaks become spaces.
fn cell(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fn status_text(r: &TrialRow) -> String {
    match (&r.status, &r.reason) {
        (TrialStatus::Failed, Some(why)) => format!("failed: {why}"),
        (s, _) => s.name().to_string(),
    }
}

/// The results table as TSV: a header, then one row per trial in [`ranking`] order. Columns:
/// `rank` (1 = the best; `-` for a trial without an AUC), `trial`, one column per grid key
/// (its value), `best_valid_auc`, `valid_logloss` (at that validation), `best_step`, `steps`,
/// `wall_secs`, `status` (`done`, `failed: REASON`, `running`, `pending`). Numbers are written
/// in full (shortest round-trip form); an empty cell is `NA`.
pub fn format_tsv(axes: &[GridAxis], rows: &[TrialRow]) -> String {
    let mut head = vec!["rank".to_string(), "trial".to_string()];
    head.extend(axes.iter().map(|a| cell(&a.key)));
    head.extend(
        [
            "best_valid_auc",
            "valid_logloss",
            "best_step",
            "steps",
            "wall_secs",
            "status",
        ]
        .map(String::from),
    );
    let mut out = head.join("\t");
    out.push('\n');
    let na = || "NA".to_string();
    for (k, &i) in ranking(rows).iter().enumerate() {
        let r = &rows[i];
        let ranked = r.status == TrialStatus::Done && r.best_auc.is_some();
        let mut line = vec![
            if ranked {
                (k + 1).to_string()
            } else {
                "-".into()
            },
            r.trial.name.clone(),
        ];
        line.extend(r.trial.values.iter().map(|v| cell(v)));
        line.push(r.best_auc.map_or_else(na, |x| x.to_string()));
        line.push(r.logloss.map_or_else(na, |x| x.to_string()));
        line.push(r.best_step.map_or_else(na, |x| x.to_string()));
        line.push(r.steps.map_or_else(na, |x| x.to_string()));
        line.push(r.wall_secs.map_or_else(na, |x| format!("{x:.1}")));
        line.push(cell(&status_text(r)));
        out.push_str(&line.join("\t"));
        out.push('\n');
    }
    out
}

/// The results table for a terminal: the columns of [`format_tsv`], aligned, metrics rounded.
pub fn format_pretty(axes: &[GridAxis], rows: &[TrialRow]) -> String {
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["rank".to_string(), "trial".to_string()];
    head.extend(axes.iter().map(|a| a.key.clone()));
    head.extend(
        [
            "valid AUC",
            "logloss",
            "best step",
            "steps",
            "secs",
            "status",
        ]
        .map(String::from),
    );
    table.push(head);
    let na = || "-".to_string();
    for (k, &i) in ranking(rows).iter().enumerate() {
        let r = &rows[i];
        let ranked = r.status == TrialStatus::Done && r.best_auc.is_some();
        let mut line = vec![
            if ranked { (k + 1).to_string() } else { na() },
            r.trial.name.clone(),
        ];
        line.extend(r.trial.values.iter().map(|v| cell(v)));
        line.push(r.best_auc.map_or_else(na, |x| format!("{x:.4}")));
        line.push(r.logloss.map_or_else(na, |x| format!("{x:.4}")));
        line.push(r.best_step.map_or_else(na, |x| x.to_string()));
        line.push(r.steps.map_or_else(na, |x| x.to_string()));
        line.push(r.wall_secs.map_or_else(na, |x| format!("{x:.1}")));
        line.push(cell(&status_text(r)));
        table.push(line);
    }
    let cols = table[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| {
                if c + 1 == cols {
                    s.clone()
                } else {
                    format!("{s:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Writes the results table ([`format_tsv`]) to `path`, atomically.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_table(path: &Path, axes: &[GridAxis], rows: &[TrialRow]) -> Result<()> {
    crate::atomic::atomic_write_bytes(path, format_tsv(axes, rows).as_bytes())
}
