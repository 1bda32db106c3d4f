//! SDIM's part: SimHash signatures of the target and of each behavior of the window; the
//! interest is the mean over groups of the (normalised) sum of the behaviors that share the
//! target's signature. At serving time the user's bucket sums (BSE) replace the behaviors.

use super::window_tokens;
use crate::aggregate::sdim::{add_to_buckets, DeviceSignatures, Signatures};
use crate::aggregate::{Packed, Sdim};
use crate::config::{SdimAggregate, View, WindowConfig};
use crate::data::Batch;
use crate::embedding::LeafBuilder;
use crate::kernels;
use crate::model::part::{Aggregation, Ctx, Extension, PartInput, PartLookup, PartPlan};
use crate::model::request::{Request, ServingWindow};
use crate::model::{positional, simhash_of};
use crate::nn::ParamStore;
use crate::search::tokens::view_tokens;
use crate::search::{history_tokens, signature, token_codes, SimHash};
use crate::window::Window;
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct SdimPart {
    unit: Sdim,
    proj: Var,
    keys: View,
    values: View,
    window: WindowConfig,
    out_width: usize,
}

/// The `G` signatures of τ bits of each code (`words` u64 per code), in parallel: of every code,
/// or of the codes `pick` names.
pub(crate) fn signatures(
    codes: &[u64],
    words: usize,
    pick: Option<&[u32]>,
    groups: usize,
    tau: usize,
) -> Vec<u16> {
    let n = pick.map_or(codes.len() / words.max(1), <[u32]>::len);
    let mut out = vec![0u16; n * groups];
    out.par_chunks_mut(groups * 1024)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_exact_mut(groups).enumerate() {
                let j = c * 1024 + i;
                let j = pick.map_or(j, |p| p[j] as usize);
                let code = &codes[j * words..(j + 1) * words];
                for (q, s) in o.iter_mut().enumerate() {
                    *s = signature(code, q, tau) as u16;
                }
            }
        });
    out
}

impl SdimPart {
    pub fn new(cfg: &SdimAggregate, cx: &Ctx, ps: &mut ParamStore, name: &str) -> Result<Self> {
        let (dk, bits) = (cx.tables.view(cfg.keys).width, cfg.groups * cfg.tau);
        let name = format!("{name}.sdim.proj");
        let hash = SimHash::new(dk, bits, ps.seed_of(&format!("buffer/{name}")));
        let t = Tensor::from_slice(hash.projections(), (dk, bits), cx.device)?;
        Ok(Self {
            unit: Sdim {
                groups: cfg.groups,
                tau: cfg.tau,
                normalize: cfg.normalize,
            },
            proj: ps.buffer_from(&name, t)?,
            keys: cfg.keys,
            values: cfg.values,
            window: cfg.window,
            out_width: cx.tables.view(cfg.values).width,
        })
    }

    /// Adds (`sign = 1`) or takes out (`-1`) a history's behaviors in a bucket table.
    fn fold(&self, cx: &Ctx, table: &mut [f32], h: &Batch, sign: f32) -> Result<()> {
        if h.n_packed() == 0 {
            return Ok(());
        }
        let hash = simhash_of(&self.proj)?;
        let codes = token_codes(cx.tables, cx.tables.view(self.keys), &hash, h)?.1;
        let (g, tau) = (self.unit.groups, self.unit.tau);
        let sigs = signatures(&codes, hash.words(), None, g, tau);
        let v = cx.tables.view(self.values);
        let vals = history_tokens(cx.tables, v, h)?;
        add_to_buckets(table, &vals, v.width, &sigs, g, tau, sign);
        Ok(())
    }

    fn table_of(&self, cx: &Ctx, h: &Batch) -> Result<Vec<f32>> {
        let mut table = vec![0f32; self.encoding_floats(cx)];
        self.fold(cx, &mut table, h, 1.0)?;
        Ok(table)
    }
}

impl SdimPart {
    /// The signatures through the kernel ops on the model's device (`simhash_codes`, then
    /// `sdim_signatures`); the window's `[m, G]` and the targets' `[B, G]` come to the host.
    fn plan_kernels(&self, cx: &Ctx, batch: &Batch, window: &Window) -> Result<PartPlan> {
        let vt = view_tokens(cx.tables, cx.tables.view(self.keys), batch, cx.device)?;
        let (g, tau, proj) = (self.unit.groups, self.unit.tau, self.proj.as_tensor());
        let sigs = |x: &Tensor| -> Result<Tensor> {
            kernels::sdim_signatures(&kernels::simhash_codes(x, proj)?, g, tau)
        };
        let target = sigs(&vt.targets)?;
        let rows = if window.all {
            vt.history
        } else {
            let n = window.rows.len();
            let pick = Tensor::from_slice(&window.rows, n, cx.device)?;
            vt.history.index_select(&pick, 0)?
        };
        Ok(PartPlan {
            device_sigs: Some(DeviceSignatures {
                target,
                rows: sigs(&rows)?,
            }),
            ..Default::default()
        })
    }
}

impl Aggregation for SdimPart {
    fn out_dim(&self) -> usize {
        self.out_width
    }
    fn window(&self) -> WindowConfig {
        self.window
    }
    fn reads_all(&self) -> bool {
        true
    }

    fn plan(&self, cx: &Ctx, batch: &Batch, window: &Window) -> Result<PartPlan> {
        if cx.generic {
            return self.plan_kernels(cx, batch, window);
        }
        let hash = simhash_of(&self.proj)?;
        let (tc, hc) = token_codes(cx.tables, cx.tables.view(self.keys), &hash, batch)?;
        let (words, g, tau) = (hash.words(), self.unit.groups, self.unit.tau);
        Ok(PartPlan {
            sigs: Some(Signatures {
                target: Arc::new(signatures(&tc, words, None, g, tau)),
                rows: Arc::new(signatures(&hc, words, Some(&window.rows), g, tau)),
            }),
            ..Default::default()
        })
    }

    fn request(&self, cx: &Ctx, lb: &mut LeafBuilder, window: &Window) -> PartLookup {
        PartLookup {
            slots: vec![lb.request(cx.tables.view(self.values), window_tokens(window))],
            ..Default::default()
        }
    }

    fn forward(&self, x: &PartInput, _train: bool) -> Result<Tensor> {
        let missing = || Error::InvalidArgument("sdim without signatures".into());
        let packed = Packed::new(x.window.offsets.clone())?;
        if x.leaves.generic() {
            let values = crate::embedding::gather(x.leaves, x.index(0))?;
            let sigs = x.plan.device_sigs.as_ref().ok_or_else(missing)?;
            return self.unit.forward_generic(&values, &packed, sigs);
        }
        let sigs = x.plan.sigs.as_ref().ok_or_else(missing)?;
        self.unit.forward(x.leaves, x.index(0), &packed, sigs)
    }

    fn encoding_floats(&self, cx: &Ctx) -> usize {
        self.unit.groups * (1 << self.unit.tau) * cx.tables.view(self.values).width
    }
    fn reads_ids_when_scoring(&self) -> bool {
        false
    }

    fn encode(&self, cx: &Ctx, history: &Batch) -> Result<Vec<f32>> {
        self.table_of(cx, history)
    }

    fn extend(&self, cx: &Ctx, old_table: &[f32], x: &Extension) -> Result<Vec<f32>> {
        let w = x.window_change(cx.window_len(self.window));
        let shifts = positional(cx.tables, self.keys) || positional(cx.tables, self.values);
        if shifts || !w.keeps_old {
            // Positions and time gaps move with every behavior (or nothing of the old window
            // stays): recompute.
            return self.table_of(cx, &x.history(w.window)?);
        }
        let mut table = old_table.to_vec();
        self.fold(cx, &mut table, &x.old_history(w.leaving), -1.0)?;
        self.fold(cx, &mut table, &x.history(w.entering)?, 1.0)?;
        Ok(table)
    }

    fn score(&self, req: &Request, table: &[f32], _window: ServingWindow) -> Result<Tensor> {
        let (t, c) = (req.cx.tables, req.candidates());
        let hash = simhash_of(&self.proj)?;
        let (tc, _) = token_codes(t, t.view(self.keys), &hash, &req.cand)?;
        let (g, nb, d) = (
            self.unit.groups,
            1usize << self.unit.tau,
            t.view(self.values).width,
        );
        let sigs = signatures(&tc, hash.words(), None, g, self.unit.tau);
        let mut sums = vec![0f32; c * g * d];
        for (sig, s) in sigs.chunks_exact(g).zip(sums.chunks_exact_mut(g * d)) {
            for (q, &b) in sig.iter().enumerate() {
                let at = (q * nb + b as usize) * d;
                s[q * d..(q + 1) * d].copy_from_slice(&table[at..at + d]);
            }
        }
        Ok(Tensor::from_vec(
            self.unit.from_sums(&sums, d),
            (c, d),
            req.cx.device,
        )?)
    }
}
