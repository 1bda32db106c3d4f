//! `lifelong prepare`: event log → prepared dataset. OWNER: data helper.
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
use crate::data::csv::{is_csv, read_csv_table, CsvOptions};
use crate::data::dataset::Meta;
use crate::data::io::{self, ColumnSpec, Kind, RawIds};
use crate::data::vocab::{Vocab, PAD, UNKNOWN};
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
        }
    }
}

/// The rows of `table` (columns `first..first + keep.len()`, read as raw ids) that match every
/// `keep` pair; `None` when there is nothing to filter.
fn keep_mask(table: &mut io::Table, first: usize, keep: &[(String, String)]) -> Option<Vec<bool>> {
    if keep.is_empty() {
        return None;
    }
    let mut mask = vec![true; table.num_rows()];
    for (k, (_, value)) in keep.iter().enumerate() {
        match table.take(first + k).and_then(|c| c.into_raw_ids()) {
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
        io::read_table(events, specs)
    }
}

/// Reads the event log at `events` (a parquet file, or a directory: every `*.parquet` under it)
/// and writes a prepared dataset into `out` (created if needed; files already there are
/// replaced one by one, atomically, `meta.json` last).
///
/// # Errors
/// [`Error::Config`] for `stride == 0`; the named read errors of [`io::read_table`] (missing
/// path, corrupt file, missing or mistyped column, null, label not 0/1);
/// [`Error::InvalidArgument`] for an empty log or one too large for 32-bit indices;
/// [`Error::Io`] naming the output file that could not be written.
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
    let mut table = read_events(events, &specs, cfg)?;
    let rows_read = table.num_rows();
    let mask = keep_mask(&mut table, keep_first, &cfg.keep);
    let n = mask
        .as_ref()
        .map_or(rows_read, |m| m.iter().filter(|&&x| x).count());
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
    if n > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "{}: {n} events is more than this version supports (2^32 - 1)",
            events.display()
        )));
    }
    let empty = || RawIds::Int(Vec::new());
    let users_raw = table
        .take(0)
        .and_then(|c| c.into_raw_ids())
        .unwrap_or_else(empty);
    let items_raw = table
        .take(1)
        .and_then(|c| c.into_raw_ids())
        .unwrap_or_else(empty);
    let cates_raw = table
        .take(2)
        .and_then(|c| c.into_raw_ids())
        .unwrap_or_else(empty);
    let ts = table.take(3).and_then(|c| c.into_i64()).unwrap_or_default();
    let label = if c.label.is_empty() {
        None
    } else {
        table.take(4).and_then(|c| c.into_u8())
    };
    let (users_raw, items_raw, cates_raw, ts, label) = match &mask {
        None => (users_raw, items_raw, cates_raw, ts, label),
        Some(m) => (
            retain_ids(users_raw, m),
            retain_ids(items_raw, m),
            retain_ids(cates_raw, m),
            retain(ts, m),
            label.map(|l| retain(l, m)),
        ),
    };
    let has_label = label.is_some();
    let negatives = cfg.negatives.unwrap_or(if has_label { 0 } else { 1 });
    tracing::info!(
        rows = n,
        files = table.files.len(),
        has_label,
        "prepare: read the event log"
    );

    // Vocabularies, all three in parallel; the raw columns are dropped right after.
    let (ur, (ir, cr)) = rayon::join(
        || Vocab::encode(&users_raw),
        || rayon::join(|| Vocab::encode(&items_raw), || Vocab::encode(&cates_raw)),
    );
    drop((users_raw, items_raw, cates_raw));
    let ((user_vocab, user), (item_vocab, item), (cate_vocab, cate)) = (ur?, ir?, cr?);
    let (n_users, n_items, n_cates) = (user_vocab.len(), item_vocab.len(), cate_vocab.len());

    // Item → category of its first occurrence in file order.
    let mut item_cate = vec![u32::MAX; n_items];
    item_cate[PAD as usize] = PAD;
    item_cate[UNKNOWN as usize] = UNKNOWN;
    for (&i, &k) in item.iter().zip(&cate) {
        let slot = &mut item_cate[i as usize];
        if *slot == u32::MAX {
            *slot = k;
        }
    }

    // Popularity for the sampler: label-1 rows per item, cumulative.
    let mut cum = vec![0u64; n_items];
    for (r, &i) in item.iter().enumerate() {
        if label.as_ref().is_none_or(|l| l[r] == 1) {
            cum[i as usize] += 1;
        }
    }
    for i in 1..n_items {
        cum[i] += cum[i - 1];
    }

    // Group rows by user (file order kept), then a stable sort by timestamp per user.
    let mut uoff = vec![0usize; n_users + 1];
    for &u in &user {
        uoff[u as usize + 1] += 1;
    }
    for u in 0..n_users {
        uoff[u + 1] += uoff[u];
    }
    let mut perm = vec![0u32; n];
    {
        let mut cursor = uoff.clone();
        for (r, &u) in user.iter().enumerate() {
            perm[cursor[u as usize]] = r as u32;
            cursor[u as usize] += 1;
        }
    }
    drop(user);
    {
        let mut slices: Vec<&mut [u32]> = Vec::with_capacity(n_users);
        let mut rest: &mut [u32] = &mut perm;
        for u in 0..n_users {
            let (head, tail) = rest.split_at_mut(uoff[u + 1] - uoff[u]);
            slices.push(head);
            rest = tail;
        }
        slices
            .par_iter_mut()
            .for_each(|s| s.sort_by_key(|&r| ts[r as usize]));
    }

    let shared = Shared {
        item: &item,
        cate: &cate,
        ts: &ts,
        label: label.as_deref(),
        item_cate: &item_cate,
        cum: &cum,
        negatives,
        min_history: cfg.min_history,
        stride: cfg.stride,
        seed: cfg.seed,
    };
    let outs: Vec<UserOut> = (2..n_users)
        .into_par_iter()
        .map(|u| process_user(u as u32, &perm[uoff[u]..uoff[u + 1]], &shared))
        .collect();
    drop(perm);

    // Counts.
    let n_behaviors: usize = outs.iter().map(|o| o.items.len()).sum();
    let max_history = outs.iter().map(|o| o.items.len()).max().unwrap_or(0);
    let split_rows = |s: usize| outs.iter().map(|o| o.splits[s].len()).sum::<usize>();
    let (n_train, n_valid, n_test) = (split_rows(0), split_rows(1), split_rows(2));
    let sampled: u64 = outs.iter().map(|o| o.sampled).sum();
    let skipped: u64 = outs.iter().map(|o| o.skipped).sum();
    let label0: u64 = outs.iter().map(|o| o.label0).sum();
    if skipped > 0 {
        let affected: Vec<String> = outs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.skipped > 0)
            .take(5)
            .map(|(k, _)| {
                user_vocab
                    .raw(k as u32 + 2)
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            })
            .collect();
        tracing::warn!(
            skipped,
            max_tries = MAX_SAMPLE_TRIES,
            "prepare: {skipped} sampled negatives were skipped because the sampler found no item the \
             user had not touched (users such as [{}]); the count is in meta.json",
            affected.join(", ")
        );
    }

    // Write everything; meta.json last so a directory with a meta.json is complete.
    let vocab_dir = out.join("vocab");
    std::fs::create_dir_all(&vocab_dir).map_err(|e| Error::io(&vocab_dir, e))?;
    let writes: [&(dyn Fn() -> Result<()> + Sync); 7] = [
        &|| user_vocab.write(&vocab_dir.join("user.parquet"), None),
        &|| item_vocab.write(&vocab_dir.join("item.parquet"), Some(&item_cate)),
        &|| cate_vocab.write(&vocab_dir.join("cate.parquet"), None),
        &|| write_users(&out.join("users.parquet"), &outs),
        &|| write_split(&out.join("train.parquet"), &outs, 0),
        &|| write_split(&out.join("valid.parquet"), &outs, 1),
        &|| write_split(&out.join("test.parquet"), &outs, 2),
    ];
    let results: Vec<Result<()>> = writes.par_iter().map(|w| w()).collect();
    results.into_iter().collect::<Result<Vec<()>>>()?;

    let inputs = table.files.clone();
    let meta = Meta {
        format_version: FORMAT_VERSION,
        n_users,
        n_items,
        n_cates,
        n_behaviors,
        n_train,
        n_valid,
        n_test,
        max_history,
        prepare: serde_json::json!({
            "config": cfg,
            "inputs": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "has_label": has_label,
            "negatives_per_positive": negatives,
            "counts": {
                "events": n,
                "label0_rows": n - n_behaviors,
                "label0_impressions": label0,
                "sampled_negatives": sampled,
                "skipped_negatives": skipped,
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
        n_behaviors,
        n_train,
        n_valid,
        n_test,
        "prepare: done"
    );
    Ok(PrepareSummary { meta, inputs })
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

/// The schema of `train|valid|test.parquet`.
pub fn split_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("label", DataType::Int8, false),
        Field::new("user", DataType::Int32, false),
        Field::new("item", DataType::Int32, false),
        Field::new("cate", DataType::Int32, false),
        Field::new("seq_len", DataType::Int32, false),
    ]))
}

fn write_users(path: &Path, outs: &[UserOut]) -> Result<()> {
    let schema = users_schema();
    let batches = outs.chunks(USER_ROW_GROUP).enumerate().map(|(k, chunk)| {
        let first_user = 2 + k * USER_ROW_GROUP;
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
        RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    });
    io::write_parquet(path, users_schema(), batches, USER_ROW_GROUP)
}

fn write_split(path: &Path, outs: &[UserOut], split: usize) -> Result<()> {
    let schema = split_schema();
    const USERS_PER_BATCH: usize = 4096;
    let batches = outs
        .chunks(USERS_PER_BATCH)
        .enumerate()
        .filter(|(_, chunk)| chunk.iter().any(|o| !o.splits[split].is_empty()))
        .map(|(k, chunk)| {
            let rows: usize = chunk.iter().map(|o| o.splits[split].len()).sum();
            let mut user = Vec::with_capacity(rows);
            for (i, o) in chunk.iter().enumerate() {
                let u = to_i32(path, "user index", 2 + k * USERS_PER_BATCH + i)?;
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
            ];
            RecordBatch::try_new(schema.clone(), cols)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
        });
    io::write_parquet(path, split_schema(), batches, io::ROW_GROUP_ROWS)
}
