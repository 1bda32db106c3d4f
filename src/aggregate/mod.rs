//! Aggregation: turn a target and its (packed) history into an interest vector.
//!
//! Histories arrive *packed*: only real behaviors, `[n, d]` rows with `seg [n]` naming each row's
//! sample, so padding costs nothing (DIN's activation unit and Dice statistics see real
//! positions only). `pos [n]` gives each row's flat position `b·L + j` in the padded `[B, L]`
//! layout for the ops that need it (a softmax over each history).

pub mod din;
pub mod din_ops;

pub use din::ActivationUnit;

use candle_core::Tensor;
use std::sync::Arc;

/// A batch's histories in packed form, with the layout needed to go back to `[B, L]`.
#[derive(Debug, Clone)]
pub struct Packed {
    /// `[n]` u32: the sample (batch row) of each behavior.
    pub seg: Tensor,
    /// `[n]` u32: flat position `b·L + j` of each behavior in the padded layout.
    pub pos: Tensor,
    /// `[B, L]` f32 mask (1 = real behavior) of the padded layout.
    pub mask: Tensor,
    /// Batch size B.
    pub batch: usize,
    /// Padded length L.
    pub len: usize,
    /// `B + 1` row offsets: sample `b`'s behaviors are packed rows `offsets[b]..offsets[b+1]`
    /// (rows are grouped by sample, in order).
    pub offsets: Arc<Vec<usize>>,
}

impl Packed {
    /// Offsets from per-sample history lengths.
    pub fn offsets_from_lens(lens: &[u32]) -> Arc<Vec<usize>> {
        let mut o = Vec::with_capacity(lens.len() + 1);
        o.push(0);
        for &l in lens {
            o.push(o[o.len() - 1] + l as usize);
        }
        Arc::new(o)
    }
}
