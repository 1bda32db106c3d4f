//! Collation and prefetching.
//!
//! A sample's history is the user's first `seq_len` behaviors (stored once per user, never
//! copied per sample); collation takes the last `min(seq_len, max_len)` of them. A [`Batch`] holds
//! them twice, both cheap: *padded* `[B, L]` ids with a mask (chronological, real behaviors first,
//! padding 0 after them; `L` = the longest truncated history in the batch), and *packed* (only the
//! real behaviors, with their sample `seg` and flat position `pos = b·L + j`), which is what the
//! models compute on so padding costs nothing. It also carries, per embedding table, the batch's
//! unique rows and each lookup's position among them ([`SparseIds`]) for sparse updates.
//!
//! [`Batcher::iter`] collates on a producer thread (each batch in parallel on rayon workers) and
//! keeps `prefetch` batches ready ahead of the training step.

use crate::data::{Histories, Impressions};
use crate::embedding::{unique_remap, SparseIds};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batcher options.
#[derive(Debug, Clone, PartialEq)]
pub struct BatcherConfig {
    /// Samples per batch (the last batch may be smaller).
    pub batch_size: usize,
    /// Histories are cut to the most recent `max_len` behaviors.
    pub max_len: usize,
    /// Shuffle the rows each epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Batches collated ahead of the consumer.
    pub prefetch: usize,
}

/// One collated batch. Lookups into the item and category tables are ordered
/// `[targets (B), packed history (n)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row indices into the split.
    pub rows: Vec<u32>,
    /// Padded length L.
    pub len: usize,
    /// `[B]` labels.
    pub label: Vec<f32>,
    /// `[B]` user indices.
    pub user: Vec<u32>,
    /// `[B]` target item indices.
    pub target_item: Vec<u32>,
    /// `[B]` target category indices.
    pub target_cate: Vec<u32>,
    /// `[B·L]` history item indices, 0 = padding.
    pub seq_item: Vec<u32>,
    /// `[B·L]` history category indices, 0 = padding.
    pub seq_cate: Vec<u32>,
    /// `[B·L]` 1.0 for a real behavior, 0.0 for padding.
    pub mask: Vec<f32>,
    /// `[B]` truncated history lengths.
    pub seq_lens: Vec<u32>,
    /// `[n]` sample of each real behavior.
    pub seg: Vec<u32>,
    /// `[n]` flat position `b·L + j` of each real behavior.
    pub pos: Vec<u32>,
    /// `[n]` relative position of each real behavior (newest = 1).
    pub rel_pos: Vec<u32>,
    /// Item table lookups `[targets, packed history]`.
    pub items: SparseIds,
    /// Category table lookups `[targets, packed history]`.
    pub cates: SparseIds,
    /// User table lookups `[B]`.
    pub users: SparseIds,
}

impl Batch {
    /// Batch size B.
    pub fn size(&self) -> usize {
        self.rows.len()
    }
    /// Number of real behaviors n.
    pub fn n_packed(&self) -> usize {
        self.seg.len()
    }
}

/// Collates `rows` of `imp` (histories from `hist`) into a [`Batch`].
pub fn collate(hist: &Histories, imp: &Impressions, rows: &[u32], max_len: usize) -> Batch {
    let b = rows.len();
    let lens: Vec<u32> = rows
        .iter()
        .map(|&r| imp.seq_len[r as usize].min(max_len as u32))
        .collect();
    let len = lens.iter().copied().max().unwrap_or(0) as usize;
    let mut seq_item = vec![0u32; b * len];
    let mut seq_cate = vec![0u32; b * len];
    let mut mask = vec![0f32; b * len];
    if len > 0 {
        seq_item
            .par_chunks_mut(len)
            .zip(seq_cate.par_chunks_mut(len))
            .zip(mask.par_chunks_mut(len))
            .zip(rows.par_iter().zip(lens.par_iter()))
            .with_min_len(32)
            .for_each(|(((si, sc), m), (&r, &k))| {
                let r = r as usize;
                let (items, cates) = hist.get(imp.user[r]);
                let end = imp.seq_len[r] as usize;
                let start = end - k as usize;
                si[..k as usize].copy_from_slice(&items[start..end]);
                sc[..k as usize].copy_from_slice(&cates[start..end]);
                m[..k as usize].iter_mut().for_each(|x| *x = 1.0);
            });
    }
    let n: usize = lens.iter().map(|&k| k as usize).sum();
    let mut seg = Vec::with_capacity(n);
    let mut pos = Vec::with_capacity(n);
    let mut rel_pos = Vec::with_capacity(n);
    let mut item_ids = Vec::with_capacity(b + n);
    let mut cate_ids = Vec::with_capacity(b + n);
    let (mut target_item, mut target_cate, mut label, mut user) = (
        Vec::with_capacity(b),
        Vec::with_capacity(b),
        Vec::with_capacity(b),
        Vec::with_capacity(b),
    );
    for &r in rows {
        let r = r as usize;
        target_item.push(imp.item[r]);
        target_cate.push(imp.cate[r]);
        label.push(imp.label[r]);
        user.push(imp.user[r]);
    }
    item_ids.extend_from_slice(&target_item);
    cate_ids.extend_from_slice(&target_cate);
    for (i, &k) in lens.iter().enumerate() {
        for j in 0..k as usize {
            seg.push(i as u32);
            pos.push((i * len + j) as u32);
            rel_pos.push(k - j as u32);
            item_ids.push(seq_item[i * len + j]);
            cate_ids.push(seq_cate[i * len + j]);
        }
    }
    let (items, (cates, users)) = rayon::join(
        || unique_remap(&item_ids),
        || rayon::join(|| unique_remap(&cate_ids), || unique_remap(&user)),
    );
    Batch {
        rows: rows.to_vec(),
        len,
        label,
        user,
        target_item,
        target_cate,
        seq_item,
        seq_cate,
        mask,
        seq_lens: lens,
        seg,
        pos,
        rel_pos,
        items,
        cates,
        users,
    }
}

/// Produces the batches of one split, shuffled per epoch, collated ahead of the consumer.
#[derive(Debug, Clone)]
pub struct Batcher {
    hist: Arc<Histories>,
    imp: Arc<Impressions>,
    cfg: BatcherConfig,
}

impl Batcher {
    /// A batcher over `imp` with histories `hist`.
    pub fn new(hist: Arc<Histories>, imp: Arc<Impressions>, cfg: BatcherConfig) -> Self {
        Self { hist, imp, cfg }
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        self.imp.len().div_ceil(self.cfg.batch_size.max(1))
    }

    /// The impressions.
    pub fn impressions(&self) -> &Impressions {
        &self.imp
    }

    /// The row order of `epoch`: a seeded permutation, or the identity without shuffling.
    pub fn order(&self, epoch: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.imp.len() as u32).collect();
        if self.cfg.shuffle {
            let seed = self.cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        order
    }

    /// Iterates the batches of `epoch` from batch index `start` (resuming mid-epoch), collating
    /// on a producer thread up to `prefetch` batches ahead. Dropping the iterator stops it.
    pub fn iter(&self, epoch: usize, start: usize) -> BatchIter {
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let (hist, imp) = (self.hist.clone(), self.imp.clone());
        let (bs, max_len) = (self.cfg.batch_size.max(1), self.cfg.max_len);
        let order = self.order(epoch);
        let handle = std::thread::spawn(move || {
            for chunk in order.chunks(bs).skip(start) {
                let batch = collate(&hist, &imp, chunk, max_len);
                if tx.send(batch).is_err() {
                    break; // consumer gone
                }
            }
        });
        BatchIter {
            rx: Some(rx),
            handle: Some(handle),
        }
    }
}

/// Iterator over prefetched batches (see [`Batcher::iter`]).
#[derive(Debug)]
pub struct BatchIter {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Close the channel first so a blocked producer wakes up and exits, then join it.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
