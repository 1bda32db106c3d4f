//! CPU top-k: the k best of a row by float score, and the k nearest by Hamming distance.
//!
//! Tie rule (both kinds, everywhere): among equal scores or distances the **more recent**
//! behavior (the higher position in the chronological row) wins. Results are best first.
//!
//! - Scores: each entry becomes one `u64` key `(ordered score bits << 32) | position`, so the tie
//!   rule falls out of the key; `-0.0` counts as `0.0`; NaN ranks below everything. A row without
//!   a mask is read once against a running threshold (the k-th best key held so far), so most
//!   scores cost one vectorised compare; a masked row selects among all its unmasked keys
//!   (`select_nth_unstable`). Only the k winners are sorted.
//! - Hamming distances are small integers (0..=bits): [`topk_hamming_codes`] writes them as one
//!   byte per behavior (a vectorised XOR + popcount), finds the cut-off distance by a binary
//!   search of vectorised counts, and collects the winners newest first, skipping 64-behavior
//!   blocks without one. [`topk_hamming_row`] is the same select over any distance function.
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
/// Without a mask the row is read once with a running threshold ([`StreamTopK`]); with one,
/// every unmasked entry becomes a key and one `select_nth_unstable` picks the k largest.
pub fn topk_row(scores: &[f32], mask: Option<&[u8]>, k: usize, out: &mut Vec<u32>) {
    if k == 0 {
        return;
    }
    let mut keys: Vec<u64> = match mask {
        None => return topk_stream(scores, k, out),
        Some(m) => scores
            .iter()
            .zip(m)
            .enumerate()
            .filter(|(_, (_, &m))| m != 0)
            .map(|(j, (&s, _))| key_of(j, s))
            .collect(),
    };
    select_largest(&mut keys, k);
    out.extend(keys.iter().map(|&key| key as u32));
}

/// The selection key of score `s` at position `j`: larger is better, ties to the higher `j`.
#[inline]
fn key_of(j: usize, s: f32) -> u64 {
    ((score_key(s) as u64) << 32) | j as u64
}

/// The score whose [`score_key`] is `key` (NaN for 0, which only NaN has).
#[inline]
fn score_of_key(key: u32) -> f32 {
    if key == 0 {
        f32::NAN
    } else if key & 0x8000_0000 != 0 {
        f32::from_bits(key ^ 0x8000_0000)
    } else {
        f32::from_bits(!key)
    }
}

/// A running top-k over scores offered in pieces, in any order: the k largest keys of all
/// offered, best first, ties to the higher position, the same result as [`topk_row`] on the whole
/// row without a mask.
///
/// Keys go to a buffer of about 4k; whenever it fills, it is cut to its k best and the k-th of
/// those becomes the threshold. A later score below the threshold can never be among the k best
/// (k keys above it are already held), so it costs one vector compare, 16 scores at a time. On a
/// row in random order about k·ln(L/k) scores pass, so the work is a compare per score plus a few
/// small selections.
#[derive(Debug, Clone)]
pub struct StreamTopK {
    k: usize,
    cap: usize,
    keys: Vec<u64>,
    /// `None`: no threshold yet (or the k-th best held is NaN, which everything ties or beats).
    t: Option<f32>,
}

impl StreamTopK {
    /// An empty top-`k`.
    pub fn new(k: usize) -> Self {
        let cap = (4 * k).max(64);
        Self {
            k,
            cap,
            keys: Vec::with_capacity(cap + 64),
            t: None,
        }
    }

    /// Offers `scores` at positions `base..base + scores.len()`.
    #[inline(always)]
    pub fn offer(&mut self, base: usize, scores: &[f32]) {
        if self.k == 0 {
            return;
        }
        match self.t {
            None => self
                .keys
                .extend(scores.iter().enumerate().map(|(i, &s)| key_of(base + i, s))),
            Some(t) => {
                let mut chunks = scores.chunks_exact(16);
                let mut at = base;
                for chunk in chunks.by_ref() {
                    let chunk: &[f32; 16] = chunk.try_into().expect("16 scores");
                    // One vector compare (false for NaN); only the set bits are visited.
                    let mut m = ge_mask16(chunk, t);
                    while m != 0 {
                        let i = m.trailing_zeros() as usize;
                        m &= m - 1;
                        self.keys.push(key_of(at + i, chunk[i]));
                    }
                    at += 16;
                }
                for (i, &s) in chunks.remainder().iter().enumerate() {
                    if s >= t {
                        self.keys.push(key_of(at + i, s));
                    }
                }
            }
        }
        if self.keys.len() >= self.cap {
            self.cut();
        }
    }

    #[cold]
    fn cut(&mut self) {
        let k = self.k;
        self.keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        self.keys.truncate(k);
        let kth = self.keys.iter().copied().min().unwrap_or(0);
        self.t = Some(score_of_key((kth >> 32) as u32)).filter(|x| !x.is_nan());
    }

    /// Appends the positions of the k best, best first, to `out`, and starts over.
    pub fn finish(&mut self, out: &mut Vec<u32>) {
        select_largest(&mut self.keys, self.k);
        out.extend(self.keys.iter().map(|&key| key as u32));
        self.keys.clear();
        self.t = None;
    }
}

/// [`topk_row`] without a mask: one [`StreamTopK`] pass, its threshold seeded (for rows of at
/// least 8k) with the smallest of the maxima of k equal slices of the row: each slice holds a
/// score at or above it, so k scores are, and the k-th best is too. On a row in random order the
/// seed passes about 2% of the scores (k = 50, L = 10^4) where an unseeded start keeps its first
/// 4k and tightens from there; the seed costs one more vectorised pass.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2"))]
fn topk_stream(scores: &[f32], k: usize, out: &mut Vec<u32>) {
    let mut top = StreamTopK::new(k);
    let n = scores.len();
    if k > 0 && n >= 8 * k {
        let per = n / k;
        let floor = (0..k)
            .map(|i| slice_max(&scores[i * per..if i + 1 == k { n } else { (i + 1) * per }]))
            .fold(f32::INFINITY, f32::min);
        top.t = Some(floor);
    }
    for (i, piece) in scores.chunks(1024).enumerate() {
        top.offer(i * 1024, piece);
    }
    top.finish(out);
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

/// Bit i set where `d[i] <= t` (`d` at most 64 long): the compares go to bytes of 0 or 1 (one
/// vector compare), and each 8 of those bytes to 8 bits by one multiply (byte i of the product's
/// top byte collects byte i of the input: the partial products never overlap, so nothing carries).
#[inline]
fn le_mask(d: &[u8], t: u8) -> u64 {
    let mut ones = [0u8; 64];
    for (o, &x) in ones.iter_mut().zip(d) {
        *o = (x <= t) as u8;
    }
    let mut m = 0u64;
    for (g, bytes) in ones.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        m |= (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * g);
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

/// Bit i set where `c[i] >= t` (false for NaN): one AVX-512 compare into a mask register where
/// the CPU has it, else a loop (LLVM does not turn the loop into a compare and a mask move).
#[inline(always)]
fn ge_mask16(c: &[f32; 16], t: f32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (checked above); the load reads the 16 floats of `c`.
        return unsafe { ge_mask16_avx512(c, t) };
    }
    ge_mask16_loop(c, t)
}

#[inline(always)]
fn ge_mask16_loop(c: &[f32; 16], t: f32) -> u32 {
    let mut m = 0u32;
    for (i, &x) in c.iter().enumerate() {
        m |= u32::from(x >= t) << i;
    }
    m
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn ge_mask16_avx512(c: &[f32; 16], t: f32) -> u32 {
    use std::arch::x86_64::*;
    let v = _mm512_loadu_ps(c.as_ptr());
    u32::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, _mm512_set1_ps(t)))
}

/// The largest score of `s` (NaN left out; `-inf` for none), 16 lanes at a time.
#[inline(always)]
fn slice_max(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = s.chunks_exact(16);
    for c in chunks.by_ref() {
        for i in 0..16 {
            // `if x > a` (not f32::max, whose NaN rule keeps it scalar) is one vector max.
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
    m.iter().fold(tail, |a, &x| if x > a { x } else { a })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector mask (where the CPU has AVX-512) equals the loop every other CPU runs, bit for
    /// bit, for thresholds and scores among ties, ±0, ±inf and NaN.
    #[test]
    fn the_vector_mask_equals_the_loop() {
        let vals = [
            -2.0f32,
            -0.0,
            0.0,
            0.5,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut c = [0f32; 16];
            for x in &mut c {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = vals[(seed >> 61) as usize];
            }
            for &t in &vals[..7] {
                assert_eq!(ge_mask16(&c, t), ge_mask16_loop(&c, t), "{c:?} >= {t}");
            }
        }
    }
}
