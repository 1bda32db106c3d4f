//! The one vocabulary check: a prepared dataset and an encodings directory both hold `vocab/`
//! (the encodings' is a byte copy of the dataset's), and every reader of a checkpoint refuses a
//! `vocab/` whose fingerprint is not the one the checkpoint was trained with, since its indices
//! would map raw ids to other rows.

use super::meta::Metadata;
use crate::embedding::VocabSizes;
use crate::{Error, Result};
use std::path::Path;

/// A fingerprint of a directory's vocabularies (CRC32 of `vocab/{user,item,cate}.parquet`,
/// which `prepare` writes byte-deterministically). Checkpoints store it, so scoring a dataset
/// whose indices mean different ids is an error instead of silently wrong predictions.
///
/// # Errors
/// [`Error::Io`] naming a vocabulary file that cannot be read.
pub fn vocab_fingerprint(dir: &Path) -> Result<String> {
    let mut h = crc32fast::Hasher::new();
    for field in ["user", "item", "cate"] {
        let p = dir.join("vocab").join(format!("{field}.parquet"));
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(format!("{:08x}", h.finalize()))
}

/// Refuses `dir` (a prepared dataset or an encodings directory) when its `vocab/` is not the
/// one checkpoint `ckpt` (metadata `meta`) was trained with; a checkpoint without a fingerprint
/// is accepted.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `dir/vocab`, the checkpoint and both fingerprints.
pub(crate) fn check_vocab_dir(meta: &Metadata, ckpt: &Path, dir: &Path) -> Result<()> {
    let Some(fp) = &meta.vocab_fingerprint else {
        return Ok(());
    };
    let here = vocab_fingerprint(dir)?;
    if &here == fp {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{}: its vocabularies (fingerprint {here}) are not the ones checkpoint {} was trained with \
         (fingerprint {fp}); prepare the data from the same event log, or encode it with this checkpoint",
        dir.join("vocab").display(),
        ckpt.display()
    )))
}

/// Refuses vocabularies larger than the checkpoint's tables (`sizes` of the directory `dir`);
/// the user table is checked only when the model has one.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the directory and the field.
pub(crate) fn check_sizes(
    tables: VocabSizes,
    has_user: bool,
    sizes: VocabSizes,
    dir: &Path,
) -> Result<()> {
    for (field, have, need) in [
        ("user", tables.users, sizes.users),
        ("item", tables.items, sizes.items),
        ("cate", tables.cates, sizes.cates),
    ] {
        if need > have && (field != "user" || has_user) {
            return Err(Error::InvalidArgument(format!(
                "{}: the `{field}` vocabulary has {need} entries but the checkpoint's table has {have} rows: \
                 not the checkpoint's data",
                dir.display()
            )));
        }
    }
    Ok(())
}
