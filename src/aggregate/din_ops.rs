//! Fused CPU ops of DIN's activation unit for units other than one Dice layer (more layers,
//! other activations; the paper's unit is one op, `super::din_unit`), each with a
//! hand-written backward. They replace
//! candle's op-by-op graph, whose temporaries over `[n, d]` and generic backward (index_select →
//! index_add into zeros, broadcast reductions) dominated the step.
//!
//! - `first_layer`: `H = (W2−W3)·e + W4·(t⊙e) + (W1+W3)·t + b` for every packed behavior,
//!   the `t` term once per sample; one GEMM over `[n, 2d]`.
//! - `pool`: `a_j = A_j·w + c` (optionally softmax per history), `u_b = Σ_{j∈b} a_j e_j`.
//!
//! Rows are *packed*: sample `b`'s behaviors are rows `offsets[b]..offsets[b+1]`, offsets
//! checked once by [`Packed`] (the ops write per-sample ranges in parallel). Every
//! reduction runs in a fixed order (per sample, or fixed-size chunks), so results do not depend
//! on the thread count. `crate::aggregate::ActivationUnit` checks both against the paper's
//! formula in tests.

// `let p = p;` inside the parallel closures is deliberate: it makes the closure capture the whole
// `SendPtr` (which is Send + Sync) rather than its raw-pointer field (edition-2021 disjoint
// captures), so clippy's redundant_locals does not apply.
#![allow(
    clippy::redundant_locals,
    clippy::too_many_arguments,
    clippy::needless_range_loop
)]

use super::Packed;
use crate::cpu::{dot, recycle, scratch, sgemm, sgemm_tn_tall, with_data, Mat, SendPtr};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use crate::cpu::storage_f32 as slice;

/// Sample ranges `(b, start, end)` of the packed rows.
pub(super) fn ranges(
    offsets: &[usize],
) -> impl IndexedParallelIterator<Item = (usize, usize, usize)> + '_ {
    offsets
        .par_windows(2)
        .enumerate()
        .map(|(b, w)| (b, w[0], w[1]))
}

/// The first layer's weights split for the factored form: `wt = W1+W3 [h,d]`,
/// `wc = [W2−W3 | W4] [h,2d]`, `bias [h]`, from `wb = [W | b] [h, 4d+1]`.
fn split_weights(wb: &[f32], h: usize, d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let stride = 4 * d + 1;
    let (mut wt, mut wc, mut bias) = (vec![0f32; h * d], vec![0f32; h * 2 * d], vec![0f32; h]);
    for r in 0..h {
        let w = &wb[r * stride..(r + 1) * stride];
        for c in 0..d {
            wt[r * d + c] = w[c] + w[2 * d + c];
            wc[r * 2 * d + c] = w[d + c] - w[2 * d + c];
            wc[r * 2 * d + d + c] = w[3 * d + c];
        }
        bias[r] = w[4 * d];
    }
    (wt, wc, bias)
}

/// `X = [e | t_seg ⊙ e]`, `[n, 2d]`.
fn build_x(t: &[f32], s: &[f32], offsets: &[usize], d: usize) -> Vec<f32> {
    let n = offsets.last().copied().unwrap_or(0);
    // Every row 0..n belongs to one sample range and is fully written.
    let mut x = scratch(n * 2 * d);
    let xp = SendPtr(x.as_mut_ptr());
    ranges(offsets).for_each(|(b, s0, s1)| {
        let xp = xp;
        let tb = &t[b * d..(b + 1) * d];
        for j in s0..s1 {
            // SAFETY: sample ranges are disjoint, so row j of x is written by one task only.
            let row = unsafe { std::slice::from_raw_parts_mut(xp.0.add(j * 2 * d), 2 * d) };
            let e = &s[j * d..(j + 1) * d];
            row[..d].copy_from_slice(e);
            for c in 0..d {
                row[d + c] = tb[c] * e[c];
            }
        }
    });
    x
}

/// Forward of the factored first layer on slices: `H = X·Wcᵀ + (T·Wtᵀ + b)[seg]` with
/// `X = [e | t ⊙ e]`. Returns `(H [n, h], X [n, 2d])` (both from the scratch pool).
fn first_layer_fwd(
    t: &[f32],
    s: &[f32],
    wb: &[f32],
    offsets: &[usize],
    h: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let bsz = offsets.len() - 1;
    let n = offsets[bsz];
    let (wt, wc, bias) = split_weights(wb, h, d);
    let tt = target_term(t, &wt, &bias, bsz, d);
    let x = build_x(t, s, offsets, d);
    let mut hid = scratch(n * h); // fully written by the GEMM
    sgemm(
        Mat::new(&x, n, 2 * d),
        Mat::new(&wc, h, 2 * d).t(),
        &mut hid,
        false,
    );
    let hp = SendPtr(hid.as_mut_ptr());
    ranges(offsets).for_each(|(b, s0, s1)| {
        let hp = hp;
        let tb = &tt[b * h..(b + 1) * h];
        // SAFETY: disjoint sample ranges.
        let rows = unsafe { std::slice::from_raw_parts_mut(hp.0.add(s0 * h), (s1 - s0) * h) };
        for row in rows.chunks_exact_mut(h) {
            row.iter_mut().zip(tb).for_each(|(x, v)| *x += v);
        }
    });
    (hid, x)
}

/// The target's term of the factored first layer, once per sample: `T·Wtᵀ + b` `[B, h]`.
pub(super) fn target_term(t: &[f32], wt: &[f32], bias: &[f32], bsz: usize, d: usize) -> Vec<f32> {
    let h = bias.len();
    let mut tt = vec![0f32; bsz * h];
    sgemm(Mat::new(t, bsz, d), Mat::new(wt, h, d).t(), &mut tt, false);
    for row in tt.chunks_exact_mut(h) {
        row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
    }
    tt
}

/// The target term's backward given `G_b = Σ_{j∈b} ∂H_j` (`[B, h]`): adds `G·Wt` into `dt` and
/// returns `∂Wt = Gᵀ·T` `[h, d]`.
pub(super) fn target_grads(
    g: &[f32],
    t: &[f32],
    wt: &[f32],
    bsz: usize,
    d: usize,
    dt: &mut [f32],
) -> Vec<f32> {
    let h = wt.len() / d.max(1);
    sgemm(Mat::new(g, bsz, h), Mat::new(wt, h, d), dt, true);
    let mut dwt = vec![0f32; h * d];
    sgemm(
        Mat::new(g, bsz, h).t(),
        Mat::new(t, bsz, d),
        &mut dwt,
        false,
    );
    dwt
}

/// One row of the paper's `∂W = [∂W1 | ∂W2 | ∂W3 | ∂W4]` (`out`, 4d) from the factored
/// gradients: `∂W1 = ∂Wt`, `∂W2 = ∂We`, `∂W3 = ∂Wt − ∂We`, `∂W4`.
pub(super) fn unfactor_row(dwt: &[f32], dwe: &[f32], dw4: &[f32], out: &mut [f32]) {
    let d = dwt.len();
    for c in 0..d {
        out[c] = dwt[c];
        out[d + c] = dwe[c];
        out[2 * d + c] = dwt[c] - dwe[c];
        out[3 * d + c] = dw4[c];
    }
}

/// Backward of [`first_layer_fwd`] given `dH`: adds ∂L/∂e into `ds` and returns
/// `(∂L/∂t [B, d], ∂L/∂[W | b] [h, 4d+1])`.
///
/// With `dX = dH·Wc`, `G_b = Σ_{j∈b} dH_j`: `∂e_j = dX_j[..d] + dX_j[d..] ⊙ t_b`,
/// `∂t_b = Σ_j dX_j[d..] ⊙ e_j + G_b·Wt`, `∂Wc = dHᵀ·X`, `∂Wt = Gᵀ·T`, `∂b = Σ_b G_b`, and back to
/// `W = [W1 | W2 | W3 | W4]`: `∂W1 = ∂Wt`, `∂W2 = ∂We`, `∂W3 = ∂Wt − ∂We`, `∂W4 = ∂W4`.
#[allow(clippy::too_many_arguments)]
fn first_layer_bwd(
    t: &[f32],
    s: &[f32],
    x: &[f32],
    dh: &[f32],
    wb: &[f32],
    offsets: &[usize],
    h: usize,
    d: usize,
    ds: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let bsz = offsets.len() - 1;
    let n = offsets[bsz];
    let (wt, wc, _) = split_weights(wb, h, d);
    let mut dx = scratch(n * 2 * d); // fully written by the GEMM
    sgemm(Mat::new(dh, n, h), Mat::new(&wc, h, 2 * d), &mut dx, false);
    let mut dwc = vec![0f32; h * 2 * d];
    sgemm_tn_tall(dh, x, n, h, 2 * d, &mut dwc);
    let mut g = vec![0f32; bsz * h];
    let mut dt = vec![0f32; bsz * d];
    let (gp, dtp, dsp) = (
        SendPtr(g.as_mut_ptr()),
        SendPtr(dt.as_mut_ptr()),
        SendPtr(ds.as_mut_ptr()),
    );
    ranges(offsets).for_each(|(b, s0, s1)| {
        let (gp, dtp, dsp) = (gp, dtp, dsp);
        // SAFETY: sample b owns row b of g and dt, and rows s0..s1 of ds.
        let gb = unsafe { std::slice::from_raw_parts_mut(gp.0.add(b * h), h) };
        let dtb = unsafe { std::slice::from_raw_parts_mut(dtp.0.add(b * d), d) };
        let tb = &t[b * d..(b + 1) * d];
        for j in s0..s1 {
            let dsj = unsafe { std::slice::from_raw_parts_mut(dsp.0.add(j * d), d) };
            let dxj = &dx[j * 2 * d..(j + 1) * 2 * d];
            let e = &s[j * d..(j + 1) * d];
            for c in 0..d {
                dsj[c] += dxj[c] + dxj[d + c] * tb[c];
                dtb[c] += dxj[d + c] * e[c];
            }
            gb.iter_mut()
                .zip(&dh[j * h..(j + 1) * h])
                .for_each(|(a, v)| *a += v);
        }
    });
    recycle(dx);
    let dwt = target_grads(&g, t, &wt, bsz, d, &mut dt);
    let stride = 4 * d + 1;
    let mut dwb = vec![0f32; h * stride];
    for r in 0..h {
        let (dwe, dw4) = dwc[r * 2 * d..(r + 1) * 2 * d].split_at(d);
        let o = &mut dwb[r * stride..r * stride + 4 * d];
        unfactor_row(&dwt[r * d..(r + 1) * d], dwe, dw4, o);
    }
    for row in g.chunks_exact(h) {
        for (r, v) in row.iter().enumerate() {
            dwb[r * stride + 4 * d] += v;
        }
    }
    (dt, dwb)
}

/// The first layer of the activation unit on packed behaviors.
///
/// # Shapes
/// target `[B, d]`, seq `[n, d]`, `wb = [W | b]` `[h, 4d+1]` → `[n, h]`
pub(crate) fn first_layer(
    target: &Tensor,
    seq: &Tensor,
    wb: &Tensor,
    packed: &Packed,
) -> Result<Tensor> {
    target.apply_op3(
        seq,
        wb,
        FirstLayer {
            offsets: packed.offsets.clone(),
        },
    )
}

struct FirstLayer {
    offsets: Arc<Vec<usize>>,
}

impl CustomOp3 for FirstLayer {
    fn name(&self) -> &'static str {
        "din-first-layer"
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
        let (bsz, d) = l1.shape().dims2()?;
        let (n, d2) = l2.shape().dims2()?;
        let (h, w4) = l3.shape().dims2()?;
        if d != d2 || w4 != 4 * d + 1 || self.offsets.len() != bsz + 1 || self.offsets[bsz] != n {
            candle_core::bail!(
                "din-first-layer: shapes t {:?} s {:?} w {:?} do not agree",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (t, s, wb) = (
            slice(s1, l1, "target")?,
            slice(s2, l2, "seq")?,
            slice(s3, l3, "weight")?,
        );
        let (out, x) = first_layer_fwd(t, s, wb, &self.offsets, h, d);
        drop(x);
        Ok((CpuStorage::F32(out), Shape::from((n, h))))
    }

    fn bwd(
        &self,
        target: &Tensor,
        seq: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bsz, d) = target.dims2()?;
        let (n, _) = seq.dims2()?;
        let (h, _) = wb.dims2()?;
        let offsets = &self.offsets;
        let (dt, ds, dwb) = with_data(target, |t| {
            with_data(seq, |s| {
                with_data(wb, |wbv| {
                    with_data(grad, |dh| {
                        let x = build_x(t, s, offsets, d);
                        let mut ds = vec![0f32; n * d];
                        let (dt, dwb) = first_layer_bwd(t, s, &x, dh, wbv, offsets, h, d, &mut ds);
                        Ok((dt, ds, dwb))
                    })
                })
            })
        })?;
        let dev = target.device();
        Ok((
            Some(Tensor::from_vec(dt, (bsz, d), dev)?),
            Some(Tensor::from_vec(ds, (n, d), dev)?),
            Some(Tensor::from_vec(dwb, (h, 4 * d + 1), dev)?),
        ))
    }
}

/// Backward of the pooling `u_b = Σ_{j∈b} w_j e_j` (w = scores, or their softmax per sample):
/// **sets** `ds_j = w_j·dU_b` and returns ∂L/∂score_j (through the softmax when `softmax`).
fn pool_bwd(
    s: &[f32],
    du: &[f32],
    wts: &[f32],
    offsets: &[usize],
    softmax: bool,
    d: usize,
    ds: &mut [f32],
) -> Vec<f32> {
    let n = wts.len();
    let mut dscore = vec![0f32; n];
    let (dp, dsp) = (SendPtr(dscore.as_mut_ptr()), SendPtr(ds.as_mut_ptr()));
    ranges(offsets).for_each(|(b, s0, s1)| {
        let (dp, dsp) = (dp, dsp);
        let dub = &du[b * d..(b + 1) * d];
        // SAFETY: sample b owns dscore[s0..s1] and rows s0..s1 of ds.
        let dsc = unsafe { std::slice::from_raw_parts_mut(dp.0.add(s0), s1 - s0) };
        for (k, j) in (s0..s1).enumerate() {
            dsc[k] = dot(dub, &s[j * d..(j + 1) * d]);
            let dsj = unsafe { std::slice::from_raw_parts_mut(dsp.0.add(j * d), d) };
            dsj.iter_mut().zip(dub).for_each(|(o, g)| *o = wts[j] * g);
        }
        if softmax {
            let p = &wts[s0..s1];
            let pd: f32 = p.iter().zip(dsc.iter()).map(|(x, y)| x * y).sum();
            dsc.iter_mut().zip(p).for_each(|(g, p)| *g = p * (*g - pd));
        }
    });
    dscore
}

/// Attention scores and weighted pooling on packed behaviors.
///
/// # Shapes
/// hidden `[n, h]`, seq `[n, d]`, `wo = [w | c]` `[h+1]` → `[B, d]`
pub(crate) fn pool(
    hidden: &Tensor,
    seq: &Tensor,
    wo: &Tensor,
    packed: &Packed,
    softmax: bool,
) -> Result<Tensor> {
    hidden.apply_op3(
        seq,
        wo,
        Pool {
            offsets: packed.offsets.clone(),
            softmax,
        },
    )
}

struct Pool {
    offsets: Arc<Vec<usize>>,
    softmax: bool,
}

impl Pool {
    /// The weights of every packed row: scores, or their softmax per sample.
    fn weights(&self, a: &[f32], wo: &[f32], h: usize) -> Vec<f32> {
        let n = a.len() / h;
        let (w, c) = (&wo[..h], wo[h]);
        let mut out = vec![0f32; n];
        let op = SendPtr(out.as_mut_ptr());
        ranges(&self.offsets).for_each(|(_, s0, s1)| {
            let op = op;
            // SAFETY: disjoint sample ranges.
            let o = unsafe { std::slice::from_raw_parts_mut(op.0.add(s0), s1 - s0) };
            for (k, j) in (s0..s1).enumerate() {
                o[k] = a[j * h..(j + 1) * h]
                    .iter()
                    .zip(w)
                    .map(|(x, y)| x * y)
                    .sum::<f32>()
                    + c;
            }
            if self.softmax && !o.is_empty() {
                let m = o.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0f32;
                o.iter_mut().for_each(|x| {
                    *x = (*x - m).exp();
                    z += *x;
                });
                o.iter_mut().for_each(|x| *x /= z);
            }
        });
        out
    }
}

impl CustomOp3 for Pool {
    fn name(&self) -> &'static str {
        "din-pool"
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
        let (n, h) = l1.shape().dims2()?;
        let (n2, d) = l2.shape().dims2()?;
        let bsz = self.offsets.len().saturating_sub(1);
        if n != n2 || l3.shape().elem_count() != h + 1 || self.offsets.last() != Some(&n) {
            candle_core::bail!(
                "din-pool: shapes a {:?} s {:?} w {:?} do not agree",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (a, s, wo) = (
            slice(s1, l1, "hidden")?,
            slice(s2, l2, "seq")?,
            slice(s3, l3, "weight")?,
        );
        let wts = self.weights(a, wo, h);
        let mut u = vec![0f32; bsz * d];
        u.par_chunks_mut(d.max(1))
            .zip(self.offsets.par_windows(2))
            .for_each(|(ub, w)| {
                for j in w[0]..w[1] {
                    let wj = wts[j];
                    ub.iter_mut()
                        .zip(&s[j * d..(j + 1) * d])
                        .for_each(|(x, e)| *x += wj * e);
                }
            });
        Ok((CpuStorage::F32(u), Shape::from((bsz, d))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        seq: &Tensor,
        wo: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = hidden.dims2()?;
        let (_, d) = seq.dims2()?;
        let (da_out, ds, dwo) = with_data(hidden, |a| {
            with_data(seq, |s| {
                with_data(wo, |wov| {
                    with_data(grad, |du| {
                        let wts = self.weights(a, wov, h);
                        let mut ds = vec![0f32; n * d];
                        let dscore = pool_bwd(s, du, &wts, &self.offsets, self.softmax, d, &mut ds);
                        // dA = dscore ⊗ w; dw = Aᵀ·dscore; dc = Σ dscore.
                        let w = &wov[..h];
                        let mut da = vec![0f32; n * h];
                        da.par_chunks_mut(h)
                            .zip(dscore.par_iter())
                            .with_min_len(256)
                            .for_each(|(row, &g)| {
                                row.iter_mut().zip(w).for_each(|(o, wk)| *o = g * wk);
                            });
                        let mut dwo = vec![0f32; h + 1];
                        sgemm(
                            Mat::new(a, n, h).t(),
                            Mat::new(&dscore, n, 1),
                            &mut dwo[..h],
                            false,
                        );
                        dwo[h] = dscore.iter().sum();
                        Ok((da, ds, dwo))
                    })
                })
            })
        })?;
        let dev = hidden.device();
        Ok((
            Some(Tensor::from_vec(da_out, (n, h), dev)?),
            Some(Tensor::from_vec(ds, (n, d), dev)?),
            Some(Tensor::from_vec(dwo, wo.shape(), dev)?),
        ))
    }
}
