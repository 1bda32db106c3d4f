//! A training run's directory:
//!
//! ```text
//! RUN_DIR/last.safetensors   weights + optimiser state + trainer state (resume point)
//! RUN_DIR/best.safetensors   weights of the best validation AUC so far
//! RUN_DIR/metrics.jsonl      one line per validation
//! ```

use std::path::{Path, PathBuf};

/// File name of the resume checkpoint in a run directory.
pub const LAST: &str = "last.safetensors";
/// File name of the best checkpoint in a run directory.
pub const BEST: &str = "best.safetensors";
/// File name of the validation log in a run directory.
pub const METRICS: &str = "metrics.jsonl";

/// A run directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The run directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// The resume checkpoint.
    pub fn last(&self) -> PathBuf {
        self.0.join(LAST)
    }
    /// The best checkpoint.
    pub fn best(&self) -> PathBuf {
        self.0.join(BEST)
    }
    /// The validation log.
    pub fn metrics(&self) -> PathBuf {
        self.0.join(METRICS)
    }

    /// The checkpoint a path names: a file as it is; a run directory's `best`, else `last`.
    pub fn checkpoint_of(path: &Path) -> PathBuf {
        if path.is_dir() {
            let run = RunDir::new(path);
            if run.best().exists() {
                run.best()
            } else {
                run.last()
            }
        } else {
            path.to_path_buf()
        }
    }

    /// Removes the `.tmp-*` files of atomic writes that never completed (a process killed while
    /// writing a checkpoint); a run directory belongs to one trainer at a time.
    pub fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(".tmp-") && e.path().is_file() {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %e.path().display(), "removed an unfinished write")
                    }
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), "could not remove an unfinished write: {err}")
                    }
                }
            }
        }
    }
}
