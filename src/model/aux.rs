//! The auxiliary head (DARE's, optional; training only): the search's scores pool the whole
//! history's representation tokens without top-k, `h = Σ_j w_j e^rep_j`, and an MLP on
//! `[t_rep, h (, t_rep ⊙ h)]` gives a second logit whose loss is added with its weight.

use super::part::{Aggregation, Ctx, PartLookup};
use super::search::Search;
use crate::aggregate::score_pool::{score_pool, score_pool_generic};
use crate::aggregate::Packed;
use crate::config::{AuxConfig, AuxPooling, DiceConfig, View};
use crate::data::Batch;
use crate::embedding::{gather, LeafBuilder, Leaves, TokenIndex, Tokens};
use crate::nn::{Mlp, MlpOptions, ParamStore};
use crate::Result;
use candle_core::Tensor;
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct AuxHead {
    head: Mlp,
    weight: f64,
    softmax: bool,
    product: bool,
    /// The search's view.
    view: View,
}

impl AuxHead {
    pub fn new(
        cfg: &AuxConfig,
        view: View,
        cx: &Ctx,
        ps: &mut ParamStore,
        dice: &DiceConfig,
    ) -> Result<Self> {
        let rep = cx.tables.view(View::Representation).width;
        let n_in = if cfg.product { 3 * rep } else { 2 * rep };
        Ok(Self {
            head: Mlp::new(
                ps,
                "aux",
                n_in,
                &cfg.hidden,
                Some(1),
                &MlpOptions {
                    batch_norm: cfg.batch_norm,
                    input_batch_norm: cfg.input_batch_norm,
                    dropout: cfg.dropout,
                    ..MlpOptions::new(cfg.activation, dice)
                },
            )?,
            weight: cfg.weight,
            softmax: cfg.pooling == AuxPooling::Softmax,
            product: cfg.product,
            view,
        })
    }

    /// The targets in the search's view, the whole history in it and in the representation view.
    pub fn request(&self, cx: &Ctx, lb: &mut LeafBuilder) -> PartLookup {
        let t = cx.tables;
        PartLookup {
            slots: vec![
                lb.request(t.view(self.view), Tokens::Targets),
                lb.request(t.view(self.view), Tokens::AllHistory),
                lb.request(t.view(View::Representation), Tokens::AllHistory),
            ],
            ..Default::default()
        }
    }

    /// `(weight, [B] logits)`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        search: &dyn Search,
        parts: &[Box<dyn Aggregation>],
        batch: &Batch,
        leaves: &Leaves,
        indices: &[Arc<TokenIndex>],
        look: &PartLookup,
        t_rep: &Tensor,
        train: bool,
    ) -> Result<(f64, Tensor)> {
        let ix = |i: usize| &indices[look.slots[i]];
        let target = gather(leaves, ix(0))?;
        let q = search.query(parts, &target).unwrap_or_else(|| {
            Err(crate::Error::Config(
                "an auxiliary head needs an attention search".into(),
            ))
        })?;
        let packed = Packed::new(batch.offsets.clone())?;
        let pooled = if leaves.generic() {
            let (keys, values) = (gather(leaves, ix(1))?, gather(leaves, ix(2))?);
            score_pool_generic(&q, &keys, &values, &packed, self.softmax)?
        } else {
            score_pool(&q, leaves, ix(1), ix(2), &packed, self.softmax)?
        };
        let mut x = vec![t_rep.clone(), pooled.clone()];
        if self.product {
            x.push((t_rep * &pooled)?);
        }
        let logit = self
            .head
            .forward_t(&Tensor::cat(&x, 1)?, train)?
            .squeeze(1)?;
        Ok((self.weight, logit.to_dtype(candle_core::DType::F32)?))
    }
}
