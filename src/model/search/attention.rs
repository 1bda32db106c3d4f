//! The attention search (SIM soft, TWIN, DARE): every behavior scored by `⟨q'_b, e_j⟩` for one
//! query vector per target, `q'` from the search's own projections (SIM), the exact unit's
//! (TWIN) or a scaled dot product on the attention tables (DARE); the top-k by score.

use super::{Search, Searched};
use crate::aggregate::Packed;
use crate::config::{AttentionSearch as AttentionConfig, DiceConfig, SearchScorer, View};
use crate::kernels;
use crate::model::aux::AuxHead;
use crate::model::part::{Aggregation, Ctx};
use crate::nn::{like, ParamStore};
use crate::search::tokens::{view_tokens, window_of_topk};
use crate::search::{query_scores, target_tokens, topk_row};
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use rayon::prelude::*;

/// Queries scored against one history's tokens at a time.
const QUERY_BLOCK: usize = 64;

#[derive(Debug)]
enum Query {
    /// `t ⊙ scale`.
    Dot(Vec<f32>),
    /// `W_kᵀ W_q t / √dim`.
    Own { wq: Var, wk: Var, dim: usize },
    /// The exact unit's own query (the part of this number).
    Exact(usize),
}

#[derive(Debug)]
pub(crate) struct AttentionSearch {
    k: usize,
    query: Query,
    view: View,
    aux: Option<AuxHead>,
}

impl AttentionSearch {
    pub fn new(
        cfg: &AttentionConfig,
        cx: &Ctx,
        ps: &mut ParamStore,
        dice: &DiceConfig,
        exact_part: impl FnOnce() -> Result<usize>,
    ) -> Result<Self> {
        let dk = cx.tables.view(cfg.view).width;
        let query = match cfg.scorer {
            SearchScorer::Dot => Query::Dot(cx.tables.view(cfg.view).dot_scale()),
            SearchScorer::Own => {
                let bound = 1.0 / (dk as f32).sqrt();
                Query::Own {
                    wq: ps.uniform("search.wq", &[cfg.dim, dk], bound)?,
                    wk: ps.uniform("search.wk", &[cfg.dim, dk], bound)?,
                    dim: cfg.dim,
                }
            }
            SearchScorer::Exact => Query::Exact(exact_part()?),
        };
        let aux = match cfg.aux.as_ref().filter(|x| x.weight > 0.0) {
            Some(x) => Some(AuxHead::new(x, cfg.view, cx, ps, dice)?),
            None => None,
        };
        Ok(Self {
            k: cfg.k,
            query,
            view: cfg.view,
            aux,
        })
    }

    fn query_of(&self, parts: &[Box<dyn Aggregation>], target: &Tensor) -> Result<Tensor> {
        match &self.query {
            Query::Dot(scale) => {
                let s = Tensor::from_slice(scale, scale.len(), target.device())?
                    .to_dtype(target.dtype())?;
                Ok(target.broadcast_mul(&s)?)
            }
            Query::Own { wq, wk, dim } => {
                let q = target.matmul(&like(wq, target)?.t()?)?;
                Ok((q.matmul(&like(wk, target)?)? / (*dim as f64).sqrt())?)
            }
            Query::Exact(i) => parts[*i].query(target).unwrap_or_else(|| {
                Err(Error::Config(
                    "scorer = \"exact\" needs an attention aggregation".into(),
                ))
            }),
        }
    }
}

impl AttentionSearch {
    /// Training's search through the kernel ops on the model's device: the scores
    /// `⟨q'_b, e_j⟩` of every behavior as tensor ops, each sample's top-k by `topk_scores`
    /// over the padded `[B, L]` scores; only the `[B, k]` positions come back to the host.
    fn retrieve_kernels(
        &self,
        cx: &Ctx,
        parts: &[Box<dyn Aggregation>],
        batch: &crate::data::Batch,
    ) -> Result<Window> {
        let (b, dev) = (batch.size(), cx.device);
        let vt = view_tokens(cx.tables, cx.tables.view(self.view), batch, dev)?;
        let q = self.query_of(parts, &vt.targets)?;
        let packed = Packed::new(batch.offsets.clone())?;
        let l = packed.len();
        if l == 0 {
            return Ok(Window::from_rows(vec![Vec::new(); b]));
        }
        let seg = packed.seg(dev)?;
        let scores = vt
            .history
            .mul(&q.index_select(&seg, 0)?)?
            .sum(candle_core::D::Minus1)?; // [n]
        let pos = packed.pos(dev)?;
        let padded = Tensor::zeros(b * l, scores.dtype(), dev)?
            .index_add(&pos, &scores, 0)?
            .reshape((b, l))?;
        let mask = packed.mask(dev)?.to_dtype(candle_core::DType::U8)?;
        let top = kernels::topk_scores(&padded, Some(&mask), self.k)?;
        window_of_topk(&top, &batch.offsets)
    }
}

impl Search for AttentionSearch {
    fn retrieve(&self, cx: &Ctx, parts: &[Box<dyn Aggregation>], s: &Searched) -> Result<Window> {
        if cx.generic && std::ptr::eq(s.targets, s.hist) {
            return self.retrieve_kernels(cx, parts, s.hist);
        }
        let (tables, v) = (cx.tables, cx.tables.view(self.view));
        let w = v.width;
        let t = target_tokens(tables, v, s.targets)?;
        let t = Tensor::from_vec(t, (s.targets.size(), w), cx.device)?;
        let q = self.query_of(parts, &t)?.flatten_all()?.to_vec1::<f32>()?;
        let hist: Vec<&[u32]> = v
            .fields
            .iter()
            .map(|f| s.hist.hist_ids(f.field))
            .collect::<Result<_>>()?;
        for (f, ids) in v.fields.iter().zip(&hist) {
            let t = tables.table(f.table);
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= t.rows()) {
                t.check_ids(&[bad])?;
            }
        }
        let k = self.k;
        let per: Vec<Vec<Vec<u32>>> = s
            .groups()
            .into_par_iter()
            .map(|(h, targets)| {
                let r = s.range(h);
                let l = r.len();
                // The history's tokens, transposed: et[c][j].
                let mut et = vec![0f32; w * l];
                for (f, ids) in v.fields.iter().zip(&hist) {
                    let t = tables.table(f.table);
                    for (j, &id) in ids[r.clone()].iter().enumerate() {
                        for (c, &x) in t.row(id).iter().enumerate() {
                            et[(f.col + c) * l + j] = x;
                        }
                    }
                }
                let per_block: Vec<Vec<Vec<u32>>> = q[targets.start * w..targets.end * w]
                    .par_chunks(w * QUERY_BLOCK)
                    .map(|qs| {
                        let nq = qs.len() / w;
                        // Every score is written before it is read: a pooled buffer, not zeroed.
                        let mut scores = crate::cpu::scratch(nq * l);
                        query_scores(qs, &et, l, &mut scores);
                        let top = (0..nq)
                            .map(|i| {
                                let mut out = Vec::with_capacity(k.min(l));
                                topk_row(&scores[i * l..(i + 1) * l], None, k, &mut out);
                                out.iter_mut().for_each(|p| *p += r.start as u32);
                                out
                            })
                            .collect();
                        crate::cpu::recycle(scores);
                        top
                    })
                    .collect();
                per_block.into_iter().flatten().collect()
            })
            .collect();
        Ok(Window::from_rows(per.into_iter().flatten().collect()))
    }

    fn query(&self, parts: &[Box<dyn Aggregation>], target: &Tensor) -> Option<Result<Tensor>> {
        Some(self.query_of(parts, target))
    }

    fn aux(&self) -> Option<&AuxHead> {
        self.aux.as_ref()
    }
}
