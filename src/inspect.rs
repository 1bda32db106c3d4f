//! What a checkpoint holds, without a dataset: the model (preset and parts), the config, the
//! vocabulary sizes and fingerprint, parameter counts per table and for the dense part, and
//! where training stood (step, best validation).

use crate::checkpoint::ModelFile;
use crate::config::Config;
use crate::embedding::VocabSizes;
use crate::error::Result;
use crate::train::{EvalRecord, TrainerState};
use candle_core::Device;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A checkpoint, described.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file read.
    pub file: PathBuf,
    /// The preset the model's parts came from.
    pub kind: String,
    /// The stored config, every part explicit.
    pub config: Config,
    /// Vocabulary sizes the tables were built for (padding and unknown included).
    pub vocab: VocabSizes,
    /// Fingerprint of the training data's vocabulary files.
    pub vocab_fingerprint: Option<String>,
    /// Parameters per embedding table (`table/<name>`) and of the dense part (`dense`).
    pub parameters: Vec<(String, usize)>,
    /// Their sum.
    pub total_parameters: usize,
    /// Whether the file holds optimiser and trainer state (`train --resume` can continue it).
    pub resumable: bool,
    /// Where training stood when the file was written (absent in files written before it was
    /// stored).
    pub state: Option<TrainerState>,
}

impl Inspection {
    /// The validation at the best step, if any.
    pub fn best(&self) -> Option<&EvalRecord> {
        let s = self.state.as_ref()?;
        s.evals
            .iter()
            .find(|e| e.step == s.best_step && s.best_auc.is_some())
    }
}

/// Opens a checkpoint file or run directory (its `best`, else `last`) with every check
/// [`ModelFile::open`] makes, and describes it.
///
/// # Errors
/// As [`ModelFile::open`]: a missing, corrupt or inconsistent checkpoint, naming the file.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let mf = ModelFile::open(path, &Device::Cpu)?;
    let parameters = mf.model.parameter_counts();
    let state_json = mf.metadata.progress.clone().or(mf.metadata.trainer.clone());
    let state = state_json.and_then(|s| serde_json::from_value::<TrainerState>(s).ok());
    Ok(Inspection {
        kind: mf.config.model.kind.name().to_string(),
        vocab: mf.model.vocab(),
        vocab_fingerprint: mf.metadata.vocab_fingerprint.clone(),
        total_parameters: parameters.iter().map(|(_, n)| n).sum(),
        parameters,
        resumable: mf.metadata.trainer.is_some(),
        state,
        config: mf.config,
        file: mf.file,
    })
}

fn part(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("({e})"))
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.config.model;
        writeln!(f, "checkpoint  {}", self.file.display())?;
        writeln!(
            f,
            "model       {} ({} aggregation{}), {} parameters",
            self.kind,
            m.aggregate.len(),
            if m.aggregate.len() == 1 { "" } else { "s" },
            self.total_parameters
        )?;
        writeln!(f, "  embedding {}", part(&m.embedding))?;
        writeln!(f, "  search    {}", part(&m.search))?;
        for (i, a) in m.aggregate.iter().enumerate() {
            writeln!(f, "  aggregate[{i}] {}", part(a))?;
        }
        writeln!(f, "  head      {}", part(&m.head))?;
        writeln!(f, "parameters")?;
        for (name, n) in &self.parameters {
            writeln!(f, "  {name:<28} {n:>12}")?;
        }
        writeln!(
            f,
            "vocabulary  users {}, items {}, categories {} (padding and unknown included); fingerprint {}",
            self.vocab.users,
            self.vocab.items,
            self.vocab.cates,
            self.vocab_fingerprint.as_deref().unwrap_or("(none)")
        )?;
        writeln!(
            f,
            "data        max_len {}; trained from {}",
            self.config.data.max_len,
            self.config.data.dir.display()
        )?;
        match &self.state {
            Some(s) => {
                writeln!(
                    f,
                    "training    step {}, {} epoch{} done{}; {} validation{}",
                    s.step,
                    s.epoch,
                    if s.epoch == 1 { "" } else { "s" },
                    if s.finished { " (finished)" } else { "" },
                    s.evals.len(),
                    if s.evals.len() == 1 { "" } else { "s" }
                )?;
                if let Some(b) = self.best() {
                    let g = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.4}"));
                    writeln!(
                        f,
                        "best valid  step {}: AUC {}, GAUC {}, logloss {:.4} ({} rows)",
                        b.step,
                        g(b.valid.auc),
                        g(b.valid.gauc),
                        b.valid.logloss,
                        b.valid.n
                    )?;
                }
            }
            None => writeln!(f, "training    (state not stored in this file)")?,
        }
        write!(
            f,
            "resumable   {}",
            if self.resumable {
                "yes (optimiser and trainer state)"
            } else {
                "no (weights only)"
            }
        )
    }
}
