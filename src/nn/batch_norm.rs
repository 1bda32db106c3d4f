//! PyTorch's `BatchNorm1d` over the rows, written with candle ops.

use super::norm::{fold_running, normalising_stats};
use super::ParamStore;
use crate::Result;
use candle_core::{DType, Tensor, Var};

/// ε of [`BatchNorm`]: PyTorch's `BatchNorm1d` default.
pub const BATCH_NORM_EPS: f32 = 1e-5;
/// Momentum of [`BatchNorm`]'s running statistics: PyTorch's `BatchNorm1d` default
/// (running ← 0.9·running + 0.1·batch).
pub const BATCH_NORM_MOMENTUM: f32 = 0.1;

/// Batch normalisation over the rows (PyTorch's `BatchNorm1d`):
/// `y = (x − μ)/sqrt(σ² + ε)·γ + β` per unit, with the batch's mean and biased variance in
/// training (folded into the running statistics with the unbiased variance, momentum
/// [`BATCH_NORM_MOMENTUM`]) and the running ones in evaluation; ε = [`BATCH_NORM_EPS`].
///
/// One implementation for both paths: candle ops ([`batch_norm_reference`]), differentiable
/// through candle's autograd, in f32 whatever the activations' dtype.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// `[dim]` scale γ, initialised to 1.
    pub gamma: Var,
    /// `[dim]` shift β, initialised to 0.
    pub beta: Var,
    /// `[dim]` running mean (buffer, initialised to 0).
    pub running_mean: Var,
    /// `[dim]` running unbiased variance (buffer, initialised to 1).
    pub running_var: Var,
    eps: f32,
    momentum: f32,
}

impl BatchNorm {
    /// Creates `prefix.{gamma,beta}` (parameters) and `prefix.running_{mean,var}` (buffers).
    pub fn new(ps: &mut ParamStore, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            gamma: ps.constant(&format!("{prefix}.gamma"), &[dim], 1.0)?,
            beta: ps.constant(&format!("{prefix}.beta"), &[dim], 0.0)?,
            running_mean: ps.buffer(&format!("{prefix}.running_mean"), &[dim], 0.0)?,
            running_var: ps.buffer(&format!("{prefix}.running_var"), &[dim], 1.0)?,
            eps: BATCH_NORM_EPS,
            momentum: BATCH_NORM_MOMENTUM,
        })
    }

    /// Normalises with the batch's statistics over the rows of `xs` (and folds them into the
    /// running ones) in training, with the running ones in evaluation. A batch of one row
    /// normalises to β (its variance is 0; PyTorch refuses it).
    ///
    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let n = xs.dim(0)?;
        if n == 0 {
            return Ok(xs.clone());
        }
        let fixed = (!train).then(|| (self.running_mean.as_tensor(), self.running_var.as_tensor()));
        let x32 = xs.to_dtype(DType::F32)?;
        let (out, batch) = batch_norm_reference(
            &x32,
            self.gamma.as_tensor(),
            self.beta.as_tensor(),
            fixed,
            self.eps,
        )?;
        if let Some((m, v)) = batch {
            fold_running(
                &self.running_mean,
                &self.running_var,
                self.momentum,
                &m,
                &v,
                n,
            )?;
        }
        Ok(out.to_dtype(xs.dtype())?)
    }
}

/// Batch normalisation written with candle ops: `(x − μ)/sqrt(σ² + ε)·γ + β`. `fixed` =
/// running statistics (evaluation); `None` = the batch's mean and biased variance over the
/// rows, which are returned.
///
/// # Shapes
/// xs `[n, dim]`, gamma, beta `[dim]` → `[n, dim]` (and batch mean, variance `[dim]`)
#[allow(clippy::type_complexity)]
pub fn batch_norm_reference(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    fixed: Option<(&Tensor, &Tensor)>,
    eps: f32,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let (mean, var, batch) = normalising_stats(xs, fixed)?;
    let scale = (var.clone() + eps as f64)?.sqrt()?.recip()?.mul(gamma)?;
    let out = xs
        .broadcast_sub(&mean)?
        .broadcast_mul(&scale)?
        .broadcast_add(beta)?;
    Ok((out, batch.then_some((mean, var))))
}
