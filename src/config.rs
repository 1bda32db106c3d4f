//! Configs: serde structs written as TOML (`examples/*.toml`) and saved, as JSON, inside every
//! checkpoint, so a checkpoint is self-describing.
//!
//! Every struct rejects unknown keys, so a misspelt option is an error, not a silent default.
//! Models are an internally tagged enum (`kind = "din"`) whose variants wrap structs that carry
//! `deny_unknown_fields` themselves (serde ignores the attribute on a tagged enum's variants).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole run: data, model, training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the data comes from and how sequences are cut.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// The optimisation.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Data options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Prepared dataset directory (`lifelong prepare`'s output); `--data` overrides it.
    pub dir: PathBuf,
    /// Sequences are left-truncated to the most recent `max_len` behaviors.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_max_len() -> usize {
    50
}

/// Which model, with its options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    /// DIN (Zhou et al., KDD'18).
    Din(DinConfig),
}

/// Activation function of an MLP layer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Dice (DIN paper): data-adaptive PReLU with batch statistics.
    Dice,
    /// PReLU with a learned slope per unit.
    Prelu,
    /// ReLU.
    Relu,
    /// Sigmoid.
    Sigmoid,
}

/// How embedding rows are initialised.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Init {
    /// N(0, std²).
    Normal {
        /// Standard deviation.
        std: f32,
    },
    /// U(−bound, bound).
    Uniform {
        /// Half-width.
        bound: f32,
    },
}

/// DIN: embeddings per field, the local activation unit over the history, an MLP head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DinConfig {
    /// Item embedding width.
    #[serde(default = "d32")]
    pub item_dim: usize,
    /// Category embedding width.
    #[serde(default = "d32")]
    pub cate_dim: usize,
    /// User-id embedding width (0 = no user field). It feeds the head only.
    #[serde(default)]
    pub user_dim: usize,
    /// Relative-position embedding width (0 = no position field). Newest behavior = 1, target = 0.
    #[serde(default)]
    pub pos_dim: usize,
    /// Hidden sizes of the activation unit (the paper: 80-40; FuxiCTR's default: 64).
    #[serde(default = "default_att_hidden")]
    pub attention_hidden: Vec<usize>,
    /// Activation of the activation unit.
    #[serde(default = "dice")]
    pub attention_activation: Activation,
    /// Softmax-normalise the attention weights over each history (the paper does not).
    #[serde(default)]
    pub softmax: bool,
    /// Hidden sizes of the head MLP.
    #[serde(default = "default_head_hidden")]
    pub head_hidden: Vec<usize>,
    /// Activation of the head MLP.
    #[serde(default = "dice")]
    pub head_activation: Activation,
    /// Dice's ε in sqrt(Var + ε).
    #[serde(default = "default_dice_eps")]
    pub dice_eps: f32,
    /// Momentum of Dice's running statistics: running ← (1 − m)·running + m·batch.
    #[serde(default = "default_dice_momentum")]
    pub dice_momentum: f32,
    /// Embedding initialisation.
    #[serde(default = "default_init")]
    pub init: Init,
}

fn d32() -> usize {
    32
}
fn default_att_hidden() -> Vec<usize> {
    vec![64]
}
fn default_head_hidden() -> Vec<usize> {
    vec![200, 80]
}
fn dice() -> Activation {
    Activation::Dice
}
fn default_dice_eps() -> f32 {
    1e-8
}
fn default_dice_momentum() -> f32 {
    0.1
}
fn default_init() -> Init {
    Init::Normal { std: 0.01 }
}

impl Default for DinConfig {
    fn default() -> Self {
        Self {
            item_dim: 32,
            cate_dim: 32,
            user_dim: 0,
            pos_dim: 0,
            attention_hidden: default_att_hidden(),
            attention_activation: Activation::Dice,
            softmax: false,
            head_hidden: default_head_hidden(),
            head_activation: Activation::Dice,
            dice_eps: default_dice_eps(),
            dice_momentum: default_dice_momentum(),
            init: default_init(),
        }
    }
}

/// Row-wise optimiser for the embedding tables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SparseOptimizer {
    /// Adam with per-element moments and a per-row step count, on the touched rows only.
    Adam,
    /// Row-wise Adagrad: one accumulator per row (TorchRec's), on the touched rows only.
    Adagrad,
}

/// Training options (every field has a default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate of the dense parameters (Adam).
    pub lr: f64,
    /// Weight decay of the dense parameters (decoupled, AdamW); 0 = Adam.
    pub weight_decay: f64,
    /// Optimiser of the embedding tables.
    pub sparse_optimizer: SparseOptimizer,
    /// Learning rate of the embedding tables.
    pub sparse_lr: f64,
    /// Mini-batch aware L2 on the embedding rows present in the batch (0 = off).
    pub embedding_l2: f64,
    /// Clip the global gradient norm (dense and touched rows) to this value; absent = no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Validate every this many steps (0 = once per epoch, at its end).
    pub eval_every: usize,
    /// Stop after this many validations without a better validation AUC (0 = never stop early).
    pub patience: usize,
    /// Write `last.safetensors` every this many steps (0 = only at the end of each epoch).
    pub checkpoint_every: usize,
    /// Batches collated ahead of the training step.
    pub prefetch: usize,
    /// Batch size for evaluation.
    pub eval_batch_size: usize,
    /// Default run directory; `--out` overrides it.
    pub out: PathBuf,
    /// Stop after this many steps in total (0 = no limit); for smoke tests and benchmarks.
    pub max_steps: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 1024,
            lr: 1e-3,
            weight_decay: 0.0,
            sparse_optimizer: SparseOptimizer::Adam,
            sparse_lr: 1e-3,
            embedding_l2: 0.0,
            clip_grad_norm: None,
            seed: 42,
            eval_every: 0,
            patience: 2,
            checkpoint_every: 0,
            prefetch: 4,
            eval_batch_size: 4096,
            out: PathBuf::from("runs/din"),
            max_steps: 0,
        }
    }
}

impl Config {
    /// Parses a TOML config.
    ///
    /// # Errors
    /// [`Error::Config`] with TOML's message (line, column, the offending key) or a validation
    /// message naming the field.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // One line (toml's Display draws a multi-line snippet): "line N: message".
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            Error::Config(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Checks values serde cannot check.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.data.max_len == 0 {
            return bad("data.max_len must be at least 1");
        }
        let t = &self.train;
        if t.batch_size == 0 || t.eval_batch_size == 0 {
            return bad("train.batch_size and train.eval_batch_size must be at least 1");
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(t.lr) || !positive(t.sparse_lr) {
            return bad("train.lr and train.sparse_lr must be positive");
        }
        if t.embedding_l2 < 0.0 || t.weight_decay < 0.0 {
            return bad("train.embedding_l2 and train.weight_decay must be non-negative");
        }
        if let Some(c) = t.clip_grad_norm {
            if c <= 0.0 {
                return bad("train.clip_grad_norm must be positive");
            }
        }
        match &self.model {
            ModelConfig::Din(m) => {
                if m.item_dim == 0 || m.cate_dim == 0 {
                    return bad("model.item_dim and model.cate_dim must be at least 1");
                }
                if m.attention_hidden.is_empty() || m.attention_hidden.contains(&0) {
                    return bad("model.attention_hidden needs at least one non-zero layer");
                }
                if m.head_hidden.contains(&0) {
                    return bad("model.head_hidden layers must be non-zero");
                }
                if !(m.dice_momentum > 0.0 && m.dice_momentum <= 1.0) {
                    return bad("model.dice_momentum must be in (0, 1]");
                }
                match m.init {
                    Init::Normal { std } if !(std >= 0.0 && std.is_finite()) => {
                        return bad("model.init.std must be non-negative")
                    }
                    Init::Uniform { bound } if !(bound >= 0.0 && bound.is_finite()) => {
                        return bad("model.init.bound must be non-negative")
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The config as JSON (stored in checkpoints).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// The config back from a checkpoint's JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| Error::Config(format!("stored config: {e}")))
    }
}
