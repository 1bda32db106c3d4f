//! DIN (Zhou et al., KDD'18) as a CTR model: embeddings → activation unit over the history → MLP
//! head → logit.
//!
//! A token (target or behavior) is the concatenation of its item, category and (optional)
//! relative-position embeddings, width `d`. The head reads `[u, t, user]`: the interest vector,
//! the target, and the optional user-id embedding.
//!
//! | stage | shape |
//! |---|---|
//! | target tokens | `[B, d]` |
//! | history tokens (packed, real behaviors only) | `[n, d]` |
//! | interest `u` | `[B, d]` |
//! | head input | `[B, 2d + d_user]` |
//! | logits | `[B]` |
//!
//! Tables are host-resident [`EmbeddingTable`]s updated row-wise; dense parameters live in a
//! [`ParamStore`]. Tensors are named for checkpoints as `param/…`, `buffer/…` and `table/…`.

use crate::aggregate::{ActivationUnit, Packed};
use crate::config::DinConfig;
use crate::data::Batch;
use crate::embedding::{lookup_concat, EmbeddingTable};
use crate::nn::{Mlp, ParamStore};
use crate::optim::RowWise;
use crate::{Error, Result};
use candle_core::{backprop::GradStore, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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

/// The leaf variables of one step: the batch's unique rows of each table.
#[derive(Debug)]
pub struct StepLeaves {
    /// `[u_item, item_dim]`.
    pub item: Var,
    /// `[u_cate, cate_dim]`.
    pub cate: Var,
    /// `[u_user, user_dim]`.
    pub user: Option<Var>,
    /// The whole position table `[max_len + 1, pos_dim]`.
    pub pos: Option<Var>,
}

impl StepLeaves {
    /// All leaves.
    pub fn all(&self) -> Vec<&Var> {
        let mut v = vec![&self.item, &self.cate];
        v.extend(self.user.as_ref());
        v.extend(self.pos.as_ref());
        v
    }
}

/// The DIN model.
#[derive(Debug)]
pub struct Din {
    cfg: DinConfig,
    max_len: usize,
    vocab: VocabSizes,
    device: Device,
    params: ParamStore,
    /// Item table.
    pub item: EmbeddingTable,
    /// Category table.
    pub cate: EmbeddingTable,
    /// User table (when `user_dim > 0`).
    pub user: Option<EmbeddingTable>,
    /// Relative-position table (when `pos_dim > 0`); row 0 = the target's position.
    pub pos: Option<EmbeddingTable>,
    att: ActivationUnit,
    head: Mlp,
}

impl Din {
    /// Builds the model with tables for `vocab`, initialised from `seed`.
    pub fn new(
        cfg: &DinConfig,
        max_len: usize,
        vocab: VocabSizes,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let item = EmbeddingTable::new("item", vocab.items, cfg.item_dim, cfg.init, &mut rng)?;
        let cate = EmbeddingTable::new("cate", vocab.cates, cfg.cate_dim, cfg.init, &mut rng)?;
        let user = (cfg.user_dim > 0)
            .then(|| EmbeddingTable::new("user", vocab.users, cfg.user_dim, cfg.init, &mut rng))
            .transpose()?;
        let pos = (cfg.pos_dim > 0)
            .then(|| EmbeddingTable::new("pos", max_len + 1, cfg.pos_dim, cfg.init, &mut rng))
            .transpose()?;
        let mut ps = ParamStore::new(
            device.clone(),
            ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)),
        );
        let d = cfg.item_dim + cfg.cate_dim + cfg.pos_dim;
        let (eps, mom) = (cfg.dice_eps, cfg.dice_momentum);
        let att = ActivationUnit::new(
            &mut ps,
            "att",
            d,
            &cfg.attention_hidden,
            cfg.attention_activation,
            cfg.softmax,
            eps,
            mom,
        )?;
        let head_in = 2 * d + cfg.user_dim;
        let head = Mlp::new(
            &mut ps,
            "head",
            head_in,
            &cfg.head_hidden,
            Some(1),
            cfg.head_activation,
            eps,
            mom,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            max_len,
            vocab,
            device: device.clone(),
            params: ps,
            item,
            cate,
            user,
            pos,
            att,
            head,
        })
    }

    /// The config.
    pub fn config(&self) -> &DinConfig {
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
    /// Token width d.
    pub fn token_dim(&self) -> usize {
        self.cfg.item_dim + self.cfg.cate_dim + self.cfg.pos_dim
    }
    /// Dense parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The tables.
    pub fn tables(&self) -> Vec<&EmbeddingTable> {
        let mut v = vec![&self.item, &self.cate];
        v.extend(self.user.as_ref());
        v.extend(self.pos.as_ref());
        v
    }

    /// Gathers the batch's unique rows of every table into leaf variables.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the table when an index is outside it (a dataset that
    /// does not match the model).
    pub fn leaves(&self, batch: &Batch) -> Result<StepLeaves> {
        let dev = &self.device;
        let user = match &self.user {
            Some(t) => Some(t.leaf(&batch.users.unique, dev)?),
            None => None,
        };
        let pos = match &self.pos {
            Some(t) => {
                let all: Vec<u32> = (0..t.rows() as u32).collect();
                Some(t.leaf(&all, dev)?)
            }
            None => None,
        };
        Ok(StepLeaves {
            item: self.item.leaf(&batch.items.unique, dev)?,
            cate: self.cate.leaf(&batch.cates.unique, dev)?,
            user,
            pos,
        })
    }

    /// Logits of the batch.
    ///
    /// # Shapes
    /// → `[B]`
    pub fn forward_t(&self, batch: &Batch, leaves: &StepLeaves, train: bool) -> Result<Tensor> {
        let dev = &self.device;
        let (b, n) = (batch.size(), batch.n_packed());
        if batch.len > self.max_len {
            return Err(Error::InvalidArgument(format!(
                "batch history length {} exceeds the model's max_len {}",
                batch.len, self.max_len
            )));
        }
        // Lookups are [targets (B), packed history (n)] in every id list.
        let mut ids = vec![batch.items.local.clone(), batch.cates.local.clone()];
        let mut tabs = vec![leaves.item.as_tensor(), leaves.cate.as_tensor()];
        if let Some(p) = &leaves.pos {
            let mut pos_ids = vec![0u32; b];
            pos_ids.extend_from_slice(&batch.rel_pos);
            ids.push(Arc::new(pos_ids));
            tabs.push(p.as_tensor());
        }
        let (target, seq) = if dev.is_cpu() {
            (
                lookup_concat(&tabs, &ids, (0, b))?,
                lookup_concat(&tabs, &ids, (b, b + n))?,
            )
        } else {
            let mut parts = Vec::new();
            for (t, i) in tabs.iter().zip(&ids) {
                parts.push(t.index_select(&Tensor::from_slice(i, b + n, dev)?, 0)?);
            }
            let tokens = Tensor::cat(&parts, 1)?; // [B + n, d]
            (tokens.narrow(0, 0, b)?, tokens.narrow(0, b, n)?)
        };
        let packed = Packed {
            seg: Tensor::from_slice(&batch.seg, n, dev)?,
            pos: Tensor::from_slice(&batch.pos, n, dev)?,
            mask: Tensor::from_slice(&batch.mask, (b, batch.len), dev)?,
            batch: b,
            len: batch.len,
            offsets: Packed::offsets_from_lens(&batch.seq_lens),
        };
        let u = self.att.forward_t(&target, &seq, &packed, train)?;
        let mut head_in = vec![u, target];
        if let Some(leaf) = &leaves.user {
            let local = Tensor::from_slice(&batch.users.local, b, dev)?;
            head_in.push(leaf.as_tensor().index_select(&local, 0)?);
        }
        let x = Tensor::cat(&head_in, 1)?;
        Ok(self.head.forward_t(&x, train)?.squeeze(1)?)
    }

    /// Applies the row-wise optimiser to the rows the batch touched, from the leaves' gradients.
    pub fn apply_sparse(
        &mut self,
        batch: &Batch,
        leaves: &StepLeaves,
        grads: &GradStore,
        opt: &mut RowWise,
        scale: f32,
    ) -> Result<()> {
        let grad_of = |v: &Var| -> Result<Option<Vec<f32>>> {
            match grads.get(v.as_tensor()) {
                Some(g) => Ok(Some(g.flatten_all()?.to_vec1::<f32>()?)),
                None => Ok(None),
            }
        };
        if let Some(g) = grad_of(&leaves.item)? {
            opt.update(&mut self.item, &batch.items.unique, &g, scale)?;
        }
        if let Some(g) = grad_of(&leaves.cate)? {
            opt.update(&mut self.cate, &batch.cates.unique, &g, scale)?;
        }
        if let (Some(t), Some(v)) = (self.user.as_mut(), leaves.user.as_ref()) {
            if let Some(g) = grad_of(v)? {
                opt.update(t, &batch.users.unique, &g, scale)?;
            }
        }
        if let (Some(t), Some(v)) = (self.pos.as_mut(), leaves.pos.as_ref()) {
            if let Some(g) = grad_of(v)? {
                let all: Vec<u32> = (0..t.rows() as u32).collect();
                opt.update(t, &all, &g, scale)?;
            }
        }
        Ok(())
    }

    /// Every weight: `param/…`, `buffer/…`, `table/<name>`.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.params.named_tensors();
        for t in self.tables() {
            out.push((format!("table/{}", t.name()), t.to_tensor()?));
        }
        Ok(out)
    }

    /// Loads every weight saved by [`Din::named_tensors`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing tensor or a shape mismatch.
    pub fn load_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.params.load(tensors)?;
        let load = |t: &mut EmbeddingTable| -> Result<()> {
            let key = format!("table/{}", t.name());
            let src = tensors
                .get(&key)
                .ok_or_else(|| Error::InvalidArgument(format!("tensor `{key}` is missing")))?;
            if src.dims() != [t.rows(), t.dim()] {
                return Err(Error::InvalidArgument(format!(
                    "tensor `{key}` has shape {:?}, expected [{}, {}]",
                    src.dims(),
                    t.rows(),
                    t.dim()
                )));
            }
            *t = EmbeddingTable::from_tensor(t.name(), src)?;
            Ok(())
        };
        load(&mut self.item)?;
        load(&mut self.cate)?;
        if let Some(t) = self.user.as_mut() {
            load(t)?;
        }
        if let Some(t) = self.pos.as_mut() {
            load(t)?;
        }
        Ok(())
    }
}
