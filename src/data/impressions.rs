//! `lifelong prepare --impressions`: impression-format datasets (one row per impression with
//! its label, user, target and the history inline as list columns, as DIN, BARS and FuxiCTR
//! ship them) → a prepared dataset.
//!
//! The rules (also in `data/README.md`):
//! - Splits come from the input: `DIR/train`, `DIR/valid`, `DIR/test` (each a `.parquet` file or
//!   a directory of them), or one table whose split column holds `train`/`valid`/`test` (or
//!   0/1/2). Labels are kept as given; no negatives are sampled. Rows keep their input order.
//! - Vocabularies are built from every row of every split, in split then file order, each row's
//!   history before its target: frequency descending, ties by first appearance; an item's
//!   category is the one it first appears with.
//! - Histories are stored once per user where they share a prefix: a row whose history extends
//!   or is a prefix of one of its user's stored histories points into it (`seq_len` = its
//!   length; matched against the user's first and 15 most recent stored histories); otherwise it
//!   starts a new stored history. A user's first stored history is its
//!   row of `users.parquet`; the others get rows after the users (`meta.n_histories`) and the
//!   split files a `history` column. So replayed logs (each row's history a prefix of the next)
//!   store every behavior once, and shuffled or sampled histories are kept exactly.
//! - Histories carry no timestamps: `ts` holds the positions 0, 1, ….
//!
//! Memory: the stored histories and the impression rows are held until written (the issue of
//! bounded memory for event logs is solved in [`super::prepare`](mod@super::prepare); impression sets are smaller).

use crate::atomic::atomic_write_bytes;
use crate::data::dataset::Meta;
use crate::data::io::{self, Chunk, Column, ColumnSpec, Kind, ParquetSink, RawIds};
use crate::data::prepare::{split_schema, users_schema, PrepareConfig, PrepareSummary};
use crate::data::vocab::{VocabBuilder, PAD, UNKNOWN};
use crate::data::FORMAT_VERSION;
use crate::{Error, Result};
use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::{ArrayRef, Int32Array, Int64Array, Int8Array, ListArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Column names of an impression-format dataset beyond the event log's (`label`, user, item,
/// category: [`super::ColumnNames`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImpressionColumns {
    /// List of the history's item ids (oldest first).
    pub hist_item: String,
    /// List of the history's category ids (same lengths).
    pub hist_cate: String,
    /// Column naming each row's split (`train`/`valid`/`test` or 0/1/2); empty: the input is a
    /// directory with `train`, `valid` and `test`.
    pub split: String,
}

impl Default for ImpressionColumns {
    fn default() -> Self {
        Self {
            hist_item: "hist_item_ids".into(),
            hist_cate: "hist_cate_ids".into(),
            split: String::new(),
        }
    }
}

const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// How many of a user's stored histories a row is matched against (its first and most recent).
const MAX_MATCHED: usize = 16;

/// The inputs: one (path, split) per source, in split order, or one table with a split column.
fn sources(input: &Path, cols: &ImpressionColumns) -> Result<Vec<(PathBuf, Option<usize>)>> {
    if !cols.split.is_empty() {
        return Ok(vec![(input.to_path_buf(), None)]);
    }
    let mut out = Vec::new();
    for (s, name) in SPLITS.iter().enumerate() {
        let file = input.join(format!("{name}.parquet"));
        let dir = input.join(name);
        if file.is_file() {
            out.push((file, Some(s)));
        } else if dir.is_dir() {
            out.push((dir, Some(s)));
        } else {
            return Err(Error::io(
                input,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no {name}.parquet or {name}/ here (an impression dataset is a directory \
                         with train, valid and test, or one table with --split-col)"
                    ),
                ),
            ));
        }
    }
    Ok(out)
}

/// A stored history: item and category indices, oldest first.
type Stored = (Vec<u32>, Vec<u32>);

/// One impression row, coded.
#[derive(Clone, Copy)]
struct Row {
    label: u8,
    user: u32,
    item: u32,
    cate: u32,
    seq_len: u32,
    history: u32,
}

/// A chunk's columns: label, user, item, cate (raw), the two history lists, the split.
struct Parsed {
    label: Vec<u8>,
    user: RawIds,
    item: RawIds,
    cate: RawIds,
    hist_item: io::ListColumn<i64>,
    hist_cate: io::ListColumn<i64>,
    split: Vec<usize>,
}

fn parse(mut c: Chunk, fixed_split: Option<usize>) -> Result<Parsed> {
    let label = c.take(0).and_then(Column::into_u8).unwrap_or_default();
    let raw = |c: &mut Chunk, i: usize| {
        c.take(i)
            .and_then(Column::into_raw_ids)
            .unwrap_or(RawIds::Int(Vec::new()))
    };
    let (user, item, cate) = (raw(&mut c, 1), raw(&mut c, 2), raw(&mut c, 3));
    let hist_item = c
        .take(4)
        .and_then(Column::into_i64_list)
        .unwrap_or_default();
    let hist_cate = c
        .take(5)
        .and_then(Column::into_i64_list)
        .unwrap_or_default();
    for r in 0..hist_item.len() {
        let (a, b) = (hist_item.row(r).len(), hist_cate.row(r).len());
        if a != b {
            return Err(Error::value(
                &c.file,
                c.row0 + r,
                "hist_cate_ids",
                format!("{b} categories for {a} history items"),
            ));
        }
    }
    let split = match fixed_split {
        Some(s) => vec![s; label.len()],
        None => {
            let ids = raw(&mut c, 6);
            (0..ids.len())
                .map(|r| {
                    let v = match ids.get(r) {
                        crate::data::RawId::Str(s) => s,
                        crate::data::RawId::Int(i) => i.to_string(),
                    };
                    SPLITS
                        .iter()
                        .position(|s| *s == v)
                        .or_else(|| v.parse::<usize>().ok().filter(|&k| k < 3))
                        .ok_or_else(|| {
                            Error::value(
                                &c.file,
                                c.row0 + r,
                                "split",
                                format!("`{v}` is not train, valid, test (or 0, 1, 2)"),
                            )
                        })
                })
                .collect::<Result<_>>()?
        }
    };
    Ok(Parsed {
        label,
        user,
        item,
        cate,
        hist_item,
        hist_cate,
        split,
    })
}

/// Reads the impression dataset at `input` and writes a prepared dataset into `out` (see the
/// module docs for the rules).
///
/// # Errors
/// Named read errors (missing split, column, type, null; lists of unequal length; a split
/// value that is none of the three), and [`Error::Io`] naming an output file.
pub fn prepare_impressions(
    input: &Path,
    out: &Path,
    cfg: &PrepareConfig,
    cols: &ImpressionColumns,
) -> Result<PrepareSummary> {
    let c = &cfg.columns;
    let label_col = if c.label.is_empty() {
        "label"
    } else {
        &c.label
    };
    let mut specs = vec![
        ColumnSpec::new(label_col, Kind::Label),
        ColumnSpec::new(&c.user, Kind::RawId),
        ColumnSpec::new(&c.item, Kind::RawId),
        ColumnSpec::new(&c.cate, Kind::RawId),
        ColumnSpec::new(&cols.hist_item, Kind::IntList),
        ColumnSpec::new(&cols.hist_cate, Kind::IntList),
    ];
    if !cols.split.is_empty() {
        specs.push(ColumnSpec::new(&cols.split, Kind::RawId));
    }
    let srcs = sources(input, cols)?;
    let mut inputs = Vec::new();
    for (p, _) in &srcs {
        inputs.extend(io::list_parquet_files(p)?);
    }
    let each = |f: &mut dyn FnMut(Parsed) -> Result<()>| -> Result<()> {
        for (path, split) in &srcs {
            io::read_chunks(path, &specs, rayon::current_num_threads(), false, |chunk| {
                f(parse(chunk, *split)?)
            })?;
        }
        Ok(())
    };

    // Pass 1: vocabularies; each row's history, then its target.
    let (mut users, mut items, mut cates) = (
        VocabBuilder::default(),
        VocabBuilder::default(),
        VocabBuilder::default(),
    );
    let mut item_first_cate: Vec<u32> = Vec::new();
    let mut rows_read = 0usize;
    let mut scratch = Vec::new();
    each(&mut |p: Parsed| {
        rows_read += p.label.len();
        users.add(&p.user, &mut scratch)?;
        let (mut ri, mut rc) = (Vec::new(), Vec::new());
        for r in 0..p.label.len() {
            ri.extend_from_slice(p.hist_item.row(r));
            rc.extend_from_slice(p.hist_cate.row(r));
            ri.push(raw_int(&p.item, r)?);
            rc.push(raw_int(&p.cate, r)?);
        }
        let (mut ci, mut cc) = (Vec::new(), Vec::new());
        items.add(&RawIds::Int(ri), &mut ci)?;
        cates.add(&RawIds::Int(rc), &mut cc)?;
        for (&i, &k) in ci.iter().zip(&cc) {
            if i as usize == item_first_cate.len() {
                item_first_cate.push(k);
            }
        }
        scratch.clear();
        Ok(())
    })?;
    if rows_read == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: the impression dataset has no rows",
            input.display()
        )));
    }
    let (user_vocab, _) = users.finish();
    let (item_vocab, item_index) = items.finish();
    let (cate_vocab, cate_index) = cates.finish();
    let (n_users, n_items, n_cates) = (user_vocab.len(), item_vocab.len(), cate_vocab.len());
    let mut item_cate = vec![u32::MAX; n_items];
    item_cate[PAD as usize] = PAD;
    item_cate[UNKNOWN as usize] = UNKNOWN;
    for (code, &k) in item_first_cate.iter().enumerate() {
        item_cate[item_index[code] as usize] = cate_index[k as usize];
    }

    // Pass 2: rows and stored histories.
    let mut stored: Vec<Stored> = Vec::new();
    let mut first_of_user: Vec<u32> = vec![u32::MAX; n_users];
    let mut of_user: Vec<Vec<u32>> = vec![Vec::new(); n_users];
    let mut splits: [Vec<Row>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    each(&mut |p: Parsed| {
        for r in 0..p.label.len() {
            let u = user_vocab.lookup(&p.user.get(r));
            let hi: Vec<u32> = p
                .hist_item
                .row(r)
                .iter()
                .map(|&x| item_vocab.lookup_int(x))
                .collect();
            let hc: Vec<u32> = p
                .hist_cate
                .row(r)
                .iter()
                .map(|&x| cate_vocab.lookup_int(x))
                .collect();
            let n = hi.len();
            // The user's stored histories this one extends or is a prefix of: its first and its
            // most recent ones (a bound, so a user with many unrelated histories stays linear).
            let mine = &of_user[u as usize];
            let candidates = mine
                .iter()
                .take(1)
                .chain(mine.iter().skip(1).rev().take(MAX_MATCHED - 1));
            let found = candidates.copied().find(|&h| {
                let (si, sc) = &stored[h as usize];
                let m = si.len().min(n);
                si[..m] == hi[..m] && sc[..m] == hc[..m]
            });
            let h = match found {
                Some(h) => {
                    let (si, sc) = &mut stored[h as usize];
                    if n > si.len() {
                        si.extend_from_slice(&hi[si.len()..]);
                        sc.extend_from_slice(&hc[sc.len()..]);
                    }
                    h
                }
                None => {
                    stored.push((hi, hc));
                    let h = (stored.len() - 1) as u32;
                    of_user[u as usize].push(h);
                    if first_of_user[u as usize] == u32::MAX {
                        first_of_user[u as usize] = h;
                    }
                    h
                }
            };
            splits[p.split[r]].push(Row {
                label: p.label[r],
                user: u,
                item: item_vocab.lookup(&raw_id(&p.item, r)),
                cate: cate_vocab.lookup(&raw_id(&p.cate, r)),
                seq_len: n as u32,
                history: h,
            });
        }
        Ok(())
    })?;
    drop(of_user);

    // History rows: user u's first stored history at row u, the others after the users.
    let mut row_of = vec![u32::MAX; stored.len()];
    for (u, &f) in first_of_user.iter().enumerate() {
        if f != u32::MAX {
            row_of[f as usize] = u as u32;
        }
    }
    let mut next = n_users as u32;
    for slot in row_of.iter_mut().filter(|s| **s == u32::MAX) {
        *slot = next;
        next += 1;
    }
    let n_histories = next as usize;
    // Rows in history-row order.
    let mut order: Vec<u32> = (0..stored.len() as u32).collect();
    order.sort_by_key(|&h| row_of[h as usize]);

    crate::data::prepare::remove_meta(out)?;
    let vocab_dir = out.join("vocab");
    std::fs::create_dir_all(&vocab_dir).map_err(|e| Error::io(&vocab_dir, e))?;
    user_vocab.write(&vocab_dir.join("user.parquet"), None)?;
    item_vocab.write(&vocab_dir.join("item.parquet"), Some(&item_cate))?;
    cate_vocab.write(&vocab_dir.join("cate.parquet"), None)?;
    write_histories(&out.join("users.parquet"), &stored, &order, &row_of)?;
    let extra = n_histories > n_users;
    for (s, name) in SPLITS.iter().enumerate() {
        let rows: Vec<Row> = splits[s]
            .iter()
            .map(|r| Row {
                history: row_of[r.history as usize],
                ..*r
            })
            .collect();
        write_rows(&out.join(format!("{name}.parquet")), &rows, extra)?;
    }
    let n_behaviors: usize = stored.iter().map(|(i, _)| i.len()).sum();
    let max_history = stored.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
    let positives: usize = splits.iter().flatten().filter(|r| r.label == 1).count();
    let meta = Meta {
        format_version: FORMAT_VERSION,
        n_users,
        n_items,
        n_cates,
        n_behaviors,
        n_train: splits[0].len(),
        n_valid: splits[1].len(),
        n_test: splits[2].len(),
        max_history,
        n_histories: if extra { n_histories } else { 0 },
        timestamps: false,
        prepare: serde_json::json!({
            "config": cfg,
            "impressions": cols,
            "inputs": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "has_label": true,
            "counts": {
                "impressions": rows_read,
                "positives": positives,
                "stored_histories": stored.len(),
                "histories_past_the_users": n_histories - n_users,
            },
        }),
    };
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| Error::InvalidArgument(format!("meta.json: {e}")))?;
    atomic_write_bytes(&out.join("meta.json"), text.as_bytes())?;
    tracing::info!(
        impressions = rows_read,
        stored = stored.len(),
        n_behaviors,
        "prepare --impressions: done"
    );
    Ok(PrepareSummary {
        meta,
        inputs,
        partitions: 1,
        spilled_rows: 0,
    })
}

fn raw_id(ids: &RawIds, r: usize) -> crate::data::RawId {
    ids.get(r)
}

/// The integer id at row `r` (history lists hold integers, so targets must too).
fn raw_int(ids: &RawIds, r: usize) -> Result<i64> {
    match ids {
        RawIds::Int(v) => Ok(v[r]),
        RawIds::Str(_) => Err(Error::InvalidArgument(
            "impression datasets need integer item and category ids (history lists hold integers)"
                .into(),
        )),
    }
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {e}", path.display()))
}

fn write_histories(
    path: &Path,
    stored: &[(Vec<u32>, Vec<u32>)],
    order: &[u32],
    row_of: &[u32],
) -> Result<()> {
    const ROWS: usize = 8192;
    let mut sink = ParquetSink::create(path, users_schema(), &[], ROWS)?;
    let field = |dt| Arc::new(Field::new_list_field(dt, false));
    for chunk in order.chunks(ROWS) {
        let mut ob = OffsetBufferBuilder::<i32>::new(chunk.len());
        chunk
            .iter()
            .for_each(|&h| ob.push_length(stored[h as usize].0.len()));
        let offsets = ob.finish();
        let flat = |f: fn(&Stored) -> &Vec<u32>| -> ArrayRef {
            Arc::new(Int32Array::from_iter_values(
                chunk
                    .iter()
                    .flat_map(|&h| f(&stored[h as usize]).iter().map(|&x| x as i32)),
            ))
        };
        let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(
            chunk
                .iter()
                .flat_map(|&h| 0..stored[h as usize].0.len() as i64),
        ));
        let list = |dt: DataType, v: ArrayRef| -> Result<ArrayRef> {
            ListArray::try_new(field(dt), offsets.clone(), v, None)
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| invalid(path, e))
        };
        let cols = vec![
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().map(|&h| row_of[h as usize] as i32),
            )) as ArrayRef,
            list(DataType::Int32, flat(|s| &s.0))?,
            list(DataType::Int32, flat(|s| &s.1))?,
            list(DataType::Int64, ts)?,
        ];
        sink.write(&RecordBatch::try_new(users_schema(), cols).map_err(|e| invalid(path, e))?)?;
    }
    sink.finish()
}

fn write_rows(path: &Path, rows: &[Row], with_history: bool) -> Result<()> {
    let base = split_schema();
    let schema = if with_history {
        let mut f: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        f.push(Field::new("history", DataType::Int32, false));
        Arc::new(Schema::new(f))
    } else {
        base
    };
    let mut sink = ParquetSink::create(path, schema.clone(), &[], io::ROW_GROUP_ROWS)?;
    for chunk in rows.chunks(io::ROW_GROUP_ROWS) {
        let i32s = |f: fn(&Row) -> u32| -> ArrayRef {
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().map(|r| f(r) as i32),
            ))
        };
        let mut cols = vec![
            Arc::new(Int8Array::from_iter_values(
                chunk.iter().map(|r| r.label as i8),
            )) as ArrayRef,
            i32s(|r| r.user),
            i32s(|r| r.item),
            i32s(|r| r.cate),
            i32s(|r| r.seq_len),
        ];
        if with_history {
            cols.push(i32s(|r| r.history));
        }
        sink.write(&RecordBatch::try_new(schema.clone(), cols).map_err(|e| invalid(path, e))?)?;
    }
    sink.finish()
}
