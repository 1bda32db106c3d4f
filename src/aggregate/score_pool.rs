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

// `let p = p;` inside the parallel closures makes them capture the whole `SendPtr` (Send +
// Sync) rather than its raw-pointer field (edition-2021 disjoint captures).
#![allow(clippy::redundant_locals)]

use super::Packed;
use crate::cpu::{storage_f32, with_data, SendPtr, Stash};
use crate::embedding::{Leaves, TokenIndex};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

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
            grad: leaves.accumulator().clone(),
            keys: keys.clone(),
            values: values.clone(),
            offsets: packed.offsets.clone(),
            softmax,
            weights: Default::default(),
        },
    )?)
}

struct ScorePool {
    grad: Arc<crate::embedding::leaves::GradAccumulator>,
    keys: Arc<TokenIndex>,
    values: Arc<TokenIndex>,
    offsets: Arc<Vec<usize>>,
    softmax: bool,
    weights: Arc<Stash<Vec<f32>>>,
}

impl ScorePool {
    /// Whether keys and values are the same tokens (one view): then each row is read once per
    /// pass and scattered once.
    fn same(&self) -> bool {
        Arc::ptr_eq(&self.keys, &self.values)
    }
}

impl CustomOp2 for ScorePool {
    fn name(&self) -> &'static str {
        "score-pool"
    }

    /// One pass per sample: the score of each row and, with an online softmax (running maximum,
    /// the accumulator rescaled when it grows), the weighted sum, so every row is read once.
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
        let (q, flat) = (
            storage_f32(s1, l1, "score-pool: query")?,
            storage_f32(s2, l2, "score-pool: leaf")?,
        );
        let dv = self.values.width;
        let n = self.offsets[b];
        let mut out = vec![0f32; b * dv];
        let mut w = vec![0f32; n];
        let wp = SendPtr(w.as_mut_ptr());
        out.par_chunks_mut(dv.max(1))
            .zip(self.offsets.par_windows(2))
            .enumerate()
            .for_each(|(s, (ob, win))| {
                let wp = wp;
                // SAFETY: sample s owns w[win[0]..win[1]] (offsets checked by `Packed`).
                let ws =
                    unsafe { std::slice::from_raw_parts_mut(wp.0.add(win[0]), win[1] - win[0]) };
                let qb = &q[s * dk..(s + 1) * dk];
                let (mut m, mut z) = (f32::NEG_INFINITY, 0f32);
                for (k, j) in (win[0]..win[1]).enumerate() {
                    let r = self.keys.dot_row(flat, j, qb);
                    ws[k] = r;
                    if self.softmax {
                        if r > m {
                            let f = if m == f32::NEG_INFINITY {
                                0.0
                            } else {
                                (m - r).exp()
                            };
                            ob.iter_mut().for_each(|x| *x *= f);
                            z *= f;
                            m = r;
                        }
                        let e = (r - m).exp();
                        z += e;
                        self.values.axpy_row(flat, j, e, ob);
                    } else {
                        self.values.axpy_row(flat, j, r, ob);
                    }
                }
                if self.softmax && z > 0.0 {
                    ob.iter_mut().for_each(|x| *x /= z);
                    ws.iter_mut().for_each(|x| *x = (*x - m).exp() / z);
                }
            });
        self.weights.put(w);
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
        let w = self.weights.take("score-pool")?;
        let seg = super::sample_of_rows(&self.offsets);
        let dq = with_data(query, |q| {
            with_data(flat, |fl| {
                with_data(grad, |g| {
                    // Per sample, one pass: ∂w_j = ⟨g_b, v_j⟩ and, for ∂q_b = Σ_j ∂r_j k_j with
                    // ∂r_j = w_j (∂w_j − Σ_i w_i ∂w_i), the sums Σ w_j ∂w_j k_j and Σ w_j k_j.
                    let mut dr = vec![0f32; w.len()];
                    let mut dq = vec![0f32; b * dk];
                    let dp = SendPtr(dr.as_mut_ptr());
                    dq.par_chunks_mut(dk.max(1))
                        .zip(self.offsets.par_windows(2))
                        .enumerate()
                        .for_each(|(s, (dqb, win))| {
                            let dp = dp;
                            // SAFETY: sample s owns dr[win[0]..win[1]].
                            let drs = unsafe {
                                std::slice::from_raw_parts_mut(dp.0.add(win[0]), win[1] - win[0])
                            };
                            let gb = &g[s * dv..(s + 1) * dv];
                            let mut s2 = vec![0f32; if self.softmax { dk } else { 0 }];
                            let mut pd = 0f32;
                            for (k, j) in (win[0]..win[1]).enumerate() {
                                let dw = self.values.dot_row(fl, j, gb);
                                if self.softmax {
                                    let wj = w[j];
                                    pd += wj * dw;
                                    drs[k] = dw;
                                    self.keys.axpy_row(fl, j, wj * dw, dqb);
                                    self.keys.axpy_row(fl, j, wj, &mut s2);
                                } else {
                                    drs[k] = dw;
                                    self.keys.axpy_row(fl, j, dw, dqb);
                                }
                            }
                            if self.softmax {
                                dqb.iter_mut().zip(&s2).for_each(|(a, x)| *a -= pd * x);
                                for (k, j) in (win[0]..win[1]).enumerate() {
                                    drs[k] = w[j] * (drs[k] - pd);
                                }
                            }
                        });
                    // Leaf (into the leaves' accumulator): ∂k_j = ∂r_j q_b, ∂v_j = w_j g_b.
                    self.grad.add_with(|dflat| {
                        if self.same() {
                            self.keys.scatter_into(dflat, |j, cols, acc| {
                                let s = seg[j] as usize;
                                crate::cpu::axpy(dr[j], &q[s * dk..][cols.clone()], acc);
                                crate::cpu::axpy(w[j], &g[s * dv..][cols], acc);
                            });
                        } else {
                            self.keys.scatter_into(dflat, |j, cols, acc| {
                                let qb = &q[seg[j] as usize * dk..];
                                crate::cpu::axpy(dr[j], &qb[cols], acc);
                            });
                            self.values.scatter_into(dflat, |j, cols, acc| {
                                let gb = &g[seg[j] as usize * dv..];
                                crate::cpu::axpy(w[j], &gb[cols], acc);
                            });
                        }
                    })?;
                    Ok(dq)
                })
            })
        })?;
        Ok((Some(Tensor::from_vec(dq, (b, dk), query.device())?), None))
    }
}

/// [`score_pool`] with candle ops (any device) on the window's gathered keys and values.
///
/// # Shapes
/// query `[B, d_k]`, keys `[n, d_k]`, values `[n, d_v]` over `packed` → `[B, d_v]`
pub fn score_pool_generic(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    packed: &Packed,
    softmax: bool,
) -> crate::Result<Tensor> {
    let seg = packed.seg(query.device())?;
    let r = keys
        .mul(&query.index_select(&seg, 0)?)?
        .sum(candle_core::D::Minus1)?; // [n]
    let w = if softmax { packed.softmax(&r)? } else { r };
    packed.sum_rows(&values.broadcast_mul(&w.unsqueeze(1)?)?)
}

/// The same function with candle ops on gathered, padded tokens (the tests' reference).
///
/// # Shapes
/// query `[B, d_k]`, keys `[B, L, d_k]`, values `[B, L, d_v]`, mask `[B, L]` → `[B, d_v]`
#[cfg(any(test, feature = "testing"))]
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
