//! The token lookup: rows of the flat leaf → tokens, for any number of fields, as one op whose
//! backward scatter-adds straight into the leaf's gradient (candle's `index_select` + `cat`
//! chain would allocate several `[m, d]` gradients and zero a table-sized one per field).

use super::leaves::{Leaves, TokenIndex};
use crate::cpu::with_data;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The tokens of `index` from the leaf.
///
/// # Shapes
/// leaf `[Σ u_t·d_t]` → `[index.rows, index.width]` (zero rows where the index has no token)
pub fn gather(leaves: &Leaves, index: &Arc<TokenIndex>) -> crate::Result<Tensor> {
    Ok(leaves.tensor().apply_op1(Gather {
        index: index.clone(),
    })?)
}

struct Gather {
    index: Arc<TokenIndex>,
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "token-gather"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let flat = match l.contiguous_offsets() {
            Some((a, b)) => &s.as_slice::<f32>()?[a..b],
            None => candle_core::bail!("token-gather: the leaf must be contiguous"),
        };
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

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = arg.elem_count();
        let w = self.index.width;
        let g = with_data(grad, |g| {
            Ok(self.index.scatter(n, |r, cols, acc| {
                let src = &g[r * w + cols.start..r * w + cols.end];
                acc.iter_mut().zip(src).for_each(|(a, v)| *a += v);
            }))
        })?;
        Ok(Some(Tensor::from_vec(g, n, arg.device())?))
    }
}
