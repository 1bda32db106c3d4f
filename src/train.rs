//! Training: the epoch loop with periodic validation, early stopping on validation AUC, the best
//! checkpoint kept, `last.safetensors` for resuming (mid-epoch included), a NaN/Inf guard, and a
//! progress bar with loss and samples/s. Also batch prediction and evaluation of a split.
//!
//! Run directory:
//! ```text
//! RUN_DIR/last.safetensors   weights + optimiser state + trainer state (resume point)
//! RUN_DIR/best.safetensors   weights of the best validation AUC so far
//! RUN_DIR/metrics.jsonl      one line per validation
//! ```
//! A run is deterministic for a seed: the shuffle of epoch e is a function of (seed, e), every
//! parallel reduction uses fixed chunking, so resuming from `last` reaches the same weights as
//! an uninterrupted run.

use crate::checkpoint;
use crate::config::{Config, ModelConfig};
use crate::data::{Batch, Batcher, BatcherConfig, Dataset, Histories, Impressions};
use crate::metrics::{self, Metrics};
use crate::model::{Din, VocabSizes};
use crate::nn::bce_with_logits;
use crate::optim::{Adam, AdamParams, RowWise};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// File name of the resume checkpoint in a run directory.
pub const LAST: &str = "last.safetensors";
/// File name of the best checkpoint in a run directory.
pub const BEST: &str = "best.safetensors";

/// Where training stands; saved in every checkpoint's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Next batch index within the epoch.
    pub batch: usize,
    /// Optimisation steps taken.
    pub step: u64,
    /// Best validation AUC so far.
    pub best_auc: Option<f64>,
    /// Step of the best validation.
    pub best_step: u64,
    /// Validations since the last improvement.
    pub bad_evals: usize,
    /// Training finished (epochs done or stopped early).
    pub finished: bool,
    /// Every validation so far.
    pub evals: Vec<EvalRecord>,
}

/// One validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// Epoch of the validation.
    pub epoch: usize,
    /// Step of the validation.
    pub step: u64,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What [`Trainer::fit`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// Final state.
    pub state: TrainerState,
    /// Samples trained on in this call.
    pub samples: u64,
    /// Seconds spent in training steps, data loading and collation included, validation and
    /// checkpoint writes excluded.
    pub train_secs: f64,
}

impl FitSummary {
    /// Training throughput.
    pub fn samples_per_sec(&self) -> f64 {
        self.samples as f64 / self.train_secs.max(1e-9)
    }
}

/// Seconds spent in each phase of the training steps (logged at `debug` level per epoch).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTimes {
    /// Waiting for the next collated batch.
    pub wait: f64,
    /// Gathering the batch's embedding rows into leaves.
    pub gather: f64,
    /// Forward pass and loss.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// Dense and row-wise optimiser updates.
    pub update: f64,
}

/// Trains a model.
#[derive(Debug)]
pub struct Trainer {
    cfg: Config,
    model: Din,
    dense: Adam,
    sparse: RowWise,
    state: TrainerState,
    run_dir: PathBuf,
    /// Show a progress bar (default: when stderr is a terminal).
    pub progress: bool,
    /// Time per phase since the trainer was created.
    pub times: StepTimes,
    /// [`vocab_fingerprint`] of the dataset the model is trained on.
    vocab_fingerprint: String,
}

fn din_cfg(cfg: &Config) -> &crate::config::DinConfig {
    match &cfg.model {
        ModelConfig::Din(d) => d,
    }
}

/// Builds the model a config describes, for tables of `vocab`.
pub fn build_model(cfg: &Config, vocab: VocabSizes, device: &Device) -> Result<Din> {
    Din::new(
        din_cfg(cfg),
        cfg.data.max_len,
        vocab,
        cfg.train.seed,
        device,
    )
}

impl Trainer {
    /// A fresh trainer for `data`, writing into `run_dir`.
    pub fn new(cfg: Config, data: &Dataset, run_dir: &Path, device: &Device) -> Result<Self> {
        let vocab = VocabSizes {
            users: data.meta.n_users,
            items: data.meta.n_items,
            cates: data.meta.n_cates,
        };
        let model = build_model(&cfg, vocab, device)?;
        let t = &cfg.train;
        let dense_vars = model
            .params()
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let dense = Adam::new(
            dense_vars,
            AdamParams {
                weight_decay: t.weight_decay,
                ..AdamParams::with_lr(t.lr)
            },
        )?;
        let sparse = RowWise::new(t.sparse_optimizer, AdamParams::with_lr(t.sparse_lr));
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        Ok(Self {
            cfg,
            model,
            dense,
            sparse,
            state: TrainerState::default(),
            run_dir: run_dir.to_path_buf(),
            progress: console_is_tty(),
            times: StepTimes::default(),
            vocab_fingerprint: vocab_fingerprint(&data.dir)?,
        })
    }

    /// Resumes from `run_dir/last.safetensors`: config, weights, optimiser and trainer state.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when the checkpoint is missing, corrupt, or does not match `data`.
    pub fn resume(data: &Dataset, run_dir: &Path, device: &Device) -> Result<Self> {
        let path = run_dir.join(LAST);
        let (loaded, cfg) = load_checkpoint(&path)?;
        let ck = |reason: String| ckpt_err(&path, reason);
        let state: TrainerState =
            serde_json::from_str(loaded.metadata.get("trainer").ok_or_else(|| {
                ck("no `trainer` state in metadata: not a resumable checkpoint".into())
            })?)
            .map_err(|e| ck(format!("trainer state: {e}")))?;
        let mut t = Self::new(cfg, data, run_dir, device)?;
        check_fingerprint(&loaded.metadata, &t.vocab_fingerprint, &path, data)?;
        t.model
            .load_tensors(&loaded.tensors)
            .map_err(|e| ck(e.to_string()))?;
        t.dense
            .load_state(&loaded.tensors, state.step)
            .map_err(|e| ck(e.to_string()))?;
        let tables = t.model.tables();
        t.sparse
            .load_state(&loaded.tensors, &tables)
            .map_err(|e| ck(e.to_string()))?;
        t.state = state;
        Ok(t)
    }

    /// The model.
    pub fn model(&self) -> &Din {
        &self.model
    }
    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The state.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }
    /// Changes the step limit (`0` = none), e.g. to finish a run resumed from a checkpoint that
    /// was written with a limit.
    pub fn set_max_steps(&mut self, max_steps: u64) {
        self.cfg.train.max_steps = max_steps;
    }

    /// One optimisation step on `batch`; returns the loss.
    ///
    /// # Errors
    /// [`Error::NonFiniteLoss`] when the loss is NaN or infinite (no weight is changed).
    pub fn train_step(&mut self, batch: &Batch) -> Result<f32> {
        let t0 = Instant::now();
        let leaves = self.model.leaves(batch)?;
        let t1 = Instant::now();
        let logits = self.model.forward_t(batch, &leaves, true)?;
        let labels = Tensor::from_slice(&batch.label, batch.size(), self.model.device())?;
        let bce = bce_with_logits(&logits, &labels)?;
        let value = bce.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch: self.state.epoch,
                step: self.state.step,
                value,
            });
        }
        let l2 = self.cfg.train.embedding_l2;
        let loss = if l2 > 0.0 {
            let mut reg = Tensor::new(0f32, self.model.device())?;
            for v in leaves.all() {
                reg = (reg + v.as_tensor().sqr()?.sum_all()?)?;
            }
            (bce + (reg * l2)?)?
        } else {
            bce
        };
        let t2 = Instant::now();
        let grads = loss.backward()?;
        let t3 = Instant::now();
        let scale = match self.cfg.train.clip_grad_norm {
            Some(max) => {
                let mut sq = 0f64;
                let dense = self.model.params().params().values().map(|v| v.as_tensor());
                for t in dense.chain(leaves.all().into_iter().map(|v| v.as_tensor())) {
                    if let Some(g) = grads.get(t) {
                        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                    }
                }
                let norm = sq.sqrt();
                if norm > max {
                    max / (norm + 1e-6)
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        self.dense.step(&grads, scale)?;
        self.model
            .apply_sparse(batch, &leaves, &grads, &mut self.sparse, scale as f32)?;
        self.state.step += 1;
        let t4 = Instant::now();
        self.times.gather += (t1 - t0).as_secs_f64();
        self.times.forward += (t2 - t1).as_secs_f64();
        self.times.backward += (t3 - t2).as_secs_f64();
        self.times.update += (t4 - t3).as_secs_f64();
        Ok(value)
    }

    /// Trains until the configured epochs are done, early stopping triggers, or `max_steps` is
    /// reached; validates on `valid`, keeps `best` and `last` checkpoints in the run directory.
    pub fn fit(
        &mut self,
        hist: Arc<Histories>,
        train: Arc<Impressions>,
        valid: Arc<Impressions>,
    ) -> Result<FitSummary> {
        let t = self.cfg.train.clone();
        if train.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: the training split is empty (too few behaviors per user for the prepare options?)",
                self.cfg.data.dir.display()
            )));
        }
        let batcher = Batcher::new(
            hist.clone(),
            train,
            BatcherConfig {
                batch_size: t.batch_size,
                max_len: self.cfg.data.max_len,
                shuffle: true,
                seed: t.seed,
                prefetch: t.prefetch,
            },
        );
        let n_batches = batcher.num_batches();
        let (mut samples, mut train_secs) = (0u64, 0f64);
        let (mut loss_sum, mut loss_n) = (0f64, 0u64);
        'epochs: while !self.state.finished && self.state.epoch < t.epochs {
            let epoch = self.state.epoch;
            let bar = self.progress_bar(n_batches as u64, self.state.batch as u64, epoch);
            let mut clock = Instant::now();
            let mut bar_samples = 0u64;
            let mut ema: Option<f64> = None;
            let mut batches = batcher.iter(epoch, self.state.batch);
            loop {
                let tw = Instant::now();
                let Some(batch) = batches.next() else { break };
                self.times.wait += tw.elapsed().as_secs_f64();
                let loss = self.train_step(&batch)?;
                self.state.batch += 1;
                samples += batch.size() as u64;
                bar_samples += batch.size() as u64;
                loss_sum += loss as f64;
                loss_n += 1;
                ema = Some(ema.map_or(loss as f64, |e| 0.98 * e + 0.02 * loss as f64));
                if let Some(b) = &bar {
                    b.inc(1);
                    if self.state.step.is_multiple_of(10) {
                        let el = train_secs + clock.elapsed().as_secs_f64();
                        b.set_message(format!(
                            "loss {:.4}  {:.0} samples/s",
                            ema.unwrap_or(0.0),
                            bar_samples as f64 / el.max(1e-9)
                        ));
                    }
                }
                let end_of_epoch = self.state.batch >= n_batches;
                let do_eval = !end_of_epoch
                    && t.eval_every > 0
                    && self.state.step.is_multiple_of(t.eval_every as u64);
                let do_ckpt = !end_of_epoch
                    && t.checkpoint_every > 0
                    && self.state.step.is_multiple_of(t.checkpoint_every as u64);
                let stop_steps = t.max_steps > 0 && self.state.step >= t.max_steps;
                if do_eval || do_ckpt || end_of_epoch || stop_steps {
                    train_secs += clock.elapsed().as_secs_f64();
                    if end_of_epoch {
                        self.state.epoch += 1;
                        self.state.batch = 0;
                    }
                    if do_eval || end_of_epoch {
                        let train_loss = loss_sum / loss_n.max(1) as f64;
                        (loss_sum, loss_n) = (0.0, 0);
                        self.validate(&hist, &valid, train_loss, epoch)?;
                    }
                    if self.state.epoch >= t.epochs {
                        self.state.finished = true;
                    }
                    self.save_last()?;
                    if stop_steps || self.state.finished {
                        if let Some(b) = &bar {
                            b.finish_and_clear();
                        }
                        break 'epochs;
                    }
                    clock = Instant::now();
                }
            }
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            tracing::debug!("step times so far (s): {:?}", self.times);
        }
        tracing::debug!("step times (s): {:?}", self.times);
        Ok(FitSummary {
            state: self.state.clone(),
            samples,
            train_secs,
        })
    }

    fn progress_bar(&self, len: u64, pos: u64, epoch: usize) -> Option<indicatif::ProgressBar> {
        if !self.progress {
            return None;
        }
        let bar = indicatif::ProgressBar::new(len);
        bar.set_position(pos);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("epoch {}", epoch + 1));
        Some(bar)
    }

    /// Validates, records, keeps the best checkpoint, and decides on early stopping.
    fn validate(
        &mut self,
        hist: &Arc<Histories>,
        valid: &Arc<Impressions>,
        train_loss: f64,
        epoch: usize,
    ) -> Result<()> {
        if valid.is_empty() {
            tracing::warn!("validation split is empty: skipping validation, keeping the latest weights as best");
            self.save(&self.run_dir.join(BEST), false)?;
            return Ok(());
        }
        let (m, _) = evaluate(&self.model, hist, valid, self.cfg.train.eval_batch_size)?;
        let rec = EvalRecord {
            epoch,
            step: self.state.step,
            train_loss,
            valid: m,
        };
        tracing::info!(
            "epoch {} step {}: train loss {:.4}, valid auc {}, gauc {}, logloss {:.4}",
            epoch + 1,
            self.state.step,
            train_loss,
            fmt_opt(m.auc),
            fmt_opt(m.gauc),
            m.logloss
        );
        let line =
            serde_json::to_string(&rec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mlog = self.run_dir.join("metrics.jsonl");
        let mut text = std::fs::read_to_string(&mlog).unwrap_or_default();
        text.push_str(&line);
        text.push('\n');
        crate::atomic::atomic_write_bytes(&mlog, text.as_bytes())?;
        self.state.evals.push(rec);
        let better = match (m.auc, self.state.best_auc) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            (None, _) => self.state.best_auc.is_none(),
        };
        if better {
            self.state.best_auc = m.auc;
            self.state.best_step = self.state.step;
            self.state.bad_evals = 0;
            self.save(&self.run_dir.join(BEST), false)?;
        } else {
            self.state.bad_evals += 1;
            let p = self.cfg.train.patience;
            if p > 0 && self.state.bad_evals >= p {
                tracing::info!(
                    "early stop: no better validation AUC in {p} validations (best {} at step {})",
                    fmt_opt(self.state.best_auc),
                    self.state.best_step
                );
                self.state.finished = true;
            }
        }
        Ok(())
    }

    fn save_last(&self) -> Result<()> {
        self.save(&self.run_dir.join(LAST), true)
    }

    /// Writes a checkpoint: weights (and, with `with_optimizer`, optimiser and trainer state),
    /// the config and the vocabulary sizes in the metadata. Atomic.
    pub fn save(&self, path: &Path, with_optimizer: bool) -> Result<()> {
        let mut tensors = self.model.named_tensors()?;
        let mut meta = BTreeMap::new();
        meta.insert("config".to_string(), self.cfg.to_json());
        meta.insert(
            "vocab".to_string(),
            serde_json::to_string(&self.model.vocab()).unwrap_or_default(),
        );
        meta.insert("model".to_string(), "din".to_string());
        meta.insert(
            "vocab_fingerprint".to_string(),
            self.vocab_fingerprint.clone(),
        );
        if with_optimizer {
            tensors.extend(self.dense.state_tensors());
            tensors.extend(self.sparse.state_tensors(&self.model.tables())?);
            meta.insert(
                "trainer".to_string(),
                serde_json::to_string(&self.state).unwrap_or_default(),
            );
        }
        checkpoint::save(path, &tensors, &meta)
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.4}"))
}

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Loads a model from a checkpoint file (or a run directory: its `best`, else `last`).
///
/// # Errors
/// [`Error::Checkpoint`] for a missing, corrupt or incompatible checkpoint.
pub fn load_model(path: &Path, device: &Device) -> Result<(Config, Din, PathBuf)> {
    let file = if path.is_dir() {
        let best = path.join(BEST);
        if best.exists() {
            best
        } else {
            path.join(LAST)
        }
    } else {
        path.to_path_buf()
    };
    let (loaded, cfg) = load_checkpoint(&file)?;
    let ck = |reason: String| ckpt_err(&file, reason);
    let vocab: VocabSizes = serde_json::from_str(
        loaded
            .metadata
            .get("vocab")
            .ok_or_else(|| ck("no `vocab` in metadata".into()))?,
    )
    .map_err(|e| ck(format!("vocab: {e}")))?;
    let mut model = build_model(&cfg, vocab, device)?;
    model
        .load_tensors(&loaded.tensors)
        .map_err(|e| ck(e.to_string()))?;
    Ok((cfg, model, file))
}

/// Logits of every row of `imp`, in order (evaluation mode: Dice uses running statistics).
pub fn predict(
    model: &Din,
    hist: &Arc<Histories>,
    imp: &Arc<Impressions>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let batcher = Batcher::new(
        hist.clone(),
        imp.clone(),
        BatcherConfig {
            batch_size,
            max_len: model.max_len(),
            shuffle: false,
            seed: 0,
            prefetch: 2,
        },
    );
    let mut out = Vec::with_capacity(imp.len());
    for batch in batcher.iter(0, 0) {
        let leaves = model.leaves(&batch)?;
        let logits = model.forward_t(&batch, &leaves, false)?;
        out.extend(logits.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Metrics (AUC, GAUC by user, logloss, ...) and logits of `imp`.
pub fn evaluate(
    model: &Din,
    hist: &Arc<Histories>,
    imp: &Arc<Impressions>,
    batch_size: usize,
) -> Result<(Metrics, Vec<f32>)> {
    let logits = predict(model, hist, imp, batch_size)?;
    let m = metrics::evaluate(&imp.user, &imp.label, &logits)?;
    Ok((m, logits))
}

/// Checks that a dataset fits a model's tables (same or smaller vocabularies).
pub fn check_vocab(model: &Din, data: &Dataset) -> Result<()> {
    let v = model.vocab();
    let m = &data.meta;
    let has_user = model.user.is_some();
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

/// Writes predictions of `imp` to a parquet file atomically: `row` (int64, the split's row),
/// `user`, `item` (int32 indices), `label` (int8), `logit`, `prob` (float32).
pub fn write_predictions(path: &Path, imp: &Impressions, logits: &[f32]) -> Result<()> {
    use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    if logits.len() != imp.len() {
        return Err(Error::InvalidArgument(format!(
            "{} logits for {} rows",
            logits.len(),
            imp.len()
        )));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int64, false),
        Field::new("user", DataType::Int32, false),
        Field::new("item", DataType::Int32, false),
        Field::new("label", DataType::Int8, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..imp.len() as i64)),
        Arc::new(Int32Array::from_iter_values(
            imp.user.iter().map(|&u| u as i32),
        )),
        Arc::new(Int32Array::from_iter_values(
            imp.item.iter().map(|&u| u as i32),
        )),
        Arc::new(Int8Array::from_iter_values(
            imp.label.iter().map(|&l| (l > 0.5) as i8),
        )),
        Arc::new(Float32Array::from(logits.to_vec())),
        Arc::new(Float32Array::from_iter_values(
            logits.iter().map(|&x| metrics::sigmoid(x)),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::corrupt(path, e))?;
    crate::data::io::write_parquet(path, schema, [Ok(batch)], 1 << 20)
}

/// A fingerprint of a prepared dataset's vocabularies (CRC32 of `vocab/{user,item,cate}.parquet`,
/// which `prepare` writes byte-deterministically). Checkpoints store it, so scoring a dataset
/// whose indices mean different ids is an error instead of silently wrong predictions.
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
pub fn check_fingerprint(
    meta: &BTreeMap<String, String>,
    data_fp: &str,
    ckpt: &Path,
    data: &Dataset,
) -> Result<()> {
    match meta.get("vocab_fingerprint") {
        Some(fp) if fp != data_fp => Err(Error::InvalidArgument(format!(
            "{}: its vocabularies (fingerprint {data_fp}) are not the ones checkpoint {} was trained with \
             (fingerprint {fp}); prepare the data from the same event log",
            data.dir.display(),
            ckpt.display()
        ))),
        _ => Ok(()),
    }
}

fn ckpt_err(path: &Path, reason: impl ToString) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a checkpoint file and the config stored in it.
fn load_checkpoint(file: &Path) -> Result<(checkpoint::Loaded, Config)> {
    let loaded = checkpoint::load(file, &Device::Cpu)?;
    let text = loaded
        .metadata
        .get("config")
        .ok_or_else(|| ckpt_err(file, "no `config` in metadata"))?;
    let cfg = Config::from_json(text).map_err(|e| ckpt_err(file, e))?;
    Ok((loaded, cfg))
}
