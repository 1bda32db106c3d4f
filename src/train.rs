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

use crate::checkpoint::{self, build_model, read_checkpoint, vocab_fingerprint, Metadata, RunDir};
use crate::config::Config;
use crate::data::{Batch, Batcher, BatcherConfig, Dataset, Histories, Impressions};
use crate::embedding::VocabSizes;
use crate::eval::evaluate;
use crate::metrics::Metrics;
use crate::model::CtrModel;
use crate::nn::{bce_with_logits, ParamStore};
use crate::optim::{Adam, AdamParams, RowWise};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    /// Sum of the training losses since the last validation (so a resumed run reports the
    /// same mean as an uninterrupted one).
    #[serde(default)]
    pub loss_sum: f64,
    /// Steps summed in `loss_sum`.
    #[serde(default)]
    pub loss_n: u64,
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
    /// The search and hash signatures (no gradient).
    pub search: f64,
    /// Gathering the rows the step reads into the leaf.
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
    model: CtrModel,
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

/// Dense Adam(W) over the model's parameters.
fn dense_optimizer(model: &CtrModel, cfg: &Config) -> Result<Adam> {
    let vars = model
        .params()
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Adam::new(
        vars,
        AdamParams {
            weight_decay: cfg.train.weight_decay,
            ..AdamParams::with_lr(cfg.train.lr)
        },
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
        Self::from_parts(cfg, vocab, vocab_fingerprint(&data.dir)?, run_dir, device)
    }

    /// A fresh trainer for data held elsewhere (histories and impressions built in memory, say):
    /// tables for `vocab`, and `fingerprint` stored in the checkpoints to identify the
    /// vocabularies (what [`vocab_fingerprint`] gives for a prepared dataset).
    pub fn from_parts(
        cfg: Config,
        vocab: VocabSizes,
        fingerprint: String,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let model = build_model(&cfg, vocab, device)?;
        let t = &cfg.train;
        let dense = dense_optimizer(&model, &cfg)?;
        let sparse = RowWise::new(t.sparse_optimizer, AdamParams::with_lr(t.sparse_lr))
            .with_catch_up(t.sparse_catch_up);
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        RunDir::new(run_dir).remove_stale_temps();
        Ok(Self {
            cfg,
            model,
            dense,
            sparse,
            state: TrainerState::default(),
            run_dir: run_dir.to_path_buf(),
            progress: console_is_tty(),
            times: StepTimes::default(),
            vocab_fingerprint: fingerprint,
        })
    }

    /// Resumes from `run_dir/last.safetensors`: config, weights, optimiser and trainer state.
    /// Temporary files a killed run left in the directory (`.tmp-*`, never renamed into place)
    /// are removed.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when the checkpoint is missing, corrupt, or does not match `data`.
    pub fn resume(data: &Dataset, run_dir: &Path, device: &Device) -> Result<Self> {
        let path = RunDir::new(run_dir).last();
        let (loaded, meta) = read_checkpoint(&path)?;
        let ck = |reason: String| Error::Checkpoint {
            path: path.clone(),
            reason,
        };
        let state: TrainerState = meta.trainer_state(&path)?;
        crate::checkpoint::vocab::check_vocab_dir(&meta, &path, &data.dir)?;
        let mut t = Self::new(meta.config, data, run_dir, device)?;
        t.model
            .load_tensors(&loaded.tensors)
            .map_err(|e| ck(e.to_string()))?;
        t.dense
            .load_state(&loaded.tensors, state.step)
            .map_err(|e| ck(e.to_string()))?;
        let tables: Vec<_> = t.model.tables().iter().collect();
        t.sparse
            .load_state(&loaded.tensors, &tables)
            .map_err(|e| ck(e.to_string()))?;
        t.state = state;
        Ok(t)
    }

    /// The model.
    pub fn model(&self) -> &CtrModel {
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
        // Dropout masks are drawn for this step (a resumed run draws an uninterrupted one's).
        self.model.params().set_step(self.state.step);
        let plan = self.model.plan(batch)?;
        let ts = Instant::now();
        let (leaves, look) = self.model.leaves(batch, &plan, true)?;
        let t1 = Instant::now();
        let out = self.model.forward(batch, &plan, &leaves, &look, true)?;
        let labels = Tensor::from_slice(&batch.label, batch.size(), self.model.device())?;
        let bce = bce_with_logits(&out.logits, &labels)?;
        let value = bce.to_scalar::<f32>()?;
        let mut loss = bce;
        for (w, aux) in &out.aux {
            loss = (loss + (bce_with_logits(aux, &labels)? * *w)?)?;
        }
        let total = loss.to_scalar::<f32>()?;
        if !value.is_finite() || !total.is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch: self.state.epoch,
                step: self.state.step,
                value: if value.is_finite() { total } else { value },
            });
        }
        let l2 = self.cfg.train.embedding_l2;
        if l2 > 0.0 {
            loss = (loss + (leaves.tensor().sqr()?.sum_all()? * l2)?)?;
        }
        let dense_l2 = self.cfg.train.dense_l2;
        if dense_l2 > 0.0 {
            if let Some(p) = dense_l2_penalty(self.model.params())? {
                loss = (loss + (p * dense_l2)?)?;
            }
        }
        let t2 = Instant::now();
        let grads = loss.backward()?;
        let t3 = Instant::now();
        let row_grads = leaves.row_grads(&grads)?;
        let scale = match self.cfg.train.clip_grad_norm {
            Some(max) => {
                let mut sq = 0f64;
                for v in self.model.params().params().values() {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                    }
                }
                for rg in &row_grads {
                    sq += rg.grad.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
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
        self.sparse.begin_step(self.state.step + 1);
        for rg in row_grads {
            let table = self.model.tables_mut().table_mut(rg.table);
            self.sparse
                .update(table, &rg.rows, &rg.grad, scale as f32)?;
        }
        self.state.step += 1;
        let t4 = Instant::now();
        self.times.search += (ts - t0).as_secs_f64();
        self.times.gather += (t1 - ts).as_secs_f64();
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
        for imp in [&train, &valid] {
            self.model.check_times(imp).map_err(|e| {
                Error::InvalidArgument(format!("{}: {e}", self.cfg.data.dir.display()))
            })?;
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
                full_ids: self.model.needs_full_ids(),
                time: self.model.time_buckets().cloned(),
            },
        );
        let n_batches = batcher.num_batches();
        let (mut samples, mut train_secs) = (0u64, 0f64);
        // A resumed run that already took its steps has nothing to do (raise train.max_steps
        // with --set to train further).
        let steps_left = t.max_steps == 0 || self.state.step < t.max_steps;
        if !steps_left {
            tracing::info!(
                step = self.state.step,
                max_steps = t.max_steps,
                "train.max_steps already reached; nothing to train"
            );
        }
        'epochs: while steps_left && !self.state.finished && self.state.epoch < t.epochs {
            let epoch = self.state.epoch;
            let bar = self.progress_bar(n_batches as u64, self.state.batch as u64, epoch);
            let mut clock = Instant::now();
            let mut bar_samples = 0u64;
            let mut ema: Option<f64> = None;
            let mut batches = batcher.iter(epoch, self.state.batch);
            loop {
                let tw = Instant::now();
                let Some(batch) = batches.next() else { break };
                let batch = batch?;
                self.times.wait += tw.elapsed().as_secs_f64();
                let loss = self.train_step(&batch)?;
                self.state.batch += 1;
                samples += batch.size() as u64;
                bar_samples += batch.size() as u64;
                self.state.loss_sum += loss as f64;
                self.state.loss_n += 1;
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
                        let train_loss = self.state.loss_sum / self.state.loss_n.max(1) as f64;
                        (self.state.loss_sum, self.state.loss_n) = (0.0, 0);
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
            self.save(&RunDir::new(&self.run_dir).best(), false)?;
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
        // metrics.jsonl is written from the validations the trainer state holds (the state a
        // checkpoint stores): a resumed run continues exactly its checkpoint's curve, with no
        // line of an interrupted, never-checkpointed interval and nothing read back from disk;
        // a fresh run starts the file anew.
        self.state.evals.push(rec);
        let mut text = String::new();
        for r in &self.state.evals {
            text.push_str(
                &serde_json::to_string(r).map_err(|e| Error::InvalidArgument(e.to_string()))?,
            );
            text.push('\n');
        }
        crate::atomic::atomic_write_bytes(&RunDir::new(&self.run_dir).metrics(), text.as_bytes())?;
        let better = match (m.auc, self.state.best_auc) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            (None, _) => self.state.best_auc.is_none(),
        };
        if better {
            self.state.best_auc = m.auc;
            self.state.best_step = self.state.step;
            self.state.bad_evals = 0;
            self.save(&RunDir::new(&self.run_dir).best(), false)?;
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
        self.save(&RunDir::new(&self.run_dir).last(), true)
    }

    /// Writes a checkpoint: weights (and, with `with_optimizer`, optimiser and trainer state),
    /// the config and the vocabulary sizes in the metadata. Atomic.
    pub fn save(&self, path: &Path, with_optimizer: bool) -> Result<()> {
        let mut tensors = self.model.named_tensors()?;
        let state = serde_json::to_value(&self.state).ok();
        let meta = Metadata {
            config: self.cfg.clone(),
            vocab: self.model.vocab(),
            vocab_fingerprint: Some(self.vocab_fingerprint.clone()),
            progress: state.clone(),
            trainer: if with_optimizer { state } else { None },
        };
        if with_optimizer {
            tensors.extend(self.dense.state_tensors());
            let tables: Vec<_> = self.model.tables().iter().collect();
            tensors.extend(self.sparse.state_tensors(&tables)?);
        }
        checkpoint::save(path, &tensors, &meta.to_map())
    }
}

/// `Σ_W ‖W‖²` over the store's weight matrices ([`ParamStore::weight_matrices`]): what
/// `train.dense_l2` multiplies and adds to the loss (`None` when there are none).
pub fn dense_l2_penalty(params: &ParamStore) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for (_, w) in params.weight_matrices() {
        let sq = w.as_tensor().sqr()?.sum_all()?;
        sum = Some(match sum {
            Some(s) => (s + sq)?,
            None => sq,
        });
    }
    Ok(sum)
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.4}"))
}

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Trains `cfg` on its dataset (`data.dir`) into its run directory (`train.out`), or continues
/// the run there with `resume`: what `lifelong train` runs.
///
/// # Errors
/// Named errors for the dataset, the run directory's checkpoint when resuming, and training
/// itself (a non-finite loss, an empty split).
pub fn run(cfg: Config, resume: bool, device: &Device) -> Result<FitSummary> {
    let ds = Dataset::open(&cfg.data.dir)?;
    let train_split = Arc::new(ds.load_split(crate::data::Split::Train)?);
    let valid = Arc::new(ds.load_split(crate::data::Split::Valid)?);
    let run_dir = cfg.train.out.clone();
    let mut trainer = if resume {
        let t = Trainer::resume(&ds, &run_dir, device)?;
        tracing::info!(
            "resuming at epoch {}, batch {}, step {}",
            t.state().epoch + 1,
            t.state().batch,
            t.state().step
        );
        t
    } else {
        Trainer::new(cfg, &ds, &run_dir, device)?
    };
    tracing::info!(
        "training on {} rows ({} valid) from {}",
        train_split.len(),
        valid.len(),
        ds.dir.display()
    );
    trainer.fit(ds.histories.clone(), train_split, valid)
}
