//! Data: event logs in, prepared datasets out, batches for training.
//!
//! ```text
//! events.parquet ─ prepare ─▶ DIR/{meta.json, users.parquet, train|valid|test.parquet, vocab/*.parquet}
//! DIR ─ Dataset::open ─▶ Histories (one jagged history per user) + Impressions per split
//!     ─ Batcher (rayon, prefetch) ─▶ Batch (padded [B, L] ids + mask, unique rows per table)
//! ```
//! `data/README.md` documents the file formats.

pub mod batch;
pub mod batcher;
pub mod csv;
pub mod dataset;
pub mod history_table;
pub mod impressions;
pub mod io;
pub mod prepare;
pub mod raw_id;
pub mod spill;
pub mod synth;
pub mod time;
pub mod vocab;

pub use batch::{Batch, Field, NONE};
pub use batcher::{Batcher, BatcherConfig};
pub use dataset::{Dataset, Histories, Impressions, Meta, Split};
pub use impressions::{prepare_impressions, ImpressionColumns};
pub use prepare::{prepare, ColumnNames, PrepareConfig, PrepareSummary};
pub use raw_id::RawId;
pub use synth::{write_synth, SynthConfig};
pub use time::TimeBuckets;
pub use vocab::{Vocab, PAD, UNKNOWN};

/// Version of the prepared-dataset layout written by [`prepare()`]; bumped on any incompatible
/// change. [`Dataset::open`] refuses other versions with a named error.
pub const FORMAT_VERSION: u32 = 1;
