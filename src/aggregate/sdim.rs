//! SDIM (Cao et al., CIKM'22): hash-bucket gathering instead of attention over the long history.
//!
//! With `G` SimHash signatures of `τ` bits (`m = G·τ` fixed Gaussian projections, see
//! [`crate::search::simhash`]): for each group g,
//! `a_g = l2norm(Σ_{j: sig_g(e_j) = sig_g(t)} v_j)`, and the interest is `u = (1/G) Σ_g a_g`.
//! An empty bucket gives `a_g = 0` (never NaN). The signatures are computed from the keys view and
//! the sums from the values view (the same tables unless decoupled). No gradient flows through
//! the hashes: the behaviors that collide receive `∂a_g`, the target's embedding none from here.
//!
//! BSE (behavior sequence encoding) precomputes, per user, every bucket of every group:
//! `B[g][s] = Σ_{j: sig_g(e_j) = s} v_j` ([`bucket_table`]), so serving needs only `sig_g(t)`.
//!
//! The op reads values straight from the flat leaf: nothing of size `n · d` is built or kept. The
//! forward keeps the `[B, G, d]` bucket sums; the backward scatter-adds into the leaf through the
//! window's token index, recomputing each behavior's gradient `Σ_{g matching} ∂S_g`.

use super::Packed;
use crate::cpu::{storage_f32, with_data, Stash};
use crate::embedding::{Leaves, TokenIndex};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The SDIM unit's settings (its projections live in the model's buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sdim {
    /// Groups G.
    pub groups: usize,
    /// Bits per signature τ.
    pub tau: usize,
    /// l2-normalise each group's sum.
    pub normalize: bool,
}

/// Hash signatures of a window: the targets' `[B, G]` and the window rows' `[m, G]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `[B, G]`.
    pub target: Arc<Vec<u16>>,
    /// `[m, G]`, in window order.
    pub rows: Arc<Vec<u16>>,
}

/// Hash signatures of a window kept on the model's device (the generic path's plan): the
/// targets' `[B, G]` and the window rows' `[m, G]`, u32.
#[derive(Debug, Clone)]
pub struct DeviceSignatures {
    /// `[B, G]`.
    pub target: Tensor,
    /// `[m, G]`, in window order.
    pub rows: Tensor,
}

impl Sdim {
    /// The interest `u` of every sample.
    ///
    /// # Shapes
    /// leaf flat, values index `[m]` rows over the window `packed` → `[B, d_v]`
    pub fn forward(
        &self,
        leaves: &Leaves,
        values: &Arc<TokenIndex>,
        packed: &Packed,
        sigs: &Signatures,
    ) -> crate::Result<Tensor> {
        let (b, m, g) = (packed.batch(), packed.rows(), self.groups);
        if values.rows != m || sigs.rows.len() != m * g || sigs.target.len() != b * g {
            return Err(crate::Error::InvalidArgument(format!(
                "sdim: {} value rows, {} signatures, {} target signatures for B = {b}, m = {m}, G = {g}",
                values.rows,
                sigs.rows.len(),
                sigs.target.len()
            )));
        }
        Ok(leaves.tensor().apply_op1(SdimPool {
            grad: leaves.accumulator().clone(),
            unit: *self,
            values: values.clone(),
            offsets: packed.offsets.clone(),
            sigs: sigs.clone(),
            saved: Default::default(),
        })?)
    }
}

impl Sdim {
    /// [`Sdim::forward`] with candle ops (any device) on the window's gathered values: which
    /// rows match their target's signature in each group is decided on the host (the
    /// signatures carry no gradient), the sums are one batched matrix product.
    ///
    /// # Shapes
    /// values `[m, d_v]` over the window `packed` → `[B, d_v]`
    pub fn forward_generic(
        &self,
        values: &Tensor,
        packed: &Packed,
        sigs: &DeviceSignatures,
    ) -> crate::Result<Tensor> {
        let (b, m, g) = (packed.batch(), packed.rows(), self.groups);
        let (d, dev) = (values.dim(1)?, values.device());
        if values.dim(0)? != m || sigs.rows.dims() != [m, g] || sigs.target.dims() != [b, g] {
            return Err(crate::Error::InvalidArgument(format!(
                "sdim: {} value rows, signatures {:?}, target signatures {:?} for B = {b}, m = {m}, G = {g}",
                values.dim(0)?,
                sigs.rows.dims(),
                sigs.target.dims()
            )));
        }
        if m == 0 {
            return Ok(Tensor::zeros((b, d), values.dtype(), dev)?);
        }
        // Per sample, `S = Hᵀ V`: H says which of its behaviors match the target in each group
        // (0 on padding), V holds their values; one batched product `[B, G, L] × [B, L, d]`.
        // H is built where the signatures are (the device): nothing crosses the bus.
        let l = packed.len();
        let pos = packed.pos(dev)?;
        let their_target = sigs.target.index_select(&packed.seg(dev)?, 0)?; // [m, G]
        let hit = sigs.rows.eq(&their_target)?.to_dtype(values.dtype())?; // [m, G]
        let hit = Tensor::zeros((b * l, g), values.dtype(), dev)?
            .index_add(&pos, &hit, 0)?
            .reshape((b, l, g))?
            .transpose(1, 2)?
            .contiguous()?;
        let padded = Tensor::zeros((b * l, d), values.dtype(), dev)?
            .index_add(&pos, values, 0)?
            .reshape((b, l, d))?;
        let sums = hit.matmul(&padded)?; // [B, G, d]
        let a = if self.normalize {
            // 1/‖S‖ where the bucket holds anything; an empty bucket's sum is 0 either way.
            let inv = sums
                .sqr()?
                .sum_keepdim(2)?
                .maximum(1e-24)?
                .sqrt()?
                .recip()?;
            sums.broadcast_mul(&inv)?
        } else {
            sums
        };
        Ok(a.mean(1)?)
    }
}

/// Every bucket of every group (BSE): `out[g][s] = Σ_{j: sig[j][g] = s} values[j]`.
///
/// # Shapes
/// values `[m, d]`, sigs `[m, G]` → `[G, 2^τ, d]`
pub fn bucket_table(values: &[f32], d: usize, sigs: &[u16], groups: usize, tau: usize) -> Vec<f32> {
    let mut out = vec![0f32; groups * (1usize << tau) * d];
    add_to_buckets(&mut out, values, d, sigs, groups, tau, 1.0);
    out
}

/// Per row and group, the sum of the row's values whose signature equals the row's target's:
/// `S[r][g] = Σ_{j in row r: sigs[j][g] = target[r][g]} values[j]`, the sums [`Sdim::forward`]
/// normalises and averages (its op gathers the same sums straight from the leaf). Rows are
/// packed by `offsets [rows + 1]`; each sum runs over j in order.
///
/// # Shapes
/// values `[n, d]`, sigs `[n, G]`, target `[rows, G]` → `[rows, G, d]`
pub fn matched_sums(
    values: &[f32],
    d: usize,
    sigs: &[u32],
    groups: usize,
    target: &[u32],
    offsets: &[u32],
) -> Vec<f32> {
    let g = groups;
    let rows = offsets.len().saturating_sub(1);
    let mut out = vec![0f32; rows * g * d];
    out.par_chunks_mut((g * d).max(1))
        .enumerate()
        .for_each(|(r, o)| {
            let t = &target[r * g..(r + 1) * g];
            for j in offsets[r] as usize..offsets[r + 1] as usize {
                let v = &values[j * d..(j + 1) * d];
                for (q, (&s, &tq)) in sigs[j * g..(j + 1) * g].iter().zip(t).enumerate() {
                    if s == tq {
                        crate::cpu::axpy(1.0, v, &mut o[q * d..(q + 1) * d]);
                    }
                }
            }
        });
    out
}

impl Sdim {
    /// The interest from precomputed bucket sums (serving from a user's BSE): `sums [B, G, d]`,
    /// each sample's target's bucket of each group → `u [B, d]`, the same function as
    /// [`Sdim::forward`] computes from the rows.
    pub fn from_sums(&self, sums: &[f32], d: usize) -> Vec<f32> {
        let g = self.groups;
        let b = sums.len() / (g * d).max(1);
        let mut u = vec![0f32; b * d];
        let (mut a, mut norms) = (vec![0f32; g * d], vec![0f32; g]);
        for (ub, s) in u
            .chunks_exact_mut(d.max(1))
            .zip(sums.chunks_exact((g * d).max(1)))
        {
            combine(s, d, self.normalize, &mut a, &mut norms, ub);
        }
        u
    }
}

/// Adds `sign ×` each row of `values` to the bucket its signature names in every group of a
/// `[G, 2^τ, d]` table (BSE; `sign = -1` takes rows out of it).
pub fn add_to_buckets(
    table: &mut [f32],
    values: &[f32],
    d: usize,
    sigs: &[u16],
    groups: usize,
    tau: usize,
    sign: f32,
) {
    let nb = 1usize << tau;
    for (v, s) in values.chunks_exact(d.max(1)).zip(sigs.chunks_exact(groups)) {
        for (g, &sg) in s.iter().enumerate() {
            let o = &mut table[(g * nb + sg as usize) * d..(g * nb + sg as usize + 1) * d];
            if sign == 1.0 {
                o.iter_mut().zip(v).for_each(|(a, x)| *a += x);
            } else {
                o.iter_mut().zip(v).for_each(|(a, x)| *a += sign * x);
            }
        }
    }
}

/// `u = (1/G) Σ_g l2norm(S_g)` from bucket sums `S [G, d]`; `a [G, d]` and the norms are written.
fn combine(s: &[f32], d: usize, normalize: bool, a: &mut [f32], norms: &mut [f32], u: &mut [f32]) {
    let g = norms.len();
    u.iter_mut().for_each(|x| *x = 0.0);
    for q in 0..g {
        let sq = &s[q * d..(q + 1) * d];
        // A lane-parallel dot (a sequential float sum would not vectorise).
        let n = crate::cpu::dot(sq, sq).sqrt();
        norms[q] = n;
        let f = if !normalize {
            1.0
        } else if n > 0.0 {
            1.0 / n
        } else {
            0.0
        };
        let aq = &mut a[q * d..(q + 1) * d];
        aq.iter_mut().zip(sq).for_each(|(x, v)| *x = v * f);
        let inv_g = 1.0 / g as f32;
        u.iter_mut()
            .zip(aq.iter())
            .for_each(|(x, v)| *x += v * inv_g);
    }
}

struct Saved {
    /// `[B, G, d]` normalised sums a.
    a: Vec<f32>,
    /// `[B, G]` norms of the sums.
    norms: Vec<f32>,
    /// Window rows that collide with their target in at least one group, ascending.
    hits: Vec<u32>,
}

struct SdimPool {
    grad: Arc<crate::embedding::leaves::GradAccumulator>,
    unit: Sdim,
    values: Arc<TokenIndex>,
    offsets: Arc<Vec<usize>>,
    sigs: Signatures,
    saved: Arc<Stash<Saved>>,
}

impl CustomOp1 for SdimPool {
    fn name(&self) -> &'static str {
        "sdim-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let flat = storage_f32(s, l, "sdim-pool: leaf")?;
        let (g, d) = (self.unit.groups, self.values.width);
        let b = self.offsets.len() - 1;
        let mut u = vec![0f32; b * d];
        let mut a = vec![0f32; b * g * d];
        let mut norms = vec![0f32; b * g];
        let hits: Vec<Vec<u32>> = u
            .par_chunks_mut(d.max(1))
            .zip(a.par_chunks_mut((g * d).max(1)))
            .zip(norms.par_chunks_mut(g.max(1)))
            .enumerate()
            .map(|(bi, ((ub, ab), nb))| {
                let (s0, s1) = (self.offsets[bi], self.offsets[bi + 1]);
                let tsig = &self.sigs.target[bi * g..(bi + 1) * g];
                let mut sums = vec![0f32; g * d];
                let mut hits = Vec::new();
                for j in s0..s1 {
                    let sj = &self.sigs.rows[j * g..(j + 1) * g];
                    let mut hit = false;
                    for q in 0..g {
                        if sj[q] == tsig[q] {
                            hit = true;
                            self.values
                                .axpy_row(flat, j, 1.0, &mut sums[q * d..(q + 1) * d]);
                        }
                    }
                    if hit {
                        hits.push(j as u32);
                    }
                }
                combine(&sums, d, self.unit.normalize, ab, nb, ub);
                hits
            })
            .collect();
        let hits = hits.concat();
        self.saved.put(Saved { a, norms, hits });
        Ok((CpuStorage::F32(u), Shape::from((b, d))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (g, d) = (self.unit.groups, self.values.width);
        let b = self.offsets.len() - 1;
        let sv = self.saved.take("sdim-pool")?;
        // ∂S [B, G, d] from ∂u: ∂a_g = ∂u / G; through the normalisation ∂S = (∂a − a(a·∂a)) / ‖S‖.
        let ds = with_data(grad, |du| {
            let mut ds = vec![0f32; b * g * d];
            ds.par_chunks_mut((g * d).max(1))
                .enumerate()
                .for_each(|(bi, dsb)| {
                    let dub = &du[bi * d..(bi + 1) * d];
                    for q in 0..g {
                        let aq = &sv.a[(bi * g + q) * d..(bi * g + q + 1) * d];
                        let o = &mut dsb[q * d..(q + 1) * d];
                        let n = sv.norms[bi * g + q];
                        if !self.unit.normalize {
                            o.iter_mut().zip(dub).for_each(|(x, v)| *x = v / g as f32);
                        } else if n > 0.0 {
                            let ad: f32 =
                                aq.iter().zip(dub).map(|(x, y)| x * y).sum::<f32>() / g as f32;
                            o.iter_mut()
                                .zip(dub)
                                .zip(aq)
                                .for_each(|((x, v), a)| *x = (v / g as f32 - a * ad) / n);
                        }
                    }
                });
            Ok(ds)
        })?;
        let seg = super::sample_of_rows(&self.offsets);
        // Into the leaves' accumulator (candle gets no flat-sized gradient tensor).
        // Only colliding rows get a gradient: scatter over them alone.
        self.grad.add_with(|flat_grad| {
            self.values
                .scatter_subset_into(flat_grad, &sv.hits, |j, cols, acc| {
                    let bi = seg[j] as usize;
                    let sj = &self.sigs.rows[j * g..(j + 1) * g];
                    let tsig = &self.sigs.target[bi * g..(bi + 1) * g];
                    for q in 0..g {
                        if sj[q] == tsig[q] {
                            let src =
                                &ds[(bi * g + q) * d + cols.start..(bi * g + q) * d + cols.end];
                            crate::cpu::axpy(1.0, src, acc);
                        }
                    }
                })
        })?;
        Ok(None)
    }
}
