//! ETA's search: SimHash codes of the target and of every behavior; the top-k are the
//! behaviors nearest in Hamming distance (XOR + popcount), ties to the more recent.

use super::{Search, Searched};
use crate::config::{HammingSearch as HammingConfig, View};
use crate::data::Batch;
use crate::kernels;
use crate::model::part::{Aggregation, Ctx};
use crate::model::{positional, simhash_of};
use crate::nn::ParamStore;
use crate::search::tokens::{view_tokens, window_of_topk};
use crate::search::{token_codes, topk_hamming_codes, SimHash};
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use std::borrow::Cow;

#[derive(Debug)]
pub(crate) struct HammingSearch {
    proj: Var,
    k: usize,
    view: View,
}

impl HammingSearch {
    pub fn new(cfg: &HammingConfig, cx: &Ctx, ps: &mut ParamStore) -> Result<Self> {
        let dk = cx.tables.view(cfg.view).width;
        let name = "search.proj";
        let hash = SimHash::new(dk, cfg.bits, ps.seed_of(&format!("buffer/{name}")));
        let t = Tensor::from_slice(hash.projections(), (dk, cfg.bits), cx.device)?;
        Ok(Self {
            proj: ps.buffer_from(name, t)?,
            k: cfg.k,
            view: cfg.view,
        })
    }
}

impl HammingSearch {
    /// Training's search through the kernel ops on the model's device: the codes of every
    /// token (`simhash_codes`), each sample's top-k by Hamming distance (`topk_hamming`); only
    /// the `[B, k]` positions come back to the host.
    fn retrieve_kernels(&self, cx: &Ctx, batch: &Batch) -> Result<Window> {
        let view = cx.tables.view(self.view);
        let vt = view_tokens(cx.tables, view, batch, cx.device)?;
        let proj = self.proj.as_tensor();
        let tc = kernels::simhash_codes(&vt.targets, proj)?;
        let hc = kernels::simhash_codes(&vt.history, proj)?;
        let offsets: Vec<u32> = batch.offsets.iter().map(|&o| o as u32).collect();
        let top = kernels::topk_hamming(&tc, &hc, &offsets, self.k)?;
        window_of_topk(&top, &batch.offsets)
    }
}

impl Search for HammingSearch {
    fn reads_all(&self) -> bool {
        true
    }

    fn retrieve(&self, cx: &Ctx, _parts: &[Box<dyn Aggregation>], s: &Searched) -> Result<Window> {
        if cx.generic && std::ptr::eq(s.targets, s.hist) {
            return self.retrieve_kernels(cx, s.hist);
        }
        let hash = simhash_of(&self.proj)?;
        let (tables, view, words) = (cx.tables, cx.tables.view(self.view), hash.words());
        let (tc, hc): (Vec<u64>, Cow<[u64]>) = if std::ptr::eq(s.targets, s.hist) {
            let (t, h) = token_codes(tables, view, &hash, s.hist)?;
            (t, Cow::Owned(h))
        } else {
            let tc = token_codes(tables, view, &hash, s.targets)?.0;
            match s.codes {
                Some(c) => {
                    let l = s.hist.n_packed();
                    if c.len() != l * words {
                        return Err(Error::InvalidArgument(format!(
                            "encoding: {} code words for {l} behaviors ({words} each)",
                            c.len()
                        )));
                    }
                    (tc, Cow::Borrowed(c))
                }
                None => (tc, Cow::Owned(token_codes(tables, view, &hash, s.hist)?.1)),
            }
        };
        let bits = hash.bits() as u32;
        let per: Vec<Vec<u32>> = (0..s.targets.size())
            .into_par_iter()
            .map_init(Vec::new, |scratch, b| {
                let r = s.range(s.history_of(b));
                let mut out = Vec::with_capacity(self.k.min(r.len()));
                topk_hamming_codes(
                    &tc[b * words..(b + 1) * words],
                    &hc[r.start * words..r.end * words],
                    bits,
                    self.k,
                    &mut out,
                    scratch,
                );
                out.iter_mut().for_each(|p| *p += r.start as u32);
                out
            })
            .collect();
        Ok(Window::from_rows(per))
    }

    fn code_words(&self) -> usize {
        self.proj.as_tensor().dim(1).unwrap_or(0).div_ceil(64)
    }

    fn encode(&self, cx: &Ctx, history: &Batch) -> Result<Vec<u64>> {
        let hash = simhash_of(&self.proj)?;
        Ok(token_codes(cx.tables, cx.tables.view(self.view), &hash, history)?.1)
    }

    fn codes_shift(&self, cx: &Ctx) -> bool {
        positional(cx.tables, self.view)
    }
}
