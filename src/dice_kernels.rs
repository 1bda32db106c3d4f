//! Dice's per-row kernels (Zhou et al., KDD'18), shared by the head's Dice layer
//! ([`crate::nn::Dice`]) and DIN's fused activation unit ([`crate::aggregate::din_unit`]).
//!
//! `y = x·(α + p(1 − α))`, `p = sigmoid(x̂)`, `x̂ = (x − μ)·r`, `r = 1/sqrt(σ² + ε)`. With
//! `g = ∂L/∂y` and `h = g·x·(1 − α)·p·(1 − p)`:
//! `∂L/∂α = Σ g·x·(1 − p)`, and `∂L/∂x = g·(α + p(1 − α)) + r·(h − mean(h) − x̂·mean(h·x̂))`
//! with batch statistics (`g·(α + p(1 − α)) + r·h` with fixed ones).
//!
//! Each kernel takes one row of `h` units as separate slices (noalias for LLVM) and is compiled
//! for AVX-512 and AVX2 + FMA with run-time dispatch, so the loops over the units vectorise.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use crate::cpu::fast_sigmoid;

/// Dice output of one row: `y = x·(α + p(1 − α))`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn forward_row(x: &[f32], mean: &[f32], inv: &[f32], alpha: &[f32], y: &mut [f32]) {
    let h = x.len();
    let (mean, inv, alpha, y) = (&mean[..h], &inv[..h], &alpha[..h], &mut y[..h]);
    for q in 0..h {
        let p = fast_sigmoid((x[q] - mean[q]) * inv[q]);
        y[q] = x[q] * (alpha[q] + p * (1.0 - alpha[q]));
    }
}

/// Adds one row's `x` and `x²` into the column sums `s1`, `s2` (f64: Dice's batch variance is
/// `E[x²] − E[x]²`, which cancels in f32 when the mean is large against the spread).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn stats_row(x: &[f32], s1: &mut [f64], s2: &mut [f64]) {
    let h = x.len();
    let (s1, s2) = (&mut s1[..h], &mut s2[..h]);
    for q in 0..h {
        let v = x[q] as f64;
        s1[q] += v;
        s2[q] += v * v;
    }
}

/// The column sums of the backward pass for one row with output gradient `g`: adds
/// `[Σh, Σh·x̂, ∂α, Σ s·y]` into `acc` (`[4h]`). `s·y` is the gradient of an output weight when
/// `g = s·w_out` (DIN's scores `a = w_out·y + c`); callers without one pass `s = 0`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn bwd_stats_row(
    x: &[f32],
    g: &[f32],
    s: f32,
    mean: &[f32],
    inv: &[f32],
    alpha: &[f32],
    acc: &mut [f32],
) {
    let h = x.len();
    let (g, mean, inv, alpha) = (&g[..h], &mean[..h], &inv[..h], &alpha[..h]);
    let (a0, rest) = acc.split_at_mut(h);
    let (a1, rest) = rest.split_at_mut(h);
    let (a2, a3) = rest.split_at_mut(h);
    let (a0, a1, a2, a3) = (&mut a0[..h], &mut a1[..h], &mut a2[..h], &mut a3[..h]);
    for q in 0..h {
        let xv = x[q];
        let xh = (xv - mean[q]) * inv[q];
        let p = fast_sigmoid(xh);
        let al = alpha[q];
        let gate = al + p * (1.0 - al);
        let hq = g[q] * xv * (1.0 - al) * p * (1.0 - p);
        a0[q] += hq;
        a1[q] += hq * xh;
        a2[q] += g[q] * xv * (1.0 - p);
        a3[q] += s * xv * gate;
    }
}

/// `∂L/∂x` of one row, given the column means `mh = mean(h)` and `mhx = mean(h·x̂)` of
/// [`bwd_stats_row`]'s sums (used only with `batch` statistics).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn bwd_out_row(
    x: &[f32],
    g: &[f32],
    mean: &[f32],
    inv: &[f32],
    alpha: &[f32],
    mh: &[f32],
    mhx: &[f32],
    batch: bool,
    dx: &mut [f32],
) {
    let h = x.len();
    let (g, mean, inv, alpha, mh, mhx, dx) = (
        &g[..h],
        &mean[..h],
        &inv[..h],
        &alpha[..h],
        &mh[..h],
        &mhx[..h],
        &mut dx[..h],
    );
    let bf = if batch { 1.0f32 } else { 0.0 };
    for q in 0..h {
        let xv = x[q];
        let xh = (xv - mean[q]) * inv[q];
        let p = fast_sigmoid(xh);
        let al = alpha[q];
        let gate = al + p * (1.0 - al);
        let hq = g[q] * xv * (1.0 - al) * p * (1.0 - p);
        dx[q] = g[q] * gate + inv[q] * (hq - bf * (mh[q] + xh * mhx[q]));
    }
}
