//! Embedding tables with sparse updates.
//!
//! A table lives in host memory (`rows × dim` f32, row 0 = padding, kept at zero). Per training
//! step only the batch's unique rows are gathered into a small leaf [`Var`] `[u, dim]`; the
//! forward pass indexes that leaf with batch-local ids, candle's backward produces a gradient of
//! the leaf's size only, and a row-wise optimiser ([`crate::optim::RowWise`]) updates just those
//! rows. A step so costs O(rows touched · dim), never O(table) (candle's own embedding backward
//! builds a gradient the size of the whole table).
//!
//! ```text
//! batch ids [n] ─ unique_remap ─▶ unique [u] (sorted) + local [n] (position in unique)
//! table[unique] ─▶ leaf Var [u, d] ─ index_select(local) ─▶ [n, d] ─ ... ─ backward ─▶ ∂leaf [u, d]
//! ```

use crate::config::Init;
use crate::data::PAD;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

/// Ids of one table in one batch: the sorted unique rows and, for every lookup, its position in
/// `unique`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIds {
    /// Sorted, distinct table rows touched by the batch.
    pub unique: Vec<u32>,
    /// For each lookup, the index into `unique`.
    pub local: Vec<u32>,
}

/// Sorts and deduplicates `ids` and maps each to its position among the unique ones.
pub fn unique_remap(ids: &[u32]) -> SparseIds {
    let mut unique = ids.to_vec();
    unique.par_sort_unstable();
    unique.dedup();
    let local = ids
        .par_iter()
        .with_min_len(4096)
        .map(|id| unique.binary_search(id).unwrap_or(0) as u32)
        .collect();
    SparseIds { unique, local }
}

/// One embedding table in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingTable {
    name: String,
    rows: usize,
    dim: usize,
    data: Vec<f32>,
}

impl EmbeddingTable {
    /// A table of `rows × dim` drawn from `init` (row 0, padding, is zero).
    pub fn new(name: &str, rows: usize, dim: usize, init: Init, rng: &mut ChaCha8Rng) -> Result<Self> {
        let mut data = vec![0f32; rows * dim];
        match init {
            Init::Normal { std } => {
                let d = Normal::new(0.0, std).map_err(|e| Error::Config(format!("init: {e}")))?;
                data[dim.min(rows * dim)..].iter_mut().for_each(|x| *x = d.sample(rng));
            }
            Init::Uniform { bound } => {
                data[dim.min(rows * dim)..].iter_mut().for_each(|x| *x = rng.random_range(-bound..=bound));
            }
        }
        Ok(Self { name: name.to_string(), rows, dim, data })
    }

    /// The table from a `[rows, dim]` tensor (a checkpoint).
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<Self> {
        let (rows, dim) = t.dims2()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { name: name.to_string(), rows, dim, data })
    }

    /// The whole table as a `[rows, dim]` CPU tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.data, (self.rows, self.dim), &Device::Cpu)?)
    }

    /// Table name (`item`, `cate`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of rows (padding and unknown included).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Row `i`.
    pub fn row(&self, i: u32) -> &[f32] {
        &self.data[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
    /// The flat row-major data.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub(crate) fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Checks that every id is a row of this table.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the table, the id and the table's size.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        // `ids` are sorted when they come from `unique_remap`: the last is the largest.
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            return Err(Error::InvalidArgument(format!(
                "`{}` index {bad} is outside the embedding table ({} rows): the dataset does not \
                 match the model",
                self.name, self.rows
            )));
        }
        Ok(())
    }

    /// Gathers rows `ids` into a `[ids.len(), dim]` leaf variable on `device`.
    pub fn leaf(&self, ids: &[u32], device: &Device) -> Result<Var> {
        self.check_ids(ids)?;
        let d = self.dim;
        let mut out = vec![0f32; ids.len() * d];
        out.par_chunks_mut(d * 256).zip(ids.par_chunks(256)).for_each(|(o, idc)| {
            for (orow, &i) in o.chunks_exact_mut(d).zip(idc) {
                orow.copy_from_slice(&self.data[i as usize * d..(i as usize + 1) * d]);
            }
        });
        let t = Tensor::from_vec(out, (ids.len(), d), device)?;
        Ok(Var::from_tensor(&t)?)
    }

    /// Overwrites row `i` (tests, tools).
    pub fn set_row(&mut self, i: u32, v: &[f32]) {
        let d = self.dim;
        self.data[i as usize * d..(i as usize + 1) * d].copy_from_slice(v);
    }

    /// Whether `id` is the padding row, which is never updated.
    pub fn is_padding(id: u32) -> bool {
        id == PAD
    }
}
