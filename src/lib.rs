//! lifelong: lifelong user-behavior sequence models for CTR prediction.
#![warn(missing_docs)]

pub mod aggregate;
pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod embedding;
pub mod error;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod train;

pub use error::{Error, Result};
