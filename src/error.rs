//! The crate's one error type. Every variant that comes from input names the file, the row or the
//! field, so a user can find the offending data without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong in `lifelong`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    // The I/O error is part of the message, not a `source`: `{:#}` chains would print it twice.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// A file is not readable as what it claims to be (truncated or corrupt parquet, bad JSON).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A column is missing or has a type we cannot read.
    #[error("{path}: column `{column}`: {reason}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is invalid (a null, a negative length, ...).
    #[error("{path}: row {row}: column `{column}`: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// 0-based row within the file.
        row: usize,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// An index is outside its vocabulary (a corrupt or mismatched prepared dataset).
    #[error("{path}: row {row}: `{field}` index {id} is outside the vocabulary ({vocab} entries)")]
    IdOutOfRange {
        /// The file.
        path: PathBuf,
        /// 0-based row within the file.
        row: usize,
        /// The field (`item`, `cate`, `user`).
        field: String,
        /// The offending index.
        id: i64,
        /// The vocabulary size (padding and unknown included).
        vocab: usize,
    },
    /// A checkpoint is missing, corrupt or incompatible.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The training loss became NaN or infinite.
    #[error("loss became {value} at epoch {epoch}, step {step}: stopping (lower the learning rate or check the data)")]
    NonFiniteLoss {
        /// Epoch (0-based).
        epoch: usize,
        /// Global step.
        step: u64,
        /// The loss value.
        value: f32,
    },
    /// An argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }
    /// An [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
    /// An [`Error::Schema`] for `path` and `column`.
    pub fn schema(path: impl Into<PathBuf>, column: &str, reason: impl ToString) -> Self {
        Error::Schema {
            path: path.into(),
            column: column.to_string(),
            reason: reason.to_string(),
        }
    }
    /// An [`Error::Value`] for `path`, `row` and `column`.
    pub fn value(
        path: impl Into<PathBuf>,
        row: usize,
        column: &str,
        reason: impl ToString,
    ) -> Self {
        Error::Value {
            path: path.into(),
            row,
            column: column.to_string(),
            reason: reason.to_string(),
        }
    }
}
