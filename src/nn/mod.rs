//! Building blocks: a parameter store with seeded initialisation, `Linear`, activations (Dice,
//! PReLU, ReLU, sigmoid), `BatchNorm`, seeded `Dropout`, `Mlp`, and a numerically stable
//! BCE-with-logits.
//!
//! **Dice** (Zhou et al., KDD'18): `Dice(s) = p·s + (1 − p)·α·s`, `p = sigmoid((s − E[s]) /
//! sqrt(Var[s] + ε))`, statistics per unit over the rows of the batch in training and running
//! statistics in evaluation. Rows are only real (unpadded) positions: callers pass packed rows.
//! The CPU path is one fused [`candle_core::CustomOp2`] with a hand-written backward (batch-norm
//! style, since every row's output depends on the batch statistics); other devices use the
//! op-by-op composite `dice_reference`, which is also the tests' reference.
//!
//! **MLP options** ([`MlpOptions`], FuxiCTR's `MLP_Block`): each hidden layer is
//! `Linear → [BatchNorm] → activation → [Dropout]`, and the MLP may normalise its input first
//! (`[BatchNorm] → Linear → …`, DARE's MLPs and FuxiCTR's `bn_only_once`). BatchNorm is
//! PyTorch's `BatchNorm1d` (eps 1e-5, momentum 0.1, running variance unbiased) and keeps its
//! running statistics as Dice does (`fold_running`, buffers saved with checkpoints); it is
//! candle ops on both paths. Dropout draws its masks from a seed per layer, training step and
//! call ([`ParamStore::set_step`]), so a run (resumed or not) is reproducible.

pub(crate) mod dice_rows;

use crate::config::Activation;
use crate::{Error, Result};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Named trainable parameters and non-trainable buffers (Dice running statistics, SimHash
/// projections). Names mirror the module tree (`agg.0.din.0.weight`). Each parameter draws its
/// initial values from its own seed, derived from the store's seed and its name, so a run is
/// reproducible and adding a module never changes another's initial values.
#[derive(Debug)]
pub struct ParamStore {
    device: Device,
    seed: u64,
    ops: crate::device::Ops,
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    /// The training step dropout masks are drawn for ([`ParamStore::set_step`]).
    step: Arc<AtomicU64>,
}

impl ParamStore {
    /// An empty store whose initialisation derives from `seed`.
    pub fn new(device: Device, seed: u64) -> Self {
        Self {
            device,
            seed,
            ops: Default::default(),
            params: BTreeMap::new(),
            buffers: BTreeMap::new(),
            step: Arc::new(AtomicU64::new(0)),
        }
    }
    /// Sets the training step that the [`Dropout`] layers built from this store draw their
    /// masks for (the trainer sets it before each step, so a resumed run draws the masks of an
    /// uninterrupted one). Left at 0, each layer still draws a new mask per call.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }
    /// Weight matrices: the trainable parameters of rank ≥ 2 (every `Linear` weight, DIN's
    /// first layer, the attention and search projections), what `train.dense_l2` penalises.
    /// Biases, Dice's α, PReLU slopes and BatchNorm's γ, β are vectors and are not in it.
    pub fn weight_matrices(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.params.iter().filter(|(_, v)| v.rank() >= 2)
    }
    /// The store with modules built from it taking `ops` (see [`crate::device::Ops`]).
    pub fn with_ops(mut self, ops: crate::device::Ops) -> Self {
        self.ops = ops;
        self
    }
    /// Whether modules built from this store take the generic path.
    pub fn generic(&self) -> bool {
        self.ops.generic()
    }
    /// The seed of the named piece `name` (parameters, SimHash projections).
    pub fn seed_of(&self, name: &str) -> u64 {
        crate::seed::named_seed(self.seed, name)
    }
    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// A new parameter with entries drawn from U(−bound, bound).
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f32) -> Result<Var> {
        let n = shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed_of(&format!("param/{name}")));
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
        self.insert_param(name, Tensor::from_vec(v, shape, &self.device)?)
    }
    /// A new parameter filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Var> {
        let t = Tensor::full(value, shape, &self.device)?;
        self.insert_param(name, t)
    }
    fn insert_param(&mut self, name: &str, t: Tensor) -> Result<Var> {
        let v = Var::from_tensor(&t)?;
        if self.params.insert(name.to_string(), v.clone()).is_some() {
            return Err(Error::InvalidArgument(format!(
                "parameter `{name}` defined twice"
            )));
        }
        Ok(v)
    }
    /// A new non-trainable buffer filled with `value`.
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Var> {
        let t = Tensor::full(value, shape, &self.device)?;
        self.buffer_from(name, t)
    }
    /// A new non-trainable buffer holding `t`.
    pub fn buffer_from(&mut self, name: &str, t: Tensor) -> Result<Var> {
        let v = Var::from_tensor(&t.to_device(&self.device)?)?;
        if self.buffers.insert(name.to_string(), v.clone()).is_some() {
            return Err(Error::InvalidArgument(format!(
                "buffer `{name}` defined twice"
            )));
        }
        Ok(v)
    }
    /// Trainable parameters by name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }
    /// Buffers by name.
    pub fn buffers(&self) -> &BTreeMap<String, Var> {
        &self.buffers
    }
    /// Overwrites every parameter and buffer from `tensors` (`param/<name>`, `buffer/<name>`).
    ///
    /// # Errors
    /// [`Error::Checkpoint`]-style message (as `InvalidArgument`) naming a missing tensor or a
    /// shape mismatch.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (prefix, map) in [("param", &self.params), ("buffer", &self.buffers)] {
            for (name, var) in map {
                let key = format!("{prefix}/{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::InvalidArgument(format!("tensor `{key}` is missing")))?;
                if t.dims() != var.dims() {
                    return Err(Error::InvalidArgument(format!(
                        "tensor `{key}` has shape {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                var.set(&t.to_dtype(DType::F32)?.to_device(&self.device)?)?;
            }
        }
        Ok(())
    }
    /// Every parameter and buffer as (`param/<name>` | `buffer/<name>`, tensor).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let p = self
            .params
            .iter()
            .map(|(n, v)| (format!("param/{n}"), v.as_tensor().clone()));
        let b = self
            .buffers
            .iter()
            .map(|(n, v)| (format!("buffer/{n}"), v.as_tensor().clone()));
        p.chain(b).collect()
    }
}

/// A parameter in the dtype of the activations `x` it meets (f32 master weights used in bf16 on
/// the generic path; no copy when the dtypes agree).
pub fn like(v: &Var, x: &Tensor) -> Result<Tensor> {
    Ok(v.as_tensor().to_dtype(x.dtype())?)
}

/// `y = x·Wᵀ + b`, weight `[out, in]`, initialised U(±1/sqrt(in)) as PyTorch's.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Var,
}

impl Linear {
    /// Creates `prefix.weight` and `prefix.bias`.
    pub fn new(ps: &mut ParamStore, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
        let weight = ps.uniform(&format!("{prefix}.weight"), &[out_dim, in_dim], bound)?;
        let bias = ps.uniform(&format!("{prefix}.bias"), &[out_dim], bound)?;
        Ok(Self { weight, bias })
    }
    /// # Shapes
    /// `[n, in]` → `[n, out]`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs
            .matmul(&like(&self.weight, xs)?.t()?)?
            .broadcast_add(&like(&self.bias, xs)?)?)
    }
}

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

/// Folds a batch's statistics over `n` rows (mean, biased variance) into running ones, as
/// PyTorch's batch norm does: running ← (1 − m)·running + m·batch, with the unbiased batch
/// variance `var·n/(n − 1)` (`var` itself when n = 1; nothing when n = 0). Dice's and
/// BatchNorm's running statistics both move by it.
pub(crate) fn fold_running(
    running_mean: &Var,
    running_var: &Var,
    momentum: f32,
    mean: &Tensor,
    var: &Tensor,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let m = momentum as f64;
    let unbias = if n > 1 {
        n as f64 / (n as f64 - 1.0)
    } else {
        1.0
    };
    let rm = ((running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
    let rv = ((running_var.as_tensor() * (1.0 - m))? + (var.detach() * (m * unbias))?)?;
    running_mean.set(&rm)?;
    running_var.set(&rv)?;
    Ok(())
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

/// Rows per chunk for the parallel loops. Fixed (not derived from the thread count) so the
/// summation order, and so every result, is the same on any machine.
pub(crate) const CHUNK_ROWS: usize = 512;

struct DiceOp {
    eps: f32,
    /// Running statistics (evaluation); `None` = batch statistics.
    fixed: FixedStats,
    /// Batch statistics computed by the forward pass, read by `bwd` and by the running update.
    batch: Arc<crate::cpu::Stash<DiceStats>>,
}

use crate::cpu::storage_f32 as f32_slice;

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

/// The statistics a normalisation uses: the `fixed` running ones (evaluation), or the batch's
/// mean and biased variance over the rows; and whether they are the batch's.
fn normalising_stats(
    xs: &Tensor,
    fixed: Option<(&Tensor, &Tensor)>,
) -> Result<(Tensor, Tensor, bool)> {
    Ok(match fixed {
        Some((m, v)) => (m.clone(), v.clone(), false),
        None => {
            let mean = xs.mean(0)?;
            let var = xs.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            (mean, var, true)
        }
    })
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

/// Inverted dropout: in training each entry is zeroed with probability `p` and the others are
/// scaled by `1/(1 − p)`; the identity in evaluation. The masks are drawn on the host from
/// ChaCha8 streams seeded by (the layer's seed, the training step of [`ParamStore::set_step`],
/// the layer's call within that step, the row chunk), so they are the same on every machine and
/// path, and a resumed run draws those of an uninterrupted one.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    seed: u64,
    step: Arc<AtomicU64>,
    /// (step, calls within it).
    calls: Arc<Mutex<(u64, u64)>>,
}

impl Dropout {
    /// Dropout with rate `p` in [0, 1), its masks seeded from the store's seed and `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `p` outside [0, 1).
    pub fn new(ps: &ParamStore, name: &str, p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "dropout `{name}`: rate {p} is not in [0, 1)"
            )));
        }
        Ok(Self {
            p,
            seed: ps.seed_of(&format!("dropout/{name}")),
            step: ps.step.clone(),
            calls: Arc::new(Mutex::new((0, 0))),
        })
    }

    /// The rate.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// # Shapes
    /// `[n, dim]` → `[n, dim]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(xs.clone());
        }
        let (n, dim) = xs.dims2()?;
        let step = self.step.load(Ordering::Relaxed);
        let call = {
            let mut c = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            if c.0 != step {
                *c = (step, 0);
            }
            c.1 += 1;
            c.1 - 1
        };
        let seed = crate::seed::named_seed(self.seed, &format!("{step}/{call}"));
        let mask = Tensor::from_vec(dropout_mask(seed, n, dim, self.p), (n, dim), xs.device())?
            .to_dtype(xs.dtype())?;
        Ok((xs * mask)?)
    }
}

/// A `[n, dim]` inverted-dropout mask (row-major): 0 with probability `p`, else `1/(1 − p)`.
/// Rows are drawn in fixed chunks of 512, chunk `c` from ChaCha8 stream `c` of
/// `seed`, so the mask does not depend on the thread count.
pub fn dropout_mask(seed: u64, n: usize, dim: usize, p: f32) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p);
    let mut out = vec![0f32; n * dim];
    if dim == 0 {
        return out;
    }
    out.par_chunks_mut(CHUNK_ROWS * dim)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(c as u64);
            for v in chunk.iter_mut() {
                *v = if rng.random::<f32>() < p { 0.0 } else { keep };
            }
        });
    out
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

/// Mean binary cross-entropy on logits, in the stable form
/// `max(x, 0) − x·y + log(1 + e^(−|x|))` (candle's own takes sigmoid then log and gives NaN on
/// large logits).
///
/// # Shapes
/// logits `[b]`, labels `[b]` → scalar
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let l = ((logits.relu()? - (logits * labels)?)? + softplus)?;
    Ok(l.mean_all()?)
}

/// Softmax over the last dimension where `mask` is 1; masked positions get weight 0 and a row
/// with no unmasked position gets all zeros (never NaN). Differentiable.
///
/// # Shapes
/// scores `[b, l]`, mask `[b, l]` (1 = real) → `[b, l]`
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let fill = Tensor::full(-1e9f32, scores.shape(), scores.device())?.to_dtype(scores.dtype())?;
    let s = mask.ne(0f32)?.where_cond(scores, &fill)?;
    let p = candle_nn::ops::softmax(&s, D::Minus1)?;
    Ok((p * mask.to_dtype(scores.dtype())?)?)
}
