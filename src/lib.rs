//! # lifelong
//!
//! Lifelong user-behavior sequence models for click-through-rate prediction, on candle.
//!
//! ```text
//! events.parquet ─ data::prepare ─▶ users.parquet (item[], cate[], ts[] per user)
//!                                   + {train,valid,test}.parquet (label, user, target, seq_len) + vocab
//!  ─ data::Dataset ─ data::Batcher (rayon, prefetch) ─▶ Batch { padded [B, L] ids + mask,
//!                                                            packed real behaviors, unique rows }
//!  ─ embedding (host tables; batch rows → leaf Var) ─▶ target [B, d], history [n, d]
//!  ─ aggregate::din (activation unit, fused CPU op) ─▶ interest [B, d]
//!  ─ model head (MLP) ─▶ logits [B] ─ nn::bce_with_logits ─▶ backward
//!  ─ optim: Adam (dense) + RowWise Adam/Adagrad (touched embedding rows only)
//!  ─ train: validation, early stopping, checkpoint (safetensors + config + optimiser state), resume
//! ```
//!
//! Start with [`train::Trainer`] and [`data::Dataset`]; the `lifelong` binary wraps them
//! (`synth`, `prepare`, `train`, `eval`, `demo`).
#![warn(missing_docs)]

pub mod aggregate;
pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod embedding;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod nn;
pub mod optim;
pub mod search;
pub mod train;
pub mod window;

pub use error::{Error, Result};
