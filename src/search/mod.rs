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
pub mod topk;

pub use simhash::{hamming, signature, token_codes, SimHash};
pub use topk::{topk_hamming_codes, topk_hamming_row, topk_hamming_rows, topk_row, topk_rows};

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
    let w = et.len().checked_div(l).unwrap_or(0);
    const BLOCK: usize = 512;
    let nq = q.len().checked_div(w).unwrap_or(0);
    for j0 in (0..l).step_by(BLOCK) {
        let j1 = (j0 + BLOCK).min(l);
        let n = j1 - j0;
        // Four queries at a time share each row of the tokens (one load, four updates).
        let mut b = 0;
        while b + 4 <= nq {
            let (o0, rest) = out[b * l..(b + 4) * l].split_at_mut(l);
            let (o1, rest) = rest.split_at_mut(l);
            let (o2, o3) = rest.split_at_mut(l);
            let (o0, o1, o2, o3) = (
                &mut o0[j0..j1],
                &mut o1[j0..j1],
                &mut o2[j0..j1],
                &mut o3[j0..j1],
            );
            for o in [&mut *o0, &mut *o1, &mut *o2, &mut *o3] {
                o.iter_mut().for_each(|x| *x = 0.0);
            }
            for c in 0..w {
                let (q0, q1, q2, q3) = (
                    q[b * w + c],
                    q[(b + 1) * w + c],
                    q[(b + 2) * w + c],
                    q[(b + 3) * w + c],
                );
                let row = &et[c * l + j0..c * l + j0 + n];
                for i in 0..n {
                    let e = row[i];
                    o0[i] += q0 * e;
                    o1[i] += q1 * e;
                    o2[i] += q2 * e;
                    o3[i] += q3 * e;
                }
            }
            b += 4;
        }
        for b in b..nq {
            let o = &mut out[b * l + j0..b * l + j1];
            o.iter_mut().for_each(|x| *x = 0.0);
            for c in 0..w {
                let qc = q[b * w + c];
                let row = &et[c * l + j0..c * l + j1];
                o.iter_mut().zip(row).for_each(|(x, &e)| *x += qc * e);
            }
        }
    }
}
