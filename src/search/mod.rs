//! Search: the first stage of a two-stage model. Over the whole history, without gradient, each
//! sample's top-k behaviors are picked; the differentiable part then reads only those (and the
//! targets), so nothing of size B·L·d is built for the backward pass.
//!
//! | unit | relevance of behavior j to target t | paper |
//! |---|---|---|
//! | `hamming` | `−Hamming(code(t), code(e_j))`, SimHash codes ([`simhash`]) | ETA |
//! | `attention`, scorer `own` | `⟨W_q t, W_k e_j⟩ / √dim`, the search's own projections | SIM soft |
//! | `attention`, scorer `exact` | the exact unit's own `Σ_h ⟨q_h, k_hj⟩ / √d_h` (same parameters) | TWIN |
//! | `attention`, scorer `dot` | `⟨t, e_j⟩` scaled per field group, on the attention tables | DARE |
//! | `category` | same category as the target, most recent first | SIM hard |
//!
//! Every attention score is `⟨q'_b, e_j⟩` for one query vector per sample (`q' = W_kᵀ W_q t / √d`),
//! so the search reads each behavior's table rows once and never materialises `W_k e_j`.
//! Top-k ([`topk`]): O(L) per sample, samples in parallel, ties to the more recent behavior.
//!
//! This module holds the algorithms (codes, scores, top-k, tokens read from the host tables);
//! the search units that use them, one file each and one function for training and serving
//! alike, are `model/search/{hamming,attention,category}.rs`.

pub mod simhash;
pub mod tokens;
pub mod topk;

pub use simhash::{hamming, signature, token_codes, SimHash};
pub use topk::{
    topk_hamming_codes, topk_hamming_row, topk_hamming_rows, topk_row, topk_rows, StreamTopK,
};

use crate::data::Batch;
use crate::embedding::{Tables, ViewSpec};
use crate::Result;

/// The targets' tokens of `view`, read from the host tables (no gradient).
///
/// # Shapes
/// → `[B, view.width]`
pub fn target_tokens(tables: &Tables, view: &ViewSpec, batch: &Batch) -> Result<Vec<f32>> {
    let (b, w) = (batch.size(), view.width);
    let mut out = vec![0f32; b * w];
    for f in &view.fields {
        let t = tables.table(f.table);
        let ids = batch.target_ids(f.field);
        t.check_ids(&ids)?;
        for (row, &id) in out.chunks_exact_mut(w).zip(ids.iter()) {
            row[f.col..f.col + f.dim].copy_from_slice(t.row(id));
        }
    }
    Ok(out)
}

/// The packed history's tokens of `view`, read from the host tables (no gradient).
///
/// # Shapes
/// → `[n, view.width]`
///
/// # Errors
/// [`crate::Error::InvalidArgument`] for ids outside a table or a view with the user field.
pub fn history_tokens(tables: &Tables, view: &ViewSpec, batch: &Batch) -> Result<Vec<f32>> {
    let (n, w) = (batch.n_packed(), view.width);
    let mut out = vec![0f32; n * w];
    for f in &view.fields {
        let t = tables.table(f.table);
        let ids = batch.hist_ids(f.field)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= t.rows()) {
            t.check_ids(&[bad])?;
        }
        for (row, &id) in out.chunks_exact_mut(w).zip(ids.iter()) {
            row[f.col..f.col + f.dim].copy_from_slice(t.row(id));
        }
    }
    Ok(out)
}

/// The attention search's scores: `out[b][j] = Σ_c q[b][c] · et[c][j]` for queries `q [B', w]`
/// against a window's tokens stored transposed, `et [w, l]`; each sum runs over `c` in order,
/// a multiply then an add (no fused multiply-add), so every CPU and every blocking gives the same
/// bits. The one scoring rule of the search, in training, `eval` and serving alike.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2"))]
pub fn query_scores(q: &[f32], et: &[f32], l: usize, out: &mut [f32]) {
    score_tiles(q, et, l, |b, j0, s| {
        out[b * l + j0..b * l + j0 + s.len()].copy_from_slice(s);
    });
}

/// The scores of [`query_scores`] handed to `sink(query, first behavior, scores)` piece by piece.
///
/// Blocked like a GEMM: a tile of 4 queries × 64 behaviors keeps its 256 sums in registers while
/// `c` runs over the width (16 vector registers on AVX-512), so each step is 4 loads of tokens,
/// 4 broadcasts and 32 vector operations with no store; a 64-column strip of the tokens
/// (`w · 256` bytes) stays in L1 across all the query tiles. Edges (queries not a multiple of 4,
/// behaviors not of 64) take the same sums one query at a time.
#[inline(always)]
fn score_tiles(q: &[f32], et: &[f32], l: usize, mut sink: impl FnMut(usize, usize, &[f32])) {
    const MR: usize = 4;
    const NR: usize = 64;
    let w = et.len().checked_div(l).unwrap_or(0);
    let nq = q.len().checked_div(w).unwrap_or(0);
    let full = l / NR * NR;
    let mut edge = vec![0f32; NR.max(l - full)];
    for j0 in (0..full).step_by(NR) {
        let mut b = 0;
        while b + MR <= nq {
            let mut acc = [[0f32; NR]; MR];
            let qs: [&[f32]; MR] = std::array::from_fn(|r| &q[(b + r) * w..(b + r + 1) * w]);
            for (c, row) in et.chunks_exact(l).enumerate().take(w) {
                let e: &[f32; NR] = row[j0..j0 + NR].try_into().expect("a tile row");
                for (a, qr) in acc.iter_mut().zip(qs) {
                    // c < w = qr.len(): the check folds into the loop bound.
                    let qc = qr[c];
                    for i in 0..NR {
                        a[i] += qc * e[i];
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                sink(b + r, j0, a);
            }
            b += MR;
        }
        for b in b..nq {
            let o = &mut edge[..NR];
            one_query(&q[b * w..(b + 1) * w], et, l, j0, o);
            sink(b, j0, o);
        }
    }
    if full < l {
        for b in 0..nq {
            let o = &mut edge[..l - full];
            one_query(&q[b * w..(b + 1) * w], et, l, full, o);
            sink(b, full, o);
        }
    }
}

/// One query's sums over the behaviors `j0..j0 + out.len()`, the same sums in the same order.
#[inline(always)]
fn one_query(q: &[f32], et: &[f32], l: usize, j0: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    for (c, &qc) in q.iter().enumerate() {
        let row = &et[c * l + j0..c * l + j0 + out.len()];
        out.iter_mut().zip(row).for_each(|(x, &e)| *x += qc * e);
    }
}
