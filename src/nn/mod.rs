//! Building blocks: a parameter store with seeded initialisation, `Linear`, activations (Dice,
//! PReLU, ReLU, sigmoid), `BatchNorm`, seeded `Dropout`, `Mlp`, and a numerically stable
//! BCE-with-logits.
//!
//! Files: `dice` (Dice), `batch_norm` (`BatchNorm`), `dropout` (`Dropout`), `mlp` (activations,
//! MLP blocks and the MLP), `norm` (the statistics Dice and BatchNorm share), `dice_rows`
//! (Dice's row kernels); the store, `Linear` and the losses are here.

mod batch_norm;
mod dice;
pub(crate) mod dice_rows;
mod dropout;
mod mlp;
mod norm;

pub use batch_norm::{batch_norm_reference, BatchNorm, BATCH_NORM_EPS, BATCH_NORM_MOMENTUM};
pub(crate) use dice::DiceStats;
pub use dice::{dice_reference, Dice};
pub use dropout::{dropout_mask, Dropout};
pub use mlp::{Act, Block, Mlp, MlpOptions};

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Rows per chunk for the parallel loops. Fixed (not derived from the thread count) so the
/// summation order, and so every result, is the same on any machine.
pub(crate) const CHUNK_ROWS: usize = 512;

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
