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

pub mod serving;

pub use serving::{EncodingLayout, UserEncoding};

use crate::aggregate::score_pool::score_pool;
use crate::aggregate::sdim::Signatures;
use crate::aggregate::{ActivationUnit, Packed, Sdim, TargetAttention};
use crate::config::{
    AggregateConfig, AuxPooling, ModelConfig, Scorer, SearchConfig, View, WindowConfig,
};
use crate::data::Batch;
use crate::embedding::{gather, LeafBuilder, Leaves, Tables, TokenIndex, Tokens, NONE};
use crate::nn::{Mlp, ParamStore};
use crate::search::{self, signature, token_codes, SimHash};
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Vocabulary sizes the tables are built for (padding and unknown included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabSizes {
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Categories.
    pub cates: usize,
}

#[derive(Debug)]
enum SearchUnit {
    None,
    Hamming {
        proj: Var,
        k: usize,
        view: View,
    },
    Attention {
        k: usize,
        scorer: ScorerUnit,
        view: View,
    },
    Category {
        k: usize,
    },
}

#[derive(Debug)]
enum ScorerUnit {
    Dot(Vec<f32>),
    Own { wq: Var, wk: Var, dim: usize },
    Exact(usize),
}

#[derive(Debug)]
struct AuxHead {
    head: Mlp,
    weight: f64,
    softmax: bool,
    product: bool,
}

#[derive(Debug)]
enum Agg {
    Din {
        unit: ActivationUnit,
        view: View,
        product: bool,
    },
    Attention {
        unit: TargetAttention,
        keys: View,
        values: View,
    },
    Sdim {
        unit: Sdim,
        proj: Var,
        keys: View,
        values: View,
    },
}

/// The search's decisions for one batch (no gradient).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The search's top-k per sample (best first), if the model searches.
    pub retrieved: Option<Window>,
    /// The window each aggregation reads.
    pub windows: Vec<Window>,
    /// The SDIM aggregations' hash signatures.
    pub sigs: Vec<Option<Signatures>>,
}

#[derive(Debug, Clone)]
enum AggLookup {
    Din {
        target: usize,
        window: usize,
    },
    Attention {
        target_k: usize,
        target_v: usize,
        keys: usize,
        values: usize,
        mask: Arc<Vec<f32>>,
        k: usize,
    },
    Sdim {
        values: usize,
    },
}

/// Where each part's tokens are in the step's leaf.
#[derive(Debug, Clone)]
pub struct Lookups {
    indices: Vec<Arc<TokenIndex>>,
    target_rep: usize,
    user: Option<usize>,
    aggs: Vec<AggLookup>,
    aux: Option<(usize, usize, usize)>,
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
    params: ParamStore,
    tables: Tables,
    search: SearchUnit,
    aggs: Vec<Agg>,
    head: Mlp,
    aux: Option<AuxHead>,
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
        let mut ps = ParamStore::new(device.clone(), seed);
        let (eps, mom) = (cfg.dice.eps, cfg.dice.momentum);
        let width = |v: View| tables.view(v).width;
        let rep = width(View::Representation);
        let mut head_in = rep + cfg.embedding.user_dim;
        let mut aggs = Vec::with_capacity(cfg.aggregate.len());
        for (i, a) in cfg.aggregate.iter().enumerate() {
            let prefix = format!("agg.{i}");
            aggs.push(match a {
                AggregateConfig::Din(d) => {
                    let w = width(d.view);
                    head_in += if d.product { 2 * w } else { w };
                    Agg::Din {
                        product: d.product,
                        unit: ActivationUnit::new(
                            &mut ps,
                            &format!("{prefix}.din"),
                            w,
                            &d.hidden,
                            d.activation,
                            d.softmax,
                            eps,
                            mom,
                        )?,
                        view: d.view,
                    }
                }
                AggregateConfig::Attention(t) => {
                    let unit = TargetAttention::new(
                        &mut ps,
                        &format!("{prefix}.attention"),
                        width(t.keys),
                        width(t.values),
                        t.projection,
                        t.heads,
                        t.dim,
                        tables.view(t.keys).dot_scale(),
                        t.product,
                    )?;
                    head_in += unit.out_dim();
                    Agg::Attention {
                        unit,
                        keys: t.keys,
                        values: t.values,
                    }
                }
                AggregateConfig::Sdim(s) => {
                    let (dk, bits) = (width(s.keys), s.groups * s.bits);
                    let name = format!("{prefix}.sdim.proj");
                    let hash = SimHash::new(dk, bits, ps.seed_of(&format!("buffer/{name}")));
                    let t = Tensor::from_slice(hash.projections(), (dk, bits), device)?;
                    head_in += width(s.values);
                    Agg::Sdim {
                        unit: Sdim {
                            groups: s.groups,
                            tau: s.bits,
                            normalize: s.normalize,
                        },
                        proj: ps.buffer_from(&name, t)?,
                        keys: s.keys,
                        values: s.values,
                    }
                }
            });
        }
        let mut aux = None;
        let search = match &cfg.search {
            SearchConfig::None(_) => SearchUnit::None,
            SearchConfig::Hamming(h) => {
                let dk = width(h.view);
                let name = "search.proj";
                let hash = SimHash::new(dk, h.bits, ps.seed_of(&format!("buffer/{name}")));
                let t = Tensor::from_slice(hash.projections(), (dk, h.bits), device)?;
                SearchUnit::Hamming {
                    proj: ps.buffer_from(name, t)?,
                    k: h.k,
                    view: h.view,
                }
            }
            SearchConfig::Attention(a) => {
                let dk = width(a.view);
                let scorer = match a.scorer {
                    Scorer::Dot => ScorerUnit::Dot(tables.view(a.view).dot_scale()),
                    Scorer::Own => {
                        let bound = 1.0 / (dk as f32).sqrt();
                        ScorerUnit::Own {
                            wq: ps.uniform("search.wq", &[a.dim, dk], bound)?,
                            wk: ps.uniform("search.wk", &[a.dim, dk], bound)?,
                            dim: a.dim,
                        }
                    }
                    Scorer::Exact => ScorerUnit::Exact(
                        cfg.aggregate
                            .iter()
                            .position(|g| g.window() == WindowConfig::Retrieved)
                            .ok_or_else(|| Error::Config("no retrieved window".into()))?,
                    ),
                };
                if let Some(x) = a.aux.as_ref().filter(|x| x.weight > 0.0) {
                    let n_in = if x.product { 3 * rep } else { 2 * rep };
                    aux = Some(AuxHead {
                        head: Mlp::new(
                            &mut ps,
                            "aux",
                            n_in,
                            &x.hidden,
                            Some(1),
                            x.activation,
                            eps,
                            mom,
                        )?,
                        weight: x.weight,
                        softmax: x.pooling == AuxPooling::Softmax,
                        product: x.product,
                    });
                }
                SearchUnit::Attention {
                    k: a.k,
                    scorer,
                    view: a.view,
                }
            }
            SearchConfig::Category(c) => SearchUnit::Category { k: c.k },
        };
        let head = Mlp::new(
            &mut ps,
            "head",
            head_in,
            &cfg.head.hidden,
            Some(1),
            cfg.head.activation,
            eps,
            mom,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            max_len,
            vocab,
            device: device.clone(),
            params: ps,
            tables,
            search,
            aggs,
            head,
            aux,
        })
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
    /// The embedding tables, mutable (the trainer's row-wise updates).
    pub fn tables_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }

    /// Whether batches should carry [`crate::data::batcher::FullIds`]: some part reads or
    /// hashes every behavior of the history.
    pub fn needs_full_ids(&self) -> bool {
        let all_window = self
            .cfg
            .aggregate
            .iter()
            .any(|a| matches!(a, AggregateConfig::Sdim(_)) || a.window() == WindowConfig::All);
        all_window || self.aux.is_some() || matches!(self.search, SearchUnit::Hamming { .. })
    }

    fn simhash(proj: &Var) -> Result<SimHash> {
        let (d, bits) = proj.as_tensor().dims2()?;
        SimHash::from_values(d, bits, proj.as_tensor().flatten_all()?.to_vec1()?)
    }

    /// The search query `q'` with `score_j = ⟨q'_b, e_j⟩`.
    fn search_query(&self, scorer: &ScorerUnit, target: &Tensor) -> Result<Tensor> {
        match scorer {
            ScorerUnit::Dot(scale) => {
                let s = Tensor::from_slice(scale, scale.len(), target.device())?;
                Ok(target.broadcast_mul(&s)?)
            }
            ScorerUnit::Own { wq, wk, dim } => {
                let q = target.matmul(&wq.as_tensor().t()?)?;
                Ok((q.matmul(wk.as_tensor())? / (*dim as f64).sqrt())?)
            }
            ScorerUnit::Exact(i) => match &self.aggs[*i] {
                Agg::Attention { unit, .. } => unit.query(target),
                _ => Err(Error::Config(
                    "scorer = \"exact\" needs an attention aggregation".into(),
                )),
            },
        }
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
        let tables = &self.tables;
        let retrieved = match &self.search {
            SearchUnit::None => None,
            SearchUnit::Hamming { proj, k, view } => Some(search::topk_by_hamming(
                tables,
                tables.view(*view),
                batch,
                &Self::simhash(proj)?,
                *k,
            )?),
            SearchUnit::Attention { k, scorer, view } => {
                let v = tables.view(*view);
                let t = search::target_tokens(tables, v, batch)?;
                let t = Tensor::from_vec(t, (batch.size(), v.width), &self.device)?;
                let q = self
                    .search_query(scorer, &t)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Some(search::topk_by_query(tables, v, batch, &q, *k)?)
            }
            SearchUnit::Category { k } => Some(search::topk_by_category(batch, *k)),
        };
        let mut windows = Vec::with_capacity(self.aggs.len());
        let mut sigs = Vec::with_capacity(self.aggs.len());
        for (a, cfg) in self.aggs.iter().zip(&self.cfg.aggregate) {
            let w = Window::of(cfg.window(), batch, retrieved.as_ref())
                .ok_or_else(|| Error::Config("a retrieved window without a search".into()))?;
            sigs.push(match a {
                Agg::Sdim {
                    unit, proj, keys, ..
                } => {
                    let hash = Self::simhash(proj)?;
                    let (tc, hc) = token_codes(tables, tables.view(*keys), &hash, batch)?;
                    let (words, g, tau) = (hash.words(), unit.groups, unit.tau);
                    let sigs_of = |codes: &[u64], rows: &mut [u16]| {
                        for (code, out) in codes.chunks_exact(words).zip(rows.chunks_exact_mut(g)) {
                            for (q, o) in out.iter_mut().enumerate() {
                                *o = signature(code, q, tau) as u16;
                            }
                        }
                    };
                    let mut target = vec![0u16; batch.size() * g];
                    sigs_of(&tc, &mut target);
                    let mut rows = vec![0u16; w.len() * g];
                    rows.par_chunks_mut(g * 1024)
                        .zip(w.rows.par_chunks(1024))
                        .for_each(|(out, js)| {
                            for (o, &j) in out.chunks_exact_mut(g).zip(js) {
                                let j = j as usize;
                                sigs_of(&hc[j * words..(j + 1) * words], o);
                            }
                        });
                    Some(Signatures {
                        target: Arc::new(target),
                        rows: Arc::new(rows),
                    })
                }
                _ => None,
            });
            windows.push(w);
        }
        Ok(Plan {
            retrieved,
            windows,
            sigs,
        })
    }

    /// Stage 2: gathers the rows the differentiable part reads into one leaf (a variable when
    /// `grad`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for ids outside the tables.
    pub fn leaves(&self, batch: &Batch, plan: &Plan, grad: bool) -> Result<(Leaves, Lookups)> {
        let t = &self.tables;
        let mut lb = LeafBuilder::new(t, batch);
        let window_tokens = |w: &Window| {
            if w.all {
                Tokens::AllHistory
            } else {
                Tokens::History(w.rows.clone())
            }
        };
        let target_rep = lb.request(t.view(View::Representation), Tokens::Targets);
        let user = t.user().map(|u| lb.request_table(u, Tokens::Targets));
        let mut aggs = Vec::with_capacity(self.aggs.len());
        for (a, w) in self.aggs.iter().zip(&plan.windows) {
            aggs.push(match a {
                Agg::Din { view, .. } => AggLookup::Din {
                    target: lb.request(t.view(*view), Tokens::Targets),
                    window: lb.request(t.view(*view), window_tokens(w)),
                },
                Agg::Attention { keys, values, .. } => {
                    let (padded, k) = w.padded();
                    let mask: Vec<f32> = padded
                        .iter()
                        .map(|&r| if r == NONE { 0.0 } else { 1.0 })
                        .collect();
                    let padded = Arc::new(padded);
                    // Keys and values of one view are the same tokens: gather them once.
                    let target_k = lb.request(t.view(*keys), Tokens::Targets);
                    let keys_ix = lb.request(t.view(*keys), Tokens::History(padded.clone()));
                    let (target_v, values_ix) = if keys == values {
                        (target_k, keys_ix)
                    } else {
                        (
                            lb.request(t.view(*values), Tokens::Targets),
                            lb.request(t.view(*values), Tokens::History(padded)),
                        )
                    };
                    AggLookup::Attention {
                        target_k,
                        target_v,
                        keys: keys_ix,
                        values: values_ix,
                        mask: Arc::new(mask),
                        k,
                    }
                }
                Agg::Sdim { values, .. } => AggLookup::Sdim {
                    values: lb.request(t.view(*values), window_tokens(w)),
                },
            });
        }
        let aux = match (&self.aux, &self.search) {
            (Some(_), SearchUnit::Attention { view, .. }) => Some((
                lb.request(t.view(*view), Tokens::Targets),
                lb.request(t.view(*view), Tokens::AllHistory),
                lb.request(t.view(View::Representation), Tokens::AllHistory),
            )),
            _ => None,
        };
        let (leaves, indices) = lb.build(&self.device, grad)?;
        Ok((
            leaves,
            Lookups {
                indices,
                target_rep,
                user,
                aggs,
                aux,
            },
        ))
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
        let ix = |i: usize| &look.indices[i];
        let b = batch.size();
        let t_rep = gather(leaves, ix(look.target_rep))?;
        let mut head_in = vec![t_rep.clone()];
        for (((a, l), w), sigs) in self
            .aggs
            .iter()
            .zip(&look.aggs)
            .zip(&plan.windows)
            .zip(&plan.sigs)
        {
            head_in.push(match (a, l) {
                (Agg::Din { unit, product, .. }, AggLookup::Din { target, window }) => {
                    let t = gather(leaves, ix(*target))?;
                    let packed = Packed::new(w.offsets.clone())?;
                    let u = unit.forward_leaf(&t, leaves, ix(*window), &packed, train)?;
                    if *product {
                        let p = (&u * &t)?;
                        Tensor::cat(&[&u, &p], 1)?
                    } else {
                        u
                    }
                }
                (
                    Agg::Attention { unit, .. },
                    AggLookup::Attention {
                        target_k,
                        target_v,
                        keys,
                        values,
                        mask,
                        k,
                    },
                ) => {
                    let mask = crate::aggregate::attention::Mask {
                        b,
                        k: *k,
                        data: mask.clone(),
                    };
                    let tk = gather(leaves, ix(*target_k))?;
                    let kk = gather(leaves, ix(*keys))?;
                    let (tv, vv) = if keys == values {
                        (tk.clone(), kk.clone())
                    } else {
                        (gather(leaves, ix(*target_v))?, gather(leaves, ix(*values))?)
                    };
                    unit.forward(&tk, &kk, &vv, &mask, &tv)?
                }
                (Agg::Sdim { unit, .. }, AggLookup::Sdim { values }) => {
                    let sigs = sigs
                        .as_ref()
                        .ok_or_else(|| Error::InvalidArgument("sdim without signatures".into()))?;
                    unit.forward(leaves, ix(*values), &Packed::new(w.offsets.clone())?, sigs)?
                }
                _ => {
                    return Err(Error::InvalidArgument(
                        "lookups do not match the model".into(),
                    ))
                }
            });
        }
        if let Some(u) = look.user {
            head_in.push(gather(leaves, ix(u))?);
        }
        let x = Tensor::cat(&head_in, 1)?;
        let logits = self.head.forward_t(&x, train)?.squeeze(1)?;
        let mut aux = Vec::new();
        if let (Some(h), Some((tk, keys, values)), SearchUnit::Attention { scorer, .. }) =
            (&self.aux, look.aux, &self.search)
        {
            let q = self.search_query(scorer, &gather(leaves, ix(tk))?)?;
            let pooled = score_pool(
                &q,
                leaves,
                ix(keys),
                ix(values),
                &Packed::new(batch.offsets.clone())?,
                h.softmax,
            )?;
            let mut parts = vec![t_rep.clone(), pooled.clone()];
            if h.product {
                parts.push((&t_rep * &pooled)?);
            }
            let a = h
                .head
                .forward_t(&Tensor::cat(&parts, 1)?, train)?
                .squeeze(1)?;
            aux.push((h.weight, a));
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
        let mut out = Vec::with_capacity(self.aggs.len());
        for ((a, l), w) in self.aggs.iter().zip(&look.aggs).zip(&plan.windows) {
            out.push(match (a, l) {
                (
                    Agg::Attention { unit, .. },
                    AggLookup::Attention {
                        target_k,
                        keys,
                        mask,
                        k,
                        ..
                    },
                ) => {
                    let mask = Tensor::from_slice(mask, (batch.size(), *k), &self.device)?;
                    let tk = gather(&leaves, &look.indices[*target_k])?;
                    let kk = gather(&leaves, &look.indices[*keys])?;
                    Some((w.clone(), unit.weights(&tk, &kk, &mask)?))
                }
                _ => None,
            });
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
