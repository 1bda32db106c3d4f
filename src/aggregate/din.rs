//! DIN's local activation unit (Zhou et al., KDD'18).
//!
//! For target `t` and behavior `e_j`: `a_j = MLP([t, e_j, t − e_j, t ⊙ e_j])` (scalar), interest
//! `u = Σ_j a_j e_j` over real behaviors (optionally `a = softmax(a)` per history).
//!
//! The first layer uses `W·[t, e, t−e, t⊙e] = (W1+W3)·t + (W2−W3)·e + W4·(t⊙e)`: the `t` term is
//! computed once per sample (`[B, h]`), not once per behavior, which halves the first layer's
//! work and never materialises the `[n, 4d]` concatenation. The parameter is still the paper's
//! `W [h, 4d]`, so checkpoints read the same with or without the trick.
//!
//! | tensor | shape |
//! |---|---|
//! | target | `[B, d]` |
//! | seq (packed) | `[n, d]`, n = real behaviors in the batch |
//! | output | `[B, d]` |

use super::din_unit::{attention_unit, DiceNorm, History};
use super::Packed;
use crate::config::Activation;
use crate::embedding::{gather, Leaves, TokenIndex};
use crate::nn::{Act, Block, Dice, Linear, MlpOptions, ParamStore};
use crate::Result;
use candle_core::{Tensor, Var};
use std::sync::Arc;

/// The activation unit: first layer (with the trick), further hidden layers, a scalar output.
/// Each hidden layer's `Linear` is followed by a [`Block`] (`[BatchNorm] → activation →
/// [Dropout]`); the fused paths take the plain paper's unit (no BatchNorm, no dropout).
#[derive(Debug, Clone)]
pub struct ActivationUnit {
    w0: Var,
    b0: Var,
    act0: Block,
    rest: Vec<(Linear, Block)>,
    out: Linear,
    softmax: bool,
    dim: usize,
    generic: bool,
}

impl ActivationUnit {
    /// Creates the unit for behaviors of width `dim` under `prefix` (no BatchNorm, no dropout).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        hidden: &[usize],
        act: Activation,
        softmax: bool,
        eps: f32,
        momentum: f32,
    ) -> Result<Self> {
        let opts = MlpOptions {
            dice_eps: eps,
            dice_momentum: momentum,
            ..MlpOptions::new(act, &Default::default())
        };
        Self::with_options(ps, prefix, dim, hidden, softmax, &opts)
    }

    /// [`ActivationUnit::new`] with the hidden layers' options (BatchNorm, dropout).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for `opts.input_batch_norm`: the unit never builds its
    /// input `[t, e, t − e, t ⊙ e]` (see the module docs), so it cannot normalise it.
    pub fn with_options(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        hidden: &[usize],
        softmax: bool,
        opts: &MlpOptions,
    ) -> Result<Self> {
        if opts.input_batch_norm {
            return Err(crate::Error::InvalidArgument(format!(
                "{prefix}: DIN's activation unit has no input BatchNorm"
            )));
        }
        let h0 = hidden[0];
        let bound = 1.0 / ((4 * dim) as f32).sqrt();
        let w0 = ps.uniform(&format!("{prefix}.0.weight"), &[h0, 4 * dim], bound)?;
        let b0 = ps.uniform(&format!("{prefix}.0.bias"), &[h0], bound)?;
        let act0 = Block::new(ps, &format!("{prefix}.0"), h0, opts)?;
        let mut rest = Vec::new();
        let mut d = h0;
        for (i, &h) in hidden.iter().enumerate().skip(1) {
            let lin = Linear::new(ps, &format!("{prefix}.{i}"), d, h)?;
            rest.push((lin, Block::new(ps, &format!("{prefix}.{i}"), h, opts)?));
            d = h;
        }
        let out = Linear::new(ps, &format!("{prefix}.out"), d, 1)?;
        Ok(Self {
            w0,
            b0,
            act0,
            rest,
            out,
            softmax,
            dim,
            generic: ps.generic(),
        })
    }

    /// Attention scores `a_j` of every packed behavior (before any softmax).
    ///
    /// # Shapes
    /// target `[B, d]`, seq `[n, d]`, seg `[n]` → `[n]`
    pub fn scores(
        &self,
        target: &Tensor,
        seq: &Tensor,
        seg: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let d = self.dim;
        let w = &crate::nn::like(&self.w0, target)?;
        let (w1, w2) = (w.narrow(1, 0, d)?, w.narrow(1, d, d)?);
        let (w3, w4) = (w.narrow(1, 2 * d, d)?, w.narrow(1, 3 * d, d)?);
        let wt = (w1 + &w3)?; // [h, d]
        let we = (w2 - &w3)?; // [h, d]
                              // t-term once per sample: [B, h]
        let t_term = target
            .matmul(&wt.t()?)?
            .broadcast_add(&crate::nn::like(&self.b0, target)?)?;
        let t_rows = target.index_select(seg, 0)?; // [n, d]
        let prod = (&t_rows * seq)?; // [n, d]
        let h =
            ((seq.matmul(&we.t()?)? + prod.matmul(&w4.t()?)?)? + t_term.index_select(seg, 0)?)?;
        let mut h = self.act0.forward_t(&h, train)?;
        for (lin, act) in &self.rest {
            h = act.forward_t(&lin.forward(&h)?, train)?;
        }
        Ok(self.out.forward(&h)?.squeeze(1)?)
    }

    /// The interest vector `u = Σ_j a_j e_j` per sample, through fused ops (the whole unit as one
    /// tiled op, `super::din_unit`, when it is one Dice layer; else [`super::din_ops`]'s first
    /// layer and scoring + pooling around generic layers). `ActivationUnit::forward_composite` computes the same function
    /// with candle ops and is the tests' reference.
    ///
    /// # Shapes
    /// target `[B, d]`, seq `[n, d]` (packed, see [`Packed`]) → `[B, d]`
    pub fn forward_t(
        &self,
        target: &Tensor,
        seq: &Tensor,
        packed: &Packed,
        train: bool,
    ) -> Result<Tensor> {
        if seq.dim(0)? == 0 {
            // No sample has any history: the interest is zero.
            return Ok(target.zeros_like()?);
        }
        if self.generic || !seq.device().is_cpu() {
            return self.forward_composite(target, seq, packed, train);
        }
        if let Some(dice) = self.one_dice_layer() {
            return self.forward_fused(target, seq, History::Dense, packed, dice, train);
        }
        let wb = Tensor::cat(
            &[self.w0.as_tensor(), &self.b0.as_tensor().unsqueeze(1)?],
            1,
        )?;
        let h = super::din_ops::first_layer(target, seq, &wb, packed)?;
        let mut h = self.act0.forward_t(&h, train)?;
        for (lin, act) in &self.rest {
            h = act.forward_t(&lin.forward(&h)?, train)?;
        }
        let wo = Tensor::cat(
            &[
                self.out.weight.as_tensor().flatten_all()?,
                self.out.bias.as_tensor().flatten_all()?,
            ],
            0,
        )?;
        Ok(super::din_ops::pool(&h, seq, &wo, packed, self.softmax)?)
    }

    /// [`ActivationUnit::forward_t`] with the history read straight from the step's leaf
    /// through `window` (`[n]` rows of width `d`): the paper's unit (one Dice layer) reads the
    /// rows in place and scatter-adds their gradient into the leaf's; other units gather the
    /// history first.
    ///
    /// # Shapes
    /// target `[B, d]`, window rows `n` (packed) → `[B, d]`
    pub fn forward_leaf(
        &self,
        target: &Tensor,
        leaves: &Leaves,
        window: &Arc<TokenIndex>,
        packed: &Packed,
        train: bool,
    ) -> Result<Tensor> {
        if window.rows != packed.rows() {
            return Err(crate::Error::InvalidArgument(format!(
                "din: {} window rows for {} packed behaviors",
                window.rows,
                packed.rows()
            )));
        }
        match self.one_dice_layer() {
            Some(dice)
                if packed.rows() > 0 && !self.generic && leaves.tensor().device().is_cpu() =>
            {
                let source = History::Leaf {
                    index: window.clone(),
                    grad: leaves.accumulator().clone(),
                };
                self.forward_fused(target, leaves.tensor(), source, packed, dice, train)
            }
            _ => self.forward_t(target, &gather(leaves, window)?, packed, train),
        }
    }

    /// The unit's Dice when it is the paper's (one hidden Dice layer, no BatchNorm, no dropout).
    fn one_dice_layer(&self) -> Option<&Dice> {
        match (self.rest.is_empty(), self.act0.plain()) {
            (true, Some(Act::Dice(dice))) => Some(dice),
            _ => None,
        }
    }

    /// One hidden Dice layer (the paper's unit): everything in one fused op.
    fn forward_fused(
        &self,
        target: &Tensor,
        history: &Tensor,
        source: History,
        packed: &Packed,
        dice: &Dice,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.b0.dim(0)?;
        let params = Tensor::cat(
            &[
                self.w0.as_tensor().flatten_all()?,
                self.b0.as_tensor().clone(),
                dice.alpha.as_tensor().clone(),
                self.out.weight.as_tensor().flatten_all()?,
                self.out.bias.as_tensor().flatten_all()?,
            ],
            0,
        )?;
        let (norm, slot) = if train {
            let slot = Arc::new(crate::cpu::Stash::default());
            (DiceNorm::Batch(slot.clone()), Some(slot))
        } else {
            let m = Arc::new(dice.running_mean.as_tensor().to_vec1::<f32>()?);
            let v = Arc::new(dice.running_var.as_tensor().to_vec1::<f32>()?);
            (DiceNorm::Fixed(m, v), None)
        };
        let u = attention_unit(
            target,
            history,
            &params,
            packed,
            h,
            self.softmax,
            dice.eps,
            norm,
            source,
        )?;
        if let Some(st) = slot.and_then(|s| s.get()) {
            dice.fold_stats(&st, packed.rows())?;
        }
        Ok(u)
    }

    /// [`ActivationUnit::forward_t`] with candle ops only (any device): the generic path.
    pub fn forward_composite(
        &self,
        target: &Tensor,
        seq: &Tensor,
        packed: &Packed,
        train: bool,
    ) -> Result<Tensor> {
        let (b, d) = target.dims2()?;
        let n = seq.dim(0)?;
        if n == 0 {
            return Ok(target.zeros_like()?);
        }
        let dev = target.device();
        let seg = packed.seg(dev)?;
        let mut a = self.scores(target, seq, &seg, train)?; // [n]
        if self.softmax {
            a = packed.softmax(&a)?;
        }
        let weighted = seq.broadcast_mul(&a.unsqueeze(1)?)?; // [n, d]
        debug_assert_eq!(weighted.dims(), [n, d]);
        let u = packed.sum_rows(&weighted)?; // [B, d]
        debug_assert_eq!(u.dims(), [b, d]);
        Ok(u)
    }

    /// Reference implementation without the trick or packing: the paper's formula on padded
    /// `[B, L, d]` histories with a `[B, L]` mask, op by op. Used by tests. Dice statistics are
    /// taken over the real positions only, as in [`ActivationUnit::forward_t`].
    #[cfg(any(test, feature = "testing"))]
    pub fn forward_padded_reference(
        &self,
        target: &Tensor,
        seq: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l, d) = seq.dims3()?;
        let t = target.unsqueeze(1)?.broadcast_as((b, l, d))?;
        let x = Tensor::cat(&[&t, seq, &(&t - seq)?, &(&t * seq)?], 2)?.reshape((b * l, 4 * d))?;
        // Keep only real positions for the MLP (Dice statistics), then scatter back.
        let flat_mask = mask.flatten_all()?.to_vec1::<f32>()?;
        let idx: Vec<u32> = flat_mask
            .iter()
            .enumerate()
            .filter(|(_, &m)| m > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        let idx = Tensor::new(idx.as_slice(), target.device())?;
        let xr = x.index_select(&idx, 0)?;
        let h = xr
            .matmul(&self.w0.as_tensor().t()?)?
            .broadcast_add(self.b0.as_tensor())?;
        let mut h = self.act0.forward_t(&h, train)?;
        for (lin, act) in &self.rest {
            h = act.forward_t(&lin.forward(&h)?, train)?;
        }
        let a_real = self.out.forward(&h)?.squeeze(1)?;
        let mut a = Tensor::zeros(b * l, a_real.dtype(), a_real.device())?
            .index_add(&idx, &a_real, 0)?
            .reshape((b, l))?;
        if self.softmax {
            a = crate::nn::masked_softmax(&a, mask)?;
        }
        let a = (a * mask)?;
        Ok(seq.broadcast_mul(&a.unsqueeze(2)?)?.sum(1)?)
    }
}
