//! `lifelong prepare`: event log → prepared dataset.
//!
//! The rules (also in `data/README.md`):
//! - Vocabularies (user, item, cate) are built from every row of the log, label 0 included:
//!   frequency descending, ties by first appearance in file order; 0 = padding, 1 = unknown.
//! - A user's history is its label-1 rows (every row when there is no label column) ordered by
//!   timestamp, ties in file order.
//! - The behavior at position `p` (0-based; `p` behaviors precede it, so `seq_len = p`) of a
//!   history of length `n` is a test positive if `p = n-1`, a validation positive if `p = n-2`,
//!   and a training positive if `p <= n-3` and `(n-3-p) % stride == 0`. Only positions with
//!   `p >= min_history` become impressions.
//! - A label-0 row is a negative impression at its own time: `seq_len` = the user's label-1
//!   behaviors strictly before it in (ts, file order); test if `seq_len >= n-1`, validation if
//!   `seq_len = n-2`, else training; it also needs `seq_len >= min_history`.
//! - Every positive impression gets `negatives` sampled negatives (same split and `seq_len`),
//!   items drawn in proportion to their label-1 count, never an item the user touched in any
//!   row; the category is the item's vocabulary category. One ChaCha8 stream per user (seed,
//!   user index), so the output does not depend on the thread count.
//! - Rows of a split are ordered by user, then `seq_len`; at equal `seq_len` the positive comes
//!   first, then its sampled negatives, then label-0 rows in time order.

use crate::atomic::atomic_write_bytes;
use crate::data::csv::{is_csv, read_csv_chunks, read_csv_table, CsvOptions};
use crate::data::dataset::Meta;
use crate::data::io::{self, ColumnSpec, Kind, ParquetSink, RawIds};
use crate::data::spill::{self, Events, RecordFile};
use crate::data::vocab::{Vocab, VocabBuilder, PAD, UNKNOWN};
use crate::data::FORMAT_VERSION;
use crate::{Error, Result};
use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::{ArrayRef, Int32Array, Int64Array, Int8Array, ListArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names of the event-log columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnNames {
    /// User id column (int32/int64/string).
    pub user: String,
    /// Item id column (int32/int64/string).
    pub item: String,
    /// Category id column (int32/int64/string).
    pub cate: String,
    /// Timestamp column (integer or timestamp).
    pub ts: String,
    /// Optional label column (0 = shown, not clicked; 1 = click). If the log has no column of
    /// this name (or the name is empty), every row is a click.
    pub label: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        Self {
            user: "user_id".into(),
            item: "item_id".into(),
            cate: "cate_id".into(),
            ts: "ts".into(),
            label: "label".into(),
        }
    }
}

/// Options of [`prepare`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrepareConfig {
    /// Column names.
    pub columns: ColumnNames,
    /// Sampled negatives per positive; `None` = 1 without a label column, 0 with one.
    pub negatives: Option<usize>,
    /// Seed of the negative sampler.
    pub seed: u64,
    /// A positive becomes an impression only if at least this many behaviors precede it.
    pub min_history: usize,
    /// Every `stride`-th earlier behavior (counting back from the newest training one) becomes a
    /// training positive.
    pub stride: usize,
    /// Keep only the rows whose column equals the value, every pair (`behavior_type = "pv"`
    /// takes page views as the clicks); empty keeps every row.
    #[serde(default)]
    pub keep: Vec<(String, String)>,
    /// Layout of CSV logs (a `.csv` file or a directory of them); parquet logs ignore it.
    #[serde(default)]
    pub csv: CsvOptions,
    /// Memory budget in bytes ([`DEFAULT_MEMORY_BUDGET`]): rows beyond it are spilled to
    /// `scratch` and the users built in partitions that fit. Does not change the output, so it
    /// is not recorded in `meta.json`.
    #[serde(skip, default = "default_memory_budget")]
    pub memory_budget: u64,
    /// Scratch directory for spilled rows (`None`: a temporary directory inside the output
    /// directory, removed when done).
    #[serde(skip)]
    pub scratch: Option<PathBuf>,
}

/// Default memory budget of [`prepare`]: 2 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;

fn default_memory_budget() -> u64 {
    DEFAULT_MEMORY_BUDGET
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            columns: ColumnNames::default(),
            negatives: None,
            seed: 42,
            min_history: 1,
            stride: 1,
            keep: Vec::new(),
            csv: CsvOptions::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
            scratch: None,
        }
    }
}

/// The rows of a chunk (columns `first..first + keep.len()`, read as raw ids) that match every
/// `keep` pair; `None` when there is nothing to filter.
fn keep_mask(
    columns: &mut [Option<io::Column>],
    first: usize,
    keep: &[(String, String)],
    rows: usize,
) -> Option<Vec<bool>> {
    if keep.is_empty() {
        return None;
    }
    let mut mask = vec![true; rows];
    for (k, (_, value)) in keep.iter().enumerate() {
        match columns
            .get_mut(first + k)
            .and_then(Option::take)
            .and_then(|c| c.into_raw_ids())
        {
            Some(RawIds::Int(v)) => {
                let want = value.trim().parse::<i64>().ok();
                mask.iter_mut()
                    .zip(&v)
                    .for_each(|(m, &x)| *m &= Some(x) == want);
            }
            Some(RawIds::Str(v)) => mask
                .iter_mut()
                .zip(v.iter())
                .for_each(|(m, x)| *m &= x == value),
            None => mask.fill(false),
        }
    }
    Some(mask)
}

fn retain<T: Copy>(v: Vec<T>, mask: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(x, _)| x)
        .collect()
}

fn retain_ids(ids: RawIds, mask: &[bool]) -> RawIds {
    match ids {
        RawIds::Int(v) => RawIds::Int(retain(v, mask)),
        RawIds::Str(v) => {
            let mut out = io::StrIds::default();
            v.iter()
                .zip(mask)
                .filter(|(_, &m)| m)
                .for_each(|(x, _)| out.push(x));
            RawIds::Str(out)
        }
    }
}

/// What [`prepare`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareSummary {
    /// The `meta.json` written.
    pub meta: Meta,
    /// Input files read.
    pub inputs: Vec<PathBuf>,
    /// Partitions the users were built in (1 when the log fit the memory budget).
    pub partitions: usize,
    /// Rows spilled to scratch during the read (0 when they fit the budget).
    pub spilled_rows: u64,
}

/// How many times the sampler draws before giving up on one negative (a user who touched
/// nearly every popular item).
pub const MAX_SAMPLE_TRIES: usize = 256;

/// Rows per row group of `users.parquet` (lists are long, so fewer rows than elsewhere).
const USER_ROW_GROUP: usize = 8192;

/// One impression row of a split.
#[derive(Debug, Clone, Copy)]
struct Imp {
    label: u8,
    item: u32,
    cate: u32,
    seq_len: u32,
    /// The impression's time: its own row's (a sampled negative: its positive's).
    ts: i64,
    /// 0 = a positive and its sampled negatives, 1 = a label-0 row (ordering only).
    group: u8,
}

/// Everything one user contributes.
#[derive(Debug, Default)]
struct UserOut {
    items: Vec<u32>,
    cates: Vec<u32>,
    ts: Vec<i64>,
    /// Train, valid, test.
    splits: [Vec<Imp>; 3],
    sampled: u64,
    skipped: u64,
    label0: u64,
}

/// Read-only inputs shared by the per-user work.
struct Shared<'a> {
    item: &'a [u32],
    cate: &'a [u32],
    ts: &'a [i64],
    label: Option<&'a [u8]>,
    item_cate: &'a [u32],
    /// Cumulative label-1 counts per item index.
    cum: &'a [u64],
    negatives: usize,
    min_history: usize,
    stride: usize,
    seed: u64,
}

/// The columns of an event log: user, item, category (raw ids), timestamp, and the optional label
/// (in this order).
pub(crate) fn event_specs(c: &ColumnNames) -> Vec<ColumnSpec> {
    let mut specs = vec![
        ColumnSpec::new(&c.user, Kind::RawId),
        ColumnSpec::new(&c.item, Kind::RawId),
        ColumnSpec::new(&c.cate, Kind::RawId),
        ColumnSpec::new(&c.ts, Kind::Timestamp),
    ];
    if !c.label.is_empty() {
        specs.push(ColumnSpec::optional(&c.label, Kind::Label));
    }
    specs
}

/// Reads the `specs` columns of an event log: CSV (a `.csv` file or a directory of them) or
/// parquet.
pub(crate) fn read_events(
    events: &Path,
    specs: &[ColumnSpec],
    cfg: &PrepareConfig,
) -> Result<io::Table> {
    if is_csv(events) {
        read_csv_table(events, specs, &cfg.csv)
    } else {
        io::read_event_table(events, specs)
    }
}

/// Reads the rows of the event log at `events` (CSV or parquet) one chunk at a time.
fn read_event_chunks(
    events: &Path,
    specs: &[ColumnSpec],
    cfg: &PrepareConfig,
    f: impl FnMut(io::Chunk) -> Result<()>,
) -> Result<usize> {
    if is_csv(events) {
        read_csv_chunks(events, specs, &cfg.csv, f)
    } else {
        io::read_chunks(events, specs, rayon::current_num_threads(), true, f)
    }
}

/// Pass 1's state: the three vocabularies being built, what the sampler and the item table
/// need, and the coded rows (in memory, spilled to scratch when they outgrow the budget).
struct Coder {
    users: VocabBuilder,
    items: VocabBuilder,
    cates: VocabBuilder,
    /// Category code of each item code's first row.
    item_first_cate: Vec<u32>,
    /// Label-1 rows per item code.
    item_clicks: Vec<u64>,
    rows: Events,
    /// Rows kept in memory before they are spilled.
    spill_at: usize,
    spill: Option<RecordFile>,
    scratch: Scratch,
    rows_read: usize,
    has_label: Option<bool>,
}

/// The scratch directory, created on first use (inside the output directory unless one is
/// given) and removed when dropped.
struct Scratch {
    parent: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    fn file(&mut self, name: &str) -> Result<RecordFile> {
        if self.dir.is_none() {
            std::fs::create_dir_all(&self.parent).map_err(|e| Error::io(&self.parent, e))?;
            let d = tempfile::Builder::new()
                .prefix(".prepare-scratch-")
                .tempdir_in(&self.parent)
                .map_err(|e| Error::io(&self.parent, e))?;
            tracing::info!(dir = %d.path().display(), "prepare: spilling to scratch");
            self.dir = Some(d);
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        RecordFile::create(&dir.join(name))
    }
}

impl Coder {
    fn add(
        &mut self,
        mut chunk: io::Chunk,
        keep_first: usize,
        keep: &[(String, String)],
    ) -> Result<()> {
        let file = chunk.file.clone();
        let named = |e: Error| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{}: {m}", file.display())),
            other => other,
        };
        self.rows_read += chunk.rows;
        let mask = keep_mask(&mut chunk.columns, keep_first, keep, chunk.rows);
        let empty = || RawIds::Int(Vec::new());
        let mut raw = |i: usize| {
            let ids = chunk
                .take(i)
                .and_then(|c| c.into_raw_ids())
                .unwrap_or_else(empty);
            match &mask {
                Some(m) => retain_ids(ids, m),
                None => ids,
            }
        };
        let (u, i, c) = (raw(0), raw(1), raw(2));
        let ts = chunk.take(3).and_then(|c| c.into_i64()).unwrap_or_default();
        let label = chunk.take(4).and_then(|c| c.into_u8());
        let (ts, label) = match &mask {
            Some(m) => (retain(ts, m), label.map(|l| retain(l, m))),
            None => (ts, label),
        };
        self.has_label.get_or_insert(label.is_some());
        let n = ts.len();
        let base = self.rows.len();
        let ((ru, ri), rc) = rayon::join(
            || {
                rayon::join(
                    || self.users.add(&u, &mut self.rows.user),
                    || self.items.add(&i, &mut self.rows.item),
                )
            },
            || self.cates.add(&c, &mut self.rows.cate),
        );
        ru.and(ri).and(rc).map_err(named)?;
        for r in base..base + n {
            let (ic, cc) = (self.rows.item[r] as usize, self.rows.cate[r]);
            if ic == self.item_first_cate.len() {
                self.item_first_cate.push(cc);
                self.item_clicks.push(0);
            }
            if label.as_ref().is_none_or(|l| l[r - base] == 1) {
                self.item_clicks[ic] += 1;
            }
        }
        self.rows.ts.extend(ts);
        match label {
            Some(l) => self.rows.label.extend(l),
            None => self.rows.label.extend(std::iter::repeat_n(1u8, n)),
        }
        if self.rows.len() >= self.spill_at {
            if self.spill.is_none() {
                self.spill = Some(self.scratch.file("events.bin")?);
            }
            if let Some(f) = self.spill.as_mut() {
                f.extend(&self.rows)?;
            }
            self.rows.clear();
        }
        Ok(())
    }
}

/// Reads the event log at `events` (a parquet file, or a directory: every `*.parquet` under it;
/// or CSV) and writes a prepared dataset into `out` (created if needed; files already there are
/// replaced one by one, atomically, `meta.json` last).
///
/// Memory stays within `cfg.memory_budget` (plus the reader's window of row groups) whatever
/// the log's size: pass 1 streams the log, builds the vocabularies and codes every row (rows
/// beyond the budget are spilled to a scratch directory); the users are then cut into
/// partitions (ranges of user indices) that fit the budget, the rows routed to one scratch file
/// per partition, and each partition's histories, impressions and negatives built and streamed
/// to the output files in user order. A log that fits is one partition, never written to
/// scratch; the output does not depend on the budget.
///
/// # Errors
/// [`Error::Config`] for `stride == 0`; the named read errors of [`io::read_table`] (missing
/// path, corrupt file, missing or mistyped column, null, label not 0/1, id or timestamp types
/// differing between files); [`Error::InvalidArgument`] for an empty log;
/// [`Error::Io`] naming the output or scratch file that could not be written.
pub fn prepare(events: &Path, out: &Path, cfg: &PrepareConfig) -> Result<PrepareSummary> {
    if cfg.stride == 0 {
        return Err(Error::Config("prepare: stride must be at least 1".into()));
    }
    let c = &cfg.columns;
    let mut specs = event_specs(c);
    let keep_first = specs.len();
    specs.extend(
        cfg.keep
            .iter()
            .map(|(col, _)| ColumnSpec::new(col, Kind::RawId)),
    );
    let inputs = if is_csv(events) {
        io::list_files(events, "csv")?
    } else {
        io::list_parquet_files(events)?
    };
    let total_rows = if is_csv(events) {
        None
    } else {
        Some(io::parquet_total_rows(events)? as u64)
    };
    let budget = cfg.memory_budget.max(1);
    let mut coder = Coder {
        users: VocabBuilder::default(),
        items: VocabBuilder::default(),
        cates: VocabBuilder::default(),
        item_first_cate: Vec::new(),
        item_clicks: Vec::new(),
        rows: Events::default(),
        spill_at: partition_events(budget, 0),
        spill: None,
        scratch: Scratch {
            parent: cfg.scratch.clone().unwrap_or_else(|| out.to_path_buf()),
            dir: None,
        },
        rows_read: 0,
        has_label: None,
    };

    // Pass 1: vocabularies and coded rows.
    let bar = progress(total_rows, "reading", "rows");
    read_event_chunks(events, &specs, cfg, |chunk| {
        let rows = chunk.rows as u64;
        coder.add(chunk, keep_first, &cfg.keep)?;
        bar.inc(rows);
        Ok(())
    })?;
    bar.finish_and_clear();
    let rows_read = coder.rows_read;
    let spilled = coder.spill.as_ref().map_or(0, RecordFile::rows);
    let n = spilled as usize + coder.rows.len();
    if n == 0 {
        let why = if cfg.keep.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = cfg.keep.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(" matching {} (of {rows_read} read)", pairs.join(", "))
        };
        return Err(Error::InvalidArgument(format!(
            "{}: the event log has no rows{why}",
            events.display()
        )));
    }
    let has_label = !c.label.is_empty() && coder.has_label.unwrap_or(false);
    let negatives = cfg.negatives.unwrap_or(if has_label { 0 } else { 1 });
    tracing::info!(
        rows = n,
        files = inputs.len(),
        has_label,
        spilled,
        "prepare: read the event log"
    );

    // Vocabularies: code → index.
    let vocab_bytes =
        coder.users.heap_bytes() + coder.items.heap_bytes() + coder.cates.heap_bytes();
    let user_counts = coder.users.counts().to_vec();
    let (user_vocab, user_index) = std::mem::take(&mut coder.users).finish();
    let (item_vocab, item_index) = std::mem::take(&mut coder.items).finish();
    let (cate_vocab, cate_index) = std::mem::take(&mut coder.cates).finish();
    let (n_users, n_items) = (user_vocab.len(), item_vocab.len());
    let n_cates = cate_vocab.len();

    // Item → category of its first occurrence in file order; label-1 rows per item, cumulative.
    let mut item_cate = vec![u32::MAX; n_items];
    item_cate[PAD as usize] = PAD;
    item_cate[UNKNOWN as usize] = UNKNOWN;
    let mut cum = vec![0u64; n_items];
    for (code, (&first, &clicks)) in coder
        .item_first_cate
        .iter()
        .zip(&coder.item_clicks)
        .enumerate()
    {
        let i = item_index[code] as usize;
        item_cate[i] = cate_index[first as usize];
        cum[i] = clicks;
    }
    for i in 1..n_items {
        cum[i] += cum[i - 1];
    }

    // Partitions: ranges of user indices whose rows fit the budget.
    let mut rows_of_user = vec![0u64; n_users];
    for (code, &k) in user_counts.iter().enumerate() {
        rows_of_user[user_index[code] as usize] = k;
    }
    let cap = partition_events(budget, vocab_bytes + 16 * n_items + 12 * n_users) as u64;
    let mut bounds = vec![2usize];
    let mut acc = 0u64;
    for (u, &k) in rows_of_user.iter().enumerate().skip(2) {
        if acc > 0 && acc + k > cap {
            bounds.push(u);
            acc = 0;
        }
        acc += k;
    }
    bounds.push(n_users.max(2));
    let n_parts = bounds.len() - 1;

    let remap = |ev: &mut Events| {
        ev.user
            .par_iter_mut()
            .for_each(|x| *x = user_index[*x as usize]);
        ev.item
            .par_iter_mut()
            .for_each(|x| *x = item_index[*x as usize]);
        ev.cate
            .par_iter_mut()
            .for_each(|x| *x = cate_index[*x as usize]);
    };
    // Each partition's rows: in memory when everything is, else a scratch file per partition.
    enum Source {
        Memory(Events),
        Files(Vec<(PathBuf, u64)>),
    }
    let source = if spilled == 0 && n_parts == 1 {
        let mut ev = std::mem::take(&mut coder.rows);
        remap(&mut ev);
        Source::Memory(ev)
    } else {
        let mut part_of = vec![0u32; n_users];
        for p in 0..n_parts {
            part_of[bounds[p]..bounds[p + 1]].fill(p as u32);
        }
        let mut files: Vec<RecordFile> = (0..n_parts)
            .map(|p| coder.scratch.file(&format!("part-{p:05}.bin")))
            .collect::<Result<_>>()?;
        let mut route = |mut ev: Events| -> Result<()> {
            remap(&mut ev);
            for r in 0..ev.len() {
                files[part_of[ev.user[r] as usize] as usize].push(&ev, r)?;
            }
            Ok(())
        };
        if let Some(f) = coder.spill.take() {
            let (path, rows) = f.finish()?;
            spill::read_records(&path, rows, 1 << 16, &mut route)?;
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        route(std::mem::take(&mut coder.rows))?;
        Source::Files(
            files
                .into_iter()
                .map(RecordFile::finish)
                .collect::<Result<_>>()?,
        )
    };
    drop(coder.item_first_cate);
    drop(coder.item_clicks);
    tracing::info!(
        partitions = n_parts,
        cap_rows = cap,
        "prepare: partitioned the users"
    );

    // Vocabularies now; the data files stream partition by partition; meta.json last, so a
    // directory with a meta.json is complete (an earlier run's goes first, so a run that fails
    // midway never leaves new files beside an old meta.json).
    remove_meta(out)?;
    let vocab_dir = out.join("vocab");
    std::fs::create_dir_all(&vocab_dir).map_err(|e| Error::io(&vocab_dir, e))?;
    let writes: [&(dyn Fn() -> Result<()> + Sync); 3] = [
        &|| user_vocab.write(&vocab_dir.join("user.parquet"), None),
        &|| item_vocab.write(&vocab_dir.join("item.parquet"), Some(&item_cate)),
        &|| cate_vocab.write(&vocab_dir.join("cate.parquet"), None),
    ];
    writes
        .par_iter()
        .map(|w| w())
        .collect::<Result<Vec<()>>>()?;

    let mut sinks = Sinks::create(out)?;
    let mut totals = Totals::default();
    let bar = progress(Some(n_users.saturating_sub(2) as u64), "building", "users");
    let mut run = |(ua, ub): (usize, usize), ev: Events| -> Result<()> {
        if ev.len() > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "{}: users {ua}..{ub} hold {} events, more than one partition supports (2^32 - 1)",
                events.display(),
                ev.len()
            )));
        }
        let shared = Shared {
            item: &ev.item,
            cate: &ev.cate,
            ts: &ev.ts,
            label: has_label.then_some(ev.label.as_slice()),
            item_cate: &item_cate,
            cum: &cum,
            negatives,
            min_history: cfg.min_history,
            stride: cfg.stride,
            seed: cfg.seed,
        };
        let outs = build_users(ua, ub, &ev.user, &shared);
        drop(ev);
        totals.add(ua, &outs, &user_vocab);
        sinks.write(ua, &outs)?;
        bar.inc((ub - ua) as u64);
        Ok(())
    };
    match source {
        Source::Memory(ev) => run((bounds[0], bounds[1]), ev)?,
        Source::Files(files) => {
            for (p, (path, rows)) in files.iter().enumerate() {
                let ev = spill::read_all(path, *rows)?;
                std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
                run((bounds[p], bounds[p + 1]), ev)?;
            }
        }
    }
    bar.finish_and_clear();
    sinks.finish()?;
    drop(coder.scratch);

    let t = &totals;
    if t.skipped > 0 {
        tracing::warn!(
            skipped = t.skipped,
            max_tries = MAX_SAMPLE_TRIES,
            "prepare: {} sampled negatives were skipped because the sampler found no item the \
             user had not touched (users such as [{}]); the count is in meta.json",
            t.skipped,
            t.skipped_users.join(", ")
        );
    }
    let meta = Meta {
        format_version: FORMAT_VERSION,
        n_users,
        n_items,
        n_cates,
        n_behaviors: t.behaviors,
        n_train: t.rows[0],
        n_valid: t.rows[1],
        n_test: t.rows[2],
        max_history: t.max_history,
        n_histories: 0,
        timestamps: true,
        prepare: serde_json::json!({
            "config": cfg,
            "inputs": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "has_label": has_label,
            "negatives_per_positive": negatives,
            "counts": {
                "events": n,
                "label0_rows": n - t.behaviors,
                "label0_impressions": t.label0,
                "sampled_negatives": t.sampled,
                "skipped_negatives": t.skipped,
                "max_sample_tries": MAX_SAMPLE_TRIES,
            },
        }),
    };
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| Error::InvalidArgument(format!("meta.json: {e}")))?;
    atomic_write_bytes(&out.join("meta.json"), text.as_bytes())?;
    tracing::info!(
        n_users,
        n_items,
        n_cates,
        n_behaviors = t.behaviors,
        n_train = t.rows[0],
        n_valid = t.rows[1],
        n_test = t.rows[2],
        partitions = n_parts,
        "prepare: done"
    );
    Ok(PrepareSummary {
        meta,
        inputs,
        partitions: n_parts,
        spilled_rows: spilled,
    })
}

/// Removes `out/meta.json` if there is one: the files about to be replaced no longer match it.
pub(crate) fn remove_meta(out: &Path) -> Result<()> {
    let meta = out.join("meta.json");
    match std::fs::remove_file(&meta) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&meta, e)),
    }
}

/// Bytes one event takes while its partition is built: its coded row (21), the permutation (4),
/// its history entry (16), about two impressions (2 × 16), the output batches and the
/// allocator's slack. Calibrated on peak RSS (109 bytes per event measured for a 10^7-event log
/// in one partition; README's figures).
pub const BYTES_PER_EVENT: u64 = 136;

/// How many events a partition may hold under `budget` bytes when `fixed` are already taken.
fn partition_events(budget: u64, fixed: usize) -> usize {
    const MIN_EVENTS: u64 = 1024;
    (budget.saturating_sub(fixed as u64) / BYTES_PER_EVENT).max(MIN_EVENTS) as usize
}

fn progress(len: Option<u64>, what: &str, unit: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
    let template = match len {
        Some(_) => format!(
            "prepare: {what} {{bar:40}} {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}"
        ),
        None => format!("prepare: {what} {{human_pos}} {unit} {{per_sec}}"),
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Builds users `ua..ub` from their rows (`user[r]` is row `r`'s user index, rows in file
/// order): rows grouped by user, then a stable sort by timestamp per user.
fn build_users(ua: usize, ub: usize, user: &[u32], s: &Shared) -> Vec<UserOut> {
    let m = ub - ua;
    let mut uoff = vec![0usize; m + 1];
    for &u in user {
        uoff[u as usize - ua + 1] += 1;
    }
    for k in 0..m {
        uoff[k + 1] += uoff[k];
    }
    let mut perm = vec![0u32; user.len()];
    {
        let mut cursor = uoff.clone();
        for (r, &u) in user.iter().enumerate() {
            let k = u as usize - ua;
            perm[cursor[k]] = r as u32;
            cursor[k] += 1;
        }
    }
    {
        let mut slices: Vec<&mut [u32]> = Vec::with_capacity(m);
        let mut rest: &mut [u32] = &mut perm;
        for k in 0..m {
            let (head, tail) = rest.split_at_mut(uoff[k + 1] - uoff[k]);
            slices.push(head);
            rest = tail;
        }
        slices
            .par_iter_mut()
            .for_each(|sl| sl.sort_by_key(|&r| s.ts[r as usize]));
    }
    (0..m)
        .into_par_iter()
        .map(|k| process_user((ua + k) as u32, &perm[uoff[k]..uoff[k + 1]], s))
        .collect()
}

/// Counts over every partition.
#[derive(Default)]
struct Totals {
    behaviors: usize,
    max_history: usize,
    rows: [usize; 3],
    sampled: u64,
    skipped: u64,
    label0: u64,
    /// Raw ids of the first users with skipped negatives.
    skipped_users: Vec<String>,
}

impl Totals {
    fn add(&mut self, first_user: usize, outs: &[UserOut], users: &Vocab) {
        for (k, o) in outs.iter().enumerate() {
            self.behaviors += o.items.len();
            self.max_history = self.max_history.max(o.items.len());
            for s in 0..3 {
                self.rows[s] += o.splits[s].len();
            }
            self.sampled += o.sampled;
            self.skipped += o.skipped;
            self.label0 += o.label0;
            if o.skipped > 0 && self.skipped_users.len() < 5 {
                let raw = users.raw((first_user + k) as u32);
                self.skipped_users
                    .push(raw.map(|r| r.to_string()).unwrap_or_default());
            }
        }
    }
}

/// The four data files of a prepared dataset, written as the partitions come.
struct Sinks {
    users: (PathBuf, ParquetSink),
    splits: Vec<(PathBuf, ParquetSink)>,
}

impl Sinks {
    fn create(out: &Path) -> Result<Self> {
        let users_path = out.join("users.parquet");
        let users = ParquetSink::create(&users_path, users_schema(), &[], USER_ROW_GROUP)?;
        let splits = ["train", "valid", "test"]
            .iter()
            .map(|s| {
                let p = out.join(format!("{s}.parquet"));
                ParquetSink::create(&p, timed_split_schema(), &[], io::ROW_GROUP_ROWS)
                    .map(|w| (p, w))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            users: (users_path, users),
            splits,
        })
    }

    /// Appends users `first_user..first_user + outs.len()`, the four files in parallel.
    fn write(&mut self, first_user: usize, outs: &[UserOut]) -> Result<()> {
        let (path, sink) = &mut self.users;
        let (ru, rs) = rayon::join(
            || write_users(path, sink, first_user, outs),
            || {
                self.splits
                    .par_iter_mut()
                    .enumerate()
                    .map(|(s, (path, sink))| write_split(path, sink, first_user, outs, s))
                    .collect::<Result<Vec<()>>>()
            },
        );
        ru.and(rs.map(|_| ()))
    }

    fn finish(self) -> Result<()> {
        self.users.1.finish()?;
        self.splits.into_iter().try_for_each(|(_, s)| s.finish())
    }
}

/// Splits, impressions and sampled negatives of user `u`, whose rows (sorted by ts, ties in file
/// order) are `rows`.
fn process_user(u: u32, rows: &[u32], s: &Shared) -> UserOut {
    let is_click = |r: u32| s.label.is_none_or(|l| l[r as usize] == 1);
    let n = rows.iter().filter(|&&r| is_click(r)).count();
    let mut out = UserOut {
        items: Vec::with_capacity(n),
        cates: Vec::with_capacity(n),
        ts: Vec::with_capacity(n),
        ..UserOut::default()
    };
    let mut touched: Vec<u32> = rows.iter().map(|&r| s.item[r as usize]).collect();
    touched.sort_unstable();
    touched.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    rng.set_stream(u64::from(u));
    let total = s.cum.last().copied().unwrap_or(0);

    // Split index of a seq_len for label-0 rows (positives are handled below).
    let split_of = |seq: usize| -> usize {
        if seq + 1 >= n {
            2
        } else if seq + 2 == n {
            1
        } else {
            0
        }
    };
    let mut p = 0usize;
    for &r in rows {
        let ri = r as usize;
        let (item, cate) = (s.item[ri], s.cate[ri]);
        if !is_click(r) {
            if p >= s.min_history {
                out.splits[split_of(p)].push(Imp {
                    label: 0,
                    item,
                    cate,
                    seq_len: p as u32,
                    ts: s.ts[ri],
                    group: 1,
                });
                out.label0 += 1;
            }
            continue;
        }
        out.items.push(item);
        out.cates.push(cate);
        out.ts.push(s.ts[ri]);
        let pos = p;
        p += 1;
        if pos < s.min_history {
            continue;
        }
        let split = if pos + 1 == n {
            2
        } else if pos + 2 == n {
            1
        } else if (n - 3 - pos).is_multiple_of(s.stride) {
            0
        } else {
            continue;
        };
        let dst = &mut out.splits[split];
        dst.push(Imp {
            label: 1,
            item,
            cate,
            seq_len: pos as u32,
            ts: s.ts[ri],
            group: 0,
        });
        for _ in 0..s.negatives {
            match sample(&mut rng, s.cum, total, &touched) {
                Some(j) => {
                    dst.push(Imp {
                        label: 0,
                        item: j,
                        cate: s.item_cate[j as usize],
                        seq_len: pos as u32,
                        ts: s.ts[ri],
                        group: 0,
                    });
                    out.sampled += 1;
                }
                None => out.skipped += 1,
            }
        }
    }
    for split in &mut out.splits {
        split.sort_by_key(|i| (i.seq_len, i.group));
    }
    out
}

/// Draws an item in proportion to its label-1 count, rejecting items in `touched` (sorted);
/// `None` after [`MAX_SAMPLE_TRIES`] rejected draws or when nothing can be drawn.
fn sample(rng: &mut ChaCha8Rng, cum: &[u64], total: u64, touched: &[u32]) -> Option<u32> {
    if total == 0 {
        return None;
    }
    for _ in 0..MAX_SAMPLE_TRIES {
        let x = rng.random_range(0..total);
        let i = cum.partition_point(|&c| c <= x) as u32;
        if touched.binary_search(&i).is_err() {
            return Some(i);
        }
    }
    None
}

fn to_i32(path: &Path, what: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| {
        Error::InvalidArgument(format!("{}: {what} {x} does not fit int32", path.display()))
    })
}

fn list_field(dt: DataType) -> Arc<Field> {
    Arc::new(Field::new_list_field(dt, false))
}

/// The schema of `users.parquet`.
pub fn users_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int32, false),
        Field::new("items", DataType::List(list_field(DataType::Int32)), false),
        Field::new("cates", DataType::List(list_field(DataType::Int32)), false),
        Field::new("ts", DataType::List(list_field(DataType::Int64)), false),
    ]))
}

/// The schema of `train|valid|test.parquet`: the columns every prepared dataset has.
pub fn split_schema() -> SchemaRef {
    Arc::new(Schema::new(split_fields()))
}

fn split_fields() -> Vec<Field> {
    vec![
        Field::new("label", DataType::Int8, false),
        Field::new("user", DataType::Int32, false),
        Field::new("item", DataType::Int32, false),
        Field::new("cate", DataType::Int32, false),
        Field::new("seq_len", DataType::Int32, false),
    ]
}

/// The schema of the splits of an event log's dataset: [`split_schema`] and each impression's
/// time `ts` (the time-interval field's "now").
pub fn timed_split_schema() -> SchemaRef {
    let mut f = split_fields();
    f.push(Field::new("ts", DataType::Int64, false));
    Arc::new(Schema::new(f))
}

fn write_users(path: &Path, sink: &mut ParquetSink, first: usize, outs: &[UserOut]) -> Result<()> {
    let schema = users_schema();
    for (k, chunk) in outs.chunks(USER_ROW_GROUP).enumerate() {
        let first_user = first + k * USER_ROW_GROUP;
        let users: Vec<i32> = (0..chunk.len())
            .map(|i| to_i32(path, "user index", first_user + i))
            .collect::<Result<_>>()?;
        let mut offsets = OffsetBufferBuilder::<i32>::new(chunk.len());
        for o in chunk {
            offsets.push_length(o.items.len());
        }
        let offsets = offsets.try_finish().map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: more than 2^31 behaviors in one row group of {USER_ROW_GROUP} users",
                path.display()
            ))
        })?;
        let flat_u32 = |f: fn(&UserOut) -> &Vec<u32>| -> ArrayRef {
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().flat_map(f).map(|&x| x as i32),
            ))
        };
        let items = flat_u32(|o| &o.items);
        let cates = flat_u32(|o| &o.cates);
        let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(
            chunk.iter().flat_map(|o| o.ts.iter().copied()),
        ));
        let list = |dt: DataType, values: ArrayRef| -> Result<ArrayRef> {
            ListArray::try_new(list_field(dt), offsets.clone(), values, None)
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
        };
        let cols = vec![
            Arc::new(Int32Array::from(users)) as ArrayRef,
            list(DataType::Int32, items)?,
            list(DataType::Int32, cates)?,
            list(DataType::Int64, ts)?,
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        sink.write(&batch)?;
    }
    Ok(())
}

fn write_split(
    path: &Path,
    sink: &mut ParquetSink,
    first: usize,
    outs: &[UserOut],
    split: usize,
) -> Result<()> {
    let schema = timed_split_schema();
    const USERS_PER_BATCH: usize = 4096;
    for (k, chunk) in outs.chunks(USERS_PER_BATCH).enumerate() {
        let rows: usize = chunk.iter().map(|o| o.splits[split].len()).sum();
        if rows == 0 {
            continue;
        }
        let mut user = Vec::with_capacity(rows);
        for (i, o) in chunk.iter().enumerate() {
            let u = to_i32(path, "user index", first + k * USERS_PER_BATCH + i)?;
            user.extend(std::iter::repeat_n(u, o.splits[split].len()));
        }
        let imps = || chunk.iter().flat_map(|o| o.splits[split].iter());
        let cols = vec![
            Arc::new(Int8Array::from_iter_values(imps().map(|i| i.label as i8))) as ArrayRef,
            Arc::new(Int32Array::from(user)),
            Arc::new(Int32Array::from_iter_values(imps().map(|i| i.item as i32))),
            Arc::new(Int32Array::from_iter_values(imps().map(|i| i.cate as i32))),
            Arc::new(Int32Array::from_iter_values(
                imps().map(|i| i.seq_len as i32),
            )),
            Arc::new(Int64Array::from_iter_values(imps().map(|i| i.ts))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        sink.write(&batch)?;
    }
    Ok(())
}
