//! CPU top-k: the k best of a row by float score, and the k nearest by Hamming distance.
//!
//! Tie rule (both kinds, everywhere): among equal scores or distances the **more recent**
//! behavior (the higher position in the chronological row) wins. Results are best first.
//!
//! - Scores: each entry becomes one `u64` key `(ordered score bits << 32) | position`, so a single
//!   O(L) selection (`select_nth_unstable`) picks the k largest keys and the tie rule falls out of
//!   the key; only the k winners are sorted. `-0.0` counts as `0.0`; NaN ranks below everything.
//! - Hamming distances are small integers (0..=bits): [`topk_hamming_codes`] writes them as one
//!   byte per behavior (a vectorised XOR + popcount), finds the cut-off distance by a binary
//!   search of vectorised counts, and collects the winners newest first, skipping 64-behavior
//!   blocks without one. [`topk_hamming_row`] is the same select over any distance function.
//! - Long score rows (L ≥ 1024k) first take a threshold from every 16th score (its k-th best is at
//!   most the row's), so one compare per score leaves about 16k keys to select from.
//!
//! `k ≥ L` returns every (unmasked) entry.

use rayon::prelude::*;

/// The order-preserving `u32` of an f32 (`a < b` ⇔ `key(a) < key(b)`), `-0.0` as `0.0`, NaN lowest.
#[inline]
pub fn score_key(x: f32) -> u32 {
    // Branch-free (scores' signs are random: a branch on them mispredicts half the time).
    // `x + 0.0` turns -0.0 into 0.0; negative: flip all bits; positive: set the sign bit. NaN's
    // 0 stays below every number (the most negative number, -inf, maps to 0x007F_FFFF).
    let b = (x + 0.0).to_bits();
    let flip = ((b as i32) >> 31) as u32 | 0x8000_0000;
    let key = b ^ flip;
    if x.is_nan() {
        0
    } else {
        key
    }
}

/// Positions of the `k` largest `scores` among those with `mask[j] != 0` (all when `None`),
/// best first, ties to the higher position, appended to `out`.
///
/// Every candidate becomes a key and one `select_nth_unstable` picks the k largest. A long row
/// without a mask (L ≥ 1024k) first takes a threshold from every 16th score: the k-th best of
/// those is at most the row's k-th best, so only scores at or above it become keys (about 16k).
pub fn topk_row(scores: &[f32], mask: Option<&[u8]>, k: usize, out: &mut Vec<u32>) {
    if k == 0 {
        return;
    }
    let key = |j: usize, s: f32| ((score_key(s) as u64) << 32) | j as u64;
    let mut keys: Vec<u64> = match mask {
        None if scores.len() >= 1024 * k => match sampled_threshold(scores, k) {
            Some(t) => {
                let mut keys = Vec::with_capacity(32 * k);
                // 16 at a time: a chunk whose best score is below the threshold is skipped.
                for (ci, chunk) in scores.chunks(16).enumerate() {
                    // `if x > a` (not f32::max, whose NaN rule keeps it scalar) vectorises.
                    let best = chunk
                        .iter()
                        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
                    if best < t {
                        continue;
                    }
                    for (i, &s) in chunk.iter().enumerate() {
                        if s >= t {
                            keys.push(key(ci * 16 + i, s));
                        }
                    }
                }
                keys
            }
            None => scores.iter().enumerate().map(|(j, &s)| key(j, s)).collect(),
        },
        None => scores.iter().enumerate().map(|(j, &s)| key(j, s)).collect(),
        Some(m) => scores
            .iter()
            .zip(m)
            .enumerate()
            .filter(|(_, (_, &m))| m != 0)
            .map(|(j, (&s, _))| key(j, s))
            .collect(),
    };
    select_largest(&mut keys, k);
    out.extend(keys.iter().map(|&key| key as u32));
}

/// The k-th best of every 16th score (NaN left out), or `None` when there are fewer than k.
fn sampled_threshold(scores: &[f32], k: usize) -> Option<f32> {
    let mut sample: Vec<f32> = scores
        .iter()
        .step_by(16)
        .copied()
        .filter(|x| !x.is_nan())
        .collect();
    if sample.len() < k {
        return None;
    }
    sample.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    Some(sample[k - 1])
}

/// [`topk_hamming_row`] over packed codes: the `k` codes of `codes [len, words]` nearest to `q
/// [words]`, same result. The distances go to a byte per behavior (`scratch`, reused across
/// calls), so each code is read once; the passes over them are plain byte scans.
pub fn topk_hamming_codes(
    q: &[u64],
    codes: &[u64],
    bits: u32,
    k: usize,
    out: &mut Vec<u32>,
    scratch: &mut Vec<u8>,
) {
    let words = q.len().max(1);
    let len = codes.len() / words;
    if k == 0 || len == 0 {
        return;
    }
    let max = bits.min(255);
    scratch.clear();
    scratch.resize(len, 0);
    distances(q, codes, max as u8, scratch);
    if k >= len {
        return topk_hamming_row(len, max, k, |j| scratch[j] as u32, out);
    }
    // The cut-off distance: the smallest t with at least k distances ≤ t (binary search over
    // 0..=max, each step one vectorised count), then at_cut = how many of distance t to take.
    let (mut lo, mut hi) = (0u32, max);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if count_le(scratch, mid as u8) >= k {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = lo as u8;
    let below = if cut == 0 {
        0
    } else {
        count_le(scratch, cut - 1)
    };
    let mut at_cut = k - below;
    let mut keys = Vec::with_capacity(k);
    // Newest first, 64 behaviors at a time, visiting only the positions with distance ≤ cut.
    let mut end = len;
    while end > 0 && keys.len() < k {
        let start = end.saturating_sub(64);
        let block = &scratch[start..end];
        if block.iter().fold(u8::MAX, |a, &x| a.min(x)) > cut {
            end = start;
            continue;
        }
        let mut m = le_mask(block, cut);
        while m != 0 && keys.len() < k {
            let i = 63 - m.leading_zeros() as usize; // newest first
            m &= !(1u64 << i);
            let j = start + i;
            let d = scratch[j];
            if d < cut || at_cut > 0 {
                if d == cut {
                    at_cut -= 1;
                }
                keys.push((((max as u64) - d as u64) << 32) | j as u64);
            }
        }
        end = start;
    }
    keys.sort_unstable_by(|a, b| b.cmp(a));
    out.extend(keys.iter().map(|&key| key as u32));
}

/// How many of `d` are ≤ `t`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn count_le(d: &[u8], t: u8) -> usize {
    let mut n = 0usize;
    for c in d.chunks(4096) {
        // Per chunk in u16 (no overflow below 65,536 entries), so the loop vectorises.
        n += c.iter().map(|&x| (x <= t) as u16).sum::<u16>() as usize;
    }
    n
}

/// Bit i set where `d[i] <= t` (`d` at most 64 long).
#[inline]
fn le_mask(d: &[u8], t: u8) -> u64 {
    let mut m = 0u64;
    for (i, &x) in d.iter().enumerate() {
        m |= ((x <= t) as u64) << i;
    }
    m
}

/// `out[j] = min(popcount(q ^ codes[j]), max)`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512vpopcntdq+popcnt",
    "x86_64+avx2+popcnt",
))]
fn distances(q: &[u64], codes: &[u64], max: u8, out: &mut [u8]) {
    if q.len() == 1 {
        let q0 = q[0];
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = ((q0 ^ c).count_ones() as u8).min(max);
        }
    } else {
        for (o, c) in out.iter_mut().zip(codes.chunks_exact(q.len())) {
            let d: u32 = q.iter().zip(c).map(|(a, b)| (a ^ b).count_ones()).sum();
            *o = d.min(max as u32) as u8;
        }
    }
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
/// of the fused CUDA kernel ([`topk_hamming_codes`] per row). Layout of the result as [`topk_rows`].
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
        .for_each_init(Vec::new, |scratch, (r, (o, c))| {
            let t = &target[r * words..(r + 1) * words];
            let row = &codes[r * l * words..(r + 1) * l * words];
            let mut v = Vec::with_capacity(k.min(l));
            topk_hamming_codes(t, row, max, k, &mut v, scratch);
            o[..v.len()].copy_from_slice(&v);
            *c = v.len() as u32;
        });
    (idx, count)
}
