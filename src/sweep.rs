//! Hyperparameter search (`lifelong sweep`): a base config trained under every combination of
//! a grid of overrides (or a seeded random sample of them), one ordinary run directory per
//! trial, ranked by the best validation AUC each run recorded.
//!
//! ```text
//! OUT/sweep.json              the sweep's spec (config text and hash, --set, --grid, --random);
//!                             a rerun with another spec into OUT is refused, naming the difference
//! OUT/base.toml               the base config's text the trials are trained from
//! OUT/trial-NNN/              a run directory as `lifelong train --out` writes it (checkpoints,
//!                             metrics.jsonl, curves.svg), plus
//! OUT/trial-NNN/trial.json    its overrides and status (running, done, failed + reason, seconds)
//! OUT/trial-NNN/train.log     the output of its `lifelong train` process(es)
//! OUT/results.tsv             one row per trial, the best first (rewritten after every trial)
//! OUT/curves.svg              every trial's validation curves on one chart
//! ```
//!
//! Each trial runs as a child process of the `lifelong` executable (`lifelong train --config
//! OUT/base.toml --set … --out OUT/trial-NNN`), so a trial that crashes is recorded as failed
//! and the sweep goes on; `jobs` of them at a time, each with `RAYON_NUM_THREADS` = cores / jobs.
//! A trial is complete when its `trial.json` says `done` and its `last.safetensors` exists; a
//! rerun skips those, continues an interrupted trial (one with a `last.safetensors`) with `train
//! --resume`, and runs the others (failed ones included) from the start.

use crate::checkpoint::{meta::KEY_PROGRESS, read_metadata, RunDir};
use crate::config::Config;
use crate::device::DeviceSpec;
use crate::plot::{self, RunCurves};
use crate::train::{EvalRecord, TrainerState};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The sweep's spec in the output directory.
pub const SPEC_FILE: &str = "sweep.json";
/// The base config's text, as the trials read it.
pub const BASE_CONFIG: &str = "base.toml";
/// The results table.
pub const RESULTS_FILE: &str = "results.tsv";
/// Every trial's curves on one chart.
pub const CURVES_FILE: &str = "curves.svg";
/// A trial's overrides and status, in its run directory.
pub const TRIAL_FILE: &str = "trial.json";
/// A trial's `train` output, in its run directory.
pub const LOG_FILE: &str = "train.log";

/// Version of [`SPEC_FILE`]'s layout.
const SPEC_FORMAT: u32 = 1;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

// ---------------------------------------------------------------------------------------------
// The grid
// ---------------------------------------------------------------------------------------------

/// Splits `s` on its top-level commas: commas inside brackets, braces or quotes (TOML arrays,
/// inline tables, strings) do not split. Each part is trimmed.
///
/// `0.01, 0.1` → `["0.01", "0.1"]`; `[200, 80],[64]` → `["[200, 80]", "[64]"]`;
/// `{ recent = 20 },"all"` → `["{ recent = 20 }", "\"all\""]`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty part (`a,,b`, a trailing comma), an unclosed or
/// unmatched bracket or brace, or an unterminated string.
pub fn split_top_level(s: &str) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut open: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in s.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            '[' | '{' => {
                open.push(c);
                cur.push(c);
            }
            ']' | '}' => {
                let want = if c == ']' { '[' } else { '{' };
                if open.pop() != Some(want) {
                    return Err(invalid(format!("`{s}`: unmatched `{c}`")));
                }
                cur.push(c);
            }
            ',' if open.is_empty() => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(invalid(format!(
            "`{s}`: unterminated string (no closing {q})"
        )));
    }
    if let Some(c) = open.last() {
        return Err(invalid(format!("`{s}`: unclosed `{c}`")));
    }
    parts.push(cur);
    let parts: Vec<String> = parts.into_iter().map(|p| p.trim().to_string()).collect();
    if let Some(i) = parts.iter().position(|p| p.is_empty()) {
        return Err(invalid(format!(
            "`{s}`: value {} of {} is empty",
            i + 1,
            parts.len()
        )));
    }
    Ok(parts)
}

/// One key of the grid and the values it takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridAxis {
    /// A dotted config path, as `--set` takes it (`train.sparse_lr`, `model.aggregate.1.window`).
    pub key: String,
    /// Its values, TOML text as `--set` takes it, in the order given.
    pub values: Vec<String>,
}

impl GridAxis {
    /// The last segment of the key that is not a list index (`model.aggregate.1.window` →
    /// `window`): a short label.
    pub fn short_key(&self) -> &str {
        self.key
            .rsplit('.')
            .find(|k| k.parse::<usize>().is_err())
            .unwrap_or(&self.key)
    }
}

/// Parses one `--grid KEY=V1,V2,...` (values split by [`split_top_level`]).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the argument: no `=`, an empty key or key segment, an
/// empty value, or a value listed twice.
pub fn parse_grid(arg: &str) -> Result<GridAxis> {
    let bad = |why: String| invalid(format!("--grid `{arg}`: {why}"));
    let (key, values) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=V1,V2,...".into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|k| k.trim().is_empty()) {
        return Err(bad("empty key in the path".into()));
    }
    let values = split_top_level(values).map_err(|e| bad(e.to_string()))?;
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(bad(format!("value `{v}` is listed twice")));
        }
    }
    Ok(GridAxis {
        key: key.to_string(),
        values,
    })
}

/// Parses every `--grid` argument and checks the keys: each at most once across the grid, and
/// none also given by `--set` (`sets`, `KEY=VALUE`).
///
/// # Errors
/// As [`parse_grid`]; [`Error::InvalidArgument`] naming a key given twice.
pub fn parse_axes(grid: &[String], sets: &[String]) -> Result<Vec<GridAxis>> {
    let axes = grid
        .iter()
        .map(|g| parse_grid(g))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(invalid(format!(
                "--grid {}: the key is given by two --grid arguments (list its values in one)",
                a.key
            )));
        }
        if sets
            .iter()
            .any(|s| s.split_once('=').map(|(k, _)| k.trim()) == Some(a.key.as_str()))
        {
            return Err(invalid(format!(
                "--grid {}: the key is also given by --set (drop one of them)",
                a.key
            )));
        }
    }
    Ok(axes)
}

/// The number of combinations of `axes` (1 for no axis).
///
/// # Errors
/// [`Error::InvalidArgument`] when the count does not fit in a `usize`.
pub fn grid_size(axes: &[GridAxis]) -> Result<usize> {
    axes.iter().try_fold(1usize, |n, a| {
        n.checked_mul(a.values.len())
            .ok_or_else(|| invalid("the grid has more combinations than can be counted"))
    })
}

/// Combination `index` of the Cartesian product of `axes` (one value per axis), in the order of
/// nested loops over the axes as given: the first axis varies slowest, the last fastest.
/// `index` must be below [`grid_size`].
pub fn combination(axes: &[GridAxis], index: usize) -> Vec<String> {
    let mut rest = index;
    let mut out = vec![String::new(); axes.len()];
    for (slot, a) in out.iter_mut().zip(axes).rev() {
        let n = a.values.len().max(1);
        *slot = a.values[rest % n].clone();
        rest /= n;
    }
    out
}

/// `n` distinct indices below `total`, drawn uniformly without replacement with a ChaCha8
/// generator seeded by `seed`, in ascending order: the same `(total, n, seed)` gives the same
/// indices.
///
/// # Errors
/// [`Error::InvalidArgument`] for `n` = 0 or `n` > `total`.
pub fn sample_indices(total: usize, n: usize, seed: u64) -> Result<Vec<usize>> {
    use rand::SeedableRng;
    if n == 0 {
        return Err(invalid("--random 0: sample at least one trial"));
    }
    if n > total {
        return Err(invalid(format!(
            "--random {n}: the grid has only {total} combinations"
        )));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, total, n).into_vec();
    idx.sort_unstable();
    Ok(idx)
}

/// `--random N --seed S`: N trials sampled from the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Random {
    /// Trials to sample.
    pub n: usize,
    /// Seed of the sample.
    pub seed: u64,
}

/// One trial: a combination of the grid's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Its name and run directory's name: `trial-001`, `trial-002`, … (at least three digits).
    pub name: String,
    /// The index of its combination in the full grid ([`combination`]).
    pub combination: usize,
    /// Its value of each axis, in the axes' order.
    pub values: Vec<String>,
    /// Its overrides, `KEY=VALUE` per axis (applied after the sweep's `--set`s).
    pub overrides: Vec<String>,
}

/// The trials of a sweep: every combination of `axes` in [`combination`] order, or with
/// `random` a sample of them ([`sample_indices`]), still in that order; named `trial-001`, ….
///
/// # Errors
/// As [`grid_size`] and [`sample_indices`].
pub fn trials(axes: &[GridAxis], random: Option<Random>) -> Result<Vec<Trial>> {
    let total = grid_size(axes)?;
    let picked: Vec<usize> = match random {
        Some(r) => sample_indices(total, r.n, r.seed)?,
        None => (0..total).collect(),
    };
    let width = picked.len().to_string().len().max(3);
    Ok(picked
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let values = combination(axes, c);
            let overrides = axes
                .iter()
                .zip(&values)
                .map(|(a, v)| format!("{}={v}", a.key))
                .collect();
            Trial {
                name: format!("trial-{:0width$}", i + 1),
                combination: c,
                values,
                overrides,
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The spec (resume)
// ---------------------------------------------------------------------------------------------

/// What a sweep is: rerunning the same spec into the same directory continues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The base config's path as given (provenance: a rerun may name the same text elsewhere).
    pub config: String,
    /// CRC-32 of the base config's text (hex).
    pub config_crc32: String,
    /// The base config's text.
    pub config_text: String,
    /// `--data`, if given.
    pub data: Option<String>,
    /// `--set` overrides, in order.
    pub sets: Vec<String>,
    /// The grid.
    pub grid: Vec<GridAxis>,
    /// `--random` and `--seed`, if given.
    pub random: Option<Random>,
}

impl SweepSpec {
    /// The spec of a sweep of the config at `config` (whose text is `config_text`).
    pub fn new(
        config: &Path,
        config_text: &str,
        data: Option<&Path>,
        sets: &[String],
        grid: Vec<GridAxis>,
        random: Option<Random>,
    ) -> Self {
        Self {
            config: config.display().to_string(),
            config_crc32: format!("{:08x}", crc32fast::hash(config_text.as_bytes())),
            config_text: config_text.to_string(),
            data: data.map(|d| d.display().to_string()),
            sets: sets.to_vec(),
            grid,
            random,
        }
    }

    /// How `now` differs from this (recorded) spec, one line per difference; empty when they
    /// are the same sweep (the config's path is not compared, its text is).
    pub fn differences(&self, now: &SweepSpec) -> Vec<String> {
        let mut d = Vec::new();
        if self.config_text != now.config_text {
            d.push(format!(
                "the base config's text changed (recorded {} with crc32 {}, now {} with crc32 {})",
                self.config, self.config_crc32, now.config, now.config_crc32
            ));
        }
        if self.data != now.data {
            d.push(format!(
                "--data: recorded {}, now {}",
                show_opt(&self.data),
                show_opt(&now.data)
            ));
        }
        if self.sets != now.sets {
            d.push(format!(
                "--set: recorded [{}], now [{}]",
                self.sets.join(" "),
                now.sets.join(" ")
            ));
        }
        let keys = |g: &[GridAxis]| g.iter().map(|a| a.key.clone()).collect::<Vec<_>>();
        if keys(&self.grid) != keys(&now.grid) {
            d.push(format!(
                "--grid keys: recorded [{}], now [{}]",
                keys(&self.grid).join(", "),
                keys(&now.grid).join(", ")
            ));
        } else {
            for (a, b) in self.grid.iter().zip(&now.grid) {
                if a.values != b.values {
                    d.push(format!(
                        "--grid {}: recorded values {}, now {}",
                        a.key,
                        a.values.join(","),
                        b.values.join(",")
                    ));
                }
            }
        }
        if self.random != now.random {
            let show = |r: &Option<Random>| match r {
                Some(r) => format!("--random {} --seed {}", r.n, r.seed),
                None => "the whole grid".to_string(),
            };
            d.push(format!(
                "recorded {}, now {}",
                show(&self.random),
                show(&now.random)
            ));
        }
        d
    }
}

fn show_opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "none".into())
}

/// The layout of [`SPEC_FILE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpecFile {
    format: u32,
    spec: SweepSpec,
    /// The trials the spec expands to (for reading; the spec alone decides).
    trials: Vec<Trial>,
}

/// Opens the output directory of a sweep: a new (or empty) directory gets `sweep.json` and
/// `base.toml`; one that holds a `sweep.json` must record the same spec. Returns whether the
/// directory already held this sweep.
///
/// # Errors
/// [`Error::InvalidArgument`] naming every difference when `out` records another sweep, or
/// when `out` is neither empty nor a sweep's directory; [`Error::Corrupt`] for an unreadable
/// `sweep.json`; [`Error::Io`] naming the file that cannot be read or written.
pub fn open_out(out: &Path, spec: &SweepSpec, trials: &[Trial]) -> Result<bool> {
    let file = out.join(SPEC_FILE);
    let base = out.join(BASE_CONFIG);
    let existed = file.exists();
    if existed {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let rec: SpecFile = serde_json::from_str(&text).map_err(|e| Error::corrupt(&file, e))?;
        if rec.format != SPEC_FORMAT {
            return Err(Error::corrupt(
                &file,
                format!("format {} (this build writes {SPEC_FORMAT})", rec.format),
            ));
        }
        let diff = rec.spec.differences(spec);
        if !diff.is_empty() {
            return Err(invalid(format!(
                "{} records another sweep: {}; use another --out, or remove {} to start over",
                file.display(),
                diff.join("; "),
                out.display()
            )));
        }
    } else {
        if let Ok(mut entries) = std::fs::read_dir(out) {
            if entries.next().is_some() {
                return Err(invalid(format!(
                    "{} is not empty and holds no {SPEC_FILE}: not a sweep's directory (use another --out)",
                    out.display()
                )));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let rec = SpecFile {
            format: SPEC_FORMAT,
            spec: spec.clone(),
            trials: trials.to_vec(),
        };
        let json = serde_json::to_string_pretty(&rec).map_err(|e| invalid(e.to_string()))?;
        crate::atomic::atomic_write_bytes(&file, json.as_bytes())?;
    }
    // The text the children train from (rewritten on a rerun if it went missing).
    let same = std::fs::read_to_string(&base).is_ok_and(|t| t == spec.config_text);
    if !same {
        crate::atomic::atomic_write_bytes(&base, spec.config_text.as_bytes())?;
    }
    Ok(existed)
}

// ---------------------------------------------------------------------------------------------
// Trials' records and results
// ---------------------------------------------------------------------------------------------

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

fn write_record(dir: &Path, rec: &TrialRecord) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Running a sweep
// ---------------------------------------------------------------------------------------------

/// What `lifelong sweep` was asked.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The base config (TOML).
    pub config: PathBuf,
    /// `--data`: the prepared dataset (overrides the config's `data.dir`).
    pub data: Option<PathBuf>,
    /// `--device`, passed to every trial (not part of the spec).
    pub device: Option<DeviceSpec>,
    /// `--set` overrides, applied to every trial before its own.
    pub sets: Vec<String>,
    /// `--grid KEY=V1,V2,...` arguments.
    pub grid: Vec<String>,
    /// `--random N`: sample N trials of the grid.
    pub random: Option<usize>,
    /// `--seed` of the sample (default 0).
    pub seed: Option<u64>,
    /// Trials run at a time (at least 1; not part of the spec).
    pub jobs: usize,
    /// The sweep's directory.
    pub out: PathBuf,
    /// The `lifelong` executable the trials run (`std::env::current_exe()` for the CLI).
    pub exe: PathBuf,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepReport {
    /// The sweep's directory.
    pub out: PathBuf,
    /// The grid.
    pub axes: Vec<GridAxis>,
    /// One row per trial, in trial order.
    pub rows: Vec<TrialRow>,
    /// Trials run by this call (resumed ones included).
    pub ran: usize,
    /// Of them, continued with `train --resume`.
    pub resumed: usize,
    /// Trials skipped because they were complete.
    pub skipped: usize,
    /// The results table.
    pub table: PathBuf,
    /// The curves chart, when some trial logged a validation.
    pub curves: Option<PathBuf>,
}

impl SweepReport {
    /// The best trial ([`best`]).
    pub fn best(&self) -> Option<&TrialRow> {
        best(&self.rows)
    }
    /// Trials that failed.
    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == TrialStatus::Failed)
            .count()
    }
}

/// Checks every trial's config up front: the base text with `sets` and the trial's overrides
/// must parse and validate, and its dataset (`data`, else its `data.dir`) must be a prepared
/// one.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the first bad trial, its overrides, and the key or the
/// directory.
pub fn validate_trials(
    config_text: &str,
    data: Option<&Path>,
    sets: &[String],
    trials: &[Trial],
) -> Result<()> {
    for t in trials {
        let name = || format!("{} ({})", t.name, t.overrides.join(" "));
        let all: Vec<String> = sets.iter().chain(&t.overrides).cloned().collect();
        let cfg = Config::from_toml_with(config_text, &all)
            .map_err(|e| invalid(format!("{}: {e}", name())))?;
        let dir = data.map_or(cfg.data.dir.clone(), Path::to_path_buf);
        if !dir.join("meta.json").is_file() {
            return Err(invalid(format!(
                "{}: {}: not a prepared dataset (no meta.json; run `lifelong prepare`, or pass --data)",
                name(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The last non-empty line of a file's text (at most its last 64 KiB are read).
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(65536))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Runs one trial's `train` process to its end and records the outcome in its `trial.json`.
fn run_trial(
    opts: &SweepOptions,
    trial: &Trial,
    resume: bool,
    threads: Option<usize>,
) -> TrialRecord {
    let dir = opts.out.join(&trial.name);
    let prev = read_record(&dir).ok().flatten();
    let mut rec = TrialRecord {
        trial: trial.name.clone(),
        overrides: trial.overrides.clone(),
        status: TrialStatus::Running,
        reason: None,
        wall_secs: None,
        attempts: prev.map_or(0, |p| p.attempts) + 1,
        resumed: resume,
    };
    let t0 = Instant::now();
    let outcome = (|| -> std::result::Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_record(&dir, &rec).map_err(|e| e.to_string())?;
        let log_path = dir.join(LOG_FILE);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = std::process::Command::new(&opts.exe);
        cmd.arg("train")
            .arg("--config")
            .arg(opts.out.join(BASE_CONFIG))
            .arg("--out")
            .arg(&dir);
        if let Some(d) = &opts.data {
            cmd.arg("--data").arg(d);
        }
        if let Some(d) = &opts.device {
            cmd.arg("--device").arg(d.to_string());
        }
        for s in opts.sets.iter().chain(&trial.overrides) {
            cmd.arg("--set").arg(s);
        }
        if resume {
            cmd.arg("--resume");
        }
        if let Some(n) = threads {
            cmd.env("RAYON_NUM_THREADS", n.to_string());
        }
        {
            use std::io::Write;
            let _ = writeln!(log, "# lifelong sweep, attempt {}: {cmd:?}", rec.attempts);
        }
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .status()
            .map_err(|e| format!("starting {}: {e}", opts.exe.display()))?;
        if status.success() {
            return Ok(());
        }
        let how = match status.code() {
            Some(c) => format!("exit status {c}"),
            None => format!("killed ({status})"),
        };
        Err(match last_line(&log_path) {
            Some(l) if !l.starts_with("# lifelong sweep") => format!("{l} ({how})"),
            _ => how,
        })
    })();
    rec.wall_secs = Some(t0.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => rec.status = TrialStatus::Done,
        Err(why) => {
            rec.status = TrialStatus::Failed;
            rec.reason = Some(why);
        }
    }
    if let Err(e) = write_record(&dir, &rec) {
        // The sweep's table still shows the outcome; a rerun runs the trial again.
        eprintln!("warning: {}: {e}", trial.name);
    }
    rec
}

/// A label for a trial's curves: its name and short `key=value` pairs.
fn curve_label(axes: &[GridAxis], t: &Trial) -> String {
    let mut s = t.name.clone();
    for (a, v) in axes.iter().zip(&t.values) {
        s.push_str(&format!(" {}={v}", a.short_key()));
    }
    s
}

/// Runs a sweep (see the module docs): checks every trial's config, opens (or continues) the
/// output directory, runs the trials that are not complete, `jobs` at a time, rewriting the
/// results table after each, and draws every trial's curves. Progress goes to stdout, one line
/// per trial started and ended. A failed trial is recorded and the sweep goes on.
///
/// # Errors
/// [`Error::InvalidArgument`] for a malformed `--grid`, `--random`, `jobs` = 0, a bad trial
/// config ([`validate_trials`]) or another sweep recorded in `out` ([`open_out`]); [`Error::Io`]
/// for the config or the results table. Not for a failed trial.
pub fn run(opts: &SweepOptions) -> Result<SweepReport> {
    if opts.jobs == 0 {
        return Err(invalid("--jobs 0: run at least one trial at a time"));
    }
    if opts.seed.is_some() && opts.random.is_none() {
        return Err(invalid(
            "--seed is the seed of --random N: give --random too",
        ));
    }
    let axes = parse_axes(&opts.grid, &opts.sets)?;
    let random = opts.random.map(|n| Random {
        n,
        seed: opts.seed.unwrap_or(0),
    });
    let trials = trials(&axes, random)?;
    let text = std::fs::read_to_string(&opts.config).map_err(|e| Error::io(&opts.config, e))?;
    validate_trials(&text, opts.data.as_deref(), &opts.sets, &trials)?;
    let spec = SweepSpec::new(
        &opts.config,
        &text,
        opts.data.as_deref(),
        &opts.sets,
        axes.clone(),
        random,
    );
    open_out(&opts.out, &spec, &trials)?;

    // What each trial needs: nothing (complete), `train --resume`, or a fresh `train`.
    let mut todo: Vec<(usize, bool)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, t) in trials.iter().enumerate() {
        let dir = opts.out.join(&t.name);
        if let Some(r) = read_record(&dir)? {
            if r.overrides != t.overrides {
                return Err(invalid(format!(
                    "{}: records the overrides [{}], the sweep gives this trial [{}]",
                    dir.join(TRIAL_FILE).display(),
                    r.overrides.join(" "),
                    t.overrides.join(" ")
                )));
            }
        }
        if is_complete(&dir) {
            skipped.push(t.name.clone());
        } else {
            let resumable = read_metadata(&RunDir::new(&dir).last())
                .is_ok_and(|m| m.contains_key(crate::checkpoint::meta::KEY_TRAINER));
            todo.push((i, resumable));
        }
    }
    if !skipped.is_empty() {
        println!(
            "skipped {} finished trials ({})",
            skipped.len(),
            skipped.join(", ")
        );
    }
    let mut rows: Vec<TrialRow> = trials.iter().map(|t| read_row(&opts.out, t)).collect();
    let table = opts.out.join(RESULTS_FILE);
    write_table(&table, &axes, &rows)?;

    let jobs = opts.jobs.min(todo.len()).max(1);
    let threads = match std::env::var_os("RAYON_NUM_THREADS") {
        Some(_) => None, // the caller's choice, inherited
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Some((cores / opts.jobs).max(1))
        }
    };
    let total = todo.len();
    let resumed = todo.iter().filter(|(_, r)| *r).count();
    if total > 0 {
        println!(
            "running {total} of {} trials, {jobs} at a time{}",
            trials.len(),
            threads.map_or(String::new(), |n| format!(
                " ({n} thread{} each)",
                if n == 1 { "" } else { "s" }
            ))
        );
    }
    enum Msg {
        Started(usize, bool),
        Ended(usize, TrialRecord),
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(total) {
            let (tx, next, todo, trials) = (tx.clone(), &next, &todo, &trials);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(i, resume)) = todo.get(k) else {
                    break;
                };
                let _ = tx.send(Msg::Started(i, resume));
                let rec = run_trial(opts, &trials[i], resume, threads);
                let _ = tx.send(Msg::Ended(i, rec));
            });
        }
        drop(tx);
        let mut ended = 0;
        for msg in rx {
            match msg {
                Msg::Started(i, resume) => {
                    let t = &trials[i];
                    println!(
                        "{} {}: {}",
                        if resume { "resuming" } else { "starting" },
                        t.name,
                        t.overrides.join(" ")
                    );
                    rows[i].status = TrialStatus::Running;
                }
                Msg::Ended(i, rec) => {
                    ended += 1;
                    rows[i] = read_row(&opts.out, &trials[i]);
                    // The record as this process knows it (its file may be unwritable).
                    rows[i].status = rec.status;
                    rows[i].reason = rec.reason.clone();
                    rows[i].wall_secs = rec.wall_secs;
                    let r = &rows[i];
                    let secs = rec.wall_secs.unwrap_or(0.0);
                    match rec.status {
                        TrialStatus::Done => println!(
                            "[{ended}/{total}] {} done in {secs:.1} s: best valid AUC {} at step {}",
                            r.trial.name,
                            r.best_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
                            r.best_step.map_or("n/a".into(), |s| s.to_string())
                        ),
                        _ => println!(
                            "[{ended}/{total}] {} failed after {secs:.1} s: {} (log: {})",
                            r.trial.name,
                            rec.reason.as_deref().unwrap_or("?"),
                            r.dir.join(LOG_FILE).display()
                        ),
                    }
                    if let Err(e) = write_table(&table, &axes, &rows) {
                        eprintln!("warning: {e}");
                    }
                }
            }
        }
    });
    write_table(&table, &axes, &rows)?;

    let curves: Vec<RunCurves> = rows
        .iter()
        .filter(|r| plot::metrics_file(&r.dir).exists())
        .filter_map(|r| {
            let mut c = plot::read_run(&r.dir).ok()?;
            c.name = curve_label(&axes, &r.trial);
            Some(c)
        })
        .collect();
    let curves_path = opts.out.join(CURVES_FILE);
    let curves = if curves.is_empty() {
        None
    } else {
        match plot::plot_runs(&curves, &curves_path) {
            Ok(()) => Some(curves_path),
            Err(e) => {
                eprintln!("warning: no curves drawn: {e}");
                None
            }
        }
    };
    Ok(SweepReport {
        out: opts.out.clone(),
        axes,
        rows,
        ran: total,
        resumed,
        skipped: skipped.len(),
        table,
        curves,
    })
}
