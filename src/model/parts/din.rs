//! DIN's part: the local activation unit over a window, `u = Σ_j a(t, e_j) e_j`, optionally
//! followed by `t ⊙ u` (DIN with the target-aware product).

use super::window_tokens;
use crate::aggregate::{ActivationUnit, Packed};
use crate::config::{DiceConfig, DinAggregate, View, WindowConfig};
use crate::embedding::{gather, LeafBuilder, Tokens};
use crate::model::part::{Aggregation, Ctx, PartInput, PartLookup};
use crate::model::request::{Request, ServingWindow};
use crate::nn::{MlpOptions, ParamStore};
use crate::window::Window;
use crate::Result;
use candle_core::{DType, Tensor};

/// Candidates scored per forward at most when every candidate reads a long window (DIN over the
/// whole history), so that `candidates × window` rows stay bounded.
const MAX_REPLICATED_ROWS: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct DinPart {
    unit: ActivationUnit,
    view: View,
    product: bool,
    window: WindowConfig,
    width: usize,
}

// Leaf requests, in order.
const TARGET: usize = 0;
const WINDOW: usize = 1;

impl DinPart {
    pub fn new(
        cfg: &DinAggregate,
        cx: &Ctx,
        ps: &mut ParamStore,
        name: &str,
        dice: &DiceConfig,
    ) -> Result<Self> {
        let width = cx.tables.view(cfg.view).width;
        Ok(Self {
            unit: ActivationUnit::with_options(
                ps,
                &format!("{name}.din"),
                width,
                &cfg.hidden,
                cfg.softmax,
                &MlpOptions {
                    batch_norm: cfg.batch_norm,
                    dropout: cfg.dropout,
                    ..MlpOptions::new(cfg.activation, dice)
                },
            )?,
            view: cfg.view,
            product: cfg.product,
            window: cfg.window,
            width,
        })
    }

    fn with_product(&self, u: Tensor, t: &Tensor) -> Result<Tensor> {
        Ok(if self.product {
            let p = (&u * t)?;
            Tensor::cat(&[&u, &p], 1)?
        } else {
            u
        })
    }
}

impl Aggregation for DinPart {
    fn out_dim(&self) -> usize {
        if self.product {
            2 * self.width
        } else {
            self.width
        }
    }
    fn window(&self) -> WindowConfig {
        self.window
    }

    fn request(&self, cx: &Ctx, lb: &mut LeafBuilder, window: &Window) -> PartLookup {
        let v = cx.tables.view(self.view);
        PartLookup {
            slots: vec![
                lb.request(v, Tokens::Targets),
                lb.request(v, window_tokens(window)),
            ],
            ..Default::default()
        }
    }

    fn forward(&self, x: &PartInput, train: bool) -> Result<Tensor> {
        let t = gather(x.leaves, x.index(TARGET))?;
        let packed = Packed::new(x.window.offsets.clone())?;
        let u = self
            .unit
            .forward_leaf(&t, x.leaves, x.index(WINDOW), &packed, train)?;
        self.with_product(u, &t)
    }

    fn score(&self, req: &Request, _encoding: &[f32], window: ServingWindow) -> Result<Tensor> {
        let c = req.candidates();
        let tt = req.targets(self.view)?;
        let per = match window {
            ServingWindow::Shared(r) => r.len().max(1),
            ServingWindow::PerCandidate(_) => 1,
        };
        let chunk = (MAX_REPLICATED_ROWS / per).max(1);
        let mut parts = Vec::new();
        for start in (0..c).step_by(chunk) {
            let end = (start + chunk).min(c);
            let mut lens = Vec::with_capacity(end - start);
            let mut rows = Vec::new();
            for b in start..end {
                let r = window.rows_of(b);
                lens.push(r.len() as u32);
                rows.extend(r.into_iter().map(|j| j as u32));
            }
            let n = rows.len();
            let seq = if n == 0 {
                Tensor::zeros((0, self.width), DType::F32, req.cx.device)?
            } else {
                req.window(self.view)?
                    .index_select(&Tensor::from_vec(rows, n, req.cx.device)?, 0)?
            };
            let tb = tt.narrow(0, start, end - start)?;
            parts.push(
                self.unit
                    .forward_t(&tb, &seq, &Packed::from_lens(&lens), false)?,
            );
        }
        self.with_product(Tensor::cat(&parts, 0)?, &tt)
    }
}
