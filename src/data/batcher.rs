//! Collation and prefetching.
//!
//! A sample's history is the user's first `seq_len` behaviors (stored once per user, never
//! copied per sample); collation takes the last `min(seq_len, max_len)` of them. A [`Batch`]
//! holds them *packed*: only the real behaviors, sample after sample, chronological within a
//! sample, with `offsets` giving each sample's range. Models compute on packed rows so padding
//! costs nothing, and every window a model reads (the whole history, the most recent n, the
//! search's top-k) is a list of packed rows, so no history is stored twice.
//!
//! With [`BatcherConfig::full_ids`], collation also computes each field's sorted unique ids over
//! the targets and the whole history ([`FullIds`]), which models that read every behavior with
//! gradient (DIN, SDIM, auxiliary heads) or hash them (ETA) use as their leaf rows.
//!
//! [`Batcher::iter`] collates on a producer thread (each batch in parallel on rayon workers) and
//! keeps `prefetch` batches ready ahead of the training step.

use crate::data::batch::unique_remap;
pub use crate::data::batch::{Batch, FullIds};
use crate::data::{Histories, Impressions, TimeBuckets};
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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
    /// Compute [`FullIds`] in the producer.
    pub full_ids: bool,
    /// Bucket each behavior's gap to its impression's time (the model's time field).
    pub time: Option<Arc<TimeBuckets>>,
}

/// Collates `rows` of `imp` (histories from `hist`) into a [`Batch`]; `full_ids` also computes
/// [`FullIds`].
pub fn collate(
    hist: &Histories,
    imp: &Impressions,
    rows: &[u32],
    max_len: usize,
    full_ids: bool,
) -> Batch {
    collate_with(hist, imp, rows, max_len, full_ids, None)
}

/// [`collate`], and with `time` each behavior's time-interval bucket: its gap to the
/// impression's time (`imp.ts`). Impressions without times (data without timestamps) leave the
/// buckets empty, which a model with a time field refuses by name.
pub fn collate_with(
    hist: &Histories,
    imp: &Impressions,
    rows: &[u32],
    max_len: usize,
    full_ids: bool,
    time: Option<&TimeBuckets>,
) -> Batch {
    // Each row's history: the last min(seq_len, max_len) of its user's first seq_len behaviors.
    let histories: Vec<(&[u32], &[u32])> = rows
        .iter()
        .map(|&r| {
            let r = r as usize;
            let (items, cates) = hist.get(imp.history_of(r));
            let end = imp.seq_len[r] as usize;
            let start = end - end.min(max_len);
            (&items[start..end], &cates[start..end])
        })
        .collect();
    let pick = |v: &[u32]| -> Vec<u32> { rows.iter().map(|&r| v[r as usize]).collect() };
    let mut batch = Batch::from_samples(
        &pick(&imp.user),
        &pick(&imp.item),
        &pick(&imp.cate),
        &histories,
    );
    batch.rows = rows.to_vec();
    batch.label = rows.iter().map(|&r| imp.label[r as usize]).collect();
    if let Some(tb) = time.filter(|_| imp.ts.len() == imp.len()) {
        let mut out = Vec::with_capacity(batch.n_packed());
        for &r in rows {
            let r = r as usize;
            let s = hist.offsets[imp.history_of(r) as usize] as usize;
            let end = imp.seq_len[r] as usize;
            let start = end - end.min(max_len);
            out.extend(tb.of(&hist.ts[s + start..s + end], imp.ts[r]));
        }
        batch.hist_time = out;
    }
    if full_ids {
        let cat = |t: &[u32], h: &[u32]| {
            let mut v = Vec::with_capacity(t.len() + h.len());
            v.extend_from_slice(t);
            v.extend_from_slice(h);
            v
        };
        let (item, cate) = rayon::join(
            || unique_remap(&cat(&batch.target_item, &batch.hist_item)),
            || unique_remap(&cat(&batch.target_cate, &batch.hist_cate)),
        );
        batch.full = Some(FullIds { item, cate });
    }
    batch
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
        let (bs, max_len, full, time) = (
            self.cfg.batch_size.max(1),
            self.cfg.max_len,
            self.cfg.full_ids,
            self.cfg.time.clone(),
        );
        let order = self.order(epoch);
        let handle = std::thread::spawn(move || {
            for chunk in order.chunks(bs).skip(start) {
                let batch = collate_with(&hist, &imp, chunk, max_len, full, time.as_deref());
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
    /// A batch, or the producer's failure (a panic while collating): the epoch did not end.
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        match self.rx.as_ref()?.recv() {
            Ok(b) => Some(Ok(b)),
            Err(_) => {
                // The channel closed: the producer either finished or died.
                self.rx.take();
                let h = self.handle.take()?;
                match h.join() {
                    Ok(()) => None,
                    Err(p) => {
                        let why = p
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("unknown panic");
                        Some(Err(Error::InvalidArgument(format!(
                            "the batch producer failed while collating: {why}"
                        ))))
                    }
                }
            }
        }
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
