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
pub use topk::{topk_hamming_row, topk_hamming_rows, topk_row, topk_rows};

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
            let scores: Vec<f32> = (win[0]..win[1])
                .map(|j| {
                    view.fields
                        .iter()
                        .zip(&hist)
                        .map(|(f, ids)| {
                            crate::cpu::dot(
                                &q[f.col..f.col + f.dim],
                                tables.table(f.table).row(ids[j]),
                            )
                        })
                        .sum()
                })
                .collect();
            let mut out = Vec::with_capacity(k.min(scores.len()));
            topk_row(&scores, None, k, &mut out);
            out.iter_mut().for_each(|p| *p += win[0] as u32);
            out
        })
        .collect();
    Ok(collect_window(per))
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
        .map(|(b, win)| {
            let t = &tcodes[b * words..(b + 1) * words];
            let mut out = Vec::with_capacity(k.min(win[1] - win[0]));
            topk_hamming_row(
                win[1] - win[0],
                hash.bits() as u32,
                k,
                |j| hamming(t, &hcodes[(win[0] + j) * words..(win[0] + j + 1) * words]),
                &mut out,
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
