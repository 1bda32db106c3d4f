//! What a checkpoint says about itself, beside its tensors: one typed struct, stored as the
//! safetensors header's string map (each field one key, JSON where it is structured).

use crate::config::Config;
use crate::embedding::VocabSizes;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Metadata key: the config (JSON).
pub const KEY_CONFIG: &str = "config";
/// Metadata key: the vocabulary sizes (JSON).
pub const KEY_VOCAB: &str = "vocab";
/// Metadata key: the fingerprint of the training data's vocabularies.
pub const KEY_VOCAB_FINGERPRINT: &str = "vocab_fingerprint";
/// Metadata key: the trainer's state (resume checkpoints only).
pub const KEY_TRAINER: &str = "trainer";
/// Metadata key: where training stood when the file was written (every checkpoint).
pub const KEY_PROGRESS: &str = "progress";

/// A checkpoint's metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The run's config (the model's included).
    pub config: Config,
    /// The vocabulary sizes the tables were built for.
    pub vocab: VocabSizes,
    /// The fingerprint of the training data's vocabularies ([`super::vocab_fingerprint`]);
    /// absent in checkpoints of data built in memory without one.
    pub vocab_fingerprint: Option<String>,
    /// Where training stood when the file was written (read by `inspect`, never by resume).
    pub progress: Option<serde_json::Value>,
    /// The trainer's state to resume from (resume checkpoints only).
    pub trainer: Option<serde_json::Value>,
}

fn bad(path: &Path, reason: impl ToString) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Metadata {
    /// The string map the container stores.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(KEY_CONFIG.into(), self.config.to_json());
        m.insert(
            KEY_VOCAB.into(),
            serde_json::to_string(&self.vocab).unwrap_or_default(),
        );
        if let Some(fp) = &self.vocab_fingerprint {
            m.insert(KEY_VOCAB_FINGERPRINT.into(), fp.clone());
        }
        if let Some(p) = &self.progress {
            m.insert(KEY_PROGRESS.into(), p.to_string());
        }
        if let Some(t) = &self.trainer {
            m.insert(KEY_TRAINER.into(), t.to_string());
        }
        m
    }

    /// Parses the map read from `path` (the config is validated).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file and the key that is missing or does not parse.
    pub fn from_map(path: &Path, m: &BTreeMap<String, String>) -> Result<Self> {
        let need = |k: &str| {
            m.get(k)
                .ok_or_else(|| bad(path, format!("no `{k}` in metadata")))
        };
        let json = |k: &str| -> Result<Option<serde_json::Value>> {
            m.get(k)
                .map(|s| serde_json::from_str(s).map_err(|e| bad(path, format!("`{k}`: {e}"))))
                .transpose()
        };
        Ok(Self {
            config: Config::from_json(need(KEY_CONFIG)?).map_err(|e| bad(path, e))?,
            vocab: serde_json::from_str(need(KEY_VOCAB)?)
                .map_err(|e| bad(path, format!("vocab: {e}")))?,
            vocab_fingerprint: m.get(KEY_VOCAB_FINGERPRINT).cloned(),
            progress: json(KEY_PROGRESS)?,
            trainer: json(KEY_TRAINER)?,
        })
    }

    /// The trainer's state, typed.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming `path` for a checkpoint without one (not resumable) or one
    /// that does not parse.
    pub fn trainer_state<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let t = self.trainer.clone().ok_or_else(|| {
            bad(
                path,
                "no `trainer` state in metadata: not a resumable checkpoint",
            )
        })?;
        serde_json::from_value(t).map_err(|e| bad(path, format!("trainer state: {e}")))
    }
}
