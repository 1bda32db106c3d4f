//! Model files: a checkpoint opened into a ready model with every check, in one call that
//! `eval`, training's resume (and later `encode` and `serve`) share.
//!
//! Checks, in order: the file is a valid checkpoint (CRCs, header; see [`crate::checkpoint`]);
//! its stored config parses and validates; the vocabulary sizes in its metadata are sane and agree
//! with the tables actually stored (so a corrupt size cannot size an allocation); every tensor the
//! config's model needs is present with its shape. [`ModelFile::check_dataset`] then refuses a
//! dataset whose vocabularies differ from the training data's (their fingerprint).

use crate::checkpoint::{self, Loaded};
use crate::config::Config;
use crate::data::Dataset;
use crate::embedding::VocabSizes;
use crate::model::CtrModel;
use crate::{Error, Result};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the resume checkpoint in a run directory.
pub const LAST: &str = "last.safetensors";
/// File name of the best checkpoint in a run directory.
pub const BEST: &str = "best.safetensors";

/// Metadata key: the config (JSON).
pub const KEY_CONFIG: &str = "config";
/// Metadata key: the vocabulary sizes (JSON).
pub const KEY_VOCAB: &str = "vocab";
/// Metadata key: the fingerprint of the training data's vocabularies.
pub const KEY_VOCAB_FINGERPRINT: &str = "vocab_fingerprint";
/// Metadata key: the trainer's state (resume checkpoints only).
pub const KEY_TRAINER: &str = "trainer";
/// Metadata key: where training stood when the file was written (every checkpoint; read by
/// [`crate::inspect`], never by resume).
pub const KEY_PROGRESS: &str = "progress";

/// A model opened from a checkpoint.
#[derive(Debug)]
pub struct ModelFile {
    /// The config stored in the checkpoint.
    pub config: Config,
    /// The model, weights loaded.
    pub model: CtrModel,
    /// The checkpoint file that was read.
    pub file: PathBuf,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
}

fn ckpt_err(path: &Path, reason: impl ToString) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The checkpoint file a path names: a file as it is; a run directory's `best`, else `last`.
pub fn checkpoint_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        let best = path.join(BEST);
        if best.exists() {
            best
        } else {
            path.join(LAST)
        }
    } else {
        path.to_path_buf()
    }
}

/// Reads a checkpoint file and the config stored in it (parsed and validated).
///
/// # Errors
/// [`Error::Checkpoint`] naming the file for a missing, corrupt or invalid checkpoint.
pub fn read_checkpoint(file: &Path) -> Result<(Loaded, Config)> {
    let loaded = checkpoint::load(file, &Device::Cpu)?;
    let text = loaded
        .metadata
        .get(KEY_CONFIG)
        .ok_or_else(|| ckpt_err(file, "no `config` in metadata"))?;
    let cfg = Config::from_json(text).map_err(|e| ckpt_err(file, e))?;
    Ok((loaded, cfg))
}

/// The vocabulary sizes stored in a checkpoint, checked against the tables it holds.
fn vocab_of(file: &Path, loaded: &Loaded, config: &Config) -> Result<VocabSizes> {
    let vocab: VocabSizes = serde_json::from_str(
        loaded
            .metadata
            .get(KEY_VOCAB)
            .ok_or_else(|| ckpt_err(file, "no `vocab` in metadata"))?,
    )
    .map_err(|e| ckpt_err(file, format!("vocab: {e}")))?;
    // Every stored table of a field must have exactly the stated rows, so a corrupt size can
    // never size an allocation; a field without a table must still state a plausible size.
    for (field, n) in [
        ("item", vocab.items),
        ("cate", vocab.cates),
        ("user", vocab.users),
    ] {
        if !(2..=1 << 40).contains(&n) {
            return Err(ckpt_err(
                file,
                format!("vocab: {n} {field} rows is not a vocabulary size"),
            ));
        }
        for (name, t) in &loaded.tensors {
            let table = name.strip_prefix("table/");
            let of_field = table.is_some_and(|t| t == field || t.ends_with(&format!(".{field}")));
            if of_field && t.dims().first() != Some(&n) {
                return Err(ckpt_err(
                    file,
                    format!(
                        "`{name}` has {:?} rows but the metadata says {n} {field}s",
                        t.dims().first()
                    ),
                ));
            }
        }
    }
    // The position table is sized by max_len: it must be stored at that size too.
    let pos_rows = config.data.max_len.saturating_add(1);
    for (name, t) in &loaded.tensors {
        let is_pos = name
            .strip_prefix("table/")
            .is_some_and(|t| t == "pos" || t.ends_with(".pos"));
        if is_pos && t.dims().first() != Some(&pos_rows) {
            return Err(ckpt_err(
                file,
                format!(
                    "`{name}` has {:?} rows but data.max_len = {} needs {pos_rows}",
                    t.dims().first(),
                    config.data.max_len
                ),
            ));
        }
    }
    if config.model.embedding.pos_dim > 0 && !loaded.tensors.keys().any(|k| k.ends_with("pos")) {
        return Err(ckpt_err(file, "no position table although pos_dim > 0"));
    }
    Ok(vocab)
}

impl ModelFile {
    /// Opens a checkpoint file or a run directory (its `best`, else `last`) into a model on
    /// `device`.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] naming the file for a missing, corrupt or incompatible checkpoint.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        let file = checkpoint_file(path);
        let (loaded, config) = read_checkpoint(&file)?;
        let model = model_from(&file, &loaded, &config, device)?;
        Ok(Self {
            config,
            model,
            file,
            metadata: loaded.metadata,
        })
    }

    /// Refuses a dataset the model was not trained for: a vocabulary larger than a table, or
    /// vocabularies whose fingerprint differs from the training data's.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the dataset, the checkpoint and what differs.
    pub fn check_dataset(&self, data: &Dataset) -> Result<()> {
        check_vocab(&self.model, data)?;
        check_fingerprint(
            &self.metadata,
            &vocab_fingerprint(&data.dir)?,
            &self.file,
            data,
        )
    }
}

/// A model for `config` with the weights of `loaded` (`file` names errors).
pub(crate) fn model_from(
    file: &Path,
    loaded: &Loaded,
    config: &Config,
    device: &Device,
) -> Result<CtrModel> {
    let vocab = vocab_of(file, loaded, config)?;
    let mut model = build_model(config, vocab, device).map_err(|e| ckpt_err(file, e))?;
    model
        .load_tensors(&loaded.tensors)
        .map_err(|e| ckpt_err(file, e))?;
    Ok(model)
}

/// Builds the model a config describes, for tables of `vocab`.
pub fn build_model(cfg: &Config, vocab: VocabSizes, device: &Device) -> Result<CtrModel> {
    CtrModel::new(&cfg.model, cfg.data.max_len, vocab, cfg.train.seed, device)
}

/// Checks that a dataset fits a model's tables (same or smaller vocabularies).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the dataset and the field.
pub fn check_vocab(model: &CtrModel, data: &Dataset) -> Result<()> {
    let v = model.vocab();
    let m = &data.meta;
    let has_user = model.tables().user().is_some();
    for (field, have, need) in [
        ("user", v.users, m.n_users),
        ("item", v.items, m.n_items),
        ("cate", v.cates, m.n_cates),
    ] {
        if need > have && (field != "user" || has_user) {
            return Err(Error::InvalidArgument(format!(
                "{}: the dataset's `{field}` vocabulary has {need} entries but the checkpoint's table has {have} rows: \
                 the dataset was not prepared with the checkpoint's vocabulary",
                data.dir.display()
            )));
        }
    }
    Ok(())
}

/// A fingerprint of a prepared dataset's vocabularies (CRC32 of `vocab/{user,item,cate}.parquet`,
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

/// Errors when a checkpoint's stored [`vocab_fingerprint`] differs from `data`'s (a checkpoint
/// without one is accepted).
///
/// # Errors
/// [`Error::InvalidArgument`] naming both fingerprints.
pub fn check_fingerprint(
    meta: &BTreeMap<String, String>,
    data_fp: &str,
    ckpt: &Path,
    data: &Dataset,
) -> Result<()> {
    match meta.get(KEY_VOCAB_FINGERPRINT) {
        Some(fp) if fp != data_fp => Err(Error::InvalidArgument(format!(
            "{}: its vocabularies (fingerprint {data_fp}) are not the ones checkpoint {} was trained with \
             (fingerprint {fp}); prepare the data from the same event log",
            data.dir.display(),
            ckpt.display()
        ))),
        _ => Ok(()),
    }
}

/// A fingerprint of a model's weights and config: CRC-32 of the config (JSON), and of every
/// dense tensor and table (name, shape, f32 bytes) in name order. Encodings store it, so
/// serving refuses encodings computed with other weights.
///
/// # Errors
/// Candle errors reading a tensor.
pub fn model_fingerprint(model: &CtrModel) -> Result<String> {
    let mut h = crc32fast::Hasher::new();
    let cfg = serde_json::to_string(model.config())
        .map_err(|e| Error::InvalidArgument(format!("config: {e}")))?;
    h.update(cfg.as_bytes());
    let mut feed = |name: &str, dims: &[usize], data: &[f32]| {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        for d in dims {
            h.update(&(*d as u64).to_le_bytes());
        }
        let mut buf = Vec::with_capacity(4 * 4096);
        for chunk in data.chunks(4096) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
            h.update(&buf);
        }
    };
    for (name, t) in model.params().named_tensors() {
        let v = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        feed(&name, t.dims(), &v);
    }
    for t in model.tables().iter() {
        feed(
            &format!("table/{}", t.name()),
            &[t.rows(), t.dim()],
            t.data(),
        );
    }
    Ok(format!("{:08x}", h.finalize()))
}
