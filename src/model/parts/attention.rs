//! Target attention's part: multi-head attention of the target over a padded window (the recent
//! behaviors, or the search's top-k), keys and values from their own views (DARE: attention
//! and representation tables), optionally with `t ⊙ out`.

use super::padded_with_mask;
use crate::aggregate::attention::Mask;
use crate::aggregate::TargetAttention;
use crate::config::{AttentionAggregate, View, WindowConfig};
use crate::embedding::{gather, LeafBuilder, Tokens};
use crate::model::part::{Aggregation, Ctx, PartInput, PartLookup};
use crate::model::request::{Request, ServingWindow};
use crate::nn::ParamStore;
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct AttentionPart {
    unit: TargetAttention,
    keys: View,
    values: View,
    window: WindowConfig,
}

// Leaf requests, in order (the value requests repeat the key ones when both are one view).
const TARGET_K: usize = 0;
const KEYS: usize = 1;
const TARGET_V: usize = 2;
const VALUES: usize = 3;

impl AttentionPart {
    pub fn new(
        cfg: &AttentionAggregate,
        cx: &Ctx,
        ps: &mut ParamStore,
        name: &str,
    ) -> Result<Self> {
        let t = cx.tables;
        Ok(Self {
            unit: TargetAttention::new(
                ps,
                &format!("{name}.attention"),
                t.view(cfg.keys).width,
                t.view(cfg.values).width,
                cfg.projection,
                cfg.heads,
                cfg.dim,
                t.view(cfg.keys).dot_scale(),
                cfg.product,
            )?,
            keys: cfg.keys,
            values: cfg.values,
            window: cfg.window,
        })
    }

    fn mask(x: &PartInput) -> Mask {
        Mask {
            b: x.batch.size(),
            k: x.look.k,
            data: x.look.mask.clone().unwrap_or_default(),
        }
    }
}

impl Aggregation for AttentionPart {
    fn out_dim(&self) -> usize {
        self.unit.out_dim()
    }
    fn window(&self) -> WindowConfig {
        self.window
    }
    fn query(&self, target: &Tensor) -> Option<Result<Tensor>> {
        Some(self.unit.query(target))
    }

    fn request(&self, cx: &Ctx, lb: &mut LeafBuilder, window: &Window) -> PartLookup {
        let t = cx.tables;
        let (padded, mask, k) = padded_with_mask(window);
        let padded = Arc::new(padded);
        // Keys and values of one view are the same tokens: gather them once.
        let target_k = lb.request(t.view(self.keys), Tokens::Targets);
        let keys = lb.request(t.view(self.keys), Tokens::History(padded.clone()));
        let (target_v, values) = if self.keys == self.values {
            (target_k, keys)
        } else {
            (
                lb.request(t.view(self.values), Tokens::Targets),
                lb.request(t.view(self.values), Tokens::History(padded)),
            )
        };
        PartLookup {
            slots: vec![target_k, keys, target_v, values],
            mask: Some(Arc::new(mask)),
            k,
        }
    }

    fn forward(&self, x: &PartInput, _train: bool) -> Result<Tensor> {
        let tk = gather(x.leaves, x.index(TARGET_K))?;
        let kk = gather(x.leaves, x.index(KEYS))?;
        let (tv, vv) = if self.keys == self.values {
            (tk.clone(), kk.clone())
        } else {
            (
                gather(x.leaves, x.index(TARGET_V))?,
                gather(x.leaves, x.index(VALUES))?,
            )
        };
        self.unit.forward(&tk, &kk, &vv, &Self::mask(x), &tv)
    }

    fn attention_weights(&self, x: &PartInput) -> Result<Option<Tensor>> {
        let mask = Self::mask(x);
        let mask = Tensor::from_slice(&mask.data, (mask.b, mask.k), x.leaves.tensor().device())?;
        let tk = gather(x.leaves, x.index(TARGET_K))?;
        let kk = gather(x.leaves, x.index(KEYS))?;
        Ok(Some(self.unit.weights(&tk, &kk, &mask)?))
    }

    fn score(&self, req: &Request, _encoding: &[f32], window: ServingWindow) -> Result<Tensor> {
        let t = req.cx.tables;
        let tk = req.targets(self.keys)?;
        let tv = if self.keys == self.values {
            tk.clone()
        } else {
            req.targets(self.values)?
        };
        match window {
            ServingWindow::Shared(r) => {
                let m = r.len();
                let kk = req.window(self.keys)?.narrow(0, r.start, m)?;
                let vals = req.window(self.values)?.narrow(0, r.start, m)?;
                self.unit.forward_shared(&tk, &kk, &vals, &tv)
            }
            ServingWindow::PerCandidate(w) if w.is_empty() => {
                // No candidate retrieved anything (an empty history): zeros.
                let dev = req.cx.device;
                let none = Tensor::zeros((0, t.view(self.keys).width), DType::F32, dev)?;
                let nonev = Tensor::zeros((0, t.view(self.values).width), DType::F32, dev)?;
                self.unit.forward_shared(&tk, &none, &nonev, &tv)
            }
            ServingWindow::PerCandidate(w) => {
                // Project the user's window once; each candidate reads its rows.
                let (kk, vals) = (req.window(self.keys)?, req.window(self.values)?);
                let (kp, vp) = self.unit.project(&kk, &vals)?;
                let rows: Vec<Vec<u32>> = (0..req.candidates())
                    .map(|c| w.rows[w.offsets[c]..w.offsets[c + 1]].to_vec())
                    .collect();
                if rows.len() != tk.dim(0)? {
                    return Err(Error::InvalidArgument(
                        "a retrieved window of another request".into(),
                    ));
                }
                self.unit.forward_indexed(&tk, &kp, &vp, &rows, &tv)
            }
        }
    }
}
