//! Building blocks: a parameter store with seeded initialisation, `Linear`, activations (Dice,
//! PReLU, ReLU, sigmoid), `Mlp`, and a numerically stable BCE-with-logits.
//!
//! **Dice** (Zhou et al., KDD'18): `Dice(s) = p·s + (1 − p)·α·s`, `p = sigmoid((s − E[s]) /
//! sqrt(Var[s] + ε))`, statistics per unit over the rows of the batch in training and running
//! statistics in evaluation. Rows are only real (unpadded) positions: callers pass packed rows.
//! The CPU path is one fused [`candle_core::CustomOp2`] with a hand-written backward (batch-norm
//! style, since every row's output depends on the batch statistics); other devices use the
//! op-by-op composite `dice_reference`, which is also the tests' reference.

pub(crate) mod dice_rows;

use crate::config::Activation;
use crate::{Error, Result};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

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
        }
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

    /// running ← (1 − m)·running + m·batch, with the unbiased batch variance (as BatchNorm).
    pub(crate) fn fold(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let m = self.momentum as f64;
        let unbias = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var.detach() * (m * unbias))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
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
    let (mean, var, batch) = match fixed {
        Some((m, v)) => (m.clone(), v.clone(), false),
        None => {
            let mean = xs.mean(0)?;
            let var = xs.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            (mean, var, true)
        }
    };
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

/// An MLP: `Linear → Act` per hidden size, optionally followed by a final `Linear` to `out`.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<(Linear, Act)>,
    out: Option<Linear>,
}

impl Mlp {
    /// Hidden layers `hidden`, then a linear output of `out` units (`None` = no output layer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        in_dim: usize,
        hidden: &[usize],
        out: Option<usize>,
        act: Activation,
        eps: f32,
        momentum: f32,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        let mut d = in_dim;
        for (i, &h) in hidden.iter().enumerate() {
            let lin = Linear::new(ps, &format!("{prefix}.{i}"), d, h)?;
            let a = Act::new(ps, &format!("{prefix}.{i}.act"), act, h, eps, momentum)?;
            layers.push((lin, a));
            d = h;
        }
        let out = match out {
            Some(o) => Some(Linear::new(ps, &format!("{prefix}.out"), d, o)?),
            None => None,
        };
        Ok(Self { layers, out })
    }
    /// # Shapes
    /// `[n, in]` → `[n, out]` (or `[n, last hidden]`)
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = xs.clone();
        for (lin, act) in &self.layers {
            h = act.forward_t(&lin.forward(&h)?, train)?;
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
