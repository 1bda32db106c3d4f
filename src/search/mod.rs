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

pub mod simhash;
pub mod topk;

pub use simhash::{hamming, signature, token_codes, SimHash};
pub use topk::{topk_hamming_codes, topk_hamming_row, topk_hamming_rows, topk_row, topk_rows};

use crate::data::Batch;
use crate::embedding::{Tables, ViewSpec};
use crate::window::Window;
use crate::Result;
use rayon::prelude::*;

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

/// Top-k by `⟨q'_b, e_j⟩` over each sample's whole history, reading the behaviors' rows of
/// `view` from the host tables.
///
/// # Shapes
/// query `[B, view.width]` → a window of at most k rows per sample, best first
pub fn topk_by_query(
    tables: &Tables,
    view: &ViewSpec,
    batch: &Batch,
    query: &[f32],
    k: usize,
) -> Result<Window> {
    let w = view.width;
    let hist: Vec<&[u32]> = view
        .fields
        .iter()
        .map(|f| batch.hist_ids(f.field))
        .collect::<Result<_>>()?;
    for (f, ids) in view.fields.iter().zip(&hist) {
        let t = tables.table(f.table);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= t.rows()) {
            t.check_ids(&[bad])?;
        }
    }
    let per: Vec<Vec<u32>> = batch
        .offsets
        .par_windows(2)
        .enumerate()
        .map(|(b, win)| {
            let q = &query[b * w..(b + 1) * w];
            let l = win[1] - win[0];
            // The sample's tokens, transposed: et[c][j].
            let mut et = vec![0f32; w * l];
            for (f, ids) in view.fields.iter().zip(&hist) {
                let t = tables.table(f.table);
                for (j, &id) in ids[win[0]..win[1]].iter().enumerate() {
                    for (c, &x) in t.row(id).iter().enumerate() {
                        et[(f.col + c) * l + j] = x;
                    }
                }
            }
            let mut scores = vec![0f32; l];
            query_scores(q, &et, l, &mut scores);
            let mut out = Vec::with_capacity(k.min(l));
            topk_row(&scores, None, k, &mut out);
            out.iter_mut().for_each(|p| *p += win[0] as u32);
            out
        })
        .collect();
    Ok(collect_window(per))
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

/// Top-k by Hamming distance of SimHash codes of `view`'s tokens.
pub fn topk_by_hamming(
    tables: &Tables,
    view: &ViewSpec,
    batch: &Batch,
    hash: &SimHash,
    k: usize,
) -> Result<Window> {
    let (tcodes, hcodes) = token_codes(tables, view, hash, batch)?;
    let words = hash.words();
    let per: Vec<Vec<u32>> = batch
        .offsets
        .par_windows(2)
        .enumerate()
        .map_init(Vec::new, |scratch, (b, win)| {
            let t = &tcodes[b * words..(b + 1) * words];
            let mut out = Vec::with_capacity(k.min(win[1] - win[0]));
            topk_hamming_codes(
                t,
                &hcodes[win[0] * words..win[1] * words],
                hash.bits() as u32,
                k,
                &mut out,
                scratch,
            );
            out.iter_mut().for_each(|p| *p += win[0] as u32);
            out
        })
        .collect();
    Ok(collect_window(per))
}

/// SIM hard search: each sample's most recent `k` behaviors of the target's category.
pub fn topk_by_category(batch: &Batch, k: usize) -> Window {
    let per: Vec<Vec<u32>> = batch
        .offsets
        .par_windows(2)
        .enumerate()
        .map(|(b, win)| {
            let c = batch.target_cate[b];
            (win[0]..win[1])
                .rev()
                .filter(|&j| batch.hist_cate[j] == c)
                .take(k)
                .map(|j| j as u32)
                .collect()
        })
        .collect();
    collect_window(per)
}

fn collect_window(per: Vec<Vec<u32>>) -> Window {
    let mut offsets = Vec::with_capacity(per.len() + 1);
    offsets.push(0);
    for p in &per {
        offsets.push(offsets[offsets.len() - 1] + p.len());
    }
    Window::from_parts(offsets, per.concat())
}
