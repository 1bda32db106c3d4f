//! CPU top-k: the k best of a row by float score, and the k nearest by Hamming distance.
//!
//! Tie rule (both kinds, everywhere): among equal scores or distances the **more recent**
//! behavior (the higher position in the chronological row) wins. Results are best first.
//!
//! - Scores: each entry becomes one `u64` key `(ordered score bits << 32) | position`, so a single
//!   O(L) selection (`select_nth_unstable`) picks the k largest keys and the tie rule falls out of
//!   the key; only the k winners are sorted. `-0.0` counts as `0.0`; NaN ranks below everything.
//! - Hamming distances are small integers (0..=bits): a counting select finds the cut-off
//!   distance in one pass, a second pass collects the winners, and distances are recomputed
//!   rather than stored (nothing of size L is written).
//!
//! `k ≥ L` returns every (unmasked) entry.

use rayon::prelude::*;

/// The order-preserving `u32` of an f32 (`a < b` ⇔ `key(a) < key(b)`), `-0.0` as `0.0`, NaN lowest.
#[inline]
pub fn score_key(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let x = if x == 0.0 { 0.0 } else { x };
    let b = x.to_bits();
    // Negative: flip all bits; positive: set the sign bit. NaN's 0 stays below every number
    // (the most negative number, -inf, maps to 0x007F_FFFF).
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Positions of the `k` largest `scores` among those with `mask[j] != 0` (all when `None`),
/// best first, ties to the higher position, appended to `out`.
pub fn topk_row(scores: &[f32], mask: Option<&[u8]>, k: usize, out: &mut Vec<u32>) {
    let mut keys: Vec<u64> = match mask {
        None => scores
            .iter()
            .enumerate()
            .map(|(j, &s)| ((score_key(s) as u64) << 32) | j as u64)
            .collect(),
        Some(m) => scores
            .iter()
            .zip(m)
            .enumerate()
            .filter(|(_, (_, &m))| m != 0)
            .map(|(j, (&s, _))| ((score_key(s) as u64) << 32) | j as u64)
            .collect(),
    };
    select_largest(&mut keys, k);
    out.extend(keys.iter().map(|&key| key as u32));
}

/// Keeps the `k` largest keys of `keys`, sorted descending.
fn select_largest(keys: &mut Vec<u64>, k: usize) {
    if k == 0 {
        keys.clear();
        return;
    }
    if keys.len() > k {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
}

/// Positions of the `k` smallest `dist(j)` for `j < len` (distances in `0..=max_dist`), best
/// first, ties to the higher position, appended to `out`. `dist` is called twice per position.
pub fn topk_hamming_row(
    len: usize,
    max_dist: u32,
    k: usize,
    dist: impl Fn(usize) -> u32,
    out: &mut Vec<u32>,
) {
    if k == 0 || len == 0 {
        return;
    }
    if k >= len {
        let mut keys: Vec<u64> = (0..len)
            .map(|j| (((max_dist - dist(j).min(max_dist)) as u64) << 32) | j as u64)
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(keys.iter().map(|&key| key as u32));
        return;
    }
    // Pass 1: counts per distance, then the cut-off: all of distance < cut, some of = cut.
    let mut hist = vec![0usize; max_dist as usize + 1];
    for j in 0..len {
        hist[dist(j).min(max_dist) as usize] += 1;
    }
    let (mut cut, mut below) = (0usize, 0usize);
    while below + hist[cut] < k {
        below += hist[cut];
        cut += 1;
    }
    let mut at_cut = k - below; // taken from distance `cut`: the most recent ones
                                // Pass 2, newest first: every position below the cut, and the first `at_cut` at it.
    let mut keys = Vec::with_capacity(k);
    for j in (0..len).rev() {
        let d = dist(j).min(max_dist) as usize;
        if d < cut || (d == cut && at_cut > 0) {
            if d == cut {
                at_cut -= 1;
            }
            keys.push((((max_dist as usize - d) as u64) << 32) | j as u64);
        }
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    out.extend(keys.iter().map(|&key| key as u32));
}

/// Row-wise [`topk_row`] over `[rows, l]` scores with an optional `[rows, l]` mask: the CPU twin
/// of the CUDA score top-k. Returns `idx [rows, k]` (positions, best first; unused slots
/// `u32::MAX`) and the count per row (`min(k, unmasked)`).
pub fn topk_rows(scores: &[f32], l: usize, mask: Option<&[u8]>, k: usize) -> (Vec<u32>, Vec<u32>) {
    let rows = scores.len().checked_div(l).unwrap_or(0);
    let mut idx = vec![u32::MAX; rows * k];
    let mut count = vec![0u32; rows];
    if k == 0 {
        return (idx, count);
    }
    idx.par_chunks_mut(k)
        .zip(count.par_iter_mut())
        .enumerate()
        .for_each(|(r, (o, c))| {
            let mut v = Vec::with_capacity(k.min(l));
            topk_row(
                &scores[r * l..(r + 1) * l],
                mask.map(|m| &m[r * l..(r + 1) * l]),
                k,
                &mut v,
            );
            o[..v.len()].copy_from_slice(&v);
            *c = v.len() as u32;
        });
    (idx, count)
}

/// Row-wise Hamming top-k of `target [rows, words]` against `codes [rows, l, words]`: the CPU twin
/// of the fused CUDA kernel (distances are never stored). Layout of the result as [`topk_rows`].
pub fn topk_hamming_rows(
    target: &[u64],
    codes: &[u64],
    l: usize,
    words: usize,
    k: usize,
) -> (Vec<u32>, Vec<u32>) {
    let rows = target.len() / words.max(1);
    let mut idx = vec![u32::MAX; rows * k];
    let mut count = vec![0u32; rows];
    if k == 0 {
        return (idx, count);
    }
    let max = (words * 64) as u32;
    idx.par_chunks_mut(k)
        .zip(count.par_iter_mut())
        .enumerate()
        .for_each(|(r, (o, c))| {
            let t = &target[r * words..(r + 1) * words];
            let row = &codes[r * l * words..(r + 1) * l * words];
            let mut v = Vec::with_capacity(k.min(l));
            topk_hamming_row(
                l,
                max,
                k,
                |j| super::simhash::hamming(t, &row[j * words..(j + 1) * words]),
                &mut v,
            );
            o[..v.len()].copy_from_slice(&v);
            *c = v.len() as u32;
        });
    (idx, count)
}
