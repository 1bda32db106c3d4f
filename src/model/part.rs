//! The contract every aggregation part keeps, over its whole life: built from its config, it
//! says what the plan and the leaves must hold for it, computes its interest vector in training
//! and `eval`, encodes a user's history for serving, folds new behaviors into that encoding, and
//! scores candidates against it.
//!
//! [`super::CtrModel`] holds a list of parts and loops over it; the only `match` on a kind is
//! [`build`], where a config becomes a part. Adding a kind of aggregation is one file under
//! `model/parts/` and one arm there.

use super::parts::{attention::AttentionPart, din::DinPart, mean::MeanPart, sdim::SdimPart};
use super::request::{Request, ServingWindow};
use crate::aggregate::sdim::{DeviceSignatures, Signatures};
use crate::config::{AggregateConfig, DiceConfig, WindowConfig};
use crate::data::{Batch, TimeBuckets};
use crate::embedding::{LeafBuilder, Leaves, Tables, TokenIndex};
use crate::nn::ParamStore;
use crate::window::Window;
use crate::Result;
use candle_core::{Device, Tensor};
use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

/// What every part may read of the model around it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The host embedding tables.
    pub tables: &'a Tables,
    /// The device of the dense parameters.
    pub device: &'a Device,
    /// The longest history the model reads.
    pub max_len: usize,
    /// The plan runs through the kernel ops on `device` ([`crate::device::Ops::Generic`]).
    pub generic: bool,
}

impl Ctx<'_> {
    /// Behaviors a window of `cfg` holds at most.
    pub fn window_len(&self, cfg: WindowConfig) -> usize {
        match cfg {
            WindowConfig::Recent(n) => n.min(self.max_len),
            _ => self.max_len,
        }
    }
}

/// A part's share of the plan (decisions without gradient).
#[derive(Debug, Clone, Default)]
pub struct PartPlan {
    /// SDIM's hash signatures of the targets and the window's behaviors (the fused path's, on
    /// the host).
    pub sigs: Option<Signatures>,
    /// The same signatures left on the model's device (the generic path's).
    pub device_sigs: Option<DeviceSignatures>,
}

/// Where a part's tokens are in the step's leaf: the requests it made of the
/// [`LeafBuilder`], in the order the part itself defines.
#[derive(Debug, Clone, Default)]
pub struct PartLookup {
    /// Request numbers (indices into the step's token indices).
    pub slots: Vec<usize>,
    /// A padded window's mask `[B, k]` (1 = a behavior), for parts that read a padded layout.
    pub mask: Option<Arc<Vec<f32>>>,
    /// The padded window's width k.
    pub k: usize,
}

/// What [`Aggregation::forward`] reads.
pub(crate) struct PartInput<'a> {
    pub batch: &'a Batch,
    pub leaves: &'a Leaves,
    pub indices: &'a [Arc<TokenIndex>],
    pub look: &'a PartLookup,
    pub window: &'a Window,
    pub plan: &'a PartPlan,
}

impl PartInput<'_> {
    /// The token index of the part's `i`-th request.
    pub fn index(&self, i: usize) -> &Arc<TokenIndex> {
        &self.indices[self.look.slots[i]]
    }
}

/// An aggregation kind (see the module docs). Every method but the constructor lives here.
pub(crate) trait Aggregation: Debug + Send + Sync {
    /// Width of what it adds to the head's input.
    fn out_dim(&self) -> usize;
    /// The window of the history it reads.
    fn window(&self) -> WindowConfig;
    /// Whether it reads or hashes every behavior of its window with the batch-wide unique ids
    /// ([`crate::data::batch::FullIds`]).
    fn reads_all(&self) -> bool {
        self.window() == WindowConfig::All
    }
    /// The search query `q'` of this part's own scores (TWIN's exact scorer), if it has one.
    fn query(&self, _target: &Tensor) -> Option<Result<Tensor>> {
        None
    }

    /// Stage 1: decisions over its window without gradient.
    fn plan(&self, _cx: &Ctx, _batch: &Batch, _window: &Window) -> Result<PartPlan> {
        Ok(PartPlan::default())
    }
    /// Stage 2: the rows it reads, requested from the leaf builder.
    fn request(&self, cx: &Ctx, lb: &mut LeafBuilder, window: &Window) -> PartLookup;
    /// Stage 3: `[B, out_dim]` from the leaf.
    fn forward(&self, input: &PartInput, train: bool) -> Result<Tensor>;
    /// Its attention weights `[B, K, H]` (evaluation mode), for parts that have them.
    fn attention_weights(&self, _input: &PartInput) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Floats of its per-user encoding (0: it reads the behaviors' ids at serving time).
    fn encoding_floats(&self, _cx: &Ctx) -> usize {
        0
    }
    /// Whether it reads the behaviors' ids when scoring (else only its encoding).
    fn reads_ids_when_scoring(&self) -> bool {
        true
    }
    /// Its encoding of a history (one sample, oldest first, already cut to its window).
    fn encode(&self, _cx: &Ctx, _history: &Batch) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    /// Its encoding `old` of the history `kept[..old_len]` extended by `kept[old_len..]`:
    /// `all` is the old window followed by the new behaviors (oldest first).
    fn extend(&self, _cx: &Ctx, _old: &[f32], _history: &Extension) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    /// `[C, out_dim]` for the request's candidates, from the user's encoding.
    fn score(&self, req: &Request, encoding: &[f32], window: ServingWindow) -> Result<Tensor>;
}

/// An encoding's history before and after new behaviors arrive.
pub(crate) struct Extension<'a> {
    /// The old encoding's items and categories (oldest first).
    pub old: (&'a [u32], &'a [u32]),
    /// The old ones followed by the new ones.
    pub all: (&'a [u32], &'a [u32]),
    /// How many are new.
    pub added: usize,
    /// The times of `all` and the model's time buckets (a model with a time field; its
    /// encodings' parts are seen from the newest behavior's time).
    pub time: Option<(&'a [i64], &'a TimeBuckets)>,
}

/// One sample's history as a batch (positions newest = 1, as in training); with `time`, the
/// behaviors' times and the buckets, each behavior's gap seen from the newest one's time (an
/// encoding's "now").
pub(crate) fn one_history(
    items: &[u32],
    cates: &[u32],
    time: Option<(&[i64], &TimeBuckets)>,
) -> Result<Batch> {
    let mut b = Batch::from_samples(&[0], &[0], &[0], &[(items, cates)]);
    if let Some((ts, tb)) = time {
        let now = ts.last().copied().unwrap_or(0);
        b.set_times(&[ts], &[now], tb)?;
    }
    Ok(b)
}

/// How a window of the last `wl` behaviors moves when an encoding is extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowChange {
    /// The new window, as rows of `all`.
    pub window: Range<usize>,
    /// Rows of the old window that leave it, as rows of `old`.
    pub leaving: Range<usize>,
    /// New behaviors that enter it, as rows of `all`.
    pub entering: Range<usize>,
    /// Whether anything of the old window stays (else the new window is all new).
    pub keeps_old: bool,
}

impl Extension<'_> {
    /// Rows `r` of the extended history as a one-sample batch, seen from the newest behavior's
    /// time.
    pub fn history(&self, r: Range<usize>) -> Result<Batch> {
        let (items, cates) = self.all;
        let now = self.time.map(|(ts, _)| *ts.last().unwrap_or(&0));
        let mut b =
            Batch::from_samples(&[0], &[0], &[0], &[(&items[r.clone()], &cates[r.clone()])]);
        if let (Some((ts, tb)), Some(now)) = (self.time, now) {
            b.set_times(&[&ts[r]], &[now], tb)?;
        }
        Ok(b)
    }
    /// Rows `r` of the old history as a one-sample batch (for parts whose tokens hold no
    /// context field: no times).
    pub fn old_history(&self, r: Range<usize>) -> Batch {
        let (items, cates) = self.old;
        Batch::from_samples(&[0], &[0], &[0], &[(&items[r.clone()], &cates[r])])
    }

    /// The change of a window of the last `wl` behaviors.
    pub fn window_change(&self, wl: usize) -> WindowChange {
        let (old, total) = (self.old.0.len(), self.all.0.len());
        let new_from = total - wl.min(total);
        let old_from = old - wl.min(old);
        let entering = self.added.min(total - new_from);
        WindowChange {
            window: new_from..total,
            leaving: old_from..new_from.max(old_from),
            entering: total - entering..total,
            keeps_old: entering < total - new_from,
        }
    }
}

/// The one place a config becomes a part. `name` prefixes its parameters.
pub(crate) fn build(
    cfg: &AggregateConfig,
    cx: &Ctx,
    ps: &mut ParamStore,
    name: &str,
    dice: &DiceConfig,
) -> Result<Box<dyn Aggregation>> {
    Ok(match cfg {
        AggregateConfig::Din(d) => Box::new(DinPart::new(d, cx, ps, name, dice)?),
        AggregateConfig::Attention(a) => Box::new(AttentionPart::new(a, cx, ps, name)?),
        AggregateConfig::Sdim(s) => Box::new(SdimPart::new(s, cx, ps, name)?),
        AggregateConfig::Mean(m) => Box::new(MeanPart::new(m, cx)),
    })
}
