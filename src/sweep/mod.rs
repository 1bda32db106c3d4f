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

mod grid;
mod results;
mod run;
mod spec;

pub use grid::*;
pub use results::*;
pub use run::*;
pub use spec::*;
