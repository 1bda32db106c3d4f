//! Target attention over a window: the exact unit of SIM, ETA, TWIN and DARE, and the short-term
//! branch of SDIM/ETA/SIM/TWIN.
//!
//! With projections (FuxiCTR's `MultiHeadTargetAttention`, `H` heads of width `d_h = dim / H`):
//! `q = W_q t`, `k_j = W_k e_j`, `v_j = W_v e_j`, `w_hj = softmax_j(⟨q_h, k_hj⟩ / √d_h)` over the
//! window's real behaviors, `out = W_o [Σ_j w_hj v_hj]_h`.
//! Without (DARE): one head, `w_j = softmax_j(⟨t, e_j⟩_s)` with the per-field-group scale of
//! [`crate::embedding::ViewSpec::dot_scale`], `out = Σ_j w_j e^v_j`.
//! With `product`, the head also gets `t^v ⊙ out` (DARE's target-aware product
//! `Σ_j w_j (e^rep_j ⊙ e^rep_t)`).
//!
//! A sample whose window is empty gets `out = 0` (never NaN).
//!
//! | tensor | shape |
//! |---|---|
//! | target (key view) | `[B, d_k]` |
//! | keys (padded window) | `[B·K, d_k]`, K = longest window |
//! | values (padded window) | `[B·K, d_v]` |
//! | mask | `[B, K]` |
//! | out | `[B, d_v]` |

use super::attention_op::attend;
pub use super::attention_op::Mask;
use crate::cpu::{linear, with_data};
use crate::nn::{like, ParamStore};
use crate::Result;
use candle_core::{Tensor, Var, D};

/// A target-attention unit.
#[derive(Debug, Clone)]
pub struct TargetAttention {
    heads: usize,
    dim: usize,
    dk: usize,
    dv: usize,
    proj: Option<Projections>,
    /// `[d_k]` column scales of the parameter-free score.
    scale: Vec<f32>,
    product: bool,
    generic: bool,
}

#[derive(Debug, Clone)]
struct Projections {
    wq: Var,
    wk: Var,
    wv: Var,
    wo: Var,
}

impl TargetAttention {
    /// A unit over keys of width `dk` and values of width `dv` under `prefix`. With `projection`,
    /// `W_q, W_k [dim, dk]`, `W_v [dim, dv]`, `W_o [dv, dim]` are created (U(±1/√in), no bias);
    /// without, `scale` (`[dk]`) scales the dot product.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ps: &mut ParamStore,
        prefix: &str,
        dk: usize,
        dv: usize,
        projection: bool,
        heads: usize,
        dim: usize,
        scale: Vec<f32>,
        product: bool,
    ) -> Result<Self> {
        let proj = if projection {
            let bk = 1.0 / (dk as f32).sqrt();
            let bv = 1.0 / (dv as f32).sqrt();
            let bo = 1.0 / (dim as f32).sqrt();
            Some(Projections {
                wq: ps.uniform(&format!("{prefix}.wq"), &[dim, dk], bk)?,
                wk: ps.uniform(&format!("{prefix}.wk"), &[dim, dk], bk)?,
                wv: ps.uniform(&format!("{prefix}.wv"), &[dim, dv], bv)?,
                wo: ps.uniform(&format!("{prefix}.wo"), &[dv, dim], bo)?,
            })
        } else {
            None
        };
        Ok(Self {
            heads: if projection { heads } else { 1 },
            dim: if projection { dim } else { dk },
            dk,
            dv,
            proj,
            scale,
            product,
            generic: ps.generic(),
        })
    }

    /// `x·wᵀ`: the fused CPU op, or a matmul on the generic path.
    fn lin(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(if self.generic || !x.device().is_cpu() {
            x.matmul(&w.to_dtype(x.dtype())?.t()?)?
        } else {
            linear(x, w)?
        })
    }

    fn generic_on(&self, x: &Tensor) -> bool {
        self.generic || !x.device().is_cpu()
    }

    /// Width of what it gives the head: `d_v`, doubled with the product.
    pub fn out_dim(&self) -> usize {
        if self.product {
            2 * self.dv
        } else {
            self.dv
        }
    }

    /// The query of a search that shares this unit's scores (TWIN): `q'` with
    /// `Σ_h ⟨q_h, k_hj⟩ / √d_h = ⟨q', e_j⟩`, i.e. `q' = W_kᵀ W_q t / √d_h` (or `t ⊙ scale`).
    ///
    /// # Shapes
    /// target `[B, d_k]` → `[B, d_k]`
    pub fn query(&self, target_k: &Tensor) -> Result<Tensor> {
        match &self.proj {
            None => {
                let scale = Tensor::from_slice(&self.scale, self.dk, target_k.device())?
                    .to_dtype(target_k.dtype())?;
                Ok(target_k.broadcast_mul(&scale)?)
            }
            Some(p) => {
                let dh = (self.dim / self.heads) as f64;
                let q = target_k.matmul(&like(&p.wq, target_k)?.t()?)?;
                Ok((q.matmul(&like(&p.wk, target_k)?)? / dh.sqrt())?)
            }
        }
    }

    /// The attention weights: `[B, K, H]` (one column without projections), zero on padding,
    /// each head's weights summing to 1 over a sample's window (0 for an empty window).
    ///
    /// # Shapes
    /// target_k `[B, d_k]`, keys `[B·K, d_k]`, mask `[B, K]` → `[B, K, H]`
    pub fn weights(&self, target_k: &Tensor, keys: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, k) = mask.dims2()?;
        if k == 0 {
            return Ok(Tensor::zeros(
                (b, 0, self.heads),
                target_k.dtype(),
                target_k.device(),
            )?);
        }
        match &self.proj {
            None => {
                let scale = Tensor::from_slice(&self.scale, self.dk, target_k.device())?
                    .to_dtype(target_k.dtype())?;
                let q = target_k.broadcast_mul(&scale)?; // [B, dk]
                let kk = keys.reshape((b, k, self.dk))?;
                let s = kk.broadcast_mul(&q.unsqueeze(1)?)?.sum(D::Minus1)?; // [B, K]
                Ok(masked_softmax(&s, mask)?.unsqueeze(2)?)
            }
            Some(p) => {
                let (h, dh) = (self.heads, self.dim / self.heads);
                let q = target_k
                    .matmul(&like(&p.wq, target_k)?.t()?)?
                    .reshape((b, 1, h, dh))?;
                let kp = keys
                    .matmul(&like(&p.wk, target_k)?.t()?)?
                    .reshape((b, k, h, dh))?;
                let s = (kp.broadcast_mul(&q)?.sum(D::Minus1)? / (dh as f64).sqrt())?; // [B, K, H]
                let m3 = mask.unsqueeze(2)?.broadcast_as((b, k, h))?.contiguous()?;
                masked_softmax_dim1(&s, &m3)
            }
        }
    }

    /// The interest vectors (and, with `product`, `t^v ⊙ out` after them): the projections as
    /// GEMMs, the attention itself as one fused op ([`super::attention_op`]).
    ///
    /// # Shapes
    /// target_k `[B, d_k]`, keys `[B·K, d_k]`, values `[B·K, d_v]`, mask `[B, K]`,
    /// target_v `[B, d_v]` → `[B, out_dim]`
    pub fn forward(
        &self,
        target_k: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: &Mask,
        target_v: &Tensor,
    ) -> Result<Tensor> {
        if self.generic_on(target_k) {
            let m = Tensor::from_slice(&mask.data, (mask.b, mask.k), target_k.device())?;
            return self.forward_reference(target_k, keys, values, &m, target_v);
        }
        let (kp, vp) = if mask.k == 0 {
            (keys.clone(), values.clone())
        } else {
            self.project(keys, values)?
        };
        self.forward_projected(target_k, &kp, &vp, mask, target_v)
    }

    /// The keys' and values' projections `W_k e_j`, `W_v e_j` (the rows as they are without
    /// projections). Serving projects a user's window once and gathers from it per candidate.
    ///
    /// # Shapes
    /// keys `[n, d_k]`, values `[n, d_v]` → `[n, dim]`, `[n, dim]` (or unchanged)
    pub fn project(&self, keys: &Tensor, values: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.proj {
            None => Ok((keys.clone(), values.clone())),
            Some(p) => Ok((
                self.lin(keys, p.wk.as_tensor())?,
                self.lin(values, p.wv.as_tensor())?,
            )),
        }
    }

    /// [`TargetAttention::forward`] from projected keys and values ([`TargetAttention::project`]).
    pub fn forward_projected(
        &self,
        target_k: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        mask: &Mask,
        target_v: &Tensor,
    ) -> Result<Tensor> {
        let b = mask.b;
        let out = if mask.k == 0 {
            Tensor::zeros((b, self.dv), target_k.dtype(), target_k.device())?
        } else {
            match &self.proj {
                None => {
                    let scale = Tensor::from_slice(&self.scale, self.dk, target_k.device())?;
                    let q = target_k.broadcast_mul(&scale)?;
                    attend(&q, kp, vp, mask, 1, 1.0)?
                }
                Some(p) => {
                    let dh = (self.dim / self.heads) as f32;
                    let q = self.lin(target_k, p.wq.as_tensor())?;
                    let o = attend(&q, kp, vp, mask, self.heads, 1.0 / dh.sqrt())?;
                    self.lin(&o, p.wo.as_tensor())?
                }
            }
        };
        self.with_product(out, target_v)
    }

    /// Every target attending to one shared window (serving: one user's recent behaviors for
    /// all its candidates): the window is projected once and the scores are one GEMM per head,
    /// instead of B copies of the window. The same function as [`TargetAttention::forward`]
    /// with every sample's window equal to `keys`/`values`.
    ///
    /// # Shapes
    /// target_k `[B, d_k]`, keys `[m, d_k]`, values `[m, d_v]`, target_v `[B, d_v]` →
    /// `[B, out_dim]`
    pub fn forward_shared(
        &self,
        target_k: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        target_v: &Tensor,
    ) -> Result<Tensor> {
        let (b, m) = (target_k.dim(0)?, keys.dim(0)?);
        if m == 0 {
            let z = Tensor::zeros((b, self.dv), target_k.dtype(), target_k.device())?;
            return self.with_product(z, target_v);
        }
        let (kp, vp) = self.project(keys, values)?;
        let (q, scale) = self.scaled_query(target_k)?;
        let scale = scale as f64;
        let h = self.heads;
        let split = |x: &Tensor, rows: usize| -> Result<Tensor> {
            let w = x.dim(1)? / h;
            Ok(x.reshape((rows, h, w))?.transpose(0, 1)?.contiguous()?)
        };
        let (qh, kh, vh) = (split(&q, b)?, split(&kp, m)?, split(&vp, m)?); // [H, ·, ·]
        let s = (qh.matmul(&kh.transpose(1, 2)?.contiguous()?)? * scale)?; // [H, B, m]
        let w = candle_nn::ops::softmax_last_dim(&s)?;
        let o = w.matmul(&vh)?.transpose(0, 1)?.contiguous()?; // [B, H, w_v]
        let o = o.reshape((b, ()))?;
        let out = match &self.proj {
            None => o,
            Some(p) => self.lin(&o, p.wo.as_tensor())?,
        };
        self.with_product(out, target_v)
    }

    /// Serving's target attention over per-sample rows of one shared, projected window: sample
    /// b attends to rows `rows[b]` of `kp`/`vp` ([`TargetAttention::project`] of the user's
    /// window), read in place (no `[B·K, dim]` gather). Without gradient; the same function as
    /// [`TargetAttention::forward`] on the gathered rows.
    ///
    /// # Shapes
    /// target_k `[B, d_k]`, kp `[L, dim]`, vp `[L, dim_v]`, target_v `[B, d_v]` → `[B, out_dim]`
    pub fn forward_indexed(
        &self,
        target_k: &Tensor,
        kp: &Tensor,
        vp: &Tensor,
        rows: &[Vec<u32>],
        target_v: &Tensor,
    ) -> Result<Tensor> {
        use rayon::prelude::*;
        let b = rows.len();
        let (q, scale) = self.scaled_query(target_k)?;
        let (dq, dv) = (q.dim(1)?, vp.dim(1)?);
        let (h, l) = (self.heads, kp.dim(0)?);
        if let Some(bad) = rows.iter().flatten().find(|&&j| j as usize >= l) {
            return Err(crate::Error::InvalidArgument(format!(
                "attention row {bad} outside a window of {l}"
            )));
        }
        if self.generic_on(target_k) {
            let o = self.attend_indexed_generic(&q, scale, kp, vp, rows)?;
            let out = match &self.proj {
                None => o,
                Some(p) => self.lin(&o, p.wo.as_tensor())?,
            };
            return self.with_product(out, target_v);
        }
        let mut o = vec![0f32; b * dv];
        // The projected window is read in place (no copy of `[L, dim]` per request).
        with_data(&q, |qv| {
            with_data(kp, |kv| {
                with_data(vp, |vv| {
                    o.par_chunks_mut(dv.max(1))
                        .zip(rows.par_iter())
                        .enumerate()
                        .for_each_init(Vec::new, |s, (bi, (ob, r))| {
                            let shape = Heads { h, dq, dv, scale };
                            attend_rows(&qv[bi * dq..(bi + 1) * dq], kv, vv, r, shape, s, ob);
                        });
                    Ok(())
                })
            })
        })?;
        let o = Tensor::from_vec(o, (b, dv), target_k.device())?;
        let out = match &self.proj {
            None => o,
            Some(p) => self.lin(&o, p.wo.as_tensor())?,
        };
        self.with_product(out, target_v)
    }

    /// [`TargetAttention::forward_indexed`]'s attention with candle ops: each candidate's rows
    /// gathered into a padded `[B, K]` layout with a mask.
    fn attend_indexed_generic(
        &self,
        q: &Tensor,
        scale: f32,
        kp: &Tensor,
        vp: &Tensor,
        rows: &[Vec<u32>],
    ) -> Result<Tensor> {
        let (b, dev) = (rows.len(), q.device());
        let (h, dq, dv) = (self.heads, q.dim(1)?, vp.dim(1)?);
        let k = rows.iter().map(Vec::len).max().unwrap_or(0);
        if k == 0 {
            return Ok(Tensor::zeros((b, dv), q.dtype(), dev)?);
        }
        let mut idx = vec![0u32; b * k];
        let mut mask = vec![0f32; b * k];
        for (i, r) in rows.iter().enumerate() {
            idx[i * k..i * k + r.len()].copy_from_slice(r);
            mask[i * k..i * k + r.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let idx = Tensor::from_vec(idx, b * k, dev)?;
        let mask = Tensor::from_vec(mask, (b, k, 1), dev)?
            .broadcast_as((b, k, h))?
            .contiguous()?;
        let (dh, dvh) = (dq / h, dv / h);
        let kg = kp.index_select(&idx, 0)?.reshape((b, k, h, dh))?;
        let s = (kg
            .broadcast_mul(&q.reshape((b, 1, h, dh))?)?
            .sum(D::Minus1)?
            * scale as f64)?;
        let w = masked_softmax_dim1(&s, &mask)?; // [B, K, H]
        let vg = vp.index_select(&idx, 0)?.reshape((b, k, h, dvh))?;
        Ok(vg
            .broadcast_mul(&w.unsqueeze(3)?)?
            .sum(1)?
            .reshape((b, dv))?)
    }

    /// The query and the score scale: `(W_q t, 1/√d_h)`, or `(t ⊙ scale, 1)` without projections.
    fn scaled_query(&self, target_k: &Tensor) -> Result<(Tensor, f32)> {
        Ok(match &self.proj {
            None => {
                let s = Tensor::from_slice(&self.scale, self.dk, target_k.device())?
                    .to_dtype(target_k.dtype())?;
                (target_k.broadcast_mul(&s)?, 1.0)
            }
            Some(p) => {
                let dh = (self.dim / self.heads) as f32;
                (self.lin(target_k, p.wq.as_tensor())?, 1.0 / dh.sqrt())
            }
        })
    }

    fn with_product(&self, out: Tensor, target_v: &Tensor) -> Result<Tensor> {
        if self.product {
            let prod = (&out * target_v)?;
            Ok(Tensor::cat(&[&out, &prod], 1)?)
        } else {
            Ok(out)
        }
    }

    /// [`TargetAttention::forward`] op by op with candle (any device): the generic path and the
    /// tests' reference.
    pub fn forward_reference(
        &self,
        target_k: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: &Tensor,
        target_v: &Tensor,
    ) -> Result<Tensor> {
        let (b, k) = mask.dims2()?;
        let out = if k == 0 {
            Tensor::zeros((b, self.dv), target_k.dtype(), target_k.device())?
        } else {
            let w = self.weights(target_k, keys, mask)?; // [B, K, H]
            match &self.proj {
                None => {
                    let v = values.reshape((b, k, self.dv))?;
                    v.broadcast_mul(&w)?.sum(1)? // [B, dv]
                }
                Some(p) => {
                    let (h, dh) = (self.heads, self.dim / self.heads);
                    let vp = values
                        .matmul(&like(&p.wv, values)?.t()?)?
                        .reshape((b, k, h, dh))?;
                    let o = vp.broadcast_mul(&w.unsqueeze(3)?)?.sum(1)?; // [B, H, dh]
                    o.reshape((b, self.dim))?
                        .matmul(&like(&p.wo, values)?.t()?)?
                }
            }
        };
        self.with_product(out, target_v)
    }
}

/// Softmax over the last dimension where `mask` is 1; a row without any gets zeros.
pub(crate) fn masked_softmax(s: &Tensor, mask: &Tensor) -> Result<Tensor> {
    crate::nn::masked_softmax(s, mask)
}

/// Softmax over dimension 1 of `[B, K, H]` where `mask` (`[B, K, H]`) is 1.
fn masked_softmax_dim1(s: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let fill = Tensor::full(-1e9f32, s.shape(), s.device())?.to_dtype(s.dtype())?;
    let x = mask.ne(0f32)?.where_cond(s, &fill)?;
    let p = candle_nn::ops::softmax(&x, 1)?;
    Ok((p * mask.to_dtype(s.dtype())?)?)
}

/// The shape of one candidate's attention in [`TargetAttention::forward_indexed`].
#[derive(Debug, Clone, Copy)]
struct Heads {
    h: usize,
    dq: usize,
    dv: usize,
    scale: f32,
}

/// One query's multi-head attention over its rows `r` of the projected window (`kv [L, dq]`,
/// `vv [L, dv]`) into `ob [dv]`: per head, scores `⟨q_h, k_hj⟩·scale`, a softmax, and the
/// weighted sum of `v_hj`. Compiled per CPU, so the 16-lane dots and the updates are one or two
/// vector operations per row at a head width of 32.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn attend_rows(
    q: &[f32],
    kv: &[f32],
    vv: &[f32],
    r: &[u32],
    shape: Heads,
    s: &mut Vec<f32>,
    ob: &mut [f32],
) {
    let Heads { h, dq, dv, scale } = shape;
    let (dh, dvh) = (dq / h, dv / h);
    s.clear();
    s.resize(r.len(), 0.0);
    for hh in 0..h {
        let qh = &q[hh * dh..(hh + 1) * dh];
        for (sj, &j) in s.iter_mut().zip(r) {
            let at = j as usize * dq + hh * dh;
            *sj = crate::cpu::dot_lanes(qh, &kv[at..at + dh]) * scale;
        }
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        s.iter_mut().for_each(|x| {
            *x = (*x - m).exp();
            z += *x;
        });
        let oh = &mut ob[hh * dvh..(hh + 1) * dvh];
        for (&w, &j) in s.iter().zip(r.iter()) {
            let at = j as usize * dv + hh * dvh;
            let a = w / z;
            oh.iter_mut()
                .zip(&vv[at..at + dvh])
                .for_each(|(y, &x)| *y += a * x);
        }
    }
}
