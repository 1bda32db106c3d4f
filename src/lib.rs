//! # lifelong
//!
//! Lifelong user-behavior sequence models for click-through-rate prediction, on candle.
//!
//! The modules below are listed in the order data flows through them; each imports only from
//! the ones above it (doc links aside).
//!
//! ```text
//! events.parquet ─ data::prepare ─▶ users.parquet (item[], cate[], ts[] per user)
//!                                   + {train,valid,test}.parquet (label, user, target, seq_len) + vocab
//!  ─ data::Dataset ─ data::Batcher (rayon, prefetch) ─▶ data::Batch { packed histories, targets, labels }
//!  ─ embedding: host tables per (field, role); per step one leaf of the rows a step reads
//!  ─ search: SimHash codes, Hamming / score top-k (CPU; kernels: the same ops on CUDA)
//!  ─ aggregate, nn: DIN's unit, target attention, SDIM's buckets, Dice, MLPs
//!  ─ model::CtrModel, one contract for every model (config::ModelConfig, presets by `kind`),
//!    a list of parts (model/parts/*.rs) and a search (model/search/*.rs):
//!      plan    the search over the whole history, no gradient ─▶ windows (all, recent n, top-k)
//!      leaves  only the table rows the differentiable part reads, one flat leaf
//!      forward each part over its window ─ head MLP ─▶ logits [B]
//!  ─ optim: Adam (dense) + RowWise Adam/Adagrad (touched embedding rows only)
//!  ─ train: validation, early stopping, checkpoints, resume      ─ eval (AUC, GAUC, logloss)
//!  ─ serving: offline encode ─▶ encodings parquet ─▶ Scorer (a user's candidates, any thread)
//!    checkpoint (beside train and serving): the format, the run directory, ModelFile, the
//!    vocabulary check
//! ```
//!
//! Start with [`model::CtrModel`], [`train::Trainer`], [`data::Dataset`] and
//! [`serving::Scorer`]; the `lifelong` binary wraps them (`synth`, `prepare`, `train`, `eval`,
//! `encode`, `sweep`, `demo`, …).
#![warn(missing_docs)]

// Foundations.
pub mod atomic;
pub(crate) mod cpu;
pub mod error;
pub(crate) mod seed;
pub mod config;
pub mod device;
// The pipeline, in data-flow order.
pub mod data;
pub mod embedding;
pub mod window;
pub mod search;
pub mod kernels;
pub mod nn;
pub mod aggregate;
pub mod model;
pub mod optim;
pub mod metrics;
pub mod checkpoint;
pub mod train;
pub mod eval;
pub mod serving;
// Tools around runs.
pub mod inspect;
pub mod plot;
pub mod sweep;

pub use cpu::tune_runtime;
pub use error::{Error, Result};

/// What the tests reach that is not the API (the `testing` feature, which `cargo test` turns on).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::cpu::linear;
}
