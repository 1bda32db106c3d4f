//! The batch every stage reads: targets and packed histories, and the id types they carry.
//!
//! A [`Batch`] holds each sample's target and its history *packed*: only the real behaviors,
//! sample after sample, chronological within a sample, with `offsets` giving each sample's range.
//! The batcher ([`crate::data::batcher`]) fills it from a dataset; serving and encoding build one
//! directly ([`Batch::from_samples`]). Search, windows, embeddings and the model read it; it
//! imports nothing above `data`.

use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// A token field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Field {
    /// Item id.
    Item,
    /// Category id.
    Cate,
    /// Relative position (newest behavior = 1, target = 0).
    Pos,
    /// User id (head only).
    User,
    /// Time-interval bucket of the gap to the target's time (target = 0; see
    /// [`crate::data::time`]).
    Time,
}

impl Field {
    /// `item`, `cate`, `pos`, `user`, `time`.
    pub fn name(self) -> &'static str {
        match self {
            Field::Item => "item",
            Field::Cate => "cate",
            Field::Pos => "pos",
            Field::User => "user",
            Field::Time => "time",
        }
    }
    /// A field of the behavior's context in its sample (position, time interval), not of a
    /// vocabulary: a small table read whole, the target on row 0, no padding row.
    pub fn is_context(self) -> bool {
        matches!(self, Field::Pos | Field::Time)
    }
}

/// Marks an output row with no token (padding): it reads zeros and gets no gradient.
pub const NONE: u32 = u32::MAX;

/// Ids of one field in one batch: the sorted unique ids and, for every lookup, its position in
/// `unique`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIds {
    /// Sorted, distinct table rows touched.
    pub unique: Arc<Vec<u32>>,
    /// For each lookup, the index into `unique`.
    pub local: Arc<Vec<u32>>,
}

/// Sorts and deduplicates `ids` and maps each to its position among the unique ones.
///
/// When the largest id is within a small multiple of the number of lookups (vocabularies up to
/// tens of millions for the batches of long histories), a dense map over `0..=max` does it in
/// O(n + max) with no sort; otherwise (huge tables, few lookups) by sorting.
pub fn unique_remap(ids: &[u32]) -> SparseIds {
    let max = ids.iter().copied().max().unwrap_or(0) as usize;
    if max < 8 * ids.len() + 65_536 {
        return unique_remap_dense(ids, max);
    }
    let mut unique = ids.to_vec();
    unique.par_sort_unstable();
    unique.dedup();
    let local: Vec<u32> = ids
        .par_iter()
        .with_min_len(4096)
        .map(|id| unique.binary_search(id).unwrap_or(0) as u32)
        .collect();
    SparseIds {
        unique: Arc::new(unique),
        local: Arc::new(local),
    }
}

/// [`unique_remap`] through a dense map of `0..=max`.
fn unique_remap_dense(ids: &[u32], max: usize) -> SparseIds {
    let mut slot = vec![0u32; max + 1];
    for &i in ids {
        slot[i as usize] = 1;
    }
    let mut unique = Vec::new();
    for (i, s) in slot.iter_mut().enumerate() {
        if *s != 0 {
            *s = unique.len() as u32;
            unique.push(i as u32);
        }
    }
    let local: Vec<u32> = ids
        .par_iter()
        .with_min_len(4096)
        .map(|&i| slot[i as usize])
        .collect();
    SparseIds {
        unique: Arc::new(unique),
        local: Arc::new(local),
    }
}

/// Sorted unique ids of the item and category fields over `[targets (B), history (n)]`, and each
/// lookup's position among them.
#[derive(Debug, Clone, PartialEq)]
pub struct FullIds {
    /// Items.
    pub item: SparseIds,
    /// Categories.
    pub cate: SparseIds,
}

/// One collated batch: targets, and the packed histories.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row indices into the split.
    pub rows: Vec<u32>,
    /// The longest truncated history in the batch.
    pub len: usize,
    /// `[B]` labels.
    pub label: Vec<f32>,
    /// `[B]` user indices.
    pub user: Vec<u32>,
    /// `[B]` target item indices.
    pub target_item: Vec<u32>,
    /// `[B]` target category indices.
    pub target_cate: Vec<u32>,
    /// `[B]` truncated history lengths.
    pub seq_lens: Vec<u32>,
    /// `[B + 1]`: sample `b`'s behaviors are packed rows `offsets[b]..offsets[b + 1]`.
    pub offsets: Arc<Vec<usize>>,
    /// `[n]` item of each packed behavior.
    pub hist_item: Vec<u32>,
    /// `[n]` category of each packed behavior.
    pub hist_cate: Vec<u32>,
    /// `[n]` relative position of each packed behavior (newest = 1).
    pub hist_pos: Vec<u32>,
    /// `[n]` time-interval bucket of each packed behavior ([`Batch::set_times`]); empty when
    /// the batch was built without times.
    pub hist_time: Vec<u32>,
    /// `[n]` sample of each packed behavior.
    pub seg: Vec<u32>,
    /// Unique ids over targets and history (when the batcher was asked for them).
    pub full: Option<FullIds>,
}

impl Batch {
    /// Batch size B.
    pub fn size(&self) -> usize {
        self.rows.len()
    }
    /// Number of packed behaviors n.
    pub fn n_packed(&self) -> usize {
        self.hist_item.len()
    }
    /// The targets' ids of `field` (position: all 0).
    pub fn target_ids(&self, field: Field) -> Cow<'_, [u32]> {
        match field {
            Field::Item => Cow::Borrowed(&self.target_item),
            Field::Cate => Cow::Borrowed(&self.target_cate),
            Field::User => Cow::Borrowed(&self.user),
            Field::Pos | Field::Time => Cow::Owned(vec![0; self.size()]),
        }
    }
    /// The packed history's ids of `field`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the user field (behaviors have none).
    pub fn hist_ids(&self, field: Field) -> Result<&[u32]> {
        match field {
            Field::Item => Ok(&self.hist_item),
            Field::Cate => Ok(&self.hist_cate),
            Field::Pos => Ok(&self.hist_pos),
            Field::Time if self.hist_time.len() != self.n_packed() => Err(Error::InvalidArgument(
                "the model has a time field but this batch carries no times (its data has no \
                     timestamps, or the caller gave none)"
                    .into(),
            )),
            Field::Time => Ok(&self.hist_time),
            Field::User => Err(Error::InvalidArgument(
                "behaviors have no user field".into(),
            )),
        }
    }
    /// Unique ids of `field` (item or category) over `[targets, history]`: precomputed by the
    /// batcher, or computed now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the position and user fields.
    pub fn full_ids(&self, field: Field) -> Result<SparseIds> {
        let (t, h) = match field {
            Field::Item => (&self.target_item, &self.hist_item),
            Field::Cate => (&self.target_cate, &self.hist_cate),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "no batch-wide ids for the {} field",
                    field.name()
                )))
            }
        };
        if let Some(f) = &self.full {
            return Ok(if field == Field::Item {
                f.item.clone()
            } else {
                f.cate.clone()
            });
        }
        let mut ids = Vec::with_capacity(t.len() + h.len());
        ids.extend_from_slice(t);
        ids.extend_from_slice(h);
        Ok(unique_remap(&ids))
    }
}

impl Batch {
    /// A batch of explicit samples: targets, and each sample's history as `(items, cates)`,
    /// oldest first, already cut to the model's `max_len` (positions: newest = 1). Labels are 0
    /// and rows `0..B`; [`crate::data::batcher::collate`] builds on it, serving and encoding call it directly.
    pub fn from_samples(
        user: &[u32],
        target_item: &[u32],
        target_cate: &[u32],
        histories: &[(&[u32], &[u32])],
    ) -> Batch {
        let b = target_item.len();
        let n: usize = histories.iter().map(|h| h.0.len()).sum();
        let mut offsets = Vec::with_capacity(b + 1);
        offsets.push(0usize);
        let (mut hist_item, mut hist_cate, mut hist_pos, mut seg) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut seq_lens = Vec::with_capacity(b);
        for (i, (items, cates)) in histories.iter().enumerate() {
            let k = items.len();
            hist_item.extend_from_slice(items);
            hist_cate.extend_from_slice(cates);
            hist_pos.extend((1..=k as u32).rev());
            seg.extend(std::iter::repeat_n(i as u32, k));
            seq_lens.push(k as u32);
            offsets.push(hist_item.len());
        }
        Batch {
            rows: (0..b as u32).collect(),
            len: seq_lens.iter().copied().max().unwrap_or(0) as usize,
            label: vec![0.0; b],
            user: user.to_vec(),
            target_item: target_item.to_vec(),
            target_cate: target_cate.to_vec(),
            seq_lens,
            offsets: Arc::new(offsets),
            hist_item,
            hist_cate,
            hist_pos,
            hist_time: Vec::new(),
            seg,
            full: None,
        }
    }

    /// Sets every behavior's time-interval bucket: sample `b`'s behaviors happened at `ts[b]`
    /// (oldest first, as packed) and it is seen from `now[b]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the samples or a sample's times do not match the batch.
    pub fn set_times(
        &mut self,
        ts: &[&[i64]],
        now: &[i64],
        buckets: &crate::data::time::TimeBuckets,
    ) -> Result<()> {
        if ts.len() != self.size() || now.len() != self.size() {
            return Err(Error::InvalidArgument(format!(
                "times of {} samples and {} request times for a batch of {}",
                ts.len(),
                now.len(),
                self.size()
            )));
        }
        let mut out = Vec::with_capacity(self.n_packed());
        for (b, (t, &n)) in ts.iter().zip(now).enumerate() {
            let len = self.offsets[b + 1] - self.offsets[b];
            if t.len() != len {
                return Err(Error::InvalidArgument(format!(
                    "sample {b}: {} timestamps for {len} behaviors",
                    t.len()
                )));
            }
            out.extend(buckets.of(t, n));
        }
        self.hist_time = out;
        Ok(())
    }
}
