//! Full attention pooling over a whole window, read straight from the flat leaf: the auxiliary
//! heads of DARE (`softmax` weights) and SIM soft search (raw scores).
//!
//! `r_j = ⟨q_b, k_j⟩`, `w = softmax_j(r)` (or `w = r`), `out_b = Σ_{j∈b} w_j v_j`, with keys and
//! values rows of (possibly different) views of the leaf. Nothing of size `n · d` is stored: the
//! forward keeps the `[n]` weights, the backward recomputes rows from the leaf and scatter-adds
//! the keys' and values' gradients through their token indices.
//!
//! Backward, with `g_b = ∂L/∂out_b`: `∂v_j = w_j g_b`, `∂w_j = ⟨g_b, v_j⟩`,
//! `∂r_j = w_j (∂w_j − Σ_i w_i ∂w_i)` (softmax) or `∂w_j` (raw), `∂q_b = Σ_j ∂r_j k_j`,
//! `∂k_j = ∂r_j q_b`.

use super::Packed;
use crate::cpu::{dot, with_data};
use crate::embedding::{Leaves, TokenIndex};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// `Σ_j w_j v_j` per sample over `packed` rows with `w` from `⟨q_b, k_j⟩`.
///
/// # Shapes
/// query `[B, d_k]`, leaf flat → `[B, d_v]`
pub fn score_pool(
    query: &Tensor,
    leaves: &Leaves,
    keys: &Arc<TokenIndex>,
    values: &Arc<TokenIndex>,
    packed: &Packed,
    softmax: bool,
) -> crate::Result<Tensor> {
    if keys.rows != packed.rows() || values.rows != packed.rows() {
        return Err(crate::Error::InvalidArgument(format!(
            "score-pool: {} key rows and {} value rows for a window of {}",
            keys.rows,
            values.rows,
            packed.rows()
        )));
    }
    Ok(query.apply_op2(
        leaves.tensor(),
        ScorePool {
            keys: keys.clone(),
            values: values.clone(),
            offsets: packed.offsets.clone(),
            softmax,
            weights: Arc::new(Mutex::new(None)),
        },
    )?)
}

struct ScorePool {
    keys: Arc<TokenIndex>,
    values: Arc<TokenIndex>,
    offsets: Arc<Vec<usize>>,
    softmax: bool,
    weights: Arc<Mutex<Option<Vec<f32>>>>,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("score-pool: {what} must be contiguous"),
    }
}

impl ScorePool {
    /// The weights of every row, sample by sample (in parallel, fixed order within a sample).
    fn weights(&self, q: &[f32], flat: &[f32]) -> Vec<f32> {
        let dk = self.keys.width;
        let per: Vec<Vec<f32>> = self
            .offsets
            .par_windows(2)
            .enumerate()
            .map(|(b, w)| {
                let qb = &q[b * dk..(b + 1) * dk];
                let mut row = vec![0f32; dk];
                let mut r: Vec<f32> = (w[0]..w[1])
                    .map(|j| {
                        self.keys.read_row(flat, j, &mut row);
                        dot(qb, &row)
                    })
                    .collect();
                if self.softmax && !r.is_empty() {
                    let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut z = 0f32;
                    r.iter_mut().for_each(|x| {
                        *x = (*x - m).exp();
                        z += *x;
                    });
                    r.iter_mut().for_each(|x| *x /= z);
                }
                r
            })
            .collect();
        per.concat()
    }
}

impl CustomOp2 for ScorePool {
    fn name(&self) -> &'static str {
        "score-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, dk) = l1.shape().dims2()?;
        if dk != self.keys.width || b + 1 != self.offsets.len() {
            candle_core::bail!("score-pool: query {:?} does not fit the window", l1.dims());
        }
        let (q, flat) = (contiguous(s1, l1, "query")?, contiguous(s2, l2, "leaf")?);
        let w = self.weights(q, flat);
        let dv = self.values.width;
        let mut out = vec![0f32; b * dv];
        out.par_chunks_mut(dv.max(1))
            .zip(self.offsets.par_windows(2))
            .for_each(|(ob, win)| {
                let mut row = vec![0f32; dv];
                for (j, &wj) in w.iter().enumerate().take(win[1]).skip(win[0]) {
                    self.values.read_row(flat, j, &mut row);
                    ob.iter_mut().zip(&row).for_each(|(o, v)| *o += wj * v);
                }
            });
        *self
            .weights
            .lock()
            .map_err(|_| candle_core::Error::Msg("score-pool: poisoned lock".into()))? = Some(w);
        Ok((CpuStorage::F32(out), Shape::from((b, dv))))
    }

    fn bwd(
        &self,
        query: &Tensor,
        flat: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, dk) = query.dims2()?;
        let dv = self.values.width;
        let n = flat.elem_count();
        let w = self
            .weights
            .lock()
            .map_err(|_| candle_core::Error::Msg("score-pool: poisoned lock".into()))?
            .take();
        let Some(w) = w else {
            candle_core::bail!("score-pool: backward without forward")
        };
        let mut seg = vec![0u32; w.len()];
        for (s, win) in self.offsets.windows(2).enumerate() {
            seg[win[0]..win[1]].iter_mut().for_each(|x| *x = s as u32);
        }
        let (dq, dflat) = with_data(query, |q| {
            with_data(flat, |fl| {
                with_data(grad, |g| {
                    // ∂r per row, sample by sample.
                    let per: Vec<Vec<f32>> = self
                        .offsets
                        .par_windows(2)
                        .enumerate()
                        .map(|(s, win)| {
                            let gb = &g[s * dv..(s + 1) * dv];
                            let mut row = vec![0f32; dv];
                            let dw: Vec<f32> = (win[0]..win[1])
                                .map(|j| {
                                    self.values.read_row(fl, j, &mut row);
                                    dot(gb, &row)
                                })
                                .collect();
                            if self.softmax {
                                let wb = &w[win[0]..win[1]];
                                let pd: f32 = wb.iter().zip(&dw).map(|(a, b)| a * b).sum();
                                wb.iter().zip(&dw).map(|(p, d)| p * (d - pd)).collect()
                            } else {
                                dw
                            }
                        })
                        .collect();
                    let dr = per.concat();
                    // ∂q_b = Σ_j ∂r_j k_j.
                    let mut dq = vec![0f32; b * dk];
                    dq.par_chunks_mut(dk.max(1))
                        .zip(self.offsets.par_windows(2))
                        .for_each(|(o, win)| {
                            let mut row = vec![0f32; dk];
                            for (j, &drj) in dr.iter().enumerate().take(win[1]).skip(win[0]) {
                                self.keys.read_row(fl, j, &mut row);
                                o.iter_mut().zip(&row).for_each(|(a, k)| *a += drj * k);
                            }
                        });
                    // Leaf: ∂k_j = ∂r_j q_b, ∂v_j = w_j g_b.
                    let mut dflat = self.keys.scatter(n, |j, cols, acc| {
                        let qb = &q[seg[j] as usize * dk..];
                        acc.iter_mut()
                            .zip(&qb[cols])
                            .for_each(|(a, qv)| *a += dr[j] * qv);
                    });
                    self.values.scatter_into(&mut dflat, |j, cols, acc| {
                        let gb = &g[seg[j] as usize * dv..];
                        acc.iter_mut()
                            .zip(&gb[cols])
                            .for_each(|(a, gv)| *a += w[j] * gv);
                    });
                    Ok((dq, dflat))
                })
            })
        })?;
        let dev = query.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, dk), dev)?),
            Some(Tensor::from_vec(dflat, n, dev)?),
        ))
    }
}

/// The same function with candle ops on gathered, padded tokens (the tests' reference).
///
/// # Shapes
/// query `[B, d_k]`, keys `[B, L, d_k]`, values `[B, L, d_v]`, mask `[B, L]` → `[B, d_v]`
pub fn score_pool_reference(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    softmax: bool,
) -> crate::Result<Tensor> {
    let r = keys
        .broadcast_mul(&query.unsqueeze(1)?)?
        .sum(candle_core::D::Minus1)?; // [B, L]
    let w = if softmax {
        crate::nn::masked_softmax(&r, mask)?
    } else {
        (r * mask)?
    };
    Ok(values.broadcast_mul(&w.unsqueeze(2)?)?.sum(1)?)
}
