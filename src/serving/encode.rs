//! Offline encoding: every user of a prepared dataset (or of an event log, with the
//! checkpoint's vocabularies) into an encodings part file.

use super::format::*;
use super::update::*;
use super::writer::*;
use crate::checkpoint::{self, ModelFile};
use crate::data::io::{self, ParquetSink};
use crate::data::vocab::Vocab;
use crate::data::{dataset, PrepareConfig};
use crate::embedding::VocabSizes;
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ListArray, RecordBatch};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What `encode` did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncodeSummary {
    /// Users written.
    pub users: usize,
    /// Behaviors read (before the `max_len` cut).
    pub behaviors: u64,
    /// The file written.
    pub file: PathBuf,
}

/// Encodes the users of a prepared dataset that belong to `shard` into `out/part-…parquet`,
/// streamed (a batch of users at a time, users of a batch in parallel), and copies the
/// vocabularies into `out/vocab`.
///
/// # Errors
/// Named errors for a dataset the checkpoint was not trained with (vocabulary fingerprint or
/// sizes), a corrupt `users.parquet` (file, row, column), and I/O.
pub fn encode_dataset(
    mf: &ModelFile,
    data: &Path,
    out: &Path,
    shard: Shard,
    show: bool,
) -> Result<EncodeSummary> {
    let meta = dataset::read_meta(data)?;
    let model = &mf.model;
    mf.check_sizes(
        VocabSizes {
            users: meta.n_users,
            items: meta.n_items,
            cates: meta.n_cates,
        },
        data,
    )?;
    mf.check_vocab_dir(data)?;
    let users_vocab = Vocab::read(&data.join("vocab").join("user.parquet"))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_vocab(data, out)?;
    let layout = model.encoding_layout();
    let fingerprint = checkpoint::model_fingerprint(model)?;
    let schema = schema(&layout, users_vocab.is_string());
    let file = out.join(shard.file_name());
    let mut sink = Writer::new(ParquetSink::create(
        &file,
        schema.clone(),
        &footer(&fingerprint, &layout, shard)?,
        USERS_PER_BATCH,
    )?);
    let path = data.join("users.parquet");
    let pb = progress(meta.n_users.saturating_sub(2) as u64, "encode");
    if !show {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut users, mut behaviors, mut row0) = (0usize, 0u64, 0usize);
    for b in io::parquet_batches(&path, USERS_PER_BATCH)? {
        let b = b?;
        let rows = read_users_batch(&path, row0, &b, &meta)?;
        row0 += b.num_rows();
        pb.inc(b.num_rows() as u64);
        let mine: Vec<_> = rows
            .into_iter()
            .filter_map(|(u, it, ct, ts)| {
                let id = users_vocab.raw(u)?;
                shard.owns(&id).then_some((id, u, it, ct, ts))
            })
            .collect();
        let encoded: Vec<EncodedUser> = mine
            .par_iter()
            .map(|(id, u, it, ct, ts)| {
                Ok(EncodedUser {
                    id: id.clone(),
                    last_ts: ts.last().copied(),
                    enc: model
                        .encode_user(*u, it, ct)
                        .map_err(|e| Error::value(&path, 0, "items", format!("user {id}: {e}")))?,
                })
            })
            .collect::<Result<_>>()?;
        behaviors += mine.iter().map(|m| m.2.len() as u64).sum::<u64>();
        users += encoded.len();
        if !encoded.is_empty() {
            sink.write(to_batch(&schema, &layout, &encoded)?)?;
        }
    }
    pb.finish_and_clear();
    sink.finish()?;
    Ok(EncodeSummary {
        users,
        behaviors,
        file,
    })
}

type UserRow = (u32, Vec<u32>, Vec<u32>, Vec<i64>);

/// The rows of a `users.parquet` batch, validated as the dataset reader does.
fn read_users_batch(
    path: &Path,
    row0: usize,
    b: &RecordBatch,
    meta: &dataset::Meta,
) -> Result<Vec<UserRow>> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| Error::schema(path, name, "missing"))
    };
    let user = col("user")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| Error::schema(path, "user", "expected int32"))?;
    let list = |name: &str| -> Result<&ListArray> {
        col(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::schema(path, name, "expected a list"))
    };
    let (items, cates, ts) = (list("items")?, list("cates")?, list("ts")?);
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        let here = |c: &str, why: String| Error::value(path, row0 + r, c, why);
        if user.is_null(r) || items.is_null(r) || cates.is_null(r) || ts.is_null(r) {
            return Err(here("user", "null".into()));
        }
        let u = user.value(r);
        if u < 2 || u as usize >= meta.history_rows() {
            return Err(here(
                "user",
                format!("user index {u} outside 2..{}", meta.history_rows()),
            ));
        }
        if u as usize >= meta.n_users {
            // A history of imported impressions that belongs to no user row: nothing to serve.
            continue;
        }
        let ids = |l: &ListArray, c: &str, bound: usize| -> Result<Vec<u32>> {
            let v = l.value(r);
            let v = v
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| Error::schema(path, c, "expected int32 elements"))?;
            if v.null_count() > 0 {
                return Err(here(c, "null element".into()));
            }
            if let Some(&x) = v.values().iter().find(|&&x| x < 0 || x as usize >= bound) {
                return Err(here(c, format!("index {x} outside 0..{bound}")));
            }
            Ok(v.values().iter().map(|&x| x as u32).collect())
        };
        let it = ids(items, "items", meta.n_items)?;
        let ct = ids(cates, "cates", meta.n_cates)?;
        let tv = ts.value(r);
        let tv: Vec<i64> = tv
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::schema(path, "ts", "expected int64 elements"))?
            .values()
            .to_vec();
        if ct.len() != it.len() || tv.len() != it.len() {
            return Err(here(
                "cates",
                format!("{} items, {} cates, {} ts", it.len(), ct.len(), tv.len()),
            ));
        }
        out.push((u as u32, it, ct, tv));
    }
    Ok(out)
}

/// Encodes the users of an event log (every behavior of theirs in it, chronological) with the
/// vocabularies of the prepared dataset `data` (the checkpoint's: their fingerprint is
/// checked), the users of `shard` only, into `out/part-…parquet`. For logs that were never
/// prepared, e.g. a day's users in production.
///
/// # Errors
/// As [`update`], and a dataset of other vocabularies.
pub fn encode_events(
    mf: &ModelFile,
    data: &Path,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
    shard: Shard,
) -> Result<UpdateSummary> {
    mf.check_vocab_dir(data)?;
    fold_into(mf, data, vec![(None, shard)], events, cfg, out, Some(shard))
}
