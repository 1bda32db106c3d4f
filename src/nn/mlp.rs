//! Activations ([`Act`]), the hidden layers' blocks ([`Block`]) and the MLP ([`Mlp`]).
//!
//! **MLP options** ([`MlpOptions`], FuxiCTR's `MLP_Block`): each hidden layer is
//! `Linear → [BatchNorm] → activation → [Dropout]`, and the MLP may normalise its input first
//! (`[BatchNorm] → Linear → …`, DARE's MLPs and FuxiCTR's `bn_only_once`). BatchNorm is
//! PyTorch's `BatchNorm1d` (eps 1e-5, momentum 0.1, running variance unbiased) and keeps its
//! running statistics as Dice does (`fold_running`, buffers saved with checkpoints); it is
//! candle ops on both paths. Dropout draws its masks from a seed per layer, training step and
//! call ([`ParamStore::set_step`]), so a run (resumed or not) is reproducible.

use super::batch_norm::BatchNorm;
use super::dice::Dice;
use super::dropout::Dropout;
use super::{like, Linear, ParamStore};
use crate::config::Activation;
use crate::Result;
use candle_core::{Tensor, Var};

/// An activation with its parameters and state.
#[derive(Debug, Clone)]
pub enum Act {
    /// Dice.
    Dice(Dice),
    /// PReLU with a slope per unit.
    Prelu(Var),
    /// ReLU.
    Relu,
    /// Sigmoid.
    Sigmoid,
}

impl Act {
    /// Creates the activation for `dim` units under `prefix`.
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        kind: Activation,
        dim: usize,
        eps: f32,
        momentum: f32,
    ) -> Result<Self> {
        Ok(match kind {
            Activation::Dice => Act::Dice(Dice::new(ps, prefix, dim, eps, momentum)?),
            Activation::Prelu => {
                Act::Prelu(ps.constant(&format!("{prefix}.slope"), &[dim], 0.25)?)
            }
            Activation::Relu => Act::Relu,
            Activation::Sigmoid => Act::Sigmoid,
        })
    }
    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Act::Dice(d) => d.forward_t(xs, train),
            Act::Prelu(a) => {
                let pos = xs.relu()?;
                let neg = xs.minimum(0f32)?;
                Ok((pos + neg.broadcast_mul(&like(a, xs)?)?)?)
            }
            Act::Relu => Ok(xs.relu()?),
            Act::Sigmoid => Ok(candle_nn::ops::sigmoid(xs)?),
        }
    }
}

/// Options of an MLP's layers (FuxiCTR's `MLP_Block`): the activation, BatchNorm after each
/// hidden `Linear` and/or on the input, and dropout after each hidden activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpOptions {
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// `Linear → BatchNorm → activation` in every hidden layer (FuxiCTR's `batch_norm`).
    pub batch_norm: bool,
    /// BatchNorm on the MLP's input, before the first `Linear` (DARE's MLPs; FuxiCTR's
    /// `bn_only_once`).
    pub input_batch_norm: bool,
    /// Dropout rate after every hidden activation, training only (0 = none).
    pub dropout: f32,
    /// Dice's ε (Dice activations only).
    pub dice_eps: f32,
    /// Dice's running-statistics momentum (Dice activations only).
    pub dice_momentum: f32,
}

impl MlpOptions {
    /// `activation` with Dice's settings `dice`, no BatchNorm, no dropout: the plain MLP.
    pub fn new(activation: Activation, dice: &crate::config::DiceConfig) -> Self {
        Self {
            activation,
            batch_norm: false,
            input_batch_norm: false,
            dropout: 0.0,
            dice_eps: dice.eps,
            dice_momentum: dice.momentum,
        }
    }
}

/// What follows a hidden layer's `Linear`: `[BatchNorm] → activation → [Dropout]`.
#[derive(Debug, Clone)]
pub struct Block {
    /// BatchNorm before the activation (`prefix.bn`).
    pub norm: Option<BatchNorm>,
    /// The activation (`prefix.act`).
    pub act: Act,
    /// Dropout after the activation.
    pub dropout: Option<Dropout>,
}

impl Block {
    /// The block of hidden layer `prefix` (`head.0`) with `dim` units.
    pub fn new(ps: &mut ParamStore, prefix: &str, dim: usize, opts: &MlpOptions) -> Result<Self> {
        let norm = match opts.batch_norm {
            true => Some(BatchNorm::new(ps, &format!("{prefix}.bn"), dim)?),
            false => None,
        };
        let act = Act::new(
            ps,
            &format!("{prefix}.act"),
            opts.activation,
            dim,
            opts.dice_eps,
            opts.dice_momentum,
        )?;
        let dropout = match opts.dropout > 0.0 {
            true => Some(Dropout::new(ps, prefix, opts.dropout)?),
            false => None,
        };
        Ok(Self { norm, act, dropout })
    }
    /// The activation alone when there is neither BatchNorm nor dropout (the fused DIN unit).
    pub fn plain(&self) -> Option<&Act> {
        match (&self.norm, &self.dropout) {
            (None, None) => Some(&self.act),
            _ => None,
        }
    }
    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = match &self.norm {
            Some(bn) => bn.forward_t(xs, train)?,
            None => xs.clone(),
        };
        h = self.act.forward_t(&h, train)?;
        match &self.dropout {
            Some(d) => d.forward_t(&h, train),
            None => Ok(h),
        }
    }
}

/// An MLP: optionally BatchNorm on the input, then `Linear → Block` per hidden size ([`Block`]:
/// `[BatchNorm] → activation → [Dropout]`), optionally followed by a final `Linear` to `out`.
#[derive(Debug, Clone)]
pub struct Mlp {
    input_norm: Option<BatchNorm>,
    layers: Vec<(Linear, Block)>,
    out: Option<Linear>,
}

impl Mlp {
    /// Hidden layers `hidden`, then a linear output of `out` units (`None` = no output layer).
    /// Names: `prefix.in_bn.*` (input BatchNorm), `prefix.{i}.{weight,bias}`,
    /// `prefix.{i}.bn.*`, `prefix.{i}.act.*`, `prefix.out.*`.
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        in_dim: usize,
        hidden: &[usize],
        out: Option<usize>,
        opts: &MlpOptions,
    ) -> Result<Self> {
        let input_norm = match opts.input_batch_norm {
            true => Some(BatchNorm::new(ps, &format!("{prefix}.in_bn"), in_dim)?),
            false => None,
        };
        let mut layers = Vec::new();
        let mut d = in_dim;
        for (i, &h) in hidden.iter().enumerate() {
            let lin = Linear::new(ps, &format!("{prefix}.{i}"), d, h)?;
            let block = Block::new(ps, &format!("{prefix}.{i}"), h, opts)?;
            layers.push((lin, block));
            d = h;
        }
        let out = match out {
            Some(o) => Some(Linear::new(ps, &format!("{prefix}.out"), d, o)?),
            None => None,
        };
        Ok(Self {
            input_norm,
            layers,
            out,
        })
    }
    /// # Shapes
    /// `[n, in]` → `[n, out]` (or `[n, last hidden]`)
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = match &self.input_norm {
            Some(bn) => bn.forward_t(xs, train)?,
            None => xs.clone(),
        };
        for (lin, block) in &self.layers {
            h = block.forward_t(&lin.forward(&h)?, train)?;
        }
        match &self.out {
            Some(o) => o.forward(&h),
            None => Ok(h),
        }
    }
}
