//! Reading an encodings directory: its part files checked against the model (footers, shards,
//! the vocabularies), row by row, or all of it into memory for the server.

use super::format::*;
use crate::checkpoint;
use crate::data::io;
use crate::data::vocab::{RawId, Vocab};
use crate::model::{CtrModel, EncodingLayout, UserEncoding};
use crate::{Error, Result};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The part files of an encodings directory, each with its shard, checked: the footers match
/// the model, and the shards are exactly `0..N` of one `N`.
///
/// # Errors
/// [`Error::Io`] for a missing directory or no part files; [`Error::Corrupt`] naming the file or
/// the missing shard.
pub fn parts(
    dir: &Path,
    fingerprint: &str,
    layout: &EncodingLayout,
) -> Result<Vec<(PathBuf, Shard)>> {
    let files: Vec<PathBuf> = io::list_parquet_files(dir)?
        .into_iter()
        .filter(|p| {
            p.parent() == Some(dir)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no part-*.parquet encodings files",
            ),
        ));
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let s = check_footer(&f, fingerprint, layout)?;
        out.push((f, s));
    }
    let n = out[0].1.count;
    let mut seen = vec![false; n];
    for (f, s) in &out {
        if s.count != n {
            return Err(Error::corrupt(
                f,
                format!("shard {}/{} among shards of {n}", s.index, s.count),
            ));
        }
        if std::mem::replace(&mut seen[s.index], true) {
            return Err(Error::corrupt(
                f,
                format!("shard {} appears twice", s.index),
            ));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(Error::corrupt(
            dir,
            format!(
                "shard {i} of {n} ({}) is missing",
                Shard { index: i, count: n }.file_name()
            ),
        ));
    }
    Ok(out)
}

/// [`read_part`] of a part file, or nothing for a part that does not exist yet.
pub(crate) fn read_part_opt(
    path: Option<&Path>,
    layout: &EncodingLayout,
    f: impl FnMut(Vec<EncodedUser>) -> Result<()>,
) -> Result<()> {
    match path {
        Some(p) => read_part(p, layout, f),
        None => Ok(()),
    }
}

/// Every row of one part file, batch by batch.
pub fn read_part(
    path: &Path,
    layout: &EncodingLayout,
    mut f: impl FnMut(Vec<EncodedUser>) -> Result<()>,
) -> Result<()> {
    let mut row0 = 0;
    for b in io::parquet_batches(path, USERS_PER_BATCH)? {
        let b = b?;
        let n = b.num_rows();
        f(from_batch(path, row0, layout, &b)?)?;
        row0 += n;
    }
    Ok(())
}

/// Every encoding of a directory in memory, keyed by raw user id, with the ids cut to what
/// scoring reads ([`EncodingLayout::serving_window`]).
///
/// # Errors
/// As [`load_shard`].
pub fn load_all(dir: &Path, model: &CtrModel) -> Result<HashMap<RawId, Arc<UserEncoding>>> {
    load_shard(dir, model, Shard::ALL, Arc::new)
}

/// The encodings of the users of `shard` ([`Shard::owns`]), each turned into what the caller
/// keeps by `keep`. The directory must be complete (every part present, [`parts`]); a directory
/// written with as many parts as there are serving shards is read only in its own part.
///
/// # Errors
/// As [`for_each_in_shard`]; [`Error::Corrupt`] for a user encoded twice.
pub fn load_shard<T>(
    dir: &Path,
    model: &CtrModel,
    shard: Shard,
    mut keep: impl FnMut(UserEncoding) -> T,
) -> Result<HashMap<RawId, T>> {
    let mut map = HashMap::new();
    for_each_in_shard(dir, model, shard, |file, id, enc| match map.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => Err(Error::corrupt(
            file,
            format!("user {} is encoded twice", e.key()),
        )),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(keep(enc));
            Ok(())
        }
    })?;
    Ok(map)
}

/// Every encoding of the users of `shard`, checked against the model and cut to what scoring
/// reads ([`EncodingLayout::serving_window`]), handed to `f(part file, raw id, encoding)` in file
/// order, one batch of users in memory at a time. Repeated users are the caller's to refuse.
///
/// # Errors
/// As [`parts`] and [`read_part`]; [`Error::Corrupt`] for a user in a part its id does not hash
/// to; [`Error::Value`] for an encoding that does not fit the model (an index outside its
/// tables); [`Error::Schema`] for user ids of another type than the directory's user vocabulary.
pub fn for_each_in_shard(
    dir: &Path,
    model: &CtrModel,
    shard: Shard,
    mut f: impl FnMut(&Path, RawId, UserEncoding) -> Result<()>,
) -> Result<()> {
    let layout = model.encoding_layout();
    let fp = checkpoint::model_fingerprint(model)?;
    let str_ids = Vocab::read(&dir.join("vocab").join("user.parquet"))?.is_string();
    let all = parts(dir, &fp, &layout)?;
    let aligned = all.first().is_some_and(|(_, s)| s.count == shard.count);
    for (file, part) in all {
        if aligned && part.index != shard.index {
            continue;
        }
        let mut row = 0;
        read_part(&file, &layout, |rows| {
            for mut r in rows {
                if matches!(r.id, RawId::Str(_)) != str_ids {
                    let (have, want) = if str_ids {
                        ("int64", "utf8")
                    } else {
                        ("utf8", "int64")
                    };
                    return Err(Error::schema(
                        &file,
                        "user_id",
                        format!("has type {have}; the user vocabulary's ids are {want}"),
                    ));
                }
                if !part.owns(&r.id) {
                    return Err(Error::corrupt(
                        &file,
                        format!(
                            "user {} is in part {}/{} but its id hashes to part {}",
                            r.id,
                            part.index,
                            part.count,
                            shard_of(&r.id, part.count)
                        ),
                    ));
                }
                if !shard.owns(&r.id) {
                    row += 1;
                    continue;
                }
                model.check_encoding(&r.enc, false).map_err(|e| {
                    Error::value(&file, row, "items", format!("user {}: {e}", r.id))
                })?;
                row += 1;
                let window = layout.serving_window.min(r.enc.items.len());
                let cut = r.enc.items.len() - window;
                if cut > 0 {
                    r.enc.items.drain(..cut);
                    r.enc.cates.drain(..cut);
                    if !r.enc.ts.is_empty() {
                        r.enc.ts.drain(..cut);
                    }
                }
                f(&file, r.id, r.enc)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
