//! The search parts of two-stage models, one file each: [`hamming`] (ETA: SimHash codes and
//! Hamming distance), [`attention`] (SIM soft, TWIN, DARE: attention scores), [`category`] (SIM
//! hard: the target's category).
//!
//! A search retrieves, without gradient, each target's top-k behaviors of a history. The same
//! function serves training and `eval` (every sample searches its own history) and serving
//! (every candidate searches the user's one encoded history): [`Searched`] says which.

pub(crate) mod attention;
pub(crate) mod category;
pub(crate) mod hamming;

use super::aux::AuxHead;
use super::part::{Aggregation, Ctx};
use crate::config::{DiceConfig, SearchConfig, WindowConfig};
use crate::data::Batch;
use crate::nn::ParamStore;
use crate::window::Window;
use crate::{Error, Result};
use candle_core::Tensor;
use std::fmt::Debug;
use std::ops::Range;

/// Who searches what: target `b` of `targets` searches history [`Searched::history_of`]`(b)` of
/// `hist`'s packed histories.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Searched<'a> {
    /// The targets (their ids).
    pub targets: &'a Batch,
    /// The histories (their packed behaviors).
    pub hist: &'a Batch,
    /// Every target searches history 0 (serving) rather than its own (training).
    pub one_history: bool,
    /// The history's precomputed SimHash codes, `[n, words]` (serving reads them from the
    /// user's encoding).
    pub codes: Option<&'a [u64]>,
}

impl<'a> Searched<'a> {
    /// Every sample of `batch` searches its own history.
    pub fn own(batch: &'a Batch) -> Self {
        Self {
            targets: batch,
            hist: batch,
            one_history: false,
            codes: None,
        }
    }
    /// The history of target `b`.
    pub fn history_of(&self, b: usize) -> usize {
        if self.one_history {
            0
        } else {
            b
        }
    }
    /// The packed rows of history `h`.
    pub fn range(&self, h: usize) -> Range<usize> {
        self.hist.offsets[h]..self.hist.offsets[h + 1]
    }
    /// The targets grouped by the history they search: `(history, targets)`.
    pub fn groups(&self) -> Vec<(usize, Range<usize>)> {
        let b = self.targets.size();
        if self.one_history {
            vec![(0, 0..b)]
        } else {
            (0..b).map(|i| (i, i..i + 1)).collect()
        }
    }
}

/// A search kind (see the module docs).
pub(crate) trait Search: Debug + Send + Sync {
    /// Whether it hashes every behavior with the batch-wide unique ids.
    fn reads_all(&self) -> bool {
        false
    }
    /// Each target's top-k rows of its history, best first (rows index `hist`'s packed rows).
    fn retrieve(&self, cx: &Ctx, parts: &[Box<dyn Aggregation>], s: &Searched) -> Result<Window>;
    /// The search query `q'` of attention scores, for searches that score by attention.
    fn query(&self, _parts: &[Box<dyn Aggregation>], _target: &Tensor) -> Option<Result<Tensor>> {
        None
    }
    /// The auxiliary head trained on the search's full attention (DARE's, optional).
    fn aux(&self) -> Option<&AuxHead> {
        None
    }
    /// 64-bit words of each behavior's code in a user's encoding (0: none).
    fn code_words(&self) -> usize {
        0
    }
    /// The codes of a history (one sample, oldest first).
    fn encode(&self, _cx: &Ctx, _history: &Batch) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
    /// Whether a behavior's code depends on its position (so codes are recomputed, not kept,
    /// as behaviors arrive).
    fn codes_shift(&self, _cx: &Ctx) -> bool {
        false
    }
}

/// Parts are numbered in the config's order; the exact scorer names the retrieved window's.
fn exact_part(aggregate: &[crate::config::AggregateConfig]) -> Result<usize> {
    aggregate
        .iter()
        .position(|g| g.window() == WindowConfig::Retrieved)
        .ok_or_else(|| Error::Config("no retrieved window".into()))
}

/// The one place a search config becomes a search (`None` for a model without one).
pub(crate) fn build(
    cfg: &SearchConfig,
    aggregate: &[crate::config::AggregateConfig],
    cx: &Ctx,
    ps: &mut ParamStore,
    dice: &DiceConfig,
) -> Result<Option<Box<dyn Search>>> {
    Ok(match cfg {
        SearchConfig::None(_) => None,
        SearchConfig::Hamming(h) => Some(Box::new(hamming::HammingSearch::new(h, cx, ps)?)),
        SearchConfig::Attention(a) => Some(Box::new(attention::AttentionSearch::new(
            a,
            cx,
            ps,
            dice,
            || exact_part(aggregate),
        )?)),
        SearchConfig::Category(c) => Some(Box::new(category::CategorySearch { k: c.k })),
    })
}
