//! Model files: a checkpoint opened into a ready model with every check, in one call that
//! `eval`, training's resume (and later `encode` and `serve`) share.
//!
//! Checks, in order: the file is a valid checkpoint (CRCs, header; see [`crate::checkpoint`]);
//! its stored config parses and validates; the vocabulary sizes in its metadata are sane and agree
//! with the tables actually stored (so a corrupt size cannot size an allocation); every tensor the
//! config's model needs is present with its shape. [`ModelFile::check_dataset`] then refuses a
//! dataset whose vocabularies differ from the training data's (their fingerprint).

use super::file::{self, Loaded};
use super::meta::Metadata;
use super::run_dir::RunDir;
use super::vocab::{check_sizes, check_vocab_dir};
use crate::config::Config;
use crate::data::Dataset;
use crate::embedding::VocabSizes;
use crate::model::CtrModel;
use crate::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

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
    pub metadata: Metadata,
}

fn ckpt_err(path: &Path, reason: impl ToString) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a checkpoint file and its metadata (the config parsed and validated).
///
/// # Errors
/// [`Error::Checkpoint`] naming the file for a missing, corrupt or invalid checkpoint.
pub fn read_checkpoint(file: &Path) -> Result<(Loaded, Metadata)> {
    let loaded = file::load(file, &Device::Cpu)?;
    let meta = Metadata::from_map(file, &loaded.metadata)?;
    Ok((loaded, meta))
}

/// The vocabulary sizes stored in a checkpoint, checked against the tables it holds.
fn vocab_of(file: &Path, loaded: &Loaded, meta: &Metadata) -> Result<VocabSizes> {
    let (vocab, config) = (meta.vocab, &meta.config);
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
        let file = RunDir::checkpoint_of(path);
        let (loaded, metadata) = read_checkpoint(&file)?;
        let model = model_from(&file, &loaded, &metadata, device)?;
        Ok(Self {
            config: metadata.config.clone(),
            model,
            file,
            metadata,
        })
    }

    /// The one vocabulary check: refuses `dir` (a prepared dataset or an encodings directory)
    /// when its `vocab/` is not the one this checkpoint was trained with.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `dir/vocab`, the checkpoint and both fingerprints;
    /// [`Error::Io`] for a `vocab/` that cannot be read.
    pub fn check_vocab_dir(&self, dir: &Path) -> Result<()> {
        check_vocab_dir(&self.metadata, &self.file, dir)
    }

    /// Refuses vocabularies of `sizes` (those of directory `dir`) larger than the tables.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the directory and the field.
    pub fn check_sizes(&self, sizes: VocabSizes, dir: &Path) -> Result<()> {
        let has_user = self.model.tables().user().is_some();
        check_sizes(self.model.vocab(), has_user, sizes, dir)
    }

    /// Refuses a dataset the model was not trained for: a vocabulary larger than a table, or
    /// vocabularies whose fingerprint differs from the training data's.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the dataset, the checkpoint and what differs.
    pub fn check_dataset(&self, data: &Dataset) -> Result<()> {
        let m = &data.meta;
        let sizes = VocabSizes {
            users: m.n_users,
            items: m.n_items,
            cates: m.n_cates,
        };
        self.check_sizes(sizes, &data.dir)?;
        self.check_vocab_dir(&data.dir)
    }
}

/// A model for `config` with the weights of `loaded` (`file` names errors).
pub(crate) fn model_from(
    file: &Path,
    loaded: &Loaded,
    meta: &Metadata,
    device: &Device,
) -> Result<CtrModel> {
    let vocab = vocab_of(file, loaded, meta)?;
    let mut model = build_model(&meta.config, vocab, device).map_err(|e| ckpt_err(file, e))?;
    model
        .load_tensors(&loaded.tensors)
        .map_err(|e| ckpt_err(file, e))?;
    Ok(model)
}

/// Builds the model a config describes, for tables of `vocab`.
pub fn build_model(cfg: &Config, vocab: VocabSizes, device: &Device) -> Result<CtrModel> {
    CtrModel::new(&cfg.model, cfg.data.max_len, vocab, cfg.train.seed, device)
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
