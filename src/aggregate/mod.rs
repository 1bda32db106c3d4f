//! Aggregations: a target and a window of its history → interest vectors for the head.
//!
//! | aggregation | reads | produces |
//! |---|---|---|
//! | [`din`] | window tokens `[m, d]` (packed) | `Σ_j a_j e_j` `[B, d]` |
//! | [`attention`] | window tokens, padded `[B, K, d]` | multi-head target attention `[B, d_v]` (and `t ⊙ out`) |
//! | [`sdim`] | the flat leaf through a token index, hash signatures | `mean_g l2norm(bucket_g)` `[B, d]` |
//! | [`score_pool`] | the flat leaf, a query per sample | `Σ_j w_j v_j` over the whole window (auxiliary heads) |
//!
//! Windows arrive *packed* (only real behaviors, sample after sample; [`Packed`]) except where a
//! regular `[B, K]` layout is cheaper (target attention over at most k rows).

pub mod attention;
pub mod attention_op;
pub mod din;
pub mod din_ops;
pub(crate) mod din_unit;
pub mod score_pool;
pub mod sdim;

pub use attention::TargetAttention;
pub use din::ActivationUnit;
pub use sdim::Sdim;

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// `[n]`: the sample of each packed row, from `B + 1` offsets.
pub(crate) fn sample_of_rows(offsets: &[usize]) -> Vec<u32> {
    let mut v = Vec::with_capacity(offsets.last().copied().unwrap_or(0));
    for (b, w) in offsets.windows(2).enumerate() {
        v.extend(std::iter::repeat_n(b as u32, w[1] - w[0]));
    }
    v
}

/// The layout of packed rows: sample `b`'s rows are `offsets[b]..offsets[b+1]`. Built only by
/// [`Packed::new`], which checks the offsets, so the fused ops can write per-sample ranges in
/// parallel without overlapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    offsets: Arc<Vec<usize>>,
}

impl Packed {
    /// Checks `offsets` (`B + 1` entries, starting at 0, non-decreasing).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] otherwise.
    pub fn new(offsets: Arc<Vec<usize>>) -> Result<Self> {
        if offsets.first() != Some(&0) || offsets.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::InvalidArgument(
                "packed offsets must start at 0 and never decrease".into(),
            ));
        }
        Ok(Self { offsets })
    }

    /// Offsets from per-sample lengths.
    pub fn from_lens(lens: &[u32]) -> Self {
        let mut o = Vec::with_capacity(lens.len() + 1);
        o.push(0);
        for &l in lens {
            o.push(o[o.len() - 1] + l as usize);
        }
        Self {
            offsets: Arc::new(o),
        }
    }

    /// The offsets.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }
    /// Samples B.
    pub fn batch(&self) -> usize {
        self.offsets.len() - 1
    }
    /// Rows n.
    pub fn rows(&self) -> usize {
        self.offsets[self.batch()]
    }
    /// The longest sample's row count L.
    pub fn len(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// `[n]` u32: the sample of each row (for the op-by-op references).
    pub fn seg(&self, dev: &Device) -> Result<Tensor> {
        let v = sample_of_rows(&self.offsets);
        let n = v.len();
        Ok(Tensor::from_vec(v, n, dev)?)
    }
    /// `[n]` u32: the flat position `b·L + j` of each row in the padded `[B, L]` layout.
    pub fn pos(&self, dev: &Device) -> Result<Tensor> {
        let l = self.len();
        let mut v = Vec::with_capacity(self.rows());
        for (b, w) in self.offsets.windows(2).enumerate() {
            v.extend((0..w[1] - w[0]).map(|j| (b * l + j) as u32));
        }
        let n = v.len();
        Ok(Tensor::from_vec(v, n, dev)?)
    }
    /// `[B, L]` f32 mask of the padded layout (1 = real).
    pub fn mask(&self, dev: &Device) -> Result<Tensor> {
        let l = self.len();
        let mut v = vec![0f32; self.batch() * l];
        for (b, w) in self.offsets.windows(2).enumerate() {
            v[b * l..b * l + (w[1] - w[0])]
                .iter_mut()
                .for_each(|x| *x = 1.0);
        }
        Ok(Tensor::from_vec(v, (self.batch(), l), dev)?)
    }

    /// The softmax of `a [n]` within each sample's rows (candle ops, any device).
    pub fn softmax(&self, a: &Tensor) -> Result<Tensor> {
        let (b, l, dev) = (self.batch(), self.len(), a.device());
        if self.rows() == 0 {
            return Ok(a.clone());
        }
        let pos = self.pos(dev)?;
        let padded = Tensor::zeros(b * l, a.dtype(), dev)?.index_add(&pos, a, 0)?;
        let p = crate::nn::masked_softmax(&padded.reshape((b, l))?, &self.mask(dev)?)?;
        Ok(p.flatten_all()?.index_select(&pos, 0)?)
    }

    /// `[B, d]`: each sample's sum of its rows of `x [n, d]` (candle ops, any device).
    pub fn sum_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (d, dev) = (x.dim(1)?, x.device());
        let z = Tensor::zeros((self.batch(), d), x.dtype(), dev)?;
        if self.rows() == 0 {
            return Ok(z);
        }
        Ok(z.index_add(&self.seg(dev)?, x, 0)?)
    }
}
