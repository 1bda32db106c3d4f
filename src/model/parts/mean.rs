//! Mean pooling: `u = (1/|W|) Σ_{j ∈ W} e_j` over the window, no target awareness (the
//! Embedding&MLP base model DIN's paper compares against). A shared window (the whole history or
//! its most recent n) is encoded for serving as its sum and count, so a request costs O(d);
//! the search's window is averaged per candidate from the ids.
//!
//! This file is the whole part: adding it took this file, the config's `MeanAggregate`, and
//! one arm in [`crate::model::part::build`].

use super::window_tokens;
use crate::aggregate::Packed;
use crate::config::{MeanAggregate, View, WindowConfig};
use crate::data::Batch;
use crate::embedding::{gather, LeafBuilder};
use crate::model::part::{Aggregation, Ctx, Extension, PartInput, PartLookup};
use crate::model::positional;
use crate::model::request::{Request, ServingWindow};
use crate::search::history_tokens;
use crate::window::Window;
use crate::Result;
use candle_core::Tensor;

#[derive(Debug)]
pub(crate) struct MeanPart {
    view: View,
    window: WindowConfig,
    width: usize,
}

impl MeanPart {
    pub fn new(cfg: &MeanAggregate, cx: &Ctx) -> Self {
        Self {
            view: cfg.view,
            window: cfg.window,
            width: cx.tables.view(cfg.view).width,
        }
    }

    /// Whether the encoding holds the window's sum (`[d]`) and count (`[1]`).
    fn encoded(&self) -> bool {
        self.window != WindowConfig::Retrieved
    }

    /// `[sum (d), count]` of a history's tokens.
    fn sum_of(&self, cx: &Ctx, history: &Batch) -> Result<Vec<f32>> {
        let d = self.width;
        let x = history_tokens(cx.tables, cx.tables.view(self.view), history)?;
        let mut out = vec![0f32; d + 1];
        for row in x.chunks_exact(d.max(1)) {
            out[..d].iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
        out[d] = history.n_packed() as f32;
        Ok(out)
    }

    fn mean(&self, sum: &[f32]) -> Vec<f32> {
        let n = sum[self.width].max(1.0);
        sum[..self.width].iter().map(|&s| s / n).collect()
    }
}

impl Aggregation for MeanPart {
    fn out_dim(&self) -> usize {
        self.width
    }
    fn window(&self) -> WindowConfig {
        self.window
    }

    fn request(&self, cx: &Ctx, lb: &mut LeafBuilder, window: &Window) -> PartLookup {
        PartLookup {
            slots: vec![lb.request(cx.tables.view(self.view), window_tokens(window))],
            ..Default::default()
        }
    }

    fn forward(&self, x: &PartInput, _train: bool) -> Result<Tensor> {
        let dev = x.leaves.tensor().device();
        let packed = Packed::new(x.window.offsets.clone())?;
        let b = packed.batch();
        let dt = x.leaves.compute_dtype();
        let sums = Tensor::zeros((b, self.width), dt, dev)?;
        if packed.is_empty() {
            return Ok(sums);
        }
        let tokens = gather(x.leaves, x.index(0))?;
        let sums = sums.index_add(&packed.seg(dev)?, &tokens, 0)?;
        let counts: Vec<f32> = x.window.lens().iter().map(|&n| n.max(1) as f32).collect();
        let counts = Tensor::from_vec(counts, (b, 1), dev)?.to_dtype(dt)?;
        Ok(sums.broadcast_div(&counts)?)
    }

    fn encoding_floats(&self, _cx: &Ctx) -> usize {
        if self.encoded() {
            self.width + 1
        } else {
            0
        }
    }
    fn reads_ids_when_scoring(&self) -> bool {
        !self.encoded()
    }

    fn encode(&self, cx: &Ctx, history: &Batch) -> Result<Vec<f32>> {
        self.sum_of(cx, history)
    }

    fn extend(&self, cx: &Ctx, old: &[f32], x: &Extension) -> Result<Vec<f32>> {
        if !self.encoded() {
            return Ok(Vec::new());
        }
        let w = x.window_change(cx.window_len(self.window));
        if positional(cx.tables, self.view) || !w.keeps_old {
            return self.sum_of(cx, &x.history(w.window)?);
        }
        let leave = self.sum_of(cx, &x.old_history(w.leaving))?;
        let enter = self.sum_of(cx, &x.history(w.entering)?)?;
        Ok(old
            .iter()
            .zip(leave.iter().zip(&enter))
            .map(|(&o, (&l, &e))| o - l + e)
            .collect())
    }

    fn score(&self, req: &Request, encoding: &[f32], window: ServingWindow) -> Result<Tensor> {
        let (c, d, dev) = (req.candidates(), self.width, req.cx.device);
        if self.encoded() {
            let u = Tensor::from_vec(self.mean(encoding), (1, d), dev)?;
            return Ok(u.broadcast_as((c, d))?.contiguous()?);
        }
        let tokens = req.window(self.view)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; c * d];
        for (b, o) in out.chunks_exact_mut(d.max(1)).enumerate() {
            let rows = window.rows_of(b);
            for &j in &rows {
                o.iter_mut()
                    .zip(&tokens[j * d..(j + 1) * d])
                    .for_each(|(a, &v)| *a += v);
            }
            let n = rows.len().max(1) as f32;
            o.iter_mut().for_each(|a| *a /= n);
        }
        Ok(Tensor::from_vec(out, (c, d), dev)?)
    }
}
