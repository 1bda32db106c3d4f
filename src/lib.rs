//! # lifelong
//!
//! Lifelong user-behavior sequence models for click-through-rate prediction, on candle.
//!
//! ```text
//! events.parquet ─ data::prepare ─▶ users.parquet (item[], cate[], ts[] per user)
//!                                   + {train,valid,test}.parquet (label, user, target, seq_len) + vocab
//!  ─ data::Dataset ─ data::Batcher (rayon, prefetch) ─▶ Batch { packed histories, targets, labels }
//!  ─ model::CtrModel, one contract for every model (config::ModelConfig, presets by `kind`):
//!      plan    search over the whole history, no gradient (search: SimHash/Hamming, attention
//!              score, category) ─▶ top-k rows per sample; windows (all, recent n, retrieved)
//!      leaves  embedding::Leaves: only the table rows the differentiable part reads, one flat leaf
//!      forward aggregate::{din, attention, sdim, score_pool} over their windows ─ head MLP ─▶ logits [B]
//!  ─ nn::bce_with_logits (+ auxiliary search loss) ─▶ backward ─▶ dense grads + per-table row grads
//!  ─ optim: Adam (dense) + RowWise Adam/Adagrad (touched embedding rows only)
//!  ─ train: validation, early stopping, checkpoint (safetensors + config + optimiser state), resume
//!  ─ checkpoint::ModelFile (checkpoint ─▶ checked model) ─ eval (AUC, GAUC, logloss, predictions)
//! ```
//!
//! Start with [`model::CtrModel`], [`train::Trainer`] and [`data::Dataset`]; the `lifelong`
//! binary wraps them (`synth`, `prepare`, `train`, `eval`, `demo`).
#![warn(missing_docs)]

pub mod aggregate;
pub mod atomic;
pub mod checkpoint;
pub mod config;
pub(crate) mod cpu;
pub mod data;

pub mod embedding;

pub mod error;
pub mod eval;
pub mod inspect;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod plot;
pub mod search;
pub(crate) mod seed;
pub mod serving;
pub mod train;
pub mod window;

pub use cpu::tune_runtime;
pub use error::{Error, Result};

/// What the tests reach that is not the API (the `testing` feature, which `cargo test` turns on).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::cpu::linear;
}
