//! The one model contract: [`CtrModel`], composed of parts.
//!
//! ```text
//! embeddings (a table per field and role) ─▶ search (no gradient: top-k rows per sample)
//!   ─▶ leaves (only the rows the differentiable part reads) ─▶ aggregations (DIN unit, target
//!   attention, SDIM buckets; each over a window: all, recent n, retrieved) ─▶ head ─▶ logit
//! ```
//!
//! A step runs in three stages, each callable on its own (tests fix the first to check the
//! gradients of the rest):
//! 1. [`CtrModel::plan`]: the search and the hash signatures, from the host tables, without
//!    gradient; it decides which behaviors each part reads;
//! 2. [`CtrModel::leaves`]: gathers exactly those rows into one leaf (a variable when training);
//! 3. [`CtrModel::forward`]: the logits (and auxiliary logits) from the leaf.
//!
//! The model hands back row gradients per table ([`crate::embedding::Leaves::row_grads`]); the
//! trainer applies the row-wise optimiser. DIN, SDIM, SIM, ETA, TWIN and DARE are presets of the
//! config ([`crate::config::preset`]); nothing here or in the trainer names one.
//!
//! | stage | shape |
//! |---|---|
//! | target tokens (representation view) | `[B, d_rep]` |
//! | each aggregation | `[B, d_out]` |
//! | head input | `[B, d_rep + Σ d_out + d_user]` |
//! | logits | `[B]` |
//!
//! Tensors are named for checkpoints as `param/…`, `buffer/…` (Dice statistics, SimHash
//! projections) and `table/…`.

//! Each part lives in its own file and owns its whole life (built from its config, its plan,
//! leaves and forward, its user-side encoding, its incremental extension and its scoring):
//!
//! | file | what |
//! |---|---|
//! | `part.rs` | the contract of an aggregation part; the one `match` that builds one |
//! | `parts/{din,attention,sdim}.rs` | DIN's activation unit, target attention, SDIM's buckets |
//! | `search/{hamming,attention,category}.rs` | ETA, SIM soft / TWIN / DARE, SIM hard (one function serves training and serving) |
//! | `aux.rs` | the auxiliary head on the full attention (training only) |
//! | [`encoding`] | [`UserEncoding`]: what a user's history contributes at serving time |
//! | [`score`] | [`CtrModel::score_encoded`]: a request's candidates against an encoding |

pub(crate) mod aux;
pub mod encoding;
pub(crate) mod part;
pub(crate) mod parts;
pub(crate) mod request;
pub mod score;
pub(crate) mod search;

pub use encoding::{EncodingLayout, UserEncoding};
pub use part::{PartLookup, PartPlan};

use crate::config::{ModelConfig, View};
use crate::data::{Batch, TimeBuckets};
use crate::embedding::{gather, LeafBuilder, Leaves, Tables, TokenIndex, Tokens, VocabSizes};
use crate::nn::{Mlp, MlpOptions, ParamStore};
use crate::search::SimHash;
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use part::{Aggregation, Ctx, PartInput};
use search::{Search, Searched};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The search's decisions for one batch (no gradient).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The search's top-k per sample (best first), if the model searches.
    pub retrieved: Option<Window>,
    /// The window each aggregation reads.
    pub windows: Vec<Window>,
    /// Each aggregation's own decisions (SDIM's signatures).
    pub parts: Vec<PartPlan>,
}

/// Where each part's tokens are in the step's leaf.
#[derive(Debug, Clone)]
pub struct Lookups {
    indices: Vec<Arc<TokenIndex>>,
    target_rep: usize,
    user: Option<usize>,
    parts: Vec<PartLookup>,
    aux: Option<PartLookup>,
}

/// What the forward pass gives the trainer.
#[derive(Debug)]
pub struct Forward {
    /// `[B]` logits.
    pub logits: Tensor,
    /// Auxiliary logits `[B]` with their loss weights.
    pub aux: Vec<(f64, Tensor)>,
}

/// One step's leaf and outputs.
#[derive(Debug)]
pub struct Step {
    /// The rows read (their gradients go to the row-wise optimiser).
    pub leaves: Leaves,
    /// The outputs.
    pub out: Forward,
}

/// A CTR model composed of parts (see the module docs).
#[derive(Debug)]
pub struct CtrModel {
    cfg: ModelConfig,
    max_len: usize,
    vocab: VocabSizes,
    device: Device,
    ops: crate::device::Ops,
    params: ParamStore,
    tables: Tables,
    search: Option<Box<dyn Search>>,
    parts: Vec<Box<dyn Aggregation>>,
    head: Mlp,
    time: Option<Arc<TimeBuckets>>,
}

/// The SimHash a projection buffer holds (read each time: loading a checkpoint replaces it).
pub(crate) fn simhash_of(proj: &Var) -> Result<SimHash> {
    let (d, bits) = proj.as_tensor().dims2()?;
    SimHash::from_values(d, bits, proj.as_tensor().flatten_all()?.to_vec1()?)
}

/// Whether a view's tokens depend on the behaviors' context (position, time interval), so an
/// encoding of them shifts as behaviors arrive (or time passes) and is recomputed rather than
/// folded.
pub(crate) fn positional(tables: &Tables, view: View) -> bool {
    tables
        .view(view)
        .fields
        .iter()
        .any(|f| f.field.is_context())
}

impl CtrModel {
    /// Builds the model `cfg` describes, with tables for `vocab` and histories up to `max_len`,
    /// every table and parameter initialised from its own seed derived from `seed`.
    ///
    /// # Errors
    /// [`Error::Config`] for a config that does not validate.
    pub fn new(
        cfg: &ModelConfig,
        max_len: usize,
        vocab: VocabSizes,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate(max_len).map_err(Error::Config)?;
        let tables = Tables::new(&cfg.embedding, vocab, max_len, seed)?;
        let ops = cfg.ops.on(device);
        if cfg.precision != crate::device::Precision::F32 && !ops.generic() {
            return Err(Error::Config(format!(
                "model.precision = {:?} needs the generic path: set model.ops = \"generic\" (a GPU always runs it)",
                cfg.precision
            )));
        }
        let mut ps = ParamStore::new(device.clone(), seed).with_ops(ops);
        let cx = Ctx {
            tables: &tables,
            device,
            max_len,
            generic: ops.generic(),
        };
        let mut head_in = tables.view(View::Representation).width + cfg.embedding.user_dim;
        let mut parts = Vec::with_capacity(cfg.aggregate.len());
        for (i, a) in cfg.aggregate.iter().enumerate() {
            let p = part::build(a, &cx, &mut ps, &format!("agg.{i}"), &cfg.dice)?;
            head_in += p.out_dim();
            parts.push(p);
        }
        let search = search::build(&cfg.search, &cfg.aggregate, &cx, &mut ps, &cfg.dice)?;
        let h = &cfg.head;
        let head_opts = MlpOptions {
            batch_norm: h.batch_norm,
            input_batch_norm: h.input_batch_norm,
            dropout: h.dropout,
            ..MlpOptions::new(h.activation, &cfg.dice)
        };
        let head = Mlp::new(&mut ps, "head", head_in, &h.hidden, Some(1), &head_opts)?;
        Ok(Self {
            cfg: cfg.clone(),
            max_len,
            vocab,
            device: device.clone(),
            ops,
            params: ps,
            tables,
            search,
            parts,
            head,
            time: match &cfg.embedding.time {
                Some(t) if t.dim > 0 => Some(Arc::new(TimeBuckets::new(t.edges.clone())?)),
                _ => None,
            },
        })
    }

    /// The time-interval field's buckets (`None`: the model has no time field). Batches for
    /// it carry each behavior's bucket ([`crate::data::Batch::set_times`]).
    pub fn time_buckets(&self) -> Option<&Arc<TimeBuckets>> {
        self.time.as_ref()
    }

    /// Checks that impressions carry the times the model's time field needs.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field when the model has one and `imp` no times.
    pub fn check_times(&self, imp: &crate::data::Impressions) -> Result<()> {
        if self.time.is_some() && imp.ts.len() != imp.len() {
            return Err(Error::InvalidArgument(
                "the model has a time field (model.embedding.time) but the data has no timestamps \
                 (an impression dataset's histories carry none; prepare an event log instead)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn cx(&self) -> Ctx<'_> {
        Ctx {
            tables: &self.tables,
            device: &self.device,
            max_len: self.max_len,
            generic: self.ops.generic(),
        }
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Vocabulary sizes of the tables.
    pub fn vocab(&self) -> VocabSizes {
        self.vocab
    }
    /// The maximum history length the model was built for.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// The device of the dense parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Dense parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    /// The embedding tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }
    /// The embedding tables, mutable (the trainer's row-wise updates; tests perturb rows).
    #[cfg(feature = "testing")]
    pub fn tables_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }
    /// The embedding tables, mutable (the trainer's row-wise updates).
    #[cfg(not(feature = "testing"))]
    pub(crate) fn tables_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }

    /// Whether batches should carry [`crate::data::batch::FullIds`]: some part reads or
    /// hashes every behavior of the history.
    pub fn needs_full_ids(&self) -> bool {
        self.parts.iter().any(|p| p.reads_all())
            || self
                .search
                .as_ref()
                .is_some_and(|s| s.reads_all() || s.aux().is_some())
    }

    /// Stage 1: the search and the hash signatures (no gradient), from the host tables.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a batch longer than `max_len` or ids outside the tables.
    pub fn plan(&self, batch: &Batch) -> Result<Plan> {
        if batch.len > self.max_len {
            return Err(Error::InvalidArgument(format!(
                "batch history length {} exceeds the model's max_len {}",
                batch.len, self.max_len
            )));
        }
        let cx = self.cx();
        let retrieved = match &self.search {
            Some(s) => Some(s.retrieve(&cx, &self.parts, &Searched::own(batch))?),
            None => None,
        };
        let mut windows = Vec::with_capacity(self.parts.len());
        let mut plans = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let w = Window::of(p.window(), batch, retrieved.as_ref())
                .ok_or_else(|| Error::Config("a retrieved window without a search".into()))?;
            plans.push(p.plan(&cx, batch, &w)?);
            windows.push(w);
        }
        Ok(Plan {
            retrieved,
            windows,
            parts: plans,
        })
    }

    /// Stage 2: gathers the rows the differentiable part reads into one leaf (a variable when
    /// `grad`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for ids outside the tables.
    pub fn leaves(&self, batch: &Batch, plan: &Plan, grad: bool) -> Result<(Leaves, Lookups)> {
        let (cx, t) = (self.cx(), &self.tables);
        let mut lb = LeafBuilder::new(t, batch);
        let target_rep = lb.request(t.view(View::Representation), Tokens::Targets);
        let user = t.user().map(|u| lb.request_table(u, Tokens::Targets));
        let parts = self
            .parts
            .iter()
            .zip(&plan.windows)
            .map(|(p, w)| p.request(&cx, &mut lb, w))
            .collect();
        let aux = self
            .search
            .as_ref()
            .and_then(|s| s.aux())
            .map(|a| a.request(&cx, &mut lb));
        let (leaves, indices) = lb.build(&self.device, grad)?;
        let leaves = leaves
            .into_generic(self.ops.generic())
            .computing_in(self.cfg.precision.dtype())?;
        Ok((
            leaves,
            Lookups {
                indices,
                target_rep,
                user,
                parts,
                aux,
            },
        ))
    }

    fn inputs<'a>(
        &'a self,
        batch: &'a Batch,
        plan: &'a Plan,
        leaves: &'a Leaves,
        look: &'a Lookups,
    ) -> Result<Vec<PartInput<'a>>> {
        if look.parts.len() != self.parts.len() || plan.windows.len() != self.parts.len() {
            return Err(Error::InvalidArgument(
                "lookups do not match the model".into(),
            ));
        }
        Ok(look
            .parts
            .iter()
            .zip(&plan.windows)
            .zip(&plan.parts)
            .map(|((l, w), p)| PartInput {
                batch,
                leaves,
                indices: &look.indices,
                look: l,
                window: w,
                plan: p,
            })
            .collect())
    }

    /// Stage 3: the logits (and auxiliary logits) from the leaf. `train` selects Dice's batch
    /// statistics (and updates its running ones).
    pub fn forward(
        &self,
        batch: &Batch,
        plan: &Plan,
        leaves: &Leaves,
        look: &Lookups,
        train: bool,
    ) -> Result<Forward> {
        let t_rep = gather(leaves, &look.indices[look.target_rep])?;
        let mut head_in = vec![t_rep.clone()];
        for (p, x) in self
            .parts
            .iter()
            .zip(self.inputs(batch, plan, leaves, look)?)
        {
            head_in.push(p.forward(&x, train)?);
        }
        if let Some(u) = look.user {
            head_in.push(gather(leaves, &look.indices[u])?);
        }
        let x = Tensor::cat(&head_in, 1)?;
        // The loss is taken in f32 whatever the activations' dtype.
        let logits = self
            .head
            .forward_t(&x, train)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::F32)?;
        let mut aux = Vec::new();
        if let (Some(s), Some(l)) = (&self.search, &look.aux) {
            if let Some(h) = s.aux() {
                aux.push(h.forward(
                    s.as_ref(),
                    &self.parts,
                    batch,
                    leaves,
                    &look.indices,
                    l,
                    &t_rep,
                    train,
                )?);
            }
        }
        Ok(Forward { logits, aux })
    }

    /// All three stages; the leaf is a variable when `train`.
    pub fn step(&self, batch: &Batch, train: bool) -> Result<Step> {
        let plan = self.plan(batch)?;
        let (leaves, look) = self.leaves(batch, &plan, train)?;
        let out = self.forward(batch, &plan, &leaves, &look, train)?;
        Ok(Step { leaves, out })
    }

    /// Logits of a batch in evaluation mode (Dice's running statistics, no gradient leaf).
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>> {
        Ok(self.step(batch, false)?.out.logits.to_vec1::<f32>()?)
    }

    /// The attention weights of every target-attention aggregation (evaluation mode): which
    /// behaviors each sample attended to, and how much. `None` for other aggregations.
    ///
    /// # Shapes
    /// → per aggregation, its window and weights `[B, K, H]` in the window's padded layout
    pub fn attention_weights(&self, batch: &Batch) -> Result<Vec<Option<(Window, Tensor)>>> {
        let plan = self.plan(batch)?;
        let (leaves, look) = self.leaves(batch, &plan, false)?;
        let mut out = Vec::with_capacity(self.parts.len());
        for (p, x) in self
            .parts
            .iter()
            .zip(self.inputs(batch, &plan, &leaves, &look)?)
        {
            out.push(p.attention_weights(&x)?.map(|t| (x.window.clone(), t)));
        }
        Ok(out)
    }

    /// Every weight: `param/…`, `buffer/…`, `table/<name>`.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.params.named_tensors();
        for t in self.tables.iter() {
            out.push((format!("table/{}", t.name()), t.to_tensor()?));
        }
        Ok(out)
    }

    /// Loads every weight saved by [`CtrModel::named_tensors`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing tensor or a shape mismatch.
    pub fn load_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.params.load(tensors)?;
        self.tables.load(tensors)
    }

    /// Parameter counts: `(name, count)` for every table and for the dense parameters.
    pub fn parameter_counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .tables
            .iter()
            .map(|t| (format!("table/{}", t.name()), t.rows() * t.dim()))
            .collect();
        let dense: usize = self.params.params().values().map(|p| p.elem_count()).sum();
        v.push(("dense".into(), dense));
        v
    }
}
