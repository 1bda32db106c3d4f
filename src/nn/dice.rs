//! **Dice** (Zhou et al., KDD'18): `Dice(s) = p·s + (1 − p)·α·s`, `p = sigmoid((s − E[s]) /
//! sqrt(Var[s] + ε))`, statistics per unit over the rows of the batch in training and running
//! statistics in evaluation. Rows are only real (unpadded) positions: callers pass packed rows.
//! The CPU path is one fused [`candle_core::CustomOp2`] with a hand-written backward (batch-norm
//! style, since every row's output depends on the batch statistics); other devices use the
//! op-by-op composite `dice_reference`, which is also the tests' reference.

use super::norm::{fold_running, normalising_stats};
use super::{ParamStore, CHUNK_ROWS};
use crate::cpu::storage_f32 as f32_slice;
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, Var};
use rayon::prelude::*;
use std::sync::Arc;

/// Dice: learned `alpha [dim]`, running mean and variance (buffers saved with checkpoints).
#[derive(Debug, Clone)]
pub struct Dice {
    /// `[dim]`, initialised to 0.
    pub alpha: Var,
    /// `[dim]` running mean.
    pub running_mean: Var,
    /// `[dim]` running (unbiased) variance.
    pub running_var: Var,
    pub(crate) eps: f32,
    momentum: f32,
    generic: bool,
}

impl Dice {
    /// Creates `prefix.alpha` (parameter) and `prefix.running_{mean,var}` (buffers).
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dim: usize,
        eps: f32,
        momentum: f32,
    ) -> Result<Self> {
        Ok(Self {
            alpha: ps.constant(&format!("{prefix}.alpha"), &[dim], 0.0)?,
            running_mean: ps.buffer(&format!("{prefix}.running_mean"), &[dim], 0.0)?,
            running_var: ps.buffer(&format!("{prefix}.running_var"), &[dim], 1.0)?,
            eps,
            momentum,
            generic: ps.generic(),
        })
    }

    /// Applies Dice. In training, normalises with the batch's statistics over the rows of `xs`
    /// and folds them into the running statistics; in evaluation, uses the running ones.
    ///
    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (n, _) = xs.dims2()?;
        if self.generic || !xs.device().is_cpu() {
            return self.forward_generic(xs, train);
        }
        let fixed = if train {
            None
        } else {
            Some((
                Arc::new(self.running_mean.as_tensor().to_vec1::<f32>()?),
                Arc::new(self.running_var.as_tensor().to_vec1::<f32>()?),
            ))
        };
        let op = DiceOp {
            eps: self.eps,
            fixed,
            batch: Default::default(),
        };
        let batch = op.batch.clone();
        let out = xs.contiguous()?.apply_op2(self.alpha.as_tensor(), op)?;
        if let (true, Some(s)) = (train && n > 0, batch.get()) {
            self.fold_stats(&s, n)?;
        }
        Ok(out)
    }

    /// [`Dice::forward_t`] through candle ops ([`dice_reference`]): any device.
    fn forward_generic(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let n = xs.dim(0)?;
        if n == 0 {
            return Ok(xs.clone());
        }
        let fixed = (!train).then(|| (self.running_mean.as_tensor(), self.running_var.as_tensor()));
        // Statistics and the gate in f32 whatever the activations' dtype (bf16 on a GPU).
        let x32 = xs.to_dtype(DType::F32)?;
        let (out, batch) = dice_reference(&x32, self.alpha.as_tensor(), fixed, self.eps)?;
        if let Some((m, v)) = batch {
            self.fold(&m, &v, n)?;
        }
        Ok(out.to_dtype(xs.dtype())?)
    }

    /// Folds batch statistics (over `n` rows) into the running ones.
    pub(crate) fn fold_stats(&self, s: &DiceStats, n: usize) -> Result<()> {
        let dev = self.running_mean.device();
        let dim = s.mean.len();
        let m = Tensor::from_vec(
            s.mean.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            dim,
            dev,
        )?;
        let v = Tensor::from_vec(
            s.var.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            dim,
            dev,
        )?;
        self.fold(&m, &v, n)
    }

    /// Folds batch statistics into the running ones ([`fold_running`]).
    pub(crate) fn fold(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        fold_running(
            &self.running_mean,
            &self.running_var,
            self.momentum,
            mean,
            var,
            n,
        )
    }
}

/// Dice written with candle ops (differentiable through candle's autograd): the generic path
/// and the tests' reference. `fixed` = running
/// statistics for evaluation; `None` = batch statistics (biased variance), which are returned.
///
/// # Shapes
/// xs `[n, dim]`, alpha `[dim]` → `[n, dim]` (and batch mean, variance `[dim]`)
#[allow(clippy::type_complexity)]
pub fn dice_reference(
    xs: &Tensor,
    alpha: &Tensor,
    fixed: Option<(&Tensor, &Tensor)>,
    eps: f32,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let (mean, var, batch) = normalising_stats(xs, fixed)?;
    let xhat = xs
        .broadcast_sub(&mean)?
        .broadcast_div(&(var.clone() + eps as f64)?.sqrt()?)?;
    let p = candle_nn::ops::sigmoid(&xhat)?;
    // y = x·(α + p·(1 − α))
    let one_minus_alpha = alpha.affine(-1.0, 1.0)?;
    let gate = p.broadcast_mul(&one_minus_alpha)?.broadcast_add(alpha)?;
    let out = (xs * gate)?;
    Ok((out, batch.then_some((mean, var))))
}

#[derive(Debug, Clone)]
pub(crate) struct DiceStats {
    pub(crate) mean: Vec<f64>,
    pub(crate) var: Vec<f64>,
}

/// Running mean and variance for evaluation (`None` = batch statistics).
type FixedStats = Option<(Arc<Vec<f32>>, Arc<Vec<f32>>)>;

struct DiceOp {
    eps: f32,
    /// Running statistics (evaluation); `None` = batch statistics.
    fixed: FixedStats,
    /// Batch statistics computed by the forward pass, read by `bwd` and by the running update.
    batch: Arc<crate::cpu::Stash<DiceStats>>,
}

/// Per-column mean and biased variance, accumulated in f64 over fixed-size row chunks.
pub(crate) fn column_stats(x: &[f32], dim: usize) -> DiceStats {
    let n = x.len() / dim;
    let partial: Vec<Vec<f64>> = x
        .par_chunks(CHUNK_ROWS * dim)
        .map(|c| {
            let mut s = vec![0f64; 2 * dim];
            for row in c.chunks_exact(dim) {
                for (j, &v) in row.iter().enumerate() {
                    s[j] += v as f64;
                    s[dim + j] += (v as f64) * (v as f64);
                }
            }
            s
        })
        .collect();
    let mut tot = vec![0f64; 2 * dim];
    for p in &partial {
        for (t, v) in tot.iter_mut().zip(p) {
            *t += v;
        }
    }
    let nf = n.max(1) as f64;
    let mean: Vec<f64> = tot[..dim].iter().map(|s| s / nf).collect();
    let var = (0..dim)
        .map(|j| (tot[dim + j] / nf - mean[j] * mean[j]).max(0.0))
        .collect();
    DiceStats { mean, var }
}

impl DiceOp {
    /// (mean, 1/sqrt(var + ε)) per column, from the fixed or the batch statistics.
    fn norm(&self, x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>, Option<DiceStats>) {
        match &self.fixed {
            Some((m, v)) => {
                let inv = v.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
                (m.to_vec(), inv, None)
            }
            None => {
                let s = column_stats(x, dim);
                let mean = s.mean.iter().map(|&m| m as f32).collect();
                let inv = s
                    .var
                    .iter()
                    .map(|&v| (1.0 / (v + self.eps as f64).sqrt()) as f32)
                    .collect();
                (mean, inv, Some(s))
            }
        }
    }
}

impl CustomOp2 for DiceOp {
    fn name(&self) -> &'static str {
        "dice"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, dim) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "dice input")?;
        let alpha = f32_slice(s2, l2, "dice alpha")?;
        let (mean, inv, stats) = self.norm(x, dim);
        if let Some(s) = stats {
            self.batch.put(s);
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK_ROWS * dim)
            .zip(x.par_chunks(CHUNK_ROWS * dim))
            .for_each(|(o, xc)| crate::nn::dice_rows::forward_rows(xc, &mean, &inv, alpha, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let stats = match &self.fixed {
            Some(_) => None,
            None => self.batch.get(),
        };
        let op = DiceBwdOp {
            eps: self.eps,
            fixed: self.fixed.clone(),
            stats,
        };
        let both = x.apply_op3_no_bwd(alpha, &grad.contiguous()?, &op)?;
        let n = x.dim(0)?;
        Ok((Some(both.narrow(0, 0, n)?), Some(both.get(n)?)))
    }
}

/// Backward of [`DiceOp`]: returns `[n + 1, dim]`, rows `0..n` = ∂L/∂x, row `n` = ∂L/∂α.
///
/// With g = ∂L/∂y, x̂ = (x − μ)·r, r = 1/sqrt(σ² + ε), p = sigmoid(x̂):
/// ∂L/∂α = Σ g·x·(1 − p); ∂L/∂x = g·(α + p(1 − α)) + r·(h − mean(h) − x̂·mean(h·x̂)) with
/// h = g·x·(1 − α)·p·(1 − p) (batch statistics; with fixed statistics the last term is r·h).
struct DiceBwdOp {
    eps: f32,
    fixed: FixedStats,
    stats: Option<DiceStats>,
}

impl CustomOp3 for DiceBwdOp {
    fn name(&self) -> &'static str {
        "dice-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, dim) = l1.shape().dims2()?;
        let x = f32_slice(s1, l1, "dice input")?;
        let alpha = f32_slice(s2, l2, "dice alpha")?;
        let g = f32_slice(s3, l3, "dice grad")?;
        let (mean, inv): (Vec<f32>, Vec<f32>) = match (&self.fixed, &self.stats) {
            (Some((m, v)), _) => (
                m.to_vec(),
                v.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect(),
            ),
            (None, Some(s)) => (
                s.mean.iter().map(|&m| m as f32).collect(),
                s.var
                    .iter()
                    .map(|&v| (1.0 / (v + self.eps as f64).sqrt()) as f32)
                    .collect(),
            ),
            (None, None) => candle_core::bail!("dice backward without forward statistics"),
        };
        let batch = self.fixed.is_none();
        let mut out = vec![0f32; (n + 1) * dim];
        let (gx, galpha_row) = out.split_at_mut(n * dim);
        // Pass 1: column sums of h, h·x̂ and g·x·(1 − p) over fixed chunks (f32 within a chunk,
        // f64 across); pass 2 recomputes each row's terms rather than store them.
        let partial: Vec<Vec<f64>> = x
            .par_chunks(CHUNK_ROWS * dim)
            .zip(g.par_chunks(CHUNK_ROWS * dim))
            .map(|(xc, gc)| {
                let mut acc = vec![0f32; 4 * dim];
                let grad = crate::nn::dice_rows::Grad::Rows(gc);
                crate::nn::dice_rows::bwd_stats_rows(xc, grad, &mean, &inv, alpha, &mut acc);
                acc.iter().map(|&v| v as f64).collect()
            })
            .collect();
        let mut tot = vec![0f64; 4 * dim];
        for p in &partial {
            for (t, v) in tot.iter_mut().zip(p) {
                *t += v;
            }
        }
        for j in 0..dim {
            galpha_row[j] = tot[2 * dim + j] as f32;
        }
        let nf = n.max(1) as f64;
        let mh: Vec<f32> = (0..dim).map(|j| (tot[j] / nf) as f32).collect();
        let mhx: Vec<f32> = (0..dim).map(|j| (tot[dim + j] / nf) as f32).collect();
        // Pass 2: ∂L/∂x.
        gx.par_chunks_mut(CHUNK_ROWS * dim)
            .zip(
                x.par_chunks(CHUNK_ROWS * dim)
                    .zip(g.par_chunks(CHUNK_ROWS * dim)),
            )
            .for_each(|(gxc, (xc, gc))| {
                let grad = crate::nn::dice_rows::Grad::Rows(gc);
                crate::nn::dice_rows::bwd_out_rows(
                    xc, grad, &mean, &inv, alpha, &mh, &mhx, batch, gxc,
                );
            });
        Ok((CpuStorage::F32(out), Shape::from((n + 1, dim))))
    }
}
