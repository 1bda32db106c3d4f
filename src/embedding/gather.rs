//! The token lookup: rows of the flat leaf → tokens, for any number of fields, as one op whose
//! backward scatter-adds straight into the leaf's gradient (candle's `index_select` + `cat`
//! chain would allocate several `[m, d]` gradients and zero a table-sized one per field).

use super::leaves::{GradAccumulator, Leaves, TokenIndex};
use crate::cpu::with_data;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The tokens of `index` from the leaf.
///
/// # Shapes
/// leaf `[Σ u_t·d_t]` → `[index.rows, index.width]` (zero rows where the index has no token)
pub fn gather(leaves: &Leaves, index: &Arc<TokenIndex>) -> crate::Result<Tensor> {
    if leaves.generic() {
        return Ok(gather_generic(leaves.tensor(), index)?.to_dtype(leaves.compute_dtype())?);
    }
    Ok(leaves.tensor().apply_op1(Gather {
        index: index.clone(),
        grad: leaves.accumulator().clone(),
    })?)
}

/// [`gather`] through candle ops (any device; candle's autograd carries the gradient to the
/// leaf): per field, its segment of the flat buffer viewed as a `[rows, dim]` matrix, rows
/// selected by `index_select`, fields side by side. Padding rows (no token) read row 0 and are
/// zeroed by a mask, only when the index has any (nothing of the segment's size is copied).
pub fn gather_generic(flat: &Tensor, index: &TokenIndex) -> crate::Result<Tensor> {
    use crate::data::batch::NONE;
    let dev = flat.device();
    let mut fields: Vec<_> = index.fields.iter().collect();
    fields.sort_by_key(|f| f.col);
    let mut parts = Vec::with_capacity(fields.len());
    let mut col = 0;
    for f in fields {
        if f.col != col || f.seg_offset + f.seg_rows * f.dim > flat.dim(0)? {
            return Err(crate::Error::InvalidArgument(format!(
                "token-gather: field {:?} at column {} of a token of width {} (expected {col}), \
                 or outside the leaf",
                f.field, f.col, index.width
            )));
        }
        col += f.dim;
        let padded = f.local.contains(&NONE);
        if f.seg_rows == 0 {
            // Nothing to read: every row is padding.
            parts.push(Tensor::zeros((index.rows, f.dim), flat.dtype(), dev)?);
            continue;
        }
        let seg = flat
            .narrow(0, f.seg_offset, f.seg_rows * f.dim)?
            .reshape((f.seg_rows, f.dim))?;
        let ids: Vec<u32> = f
            .local
            .iter()
            .map(|&l| if l == NONE { 0 } else { l })
            .collect();
        let rows = seg.index_select(&Tensor::from_vec(ids, index.rows, dev)?, 0)?;
        parts.push(if padded {
            let keep: Vec<f32> = f.local.iter().map(|&l| (l != NONE) as u8 as f32).collect();
            let keep = Tensor::from_vec(keep, (index.rows, 1), dev)?.to_dtype(flat.dtype())?;
            rows.broadcast_mul(&keep)?
        } else {
            rows
        });
    }
    if col != index.width {
        return Err(crate::Error::InvalidArgument(format!(
            "token-gather: fields cover {col} of a token's {} columns",
            index.width
        )));
    }
    Ok(match parts.len() {
        0 => Tensor::zeros((index.rows, 0), flat.dtype(), dev)?,
        1 => parts.pop().expect("one part"),
        _ => Tensor::cat(&parts, 1)?,
    })
}

struct Gather {
    index: Arc<TokenIndex>,
    grad: Arc<GradAccumulator>,
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "token-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let flat = crate::cpu::storage_f32(s, l, "token-gather: leaf")?;
        let ix = &self.index;
        for f in &ix.fields {
            if f.seg_offset + f.seg_rows * f.dim > flat.len() {
                candle_core::bail!("token-gather: index outside the leaf");
            }
        }
        let w = ix.width;
        let mut out = vec![0f32; ix.rows * w];
        if w > 0 {
            out.par_chunks_mut(w * 256)
                .enumerate()
                .for_each(|(c, chunk)| {
                    for (k, row) in chunk.chunks_exact_mut(w).enumerate() {
                        ix.read_row(flat, c * 256 + k, row);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((ix.rows, w))))
    }

    /// Scatter-adds into the leaves' accumulator (see [`GradAccumulator`]); candle gets no
    /// gradient tensor for the leaf.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = self.index.width;
        with_data(grad, |g| {
            self.grad.add_with(|acc| {
                self.index.scatter_into(acc, |r, cols, a| {
                    crate::cpu::axpy(1.0, &g[r * w + cols.start..r * w + cols.end], a);
                })
            })
        })?;
        Ok(None)
    }
}
