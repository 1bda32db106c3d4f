//! DIN's activation unit with one Dice hidden layer (the paper's unit) as one fused, tiled CPU
//! op with a hand-written backward.
//!
//! The paper's first layer on `[t, e, t−e, t⊙e]` is `(W1+W3)·t_b + (W2−W3)·e_j + W4·(t_b⊙e_j) + b`.
//! The `t` term is computed once per sample, and the target is folded into the rest:
//! `We·e + W4·(t_b⊙e) = M_b·e` with `M_b = We + W4·diag(t_b)` (`[h, d]`, once per sample). So
//! `H_j = M_b·e_j + (Wt·t_b + b)`, one `[m, d]×[d, h]` product per block (half the FLOPs of the
//! factored form's `[m, 2d]×[2d, h]`), then `a_j = w_out·dice(H_j) + c` (optionally softmax per
//! sample), `u_b = Σ_{j∈b} a_j e_j`. Backward, with `P_b = Σ_{j∈b} ∂H_jᵀ e_j`:
//! `∂e_j = ∂H_j·M_b + a_j ∂u_b`, `∂We = Σ_b P_b`, `∂W4 = Σ_b P_b·diag(t_b)`,
//! `∂t_b = Σ_q W4[q,·] ⊙ P_b[q,·] + Wtᵀ·G_b` with `G_b = Σ_{j∈b} ∂H_j`.
//!
//! The rows are processed in blocks of at most [`TILE_ROWS`] rows of one sample, which stay in
//! the core's L2 cache: a block's behaviors are read (from a dense `[n, d]` history, or straight
//! from the step's flat leaf through its [`TokenIndex`], so the gathered history and its gradient
//! never exist as candle tensors), multiplied and consumed in place. Only `H [n, h]` (training,
//! for Dice's batch statistics and the backward), the `[n]` weights and the history gradient are
//! ever of size `n`; `∂H` and `∂e` live one block at a time.
//!
//! Work is split into tasks of whole samples of at least [`TASK_ROWS`] rows; every partial sum
//! (Dice statistics, weight gradients) is taken per task or per fixed row chunk and reduced in a
//! fixed order, so results do not depend on the thread count. The history gradient is
//! scatter-added into the leaf's gradient buffer in a fixed order by [`TokenIndex::scatter_into`].
//!
//! `crate::aggregate::ActivationUnit` checks this op against the paper's padded formula and
//! against candle autograd of the same function (values and every gradient).

// `let p = p;` inside the parallel closures makes them capture the whole `SendPtr` (Send +
// Sync) rather than its raw-pointer field (edition-2021 disjoint captures).
#![allow(
    clippy::redundant_locals,
    clippy::too_many_arguments,
    clippy::needless_range_loop
)]

use super::Packed;
use crate::cpu::{
    dot, recycle, scratch, sgemm_serial, storage_f32, with_data, Mat, SendPtr, Stash,
};
use crate::embedding::leaves::{GradAccumulator, TokenIndex};
use crate::nn::dice_rows as dice;
use crate::nn::{DiceStats, CHUNK_ROWS};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Rows per block: `X` (`[256, 2d]`), `∂X`, `∂H` and the behaviors of one block are about
/// 0.4 MB at d = h = 64, within a core's L2.
pub(crate) const TILE_ROWS: usize = 256;

/// Rows per task (at least; tasks are whole samples).
pub(crate) const TASK_ROWS: usize = 1024;

/// Statistics Dice normalises with: running ones (evaluation) or the batch's (training).
#[derive(Debug, Clone)]
pub(crate) enum DiceNorm {
    /// Running mean and variance.
    Fixed(Arc<Vec<f32>>, Arc<Vec<f32>>),
    /// Batch statistics; the forward pass leaves them here for the running update.
    Batch(Arc<Stash<DiceStats>>),
}

/// Where the unit reads the behaviors.
#[derive(Debug, Clone)]
pub(crate) enum History {
    /// The op's second input is the packed history `[n, d]`; it gets an `[n, d]` gradient.
    Dense,
    /// The op's second input is the step's flat leaf; row `j` is `index`'s row `j`, and the
    /// history gradient is scatter-added into `grad` (candle gets none for the leaf).
    Leaf {
        index: Arc<TokenIndex>,
        grad: Arc<GradAccumulator>,
    },
}

/// The fused unit.
///
/// `params = [W (h·4d) | b (h) | α (h) | w_out (h) | c (1)]`, flat.
///
/// # Shapes
/// target `[B, d]`, history `[n, d]` (dense) or the flat leaf, params `[h·4d + 3h + 1]` →
/// `[B, d]`
pub(crate) fn attention_unit(
    target: &Tensor,
    history: &Tensor,
    params: &Tensor,
    packed: &Packed,
    h: usize,
    softmax: bool,
    eps: f32,
    norm: DiceNorm,
    source: History,
) -> Result<Tensor> {
    let op = Unit {
        offsets: packed.offsets.clone(),
        h,
        softmax,
        eps,
        norm,
        source,
        saved: Default::default(),
    };
    target.apply_op3(history, params, op)
}

struct Unit {
    offsets: Arc<Vec<usize>>,
    h: usize,
    softmax: bool,
    eps: f32,
    norm: DiceNorm,
    source: History,
    saved: Arc<Stash<Saved>>,
}

/// What the forward keeps for the backward.
struct Saved {
    /// First-layer output (Dice input) `[n, h]`; empty with fixed statistics (recomputed if a
    /// backward comes).
    hid: Vec<f32>,
    /// Pooling weights (scores or their softmax) `[n]`.
    wts: Vec<f32>,
    /// Dice mean and 1/sqrt(var + ε) `[h]`.
    mean: Vec<f32>,
    inv: Vec<f32>,
}

/// Behavior rows, dense or read through a token index.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Dense(&'a [f32], usize),
    Leaf(&'a TokenIndex, &'a [f32]),
}

impl Rows<'_> {
    #[inline]
    fn read(&self, j: usize, out: &mut [f32]) {
        match *self {
            Rows::Dense(s, d) => out.copy_from_slice(&s[j * d..(j + 1) * d]),
            Rows::Leaf(ix, flat) => ix.read_row(flat, j, out),
        }
    }
    #[inline]
    fn dot(&self, j: usize, q: &[f32]) -> f32 {
        match *self {
            Rows::Dense(s, d) => dot(&s[j * d..(j + 1) * d], q),
            Rows::Leaf(ix, flat) => ix.dot_row(flat, j, q),
        }
    }
    #[inline]
    fn axpy(&self, j: usize, a: f32, out: &mut [f32]) {
        match *self {
            Rows::Dense(s, d) => crate::cpu::axpy(a, &s[j * d..(j + 1) * d], out),
            Rows::Leaf(ix, flat) => ix.axpy_row(flat, j, a, out),
        }
    }
}

/// The parameters split for the factored first layer.
struct Weights<'a> {
    /// `W1 + W3` `[h, d]` (the target's term).
    wt: Vec<f32>,
    /// `W2 − W3` `[h, d]` (the behavior's term).
    we: Vec<f32>,
    /// `W4` `[h, d]` (the product's term).
    w4: Vec<f32>,
    bias: &'a [f32],
    alpha: &'a [f32],
    w_out: &'a [f32],
    c: f32,
}

fn weights(p: &[f32], h: usize, d: usize) -> Weights<'_> {
    let nw = h * 4 * d;
    let (mut wt, mut we, mut w4) = (vec![0f32; h * d], vec![0f32; h * d], vec![0f32; h * d]);
    for r in 0..h {
        let w = &p[r * 4 * d..(r + 1) * 4 * d];
        for c in 0..d {
            wt[r * d + c] = w[c] + w[2 * d + c];
            we[r * d + c] = w[d + c] - w[2 * d + c];
            w4[r * d + c] = w[3 * d + c];
        }
    }
    Weights {
        wt,
        we,
        w4,
        bias: &p[nw..nw + h],
        alpha: &p[nw + h..nw + 2 * h],
        w_out: &p[nw + 2 * h..nw + 3 * h],
        c: p[nw + 3 * h],
    }
}

/// Consecutive samples `(b0, b1)` grouped into tasks of at least [`TASK_ROWS`] rows (the last
/// may hold fewer). Depends on the offsets only.
fn tasks(offsets: &[usize]) -> Vec<(usize, usize)> {
    let bsz = offsets.len() - 1;
    let mut out = Vec::new();
    let mut b0 = 0;
    for b in 0..bsz {
        if offsets[b + 1] - offsets[b0] >= TASK_ROWS {
            out.push((b0, b + 1));
            b0 = b + 1;
        }
    }
    if b0 < bsz {
        out.push((b0, bsz));
    }
    out
}

/// A mutable view of `len` elements at `off` of a shared output buffer.
///
/// # Safety
/// The caller's task must be the only one touching that range.
#[inline]
unsafe fn part<'a, T>(p: SendPtr<T>, off: usize, len: usize) -> &'a mut [T] {
    std::slice::from_raw_parts_mut(p.0.add(off), len)
}

/// One task's block buffers.
struct Block {
    /// Behaviors `[TILE, d]`.
    e: Vec<f32>,
    /// The sample's folded first layer `M_b = We + W4·diag(t_b)` `[h, d]`.
    m: Vec<f32>,
}

impl Block {
    fn new(h: usize, d: usize) -> Self {
        Self {
            e: vec![0f32; TILE_ROWS * d],
            m: vec![0f32; h * d],
        }
    }

    /// Folds sample `b`'s target into the first layer.
    fn fold(&mut self, w: &Weights, t: &[f32], b: usize, d: usize) {
        fold_rows(&w.we, &w.w4, &t[b * d..(b + 1) * d], &mut self.m);
    }

    /// Loads rows `r0..r1`.
    fn load(&mut self, rows: Rows, r0: usize, r1: usize, d: usize) {
        for (i, j) in (r0..r1).enumerate() {
            rows.read(j, &mut self.e[i * d..(i + 1) * d]);
        }
    }

    /// `H = E·M_bᵀ + tt_b` for the `m` loaded rows of sample `b`, into `out` (`[m, h]`).
    fn hidden(&self, m: usize, ttb: &[f32], h: usize, d: usize, out: &mut [f32]) {
        sgemm_serial(
            Mat::new(&self.e[..m * d], m, d),
            Mat::new(&self.m, h, d).t(),
            &mut out[..m * h],
            false,
        );
        for row in out[..m * h].chunks_exact_mut(h) {
            crate::cpu::axpy(1.0, ttb, row);
        }
    }
}

/// The blocks `(b, r0, r1)` of samples `b0..b1`: each sample's rows in pieces of at most
/// [`TILE_ROWS`] (a block never spans two samples: its first layer is the sample's).
fn blocks(
    offsets: &[usize],
    b0: usize,
    b1: usize,
) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (b0..b1).flat_map(move |b| {
        let (lo, hi) = (offsets[b], offsets[b + 1]);
        (lo..hi)
            .step_by(TILE_ROWS)
            .map(move |r0| (b, r0, (r0 + TILE_ROWS).min(hi)))
    })
}

impl Unit {
    fn rows<'a>(&'a self, data: &'a [f32], d: usize) -> Result<Rows<'a>> {
        Ok(match &self.source {
            History::Dense => Rows::Dense(data, d),
            History::Leaf { index, .. } => {
                for f in &index.fields {
                    if f.seg_offset + f.seg_rows * f.dim > data.len() {
                        candle_core::bail!("din-attention-unit: index outside the leaf");
                    }
                }
                Rows::Leaf(index, data)
            }
        })
    }

    /// `T·Wtᵀ + b` `[B, h]`.
    fn target_term(&self, t: &[f32], w: &Weights, bsz: usize, d: usize) -> Vec<f32> {
        super::din_ops::target_term(t, &w.wt, w.bias, bsz, d)
    }

    /// `H [n, h]` for every row (no statistics).
    fn hidden_all(
        &self,
        rows: Rows,
        t: &[f32],
        w: &Weights,
        tt: &[f32],
        n: usize,
        d: usize,
    ) -> Vec<f32> {
        let (h, offsets) = (self.h, &self.offsets[..]);
        let mut hid = scratch(n * h); // every row is written by its task
        let hp = SendPtr(hid.as_mut_ptr());
        tasks(offsets).into_par_iter().for_each(|(b0, b1)| {
            let hp = hp;
            let mut blk = Block::new(h, d);
            for (b, r0, r1) in blocks(offsets, b0, b1) {
                if r0 == offsets[b] {
                    blk.fold(w, t, b, d);
                }
                blk.load(rows, r0, r1, d);
                // SAFETY: the task owns rows offsets[b0]..offsets[b1].
                let out = unsafe { part(hp, r0 * h, (r1 - r0) * h) };
                blk.hidden(r1 - r0, &tt[b * h..(b + 1) * h], h, d, out);
            }
        });
        hid
    }

    fn forward(
        &self,
        t: &[f32],
        rows: Rows,
        p: &[f32],
        bsz: usize,
        n: usize,
        d: usize,
    ) -> (Vec<f32>, Saved) {
        let (h, offsets) = (self.h, &self.offsets[..]);
        let w = weights(p, h, d);
        let tt = self.target_term(t, &w, bsz, d);
        let mut scores = vec![0f32; n];
        let (hid, mean, inv) = match &self.norm {
            DiceNorm::Fixed(m, v) => {
                let mean = m.to_vec();
                let inv: Vec<f32> = v.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
                // One pass: each block's H is scored while in cache and never stored.
                let sp = SendPtr(scores.as_mut_ptr());
                tasks(offsets).into_par_iter().for_each(|(b0, b1)| {
                    let sp = sp;
                    let mut blk = Block::new(h, d);
                    let mut hb = vec![0f32; TILE_ROWS * h];
                    for (b, r0, r1) in blocks(offsets, b0, b1) {
                        if r0 == offsets[b] {
                            blk.fold(&w, t, b, d);
                        }
                        blk.load(rows, r0, r1, d);
                        blk.hidden(r1 - r0, &tt[b * h..(b + 1) * h], h, d, &mut hb);
                        // SAFETY: the task owns rows offsets[b0]..offsets[b1].
                        let sc = unsafe { part(sp, r0, r1 - r0) };
                        let hb = &hb[..(r1 - r0) * h];
                        dice::score_rows(hb, &mean, &inv, w.alpha, w.w_out, w.c, sc);
                    }
                });
                (Vec::new(), mean, inv)
            }
            DiceNorm::Batch(slot) => {
                // Pass 1: H, stored, and its column sums per task.
                let mut hid = scratch(n * h); // every row is written by its task
                let hp = SendPtr(hid.as_mut_ptr());
                let parts: Vec<Vec<f64>> = tasks(offsets)
                    .into_par_iter()
                    .map(|(b0, b1)| {
                        let hp = hp;
                        let mut blk = Block::new(h, d);
                        let mut st = vec![0f64; 2 * h];
                        for (b, r0, r1) in blocks(offsets, b0, b1) {
                            if r0 == offsets[b] {
                                blk.fold(&w, t, b, d);
                            }
                            blk.load(rows, r0, r1, d);
                            // SAFETY: the task owns rows offsets[b0]..offsets[b1].
                            let out = unsafe { part(hp, r0 * h, (r1 - r0) * h) };
                            blk.hidden(r1 - r0, &tt[b * h..(b + 1) * h], h, d, out);
                            let (s1, s2) = st.split_at_mut(h);
                            dice::stats_rows(out, s1, s2);
                        }
                        st
                    })
                    .collect();
                let mut tot = vec![0f64; 2 * h];
                for pt in &parts {
                    tot.iter_mut().zip(pt).for_each(|(a, v)| *a += v);
                }
                let nf = n.max(1) as f64;
                let m64: Vec<f64> = tot[..h].iter().map(|s| s / nf).collect();
                let v64: Vec<f64> = (0..h)
                    .map(|q| (tot[h + q] / nf - m64[q] * m64[q]).max(0.0))
                    .collect();
                let mean: Vec<f32> = m64.iter().map(|&m| m as f32).collect();
                let inv: Vec<f32> = v64
                    .iter()
                    .map(|&v| (1.0 / (v + self.eps as f64).sqrt()) as f32)
                    .collect();
                slot.put(DiceStats {
                    mean: m64,
                    var: v64,
                });
                // Pass 2: scores.
                scores
                    .par_chunks_mut(CHUNK_ROWS)
                    .enumerate()
                    .for_each(|(c, sc)| {
                        let j0 = c * CHUNK_ROWS;
                        let x = &hid[j0 * h..(j0 + sc.len()) * h];
                        dice::score_rows(x, &mean, &inv, w.alpha, w.w_out, w.c, sc);
                    });
                (hid, mean, inv)
            }
        };
        // Softmax per sample (in place) and pooling.
        let mut u = vec![0f32; bsz * d];
        let (sp, upp) = (SendPtr(scores.as_mut_ptr()), SendPtr(u.as_mut_ptr()));
        super::din_ops::ranges(offsets).for_each(|(b, s0, s1)| {
            let (sp, upp) = (sp, upp);
            // SAFETY: sample b owns scores[s0..s1] and row b of u.
            let wb = unsafe { part(sp, s0, s1 - s0) };
            let ub = unsafe { part(upp, b * d, d) };
            if self.softmax && !wb.is_empty() {
                let m = wb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0f32;
                wb.iter_mut().for_each(|x| {
                    *x = (*x - m).exp();
                    z += *x;
                });
                wb.iter_mut().for_each(|x| *x /= z);
            }
            for (k, j) in (s0..s1).enumerate() {
                rows.axpy(j, wb[k], ub);
            }
        });
        (
            u,
            Saved {
                hid,
                wts: scores,
                mean,
                inv,
            },
        )
    }

    /// Returns `(∂t [B, d], ∂e [n, d], ∂params)`.
    fn backward(
        &self,
        t: &[f32],
        rows: Rows,
        p: &[f32],
        u: &[f32],
        du: &[f32],
        sv: Saved,
        bsz: usize,
        n: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (h, offsets) = (self.h, &self.offsets[..]);
        let w = weights(p, h, d);
        let batch = matches!(self.norm, DiceNorm::Batch(_));
        let tt;
        let hid = if sv.hid.len() == n * h {
            sv.hid
        } else {
            tt = self.target_term(t, &w, bsz, d);
            self.hidden_all(rows, t, &w, &tt, n, d)
        };
        // 1. Per task and block: ∂L/∂score_j, `du_b·e_j` (through the softmax:
        //    `p_j·(du_b·e_j − Σ_k p_k du_b·e_k)`, and the sum is `du_b·u_b`), then the column
        //    sums [Σh, Σh·x̂, ∂α, ∂w_out] (f32 within a block, f64 across).
        let mut da = vec![0f32; n];
        let dap = SendPtr(da.as_mut_ptr());
        let parts: Vec<Vec<f64>> = tasks(offsets)
            .into_par_iter()
            .map(|(b0, b1)| {
                let dap = dap;
                let mut tot = vec![0f64; 4 * h];
                let mut acc = vec![0f32; 4 * h];
                for (b, r0, r1) in blocks(offsets, b0, b1) {
                    // SAFETY: the task owns rows offsets[b0]..offsets[b1].
                    let dab = unsafe { part(dap, r0, r1 - r0) };
                    let dub = &du[b * d..(b + 1) * d];
                    let pd = if self.softmax {
                        dot(dub, &u[b * d..(b + 1) * d])
                    } else {
                        0.0
                    };
                    for (i, j) in (r0..r1).enumerate() {
                        let g = rows.dot(j, dub);
                        dab[i] = if self.softmax {
                            sv.wts[j] * (g - pd)
                        } else {
                            g
                        };
                    }
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    let g = dice::Grad::Scaled { s: dab, w: w.w_out };
                    let x = &hid[r0 * h..r1 * h];
                    dice::bwd_stats_rows(x, g, &sv.mean, &sv.inv, w.alpha, &mut acc);
                    tot.iter_mut().zip(&acc).for_each(|(t, a)| *t += *a as f64);
                }
                tot
            })
            .collect();
        let mut tot = vec![0f64; 4 * h];
        for pt in &parts {
            tot.iter_mut().zip(pt).for_each(|(a, v)| *a += v);
        }
        let nf = n.max(1) as f64;
        let mh: Vec<f32> = (0..h).map(|q| (tot[q] / nf) as f32).collect();
        let mhx: Vec<f32> = (0..h).map(|q| (tot[h + q] / nf) as f32).collect();
        // 3. Per task and block: ∂H, ∂X = ∂H·Wc, ∂e, ∂t, G_b = Σ_j ∂H_j, ∂Wc += ∂Hᵀ·X.
        let mut ds = scratch(n * d); // every row is written by its task
        let mut dt = vec![0f32; bsz * d];
        let mut gs = vec![0f32; bsz * h];
        let (dsp, dtp, gsp) = (
            SendPtr(ds.as_mut_ptr()),
            SendPtr(dt.as_mut_ptr()),
            SendPtr(gs.as_mut_ptr()),
        );
        let wparts: Vec<Vec<f32>> = tasks(offsets)
            .into_par_iter()
            .map(|(b0, b1)| {
                let (dsp, dtp, gsp) = (dsp, dtp, gsp);
                let mut blk = Block::new(h, d);
                let (mut dh, mut de) = (vec![0f32; TILE_ROWS * h], vec![0f32; TILE_ROWS * d]);
                // [∂We | ∂W4] of the task, and the sample's P_b = Σ_j ∂H_jᵀ e_j.
                let mut dw = vec![0f32; 2 * h * d];
                let mut pb = vec![0f32; h * d];
                // SAFETY: the task owns samples b0..b1 (rows of dt, gs) and their rows of ds.
                let dtb = unsafe { part(dtp, b0 * d, (b1 - b0) * d) };
                let gsb = unsafe { part(gsp, b0 * h, (b1 - b0) * h) };
                for (b, r0, r1) in blocks(offsets, b0, b1) {
                    let m = r1 - r0;
                    if r0 == offsets[b] {
                        blk.fold(&w, t, b, d);
                        pb.iter_mut().for_each(|x| *x = 0.0);
                    }
                    blk.load(rows, r0, r1, d);
                    let g = dice::Grad::Scaled {
                        s: &da[r0..r1],
                        w: w.w_out,
                    };
                    let (x, dhb) = (&hid[r0 * h..r1 * h], &mut dh[..m * h]);
                    dice::bwd_out_rows(x, g, &sv.mean, &sv.inv, w.alpha, &mh, &mhx, batch, dhb);
                    let gb = &mut gsb[(b - b0) * h..(b - b0 + 1) * h];
                    for dhi in dhb.chunks_exact(h) {
                        crate::cpu::axpy(1.0, dhi, gb);
                    }
                    // ∂e_j = ∂H_j·M_b (+ the pooling's w_j·∂u_b); P_b += ∂Hᵀ·E.
                    sgemm_serial(
                        Mat::new(&dh[..m * h], m, h),
                        Mat::new(&blk.m, h, d),
                        &mut de[..m * d],
                        false,
                    );
                    sgemm_serial(
                        Mat::new(&dh[..m * h], m, h).t(),
                        Mat::new(&blk.e[..m * d], m, d),
                        &mut pb,
                        true,
                    );
                    // SAFETY: as above.
                    let dsb = unsafe { part(dsp, r0 * d, m * d) };
                    let dub = &du[b * d..(b + 1) * d];
                    for i in 0..m {
                        let (dsj, dej) = (&mut dsb[i * d..(i + 1) * d], &de[i * d..(i + 1) * d]);
                        dsj.copy_from_slice(dej);
                        crate::cpu::axpy(sv.wts[r0 + i], dub, dsj);
                    }
                    if r1 == offsets[b + 1] {
                        let tb = &t[b * d..(b + 1) * d];
                        let dtj = &mut dtb[(b - b0) * d..(b - b0 + 1) * d];
                        sample_grads(&pb, tb, &w.w4, &mut dw, dtj);
                    }
                }
                dw
            })
            .collect();
        recycle(hid);
        let mut dw = vec![0f32; 2 * h * d];
        for pt in &wparts {
            dw.iter_mut().zip(pt).for_each(|(a, v)| *a += v);
        }
        let (dwe, dw4) = dw.split_at(h * d);
        // 4. The target term: ∂t += G·Wt, ∂Wt = Gᵀ·T, ∂b = Σ_b G_b.
        let dwt = super::din_ops::target_grads(&gs, t, &w.wt, bsz, d, &mut dt);
        // 5. ∂params = [∂W | ∂b | ∂α | ∂w_out | ∂c], back to W = [W1 | W2 | W3 | W4]:
        //    ∂W1 = ∂Wt, ∂W2 = ∂We, ∂W3 = ∂Wt − ∂We, ∂W4.
        let nw = h * 4 * d;
        let mut dp = vec![0f32; nw + 3 * h + 1];
        for r in 0..h {
            let row = r * d..(r + 1) * d;
            let o = &mut dp[r * 4 * d..(r + 1) * 4 * d];
            super::din_ops::unfactor_row(&dwt[row.clone()], &dwe[row.clone()], &dw4[row], o);
        }
        for row in gs.chunks_exact(h) {
            dp[nw..nw + h]
                .iter_mut()
                .zip(row)
                .for_each(|(a, v)| *a += v);
        }
        for q in 0..h {
            dp[nw + h + q] = tot[2 * h + q] as f32;
            dp[nw + 2 * h + q] = tot[3 * h + q] as f32;
        }
        dp[nw + 3 * h] = da.iter().sum();
        (dt, ds, dp)
    }
}

impl CustomOp3 for Unit {
    fn name(&self) -> &'static str {
        "din-attention-unit"
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
        let h = self.h;
        let n = self.offsets.last().copied().unwrap_or(0);
        let rows_ok = match &self.source {
            History::Dense => l2.shape().dims2().ok() == Some((n, d)),
            History::Leaf { index, .. } => index.rows == n && index.width == d,
        };
        if !rows_ok
            || l3.shape().elem_count() != h * 4 * d + 3 * h + 1
            || self.offsets.len() != bsz + 1
        {
            candle_core::bail!(
                "din-attention-unit: shapes t {:?} history {:?} p {:?} do not agree",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let (t, s, p) = (
            storage_f32(s1, l1, "target")?,
            storage_f32(s2, l2, "history")?,
            storage_f32(s3, l3, "params")?,
        );
        let rows = self.rows(s, d)?;
        let (u, saved) = self.forward(t, rows, p, bsz, n, d);
        self.saved.put(saved);
        Ok((CpuStorage::F32(u), Shape::from((bsz, d))))
    }

    fn bwd(
        &self,
        target: &Tensor,
        history: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bsz, d) = target.dims2()?;
        let n = self.offsets.last().copied().unwrap_or(0);
        let sv = self.saved.take("din-attention-unit")?;
        let (dt, ds, dp) = with_data(target, |t| {
            with_data(history, |s| {
                with_data(params, |p| {
                    with_data(res, |u| {
                        with_data(grad, |du| {
                            let rows = self.rows(s, d)?;
                            Ok(self.backward(t, rows, p, u, du, sv, bsz, n, d))
                        })
                    })
                })
            })
        })?;
        let dev = target.device();
        let dhist = match &self.source {
            History::Dense => Some(Tensor::from_vec(ds, (n, d), dev)?),
            History::Leaf { index, grad } => {
                grad.add_with(|acc| {
                    index.scatter_into(acc, |r, cols, a| {
                        let c0 = cols.start;
                        a.iter_mut()
                            .zip(&ds[r * d + c0..r * d + cols.end])
                            .for_each(|(x, v)| *x += v);
                    })
                })?;
                recycle(ds);
                None
            }
        };
        Ok((
            Some(Tensor::from_vec(dt, (bsz, d), dev)?),
            dhist,
            Some(Tensor::from_vec(dp, params.shape(), dev)?),
        ))
    }
}

/// `M = We + W4·diag(t_b)` (`[h, d]` row-major): the first layer with the sample's target folded
/// in, since `We·e + W4·(t_b ⊙ e) = M·e`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn fold_rows(we: &[f32], w4: &[f32], tb: &[f32], m: &mut [f32]) {
    let d = tb.len();
    for ((mr, er), fr) in m
        .chunks_exact_mut(d)
        .zip(we.chunks_exact(d))
        .zip(w4.chunks_exact(d))
    {
        let (mr, er, fr) = (&mut mr[..d], &er[..d], &fr[..d]);
        for c in 0..d {
            mr[c] = er[c] + fr[c] * tb[c];
        }
    }
}

/// A sample's share of the weight and target gradients from `P_b = Σ_{j∈b} ∂H_jᵀ e_j`
/// (`[h, d]`): `∂We += P_b`, `∂W4 += P_b·diag(t_b)`, `∂t_b[c] += Σ_q W4[q, c]·P_b[q, c]`.
/// `dw` is `[∂We | ∂W4]`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn sample_grads(pb: &[f32], tb: &[f32], w4: &[f32], dw: &mut [f32], dtb: &mut [f32]) {
    let d = tb.len();
    let hd = pb.len();
    let (dwe, dw4) = dw.split_at_mut(hd);
    let dtb = &mut dtb[..d];
    for (((pr, wr), er), fr) in pb
        .chunks_exact(d)
        .zip(w4.chunks_exact(d))
        .zip(dwe.chunks_exact_mut(d))
        .zip(dw4.chunks_exact_mut(d))
    {
        let (pr, wr, er, fr) = (&pr[..d], &wr[..d], &mut er[..d], &mut fr[..d]);
        for c in 0..d {
            er[c] += pr[c];
            fr[c] += pr[c] * tb[c];
            dtb[c] += wr[c] * pr[c];
        }
    }
}
