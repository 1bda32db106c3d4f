//! Offline encoding: every user of a prepared dataset (or of an event log, with the
//! checkpoint's vocabularies) into an encodings part file.

use super::format::*;
use super::update::*;
use super::writer::*;
use crate::checkpoint::{self, ModelFile};
use crate::data::io::ParquetSink;
use crate::data::vocab::Vocab;
use crate::data::{dataset, PrepareConfig, RawId};
use crate::embedding::VocabSizes;
use crate::{Error, Result};
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
    if model.time_buckets().is_some() && !meta.timestamps {
        return Err(Error::InvalidArgument(format!(
            "{}: the model has a time field (model.embedding.time) but this dataset has no \
             timestamps (an impression dataset's histories carry none)",
            data.display()
        )));
    }
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
    let (mut users, mut behaviors) = (0usize, 0u64);
    dataset::read_user_chunks(&path, &meta, |rows| {
        pb.inc(rows.users.len() as u64);
        // Users of this shard (histories of imported impressions past the users: none to serve).
        let mine: Vec<(RawId, usize)> = (0..rows.users.len())
            .filter_map(|r| {
                let u = rows.users[r];
                if u as usize >= meta.n_users {
                    return None;
                }
                let id = users_vocab.raw(u)?;
                shard.owns(&id).then_some((id, r))
            })
            .collect();
        for batch in mine.chunks(USERS_PER_BATCH) {
            let encoded: Vec<EncodedUser> = batch
                .par_iter()
                .map(|(id, r)| {
                    let (it, ct) = (rows.items.row(*r), rows.cates.row(*r));
                    Ok(EncodedUser {
                        id: id.clone(),
                        last_ts: rows.ts.row(*r).last().copied(),
                        enc: model
                            .encode_user_at(rows.users[*r], it, ct, Some(rows.ts.row(*r)))
                            .map_err(|e| {
                                let (file, row0) = &rows.at;
                                Error::value(file, row0 + r, "items", format!("user {id}: {e}"))
                            })?,
                    })
                })
                .collect::<Result<_>>()?;
            behaviors += batch
                .iter()
                .map(|(_, r)| rows.items.row(*r).len() as u64)
                .sum::<u64>();
            users += encoded.len();
            sink.write(to_batch(&schema, &layout, &encoded)?)?;
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    sink.finish()?;
    Ok(EncodeSummary {
        users,
        behaviors,
        file,
    })
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
