//! `lifelong synth`: synthetic event logs with a planted, learnable signal.
//!
//! The world (drawn from the seed): every item belongs to one fixed category; item popularity is
//! Zipf-like (weight `1 / rank^0.9` over a random ranking), so popularity is Zipf-like both across
//! and within categories. Every user has 3 interest categories (uniform among the non-empty
//! ones); every `max(1, len/4)` behaviors one interest is replaced by another category (drift).
//! Each behavior is, with probability 0.85, a popularity-sampled item of a uniformly chosen
//! current interest, otherwise a popularity-sampled item of the whole catalogue. The next
//! behavior is thus predictable from the recent history, while a popularity-sampled negative is
//! not. History lengths are uniform in `[max(1, len/2), len]`; timestamps increase per user with
//! about 10% equal consecutive timestamps (to exercise tie handling).
//!
//! Determinism: one ChaCha8 stream for the world and one per user (seed, user), so the output
//! does not depend on the thread count.

use crate::data::io;
use crate::{Error, Result};
use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of [`write_synth`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SynthConfig {
    /// Number of users.
    pub users: usize,
    /// Number of items.
    pub items: usize,
    /// Number of categories.
    pub cates: usize,
    /// Maximum history length per user (lengths uniform in [len/2, len]).
    pub len: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            users: 2000,
            items: 5000,
            cates: 50,
            len: 100,
            seed: 7,
        }
    }
}

/// Probability that a behavior comes from one of the user's current interests.
pub const INTEREST_PROB: f64 = 0.85;
/// Number of interest categories per user.
pub const N_INTERESTS: usize = 3;
/// Zipf exponent of item popularity.
const ZIPF_S: f64 = 0.9;
/// Raw id offsets, so raw ids differ from vocabulary indices.
const USER_ID0: i64 = 1_000_000;
const ITEM_ID0: i64 = 100_000;
const CATE_ID0: i64 = 500;
/// Timestamps start around 2020-09 (seconds).
const TS0: i64 = 1_600_000_000;

/// A synthetic event log in memory (struct of arrays, grouped by user, chronological per user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SynthEvents {
    /// Raw user ids.
    pub user_id: Vec<i64>,
    /// Raw item ids.
    pub item_id: Vec<i64>,
    /// Raw category ids (always the item's fixed category).
    pub cate_id: Vec<i64>,
    /// Timestamps (seconds), non-decreasing per user.
    pub ts: Vec<i64>,
}

impl SynthEvents {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.user_id.len()
    }
    /// No events.
    pub fn is_empty(&self) -> bool {
        self.user_id.is_empty()
    }
    /// The schema of `events.parquet`: `user_id`, `item_id`, `cate_id`, `ts`, all int64.
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(
            ["user_id", "item_id", "cate_id", "ts"]
                .map(|n| Field::new(n, DataType::Int64, false))
                .to_vec(),
        ))
    }
    /// The events as one record batch.
    ///
    /// # Errors
    /// Never in practice (the columns have equal lengths).
    pub fn to_record_batch(&self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = [&self.user_id, &self.item_id, &self.cate_id, &self.ts]
            .map(|c| Arc::new(Int64Array::from_iter_values(c.iter().copied())) as ArrayRef)
            .to_vec();
        RecordBatch::try_new(Self::schema(), cols)
            .map_err(|e| Error::InvalidArgument(format!("synthetic events: {e}")))
    }
}

/// The drawn world: categories and popularity.
struct World {
    /// Category of every item.
    item_cate: Vec<u32>,
    /// Cumulative popularity over all items.
    cum: Vec<f64>,
    /// Items of every category and their cumulative popularity.
    cat_items: Vec<Vec<u32>>,
    cat_cum: Vec<Vec<f64>>,
    /// Categories that have at least one item.
    nonempty: Vec<u32>,
}

fn draw(rng: &mut ChaCha8Rng, cum: &[f64]) -> usize {
    let total = cum.last().copied().unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    cum.partition_point(|&c| c <= x)
        .min(cum.len().saturating_sub(1))
}

fn cumulative(w: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    w.map(|x| {
        acc += x;
        acc
    })
    .collect()
}

impl World {
    fn new(cfg: &SynthConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(0);
        let mut rank: Vec<usize> = (0..cfg.items).collect();
        rank.shuffle(&mut rng);
        let weight: Vec<f64> = rank
            .iter()
            .map(|&r| 1.0 / ((r + 1) as f64).powf(ZIPF_S))
            .collect();
        // The first `cates` items seed one category each, so no category is empty when
        // items >= cates; the rest are spread uniformly.
        let item_cate: Vec<u32> = (0..cfg.items)
            .map(|i| {
                if i < cfg.cates {
                    i as u32
                } else {
                    rng.random_range(0..cfg.cates) as u32
                }
            })
            .collect();
        let mut cat_items = vec![Vec::new(); cfg.cates];
        for (i, &c) in item_cate.iter().enumerate() {
            cat_items[c as usize].push(i as u32);
        }
        let cat_cum = cat_items
            .iter()
            .map(|its| cumulative(its.iter().map(|&i| weight[i as usize])))
            .collect();
        let nonempty = (0..cfg.cates as u32)
            .filter(|&c| !cat_items[c as usize].is_empty())
            .collect();
        World {
            item_cate,
            cum: cumulative(weight.iter().copied()),
            cat_items,
            cat_cum,
            nonempty,
        }
    }

    /// One user's behaviors: (item, ts).
    fn user(&self, cfg: &SynthConfig, u: usize) -> Vec<(u32, i64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(u as u64 + 1);
        let len = rng.random_range((cfg.len / 2).max(1)..=cfg.len);
        let k = N_INTERESTS.min(self.nonempty.len());
        let mut interests: Vec<u32> = rand::seq::index::sample(&mut rng, self.nonempty.len(), k)
            .iter()
            .map(|j| self.nonempty[j])
            .collect();
        let period = (cfg.len / 4).max(1);
        let mut t = TS0 + rng.random_range(0..30 * 86_400);
        let mut out = Vec::with_capacity(len);
        for j in 0..len {
            if j > 0 && j % period == 0 && self.nonempty.len() > k {
                let slot = rng.random_range(0..k);
                for _ in 0..64 {
                    let c = self.nonempty[rng.random_range(0..self.nonempty.len())];
                    if !interests.contains(&c) {
                        interests[slot] = c;
                        break;
                    }
                }
            }
            let item = if rng.random::<f64>() < INTEREST_PROB {
                let c = interests[rng.random_range(0..k)] as usize;
                self.cat_items[c][draw(&mut rng, &self.cat_cum[c])]
            } else {
                draw(&mut rng, &self.cum) as u32
            };
            if j > 0 {
                t += if rng.random::<f64>() < 0.1 {
                    0
                } else {
                    rng.random_range(1..=3600)
                };
            }
            out.push((item, t));
        }
        out
    }
}

fn check(cfg: &SynthConfig) -> Result<()> {
    for (name, v) in [
        ("users", cfg.users),
        ("items", cfg.items),
        ("cates", cfg.cates),
        ("len", cfg.len),
    ] {
        if v == 0 {
            return Err(Error::Config(format!("synth: `{name}` must be at least 1")));
        }
    }
    Ok(())
}

/// Users per generated block: the block's users are drawn in parallel, then written.
const USERS_PER_BLOCK: usize = 16_384;

/// The events of users `users` (a block), in user order.
fn block(world: &World, cfg: &SynthConfig, users: std::ops::Range<usize>) -> SynthEvents {
    let per_user: Vec<Vec<(u32, i64)>> = users
        .clone()
        .into_par_iter()
        .map(|u| world.user(cfg, u))
        .collect();
    let n: usize = per_user.iter().map(Vec::len).sum();
    let mut ev = SynthEvents {
        user_id: Vec::with_capacity(n),
        item_id: Vec::with_capacity(n),
        cate_id: Vec::with_capacity(n),
        ts: Vec::with_capacity(n),
    };
    for (u, beh) in users.zip(&per_user) {
        for &(i, t) in beh {
            ev.user_id.push(USER_ID0 + u as i64);
            ev.item_id.push(ITEM_ID0 + i64::from(i));
            ev.cate_id
                .push(CATE_ID0 + i64::from(world.item_cate[i as usize]));
            ev.ts.push(t);
        }
    }
    ev
}

/// Generates the synthetic event log in memory (see the module docs for the model).
///
/// # Errors
/// [`Error::Config`] if `users`, `items`, `cates` or `len` is 0.
pub fn generate(cfg: &SynthConfig) -> Result<SynthEvents> {
    check(cfg)?;
    Ok(block(&World::new(cfg), cfg, 0..cfg.users))
}

/// Writes `DIR/events.parquet` (atomically) and returns its path. Users are generated and
/// written a block at a time, so memory does not grow with the number of users; the file is the
/// same as [`generate`]'s events.
///
/// # Errors
/// As [`generate`]; [`Error::Io`] naming the directory or file that could not be written.
pub fn write_synth(cfg: &SynthConfig, out_dir: &Path) -> Result<PathBuf> {
    check(cfg)?;
    let world = World::new(cfg);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let path = out_dir.join("events.parquet");
    let mut sink = io::ParquetSink::create(&path, SynthEvents::schema(), &[], io::ROW_GROUP_ROWS)?;
    let mut n = 0usize;
    for start in (0..cfg.users).step_by(USERS_PER_BLOCK) {
        let ev = block(&world, cfg, start..(start + USERS_PER_BLOCK).min(cfg.users));
        n += ev.len();
        sink.write(&ev.to_record_batch()?)?;
    }
    sink.finish()?;
    tracing::info!(events = n, path = %path.display(), "synth: wrote the event log");
    Ok(path)
}
