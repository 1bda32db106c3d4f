//! The fused core of target attention: per sample b and head h,
//! `s_bkh = c·⟨q_bh, k_bkh⟩`, `w_bkh = softmax_k(s_bkh)` over the real rows of the window,
//! `o_bh = Σ_k w_bkh v_bkh`, as one CPU op with a hand-written backward (candle's op-by-op graph
//! builds and zero-fills several `[B, K, H, d_h]` temporaries and their gradients).
//!
//! Backward, with `g_bh = ∂L/∂o_bh`: `∂v_bkh = w_bkh g_bh`, `∂w_bkh = ⟨g_bh, v_bkh⟩`,
//! `∂s_bkh = w_bkh (∂w_bkh − Σ_k' w_bk'h ∂w_bk'h)`, `∂q_bh = c Σ_k ∂s_bkh k_bkh`,
//! `∂k_bkh = c ∂s_bkh q_bh`. The `[B, K, H]` weights are kept from the forward pass.
//!
//! | input | shape |
//! |---|---|
//! | q | `[B, H·d_q]` |
//! | k | `[B·K, H·d_q]` (padded rows: mask 0) |
//! | v | `[B·K, H·d_v]` |
//! | mask | `[B, K]` host, 1 = real |
//! | out | `[B, H·d_v]` (0 for a sample without rows) |

use crate::cpu::{dot, storage_f32, with_data, Stash};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `[B, K]` mask of a padded window, 1 = real row.
#[derive(Debug, Clone)]
pub struct Mask {
    /// Samples B.
    pub b: usize,
    /// Rows per sample K.
    pub k: usize,
    /// `[B·K]` values.
    pub data: Arc<Vec<f32>>,
}

/// The attention output (see the module docs).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    heads: usize,
    scale: f32,
) -> crate::Result<Tensor> {
    Ok(q.apply_op3(
        k,
        v,
        Attend {
            mask: mask.clone(),
            heads,
            scale,
            weights: Default::default(),
        },
    )?)
}

struct Attend {
    mask: Mask,
    heads: usize,
    scale: f32,
    weights: Arc<Stash<Vec<f32>>>,
}

impl Attend {
    /// Widths per head of the queries/keys and of the values.
    fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<(usize, usize)> {
        let (b, dq) = q.shape().dims2()?;
        let (bk, dk) = k.shape().dims2()?;
        let (bv, dv) = v.shape().dims2()?;
        let (m, h) = (&self.mask, self.heads);
        if b != m.b
            || bk != m.b * m.k
            || bv != bk
            || dq != dk
            || h == 0
            || dq % h != 0
            || dv % h != 0
        {
            candle_core::bail!(
                "attend: q {:?} k {:?} v {:?} do not fit B = {}, K = {}, H = {h}",
                q.dims(),
                k.dims(),
                v.dims(),
                m.b,
                m.k
            );
        }
        Ok((dq / h, dv / h))
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "target-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dq, dv) = self.dims(l1, l2, l3)?;
        let (q, k, v) = (
            storage_f32(s1, l1, "attend: q")?,
            storage_f32(s2, l2, "attend: k")?,
            storage_f32(s3, l3, "attend: v")?,
        );
        let (b, kk, h) = (self.mask.b, self.mask.k, self.heads);
        let mask = &self.mask.data;
        let mut out = vec![0f32; b * h * dv];
        let mut w = vec![0f32; b * kk * h];
        out.par_chunks_mut((h * dv).max(1))
            .zip(w.par_chunks_mut((kk * h).max(1)))
            .enumerate()
            .for_each(|(s, (ob, wb))| {
                for hh in 0..h {
                    let qh = &q[s * h * dq + hh * dq..s * h * dq + (hh + 1) * dq];
                    let mut m = f32::NEG_INFINITY;
                    for j in 0..kk {
                        if mask[s * kk + j] != 0.0 {
                            let kr = &k[(s * kk + j) * h * dq + hh * dq..][..dq];
                            let sc = self.scale * dot(qh, kr);
                            wb[j * h + hh] = sc;
                            m = m.max(sc);
                        }
                    }
                    if m == f32::NEG_INFINITY {
                        continue; // no real row: weights and output stay 0
                    }
                    let mut z = 0f32;
                    for j in 0..kk {
                        let x = &mut wb[j * h + hh];
                        if mask[s * kk + j] != 0.0 {
                            *x = (*x - m).exp();
                            z += *x;
                        } else {
                            *x = 0.0;
                        }
                    }
                    let oh = &mut ob[hh * dv..(hh + 1) * dv];
                    for j in 0..kk {
                        let x = &mut wb[j * h + hh];
                        *x /= z;
                        if *x != 0.0 {
                            let vr = &v[(s * kk + j) * h * dv + hh * dv..][..dv];
                            let wj = *x;
                            oh.iter_mut().zip(vr).for_each(|(o, y)| *o += wj * y);
                        }
                    }
                }
            });
        self.weights.put(w);
        Ok((CpuStorage::F32(out), Shape::from((b, h * dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, kk, h) = (self.mask.b, self.mask.k, self.heads);
        let dq = q.dim(1)? / h;
        let dv = v.dim(1)? / h;
        let w = self.weights.take("attend")?;
        let c = self.scale;
        let (gq, gk, gv) = with_data(q, |qd| {
            with_data(k, |kd| {
                with_data(v, |vd| {
                    with_data(grad, |g| {
                        let mut gq = vec![0f32; b * h * dq];
                        let mut gk = vec![0f32; b * kk * h * dq];
                        let mut gv = vec![0f32; b * kk * h * dv];
                        gq.par_chunks_mut((h * dq).max(1))
                            .zip(gk.par_chunks_mut((kk * h * dq).max(1)))
                            .zip(gv.par_chunks_mut((kk * h * dv).max(1)))
                            .enumerate()
                            .for_each(|(s, ((gqb, gkb), gvb))| {
                                let mut dw = vec![0f32; kk];
                                for hh in 0..h {
                                    let gh = &g[(s * h + hh) * dv..(s * h + hh + 1) * dv];
                                    let wj = |j: usize| w[(s * kk + j) * h + hh];
                                    let mut pd = 0f32;
                                    for (j, d) in dw.iter_mut().enumerate() {
                                        let wv = wj(j);
                                        if wv == 0.0 {
                                            *d = 0.0;
                                            continue;
                                        }
                                        let vr = &vd[(s * kk + j) * h * dv + hh * dv..][..dv];
                                        *d = dot(gh, vr);
                                        pd += wv * *d;
                                        // ∂v = w g
                                        gvb[j * h * dv + hh * dv..][..dv]
                                            .iter_mut()
                                            .zip(gh)
                                            .for_each(|(o, x)| *o = wv * x);
                                    }
                                    let qh = &qd[(s * h + hh) * dq..(s * h + hh + 1) * dq];
                                    let gqh = &mut gqb[hh * dq..(hh + 1) * dq];
                                    for (j, d) in dw.iter().enumerate() {
                                        let wv = wj(j);
                                        if wv == 0.0 {
                                            continue;
                                        }
                                        let ds = c * wv * (d - pd);
                                        let kr = &kd[(s * kk + j) * h * dq + hh * dq..][..dq];
                                        gqh.iter_mut().zip(kr).for_each(|(o, x)| *o += ds * x);
                                        gkb[j * h * dq + hh * dq..][..dq]
                                            .iter_mut()
                                            .zip(qh)
                                            .for_each(|(o, x)| *o = ds * x);
                                    }
                                }
                            });
                        Ok((gq, gk, gv))
                    })
                })
            })
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(gq, q.shape(), dev)?),
            Some(Tensor::from_vec(gk, k.shape(), dev)?),
            Some(Tensor::from_vec(gv, v.shape(), dev)?),
        ))
    }
}
