//! Checkpoints: one owner for the format, the run directory and the vocabulary check.
//!
//! | file | what |
//! |---|---|
//! | [`file`](mod@file) | the container: safetensors with CRC-32s of the header and every tensor, written atomically |
//! | [`meta`] | [`Metadata`]: the config, vocabulary sizes and fingerprint, training progress |
//! | [`run_dir`] | [`RunDir`]: `last.safetensors`, `best.safetensors`, `metrics.jsonl` |
//! | [`model_file`] | [`ModelFile`]: a checkpoint opened into a checked, ready model |
//! | [`vocab`] | the one check that a `vocab/` directory is the checkpoint's |
//!
//! Training writes checkpoints through [`Metadata::to_map`] and [`file::save`](fn@file::save); `eval`,
//! `encode`, `encode --update`, resume and the serving [`crate::serving::Scorer`] read them
//! through [`ModelFile::open`] (or [`model_file::read_checkpoint`]) and refuse a dataset or an
//! encodings directory of other vocabularies with [`ModelFile::check_vocab_dir`].

pub mod file;
pub mod meta;
pub mod model_file;
pub mod run_dir;
pub mod vocab;

pub use file::{load, read_metadata, save, Loaded, CHECKPOINT_FORMAT, RESERVED_KEYS};
pub use meta::Metadata;
pub use model_file::{build_model, model_fingerprint, read_checkpoint, ModelFile};
pub use run_dir::{RunDir, BEST, LAST};
pub use vocab::vocab_fingerprint;
