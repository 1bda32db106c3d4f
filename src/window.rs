//! Windows: which behaviors of each sample's history a part reads.
//!
//! A window is a list of packed history rows per sample (`rows[offsets[b]..offsets[b+1]]` are
//! sample `b`'s), so the whole history, the most recent n and the search's top-k are all views of
//! the one packed history in the [`Batch`]: no history is stored twice.

use crate::config::WindowConfig;
use crate::data::batch::{Batch, NONE};
use std::sync::Arc;

/// Packed history rows per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `[B + 1]` offsets into `rows`.
    pub offsets: Arc<Vec<usize>>,
    /// Packed history rows (indices into the batch's `hist_*` arrays).
    pub rows: Arc<Vec<u32>>,
    /// Whether `rows` is exactly `0..n` (the whole history, in order).
    pub all: bool,
}

impl Window {
    /// The whole history.
    pub fn all(batch: &Batch) -> Self {
        Self {
            offsets: batch.offsets.clone(),
            rows: Arc::new((0..batch.n_packed() as u32).collect()),
            all: true,
        }
    }

    /// The most recent `n` behaviors of each sample (chronological).
    pub fn recent(batch: &Batch, n: usize) -> Self {
        let o = &batch.offsets;
        let mut offsets = Vec::with_capacity(o.len());
        let mut rows = Vec::new();
        offsets.push(0);
        for w in o.windows(2) {
            let start = w[1] - (w[1] - w[0]).min(n);
            rows.extend(start as u32..w[1] as u32);
            offsets.push(rows.len());
        }
        Self {
            offsets: Arc::new(offsets),
            rows: Arc::new(rows),
            all: false,
        }
    }

    /// A window from per-sample row lists given as `offsets` and `rows`.
    pub fn from_parts(offsets: Vec<usize>, rows: Vec<u32>) -> Self {
        Self {
            offsets: Arc::new(offsets),
            rows: Arc::new(rows),
            all: false,
        }
    }

    /// A window from each sample's rows.
    pub fn from_rows(per: Vec<Vec<u32>>) -> Self {
        let mut offsets = Vec::with_capacity(per.len() + 1);
        offsets.push(0);
        for p in &per {
            offsets.push(offsets[offsets.len() - 1] + p.len());
        }
        Self::from_parts(offsets, per.concat())
    }

    /// The window `cfg` names; `retrieved` must be given for `Retrieved`.
    pub fn of(cfg: WindowConfig, batch: &Batch, retrieved: Option<&Window>) -> Option<Self> {
        Some(match cfg {
            WindowConfig::All => Self::all(batch),
            WindowConfig::Recent(n) => Self::recent(batch, n),
            WindowConfig::Retrieved => retrieved?.clone(),
        })
    }

    /// Samples B.
    pub fn batch(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// Rows in all.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The longest sample's count.
    pub fn max_len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }
    /// `[B]` counts.
    pub fn lens(&self) -> Vec<u32> {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as u32)
            .collect()
    }

    /// The rows laid out padded: `[B, k]` with `k = max_len()`, [`NONE`] after each sample's rows.
    pub fn padded(&self) -> (Vec<u32>, usize) {
        let k = self.max_len();
        let mut out = vec![NONE; self.batch() * k];
        for (b, w) in self.offsets.windows(2).enumerate() {
            out[b * k..b * k + (w[1] - w[0])].copy_from_slice(&self.rows[w[0]..w[1]]);
        }
        (out, k)
    }
}
