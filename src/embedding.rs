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
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Shape, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use std::sync::Arc;

/// Ids of one table in one batch: the sorted unique rows and, for every lookup, its position in
/// `unique`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIds {
    /// Sorted, distinct table rows touched by the batch.
    pub unique: Vec<u32>,
    /// For each lookup, the index into `unique` (shared, so the lookup op takes it without a copy).
    pub local: Arc<Vec<u32>>,
}

/// Sorts and deduplicates `ids` and maps each to its position among the unique ones.
pub fn unique_remap(ids: &[u32]) -> SparseIds {
    let mut unique = ids.to_vec();
    unique.par_sort_unstable();
    unique.dedup();
    let local: Vec<u32> = ids
        .par_iter()
        .with_min_len(4096)
        .map(|id| unique.binary_search(id).unwrap_or(0) as u32)
        .collect();
    let local = Arc::new(local);
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
    pub fn new(
        name: &str,
        rows: usize,
        dim: usize,
        init: Init,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let mut data = vec![0f32; rows * dim];
        match init {
            Init::Normal { std } => {
                let d = Normal::new(0.0, std).map_err(|e| Error::Config(format!("init: {e}")))?;
                data[dim.min(rows * dim)..]
                    .iter_mut()
                    .for_each(|x| *x = d.sample(rng));
            }
            Init::Uniform { bound } => {
                data[dim.min(rows * dim)..]
                    .iter_mut()
                    .for_each(|x| *x = rng.random_range(-bound..=bound));
            }
        }
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            data,
        })
    }

    /// The table from a `[rows, dim]` tensor (a checkpoint).
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<Self> {
        let (rows, dim) = t.dims2()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            name: name.to_string(),
            rows,
            dim,
            data,
        })
    }

    /// The whole table as a `[rows, dim]` CPU tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.dim),
            &Device::Cpu,
        )?)
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
        out.par_chunks_mut(d * 256)
            .zip(ids.par_chunks(256))
            .for_each(|(o, idc)| {
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

/// Looks rows up in 2 or 3 leaves and concatenates them per lookup, as one op with a
/// scatter-add backward (candle's `index_select` + `cat` + `narrow` chain allocates and copies
/// several `[n, d]` gradients in its backward).
///
/// `ids[t][i]` is lookup `i`'s row in leaf `t`; lookups `range.0..range.1` are produced.
///
/// # Shapes
/// leaves `[u_t, d_t]` → `[range.1 − range.0, Σ d_t]`
pub fn lookup_concat(
    leaves: &[&Tensor],
    ids: &[Arc<Vec<u32>>],
    range: (usize, usize),
) -> Result<Tensor> {
    let op = LookupConcat {
        ids: ids.to_vec(),
        range,
    };
    Ok(match leaves {
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => {
            return Err(Error::InvalidArgument(
                "lookup_concat takes 2 or 3 tables".into(),
            ))
        }
    })
}

struct LookupConcat {
    ids: Vec<Arc<Vec<u32>>>,
    range: (usize, usize),
}

impl LookupConcat {
    fn fwd(&self, tables: &[(&[f32], usize, usize)]) -> candle_core::Result<(CpuStorage, Shape)> {
        let width: usize = tables.iter().map(|t| t.2).sum();
        let (s0, s1) = self.range;
        for ((_, rows, _), ids) in tables.iter().zip(&self.ids) {
            if ids.len() < s1 || ids[s0..s1].iter().any(|&i| i as usize >= *rows) {
                candle_core::bail!("lookup-concat: index outside the leaf ({rows} rows)");
            }
        }
        let mut out = vec![0f32; (s1 - s0) * width];
        out.par_chunks_mut(width.max(1) * 256)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (k, row) in chunk.chunks_exact_mut(width).enumerate() {
                    let i = s0 + c * 256 + k;
                    let mut col = 0;
                    for ((data, _, d), ids) in tables.iter().zip(&self.ids) {
                        let r = ids[i] as usize;
                        row[col..col + d].copy_from_slice(&data[r * d..(r + 1) * d]);
                        col += d;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((s1 - s0, width))))
    }

    /// Gradient of leaf `t`: scatter-add of its columns of `grad`.
    fn bwd_one(
        &self,
        t: usize,
        leaf: &Tensor,
        grad: &Tensor,
        col: usize,
    ) -> candle_core::Result<Tensor> {
        let (rows, d) = leaf.dims2()?;
        let (n, width) = grad.dims2()?;
        let ids = &self.ids[t][self.range.0..self.range.1];
        let mut out = vec![0f32; rows * d];
        crate::cpu::with_data(grad, |g| {
            for (i, &r) in ids.iter().enumerate().take(n) {
                let (r, src) = (r as usize, &g[i * width + col..i * width + col + d]);
                out[r * d..(r + 1) * d]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(o, v)| *o += v);
            }
            Ok(())
        })?;
        Tensor::from_vec(out, (rows, d), leaf.device())
    }
}

fn cpu_slice<'a>(
    s: &'a CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (rows, d) = l.shape().dims2()?;
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok((&data[a..b], rows, d)),
        None => candle_core::bail!("lookup-concat: leaves must be contiguous"),
    }
}

impl CustomOp2 for LookupConcat {
    fn name(&self) -> &'static str {
        "lookup-concat"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &candle_core::Layout,
        s2: &CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(&[cpu_slice(s1, l1)?, cpu_slice(s2, l2)?])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let da = a.dim(1)?;
        Ok((
            Some(self.bwd_one(0, a, grad, 0)?),
            Some(self.bwd_one(1, b, grad, da)?),
        ))
    }
}

impl CustomOp3 for LookupConcat {
    fn name(&self) -> &'static str {
        "lookup-concat"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &candle_core::Layout,
        s2: &CpuStorage,
        l2: &candle_core::Layout,
        s3: &CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(&[cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, cpu_slice(s3, l3)?])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (da, db) = (a.dim(1)?, b.dim(1)?);
        Ok((
            Some(self.bwd_one(0, a, grad, 0)?),
            Some(self.bwd_one(1, b, grad, da)?),
            Some(self.bwd_one(2, c, grad, da + db)?),
        ))
    }
}
