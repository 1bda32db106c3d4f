//! Dice's kernels (Zhou et al., KDD'18) over blocks of rows, shared by the head's Dice layer
//! ([`crate::nn::Dice`]) and DIN's fused activation unit (`crate::aggregate::din_unit`).
//!
//! `y = x·(α + p(1 − α))`, `p = sigmoid(x̂)`, `x̂ = (x − μ)·r`, `r = 1/sqrt(σ² + ε)`. With
//! `g = ∂L/∂y` and `h = g·x·(1 − α)·p·(1 − p)`:
//! `∂L/∂α = Σ g·x·(1 − p)`, and `∂L/∂x = g·(α + p(1 − α)) + r·(h − mean(h) − x̂·mean(h·x̂))`
//! with batch statistics (`g·(α + p(1 − α)) + r·h` with fixed ones).
//!
//! Every kernel takes a block of rows (`x` is `[m, h]` row-major, `h` = the statistics' length)
//! and is compiled for AVX-512 and for AVX2 + FMA with run-time dispatch. One call per block,
//! not per row: the exponential's dependency chain of one row overlaps with the next row's.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use crate::cpu::fast_sigmoid;

/// `∂L/∂y` of a block: a matrix `[m, h]` (the head's Dice), or `s_i·w_q` (DIN's unit, whose
/// scores `a_i = w·y_i + c` get the gradients `s_i`).
#[derive(Clone, Copy)]
pub enum Grad<'a> {
    /// Row-major `[m, h]`.
    Rows(&'a [f32]),
    /// `g_iq = s[i]·w[q]`.
    Scaled {
        /// Per row, `[m]`.
        s: &'a [f32],
        /// Per column, `[h]`.
        w: &'a [f32],
    },
}

impl Grad<'_> {
    /// Row `i` of the gradient, into `buf` when it has to be formed.
    #[inline(always)]
    fn row<'b>(&'b self, i: usize, h: usize, buf: &'b mut [f32]) -> &'b [f32] {
        match *self {
            Grad::Rows(g) => &g[i * h..(i + 1) * h],
            Grad::Scaled { s, w } => {
                let (buf, w) = (&mut buf[..h], &w[..h]);
                for q in 0..h {
                    buf[q] = s[i] * w[q];
                }
                buf
            }
        }
    }

    /// The scale of row `i` (0 for a matrix).
    #[inline(always)]
    fn scale(&self, i: usize) -> f32 {
        match *self {
            Grad::Rows(_) => 0.0,
            Grad::Scaled { s, .. } => s[i],
        }
    }
}

/// Dice of one element.
#[inline(always)]
fn value(x: f32, mean: f32, inv: f32, al: f32) -> f32 {
    let p = fast_sigmoid((x - mean) * inv);
    x * (al + p * (1.0 - al))
}

/// The backward terms of one element: `(x̂, gate = α + p(1 − α), h = g·x·(1 − α)·p·(1 − p), p)`.
#[inline(always)]
fn bwd_terms(x: f32, g: f32, mean: f32, inv: f32, al: f32) -> (f32, f32, f32, f32) {
    let xh = (x - mean) * inv;
    let p = fast_sigmoid(xh);
    let gate = al + p * (1.0 - al);
    let hq = g * x * (1.0 - al) * p * (1.0 - p);
    (xh, gate, hq, p)
}

/// Dice output of a block: `y = x·(α + p(1 − α))`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn forward_rows(x: &[f32], mean: &[f32], inv: &[f32], alpha: &[f32], y: &mut [f32]) {
    let h = mean.len();
    let (inv, alpha) = (&inv[..h], &alpha[..h]);
    for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let (xr, yr) = (&xr[..h], &mut yr[..h]);
        for q in 0..h {
            yr[q] = value(xr[q], mean[q], inv[q], alpha[q]);
        }
    }
}

/// DIN's scores of a block: `scores_i = w·dice(x_i) + c`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn score_rows(
    x: &[f32],
    mean: &[f32],
    inv: &[f32],
    alpha: &[f32],
    w: &[f32],
    c: f32,
    scores: &mut [f32],
) {
    let h = mean.len();
    let (inv, alpha, w) = (&inv[..h], &alpha[..h], &w[..h]);
    let mut y = vec![0f32; h];
    for (xr, s) in x.chunks_exact(h).zip(scores.iter_mut()) {
        let (xr, y) = (&xr[..h], &mut y[..h]);
        for q in 0..h {
            y[q] = value(xr[q], mean[q], inv[q], alpha[q]);
        }
        *s = crate::cpu::dot_lanes(y, w) + c;
    }
}

/// Adds a block's `x` and `x²` into the column sums `s1`, `s2` (f64: Dice's batch variance is
/// `E[x²] − E[x]²`, which cancels in f32 when the mean is large against the spread).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn stats_rows(x: &[f32], s1: &mut [f64], s2: &mut [f64]) {
    let h = s1.len();
    let s2 = &mut s2[..h];
    for xr in x.chunks_exact(h) {
        let xr = &xr[..h];
        for q in 0..h {
            let v = xr[q] as f64;
            s1[q] += v;
            s2[q] += v * v;
        }
    }
}

/// The column sums of the backward pass over a block: adds `[Σh, Σh·x̂, ∂α, Σ s·y]` into
/// `acc` (`[4h]`); the last is the output weight's gradient for [`Grad::Scaled`] (zero for
/// [`Grad::Rows`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn bwd_stats_rows(
    x: &[f32],
    grad: Grad,
    mean: &[f32],
    inv: &[f32],
    alpha: &[f32],
    acc: &mut [f32],
) {
    let h = mean.len();
    let (inv, alpha) = (&inv[..h], &alpha[..h]);
    let (a0, rest) = acc.split_at_mut(h);
    let (a1, rest) = rest.split_at_mut(h);
    let (a2, a3) = rest.split_at_mut(h);
    let (a0, a1, a2, a3) = (&mut a0[..h], &mut a1[..h], &mut a2[..h], &mut a3[..h]);
    let mut buf = vec![0f32; h];
    for (i, xr) in x.chunks_exact(h).enumerate() {
        let s = grad.scale(i);
        let g = grad.row(i, h, &mut buf);
        let (g, xr) = (&g[..h], &xr[..h]);
        for q in 0..h {
            let xv = xr[q];
            let (xh, gate, hq, p) = bwd_terms(xv, g[q], mean[q], inv[q], alpha[q]);
            a0[q] += hq;
            a1[q] += hq * xh;
            a2[q] += g[q] * xv * (1.0 - p);
            a3[q] += s * xv * gate;
        }
    }
}

/// `∂L/∂x` of a block, given the column means `mh = mean(h)` and `mhx = mean(h·x̂)` of
/// [`bwd_stats_rows`]'s sums (used only with `batch` statistics).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub fn bwd_out_rows(
    x: &[f32],
    grad: Grad,
    mean: &[f32],
    inv: &[f32],
    alpha: &[f32],
    mh: &[f32],
    mhx: &[f32],
    batch: bool,
    dx: &mut [f32],
) {
    let h = mean.len();
    let (inv, alpha, mh, mhx) = (&inv[..h], &alpha[..h], &mh[..h], &mhx[..h]);
    let bf = if batch { 1.0f32 } else { 0.0 };
    let mut buf = vec![0f32; h];
    for (i, (xr, dr)) in x.chunks_exact(h).zip(dx.chunks_exact_mut(h)).enumerate() {
        let g = grad.row(i, h, &mut buf);
        let (g, xr, dr) = (&g[..h], &xr[..h], &mut dr[..h]);
        for q in 0..h {
            let (xh, gate, hq, _) = bwd_terms(xr[q], g[q], mean[q], inv[q], alpha[q]);
            dr[q] = g[q] * gate + inv[q] * (hq - bf * (mh[q] + xh * mhx[q]));
        }
    }
}
