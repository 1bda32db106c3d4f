//! The aggregation parts, one file each: [`din`] (DIN's activation unit), [`attention`]
//! (multi-head target attention, DARE's included), [`sdim`] (SimHash buckets), [`mean`] (mean
//! pooling, the Embedding&MLP base model).

pub(crate) mod attention;
pub(crate) mod din;
pub(crate) mod mean;
pub(crate) mod sdim;

use crate::data::NONE;
use crate::embedding::Tokens;
use crate::window::Window;

/// The leaf request for a window's behaviors.
pub(crate) fn window_tokens(w: &Window) -> Tokens {
    if w.all {
        Tokens::AllHistory
    } else {
        Tokens::History(w.rows.clone())
    }
}

/// A window laid out padded `[B, k]` and its mask (1 = a behavior).
pub(crate) fn padded_with_mask(w: &Window) -> (Vec<u32>, Vec<f32>, usize) {
    let (padded, k) = w.padded();
    let mask = padded
        .iter()
        .map(|&r| if r == NONE { 0.0 } else { 1.0 })
        .collect();
    (padded, mask, k)
}
