//! The incremental update: a day's new events folded into existing encodings without the
//! users' histories.

use super::format::*;
use super::reader::*;
use super::writer::*;
use crate::checkpoint::{self, ModelFile};
use crate::data::io::{self, ParquetSink};
use crate::data::vocab::{RawId, Vocab};
use crate::data::PrepareConfig;
use crate::model::CtrModel;
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What an update did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpdateSummary {
    /// New behaviors folded in.
    pub events: usize,
    /// Users whose encoding changed.
    pub updated: usize,
    /// Users encoded for the first time.
    pub added: usize,
    /// Users in all.
    pub users: usize,
}

/// A user's new behaviors: (ts, item, cate), chronological.
type NewEvents = Vec<(i64, u32, u32)>;

/// Folds the events of `events` (an event log as `prepare` reads it; rows with label 0 are
/// impressions, not behaviors, and are skipped) into the encodings of `dir`, writing every part
/// to `out` (which may be `dir`: each part is replaced atomically). Users without an encoding
/// get one from their new events alone. The delta is held in memory; the encodings are
/// streamed.
///
/// # Errors
/// Named errors for a log without the columns, encodings of other weights, and an event older
/// than the user's encoding (`last_ts`): folding it in would not equal a re-encode.
pub fn update(
    mf: &ModelFile,
    dir: &Path,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
) -> Result<UpdateSummary> {
    mf.check_vocab_dir(dir)?;
    let layout = mf.model.encoding_layout();
    let fingerprint = checkpoint::model_fingerprint(&mf.model)?;
    let parts = parts(dir, &fingerprint, &layout)?
        .into_iter()
        .map(|(f, s)| (Some(f), s))
        .collect();
    fold_into(mf, dir, parts, events, cfg, out, None)
}

/// Folds the events into `parts` (a part without a file starts empty), writing each to `out`;
/// with `only`, events of users outside that shard are left out.
pub(crate) fn fold_into(
    mf: &ModelFile,
    vocab_dir: &Path,
    parts: Vec<(Option<PathBuf>, Shard)>,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
    only: Option<Shard>,
) -> Result<UpdateSummary> {
    let model = &mf.model;
    let layout = model.encoding_layout();
    let fingerprint = checkpoint::model_fingerprint(model)?;
    let dir = vocab_dir;
    let vocab = |f: &str| Vocab::read(&dir.join("vocab").join(format!("{f}.parquet")));
    let (users_vocab, items_vocab, cates_vocab) = (vocab("user")?, vocab("item")?, vocab("cate")?);
    let mut delta = read_delta(events, cfg, &items_vocab, &cates_vocab)?;
    if let Some(sh) = only {
        delta.retain(|id, _| sh.owns(id));
    }
    let n_events: usize = delta.values().map(Vec::len).sum();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_vocab(dir, out)?;
    let schema = schema(&layout, users_vocab.is_string());
    let (mut updated, mut added, mut users) = (0, 0, 0);
    let pb = progress(0, "update");
    for (file, shard) in &parts {
        let target = out.join(shard.file_name());
        let mut sink = Writer::new(ParquetSink::create(
            &target,
            schema.clone(),
            &footer(&fingerprint, &layout, *shard)?,
            USERS_PER_BATCH,
        )?);
        // Errors name the part file, or the event log for a part that starts empty.
        let name = file.clone().unwrap_or_else(|| events.to_path_buf());
        read_part_opt(file.as_deref(), &layout, |rows| {
            let todo: Vec<(EncodedUser, Option<NewEvents>)> = rows
                .into_iter()
                .map(|r| {
                    let d = delta.remove(&r.id);
                    (r, d)
                })
                .collect();
            updated += todo.iter().filter(|t| t.1.is_some()).count();
            let done = fold_all(model, todo, &name)?;
            users += done.len();
            pb.inc(done.len() as u64);
            sink.write(to_batch(&schema, &layout, &done)?)
        })?;
        // New users of this shard.
        let mine: Vec<RawId> = delta.keys().filter(|id| shard.owns(id)).cloned().collect();
        let fresh: Vec<(EncodedUser, Option<NewEvents>)> = mine
            .into_iter()
            .map(|id| {
                let d = delta.remove(&id);
                let user = users_vocab.lookup(&id);
                let enc = model.encode_user_at(user, &[], &[], Some(&[]));
                enc.map(|enc| {
                    (
                        EncodedUser {
                            id,
                            last_ts: None,
                            enc,
                        },
                        d,
                    )
                })
            })
            .collect::<Result<_>>()?;
        added += fresh.len();
        let done = fold_all(model, fresh, events)?;
        users += done.len();
        if !done.is_empty() {
            sink.write(to_batch(&schema, &layout, &done)?)?;
        }
        sink.finish()?;
    }
    pb.finish_and_clear();
    if let Some(id) = delta.keys().next() {
        return Err(Error::InvalidArgument(format!(
            "user {id}: no shard of {} takes it",
            dir.display()
        )));
    }
    Ok(UpdateSummary {
        events: n_events,
        updated,
        added,
        users,
    })
}

fn fold_all(
    model: &CtrModel,
    todo: Vec<(EncodedUser, Option<NewEvents>)>,
    file: &Path,
) -> Result<Vec<EncodedUser>> {
    todo.into_par_iter()
        .map(|(mut r, d)| {
            let Some(d) = d else { return Ok(r) };
            if let (Some(last), Some(first)) = (r.last_ts, d.first()) {
                if first.0 < last {
                    return Err(Error::InvalidArgument(format!(
                        "{}: user {}: a new event at ts {} is older than the encoding's newest behavior ({last}); \
                         re-encode from the full log instead",
                        file.display(),
                        r.id,
                        first.0
                    )));
                }
            }
            let items: Vec<u32> = d.iter().map(|e| e.1).collect();
            let cates: Vec<u32> = d.iter().map(|e| e.2).collect();
            let ts: Vec<i64> = d.iter().map(|e| e.0).collect();
            r.enc = model
                .extend_encoding_at(&r.enc, &items, &cates, Some(&ts))
                .map_err(|e| Error::InvalidArgument(format!("{}: user {}: {e}", file.display(), r.id)))?;
            r.last_ts = d.last().map(|e| e.0).or(r.last_ts);
            Ok(r)
        })
        .collect()
}

/// The new behaviors of an event log per raw user id, chronological (ties in log order).
fn read_delta(
    events: &Path,
    cfg: &PrepareConfig,
    items: &Vocab,
    cates: &Vocab,
) -> Result<HashMap<RawId, NewEvents>> {
    use crate::data::io::Column;
    let specs = crate::data::prepare::event_specs(&cfg.columns);
    let mut t = crate::data::prepare::read_events(events, &specs, cfg)?;
    let raw = |c: Option<Column>| {
        c.and_then(Column::into_raw_ids)
            .unwrap_or(io::RawIds::Int(Vec::new()))
    };
    let (u, i, k) = (raw(t.take(0)), raw(t.take(1)), raw(t.take(2)));
    let ts = t.take(3).and_then(Column::into_i64).unwrap_or_default();
    let label = t.take(4).and_then(Column::into_u8);
    let mut out: HashMap<RawId, NewEvents> = HashMap::new();
    for r in 0..ts.len() {
        if label.as_ref().is_some_and(|l| l[r] == 0) {
            continue;
        }
        out.entry(u.get(r)).or_default().push((
            ts[r],
            items.lookup(&i.get(r)),
            cates.lookup(&k.get(r)),
        ));
    }
    for v in out.values_mut() {
        v.sort_by_key(|e| e.0); // stable: ties keep log order
    }
    Ok(out)
}
