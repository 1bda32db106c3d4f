//! Search primitives and the fused long-history ops against brute force: SimHash codes and SDIM
//! signatures bit by bit, collision rates against (1 − θ/π)^τ, both top-k kinds against
//! sort-then-truncate (proptest), SDIM bucket sums and the full-attention pooling against loops
//! and candle autograd.

use candle_core::{Device, Tensor, Var};
use lifelong::aggregate::score_pool::{score_pool, score_pool_reference};
use lifelong::aggregate::sdim::{bucket_table, Signatures};
use lifelong::aggregate::{Packed, Sdim};
use lifelong::config::{EmbeddingConfig, Init, View};
use lifelong::embedding::{gather, LeafBuilder, Tables, Tokens};
use lifelong::search::simhash::token_codes;
use lifelong::search::{
    hamming, query_scores, signature, topk_hamming_codes, topk_hamming_row, topk_row, topk_rows,
    SimHash, StreamTopK,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn gaussian(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    use rand_distr::{Distribution, StandardNormal};
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Codes equal `[x·r_k > 0]` computed bit by bit in f64 (bits whose projection is within 1e-4 of
/// zero, where f32 rounding may decide, are counted and must be rare), for 1, 64 and 129 bits
/// (words straddled); signatures equal the integer of their τ bits.
#[test]
fn simhash_codes_and_signatures_match_per_bit_computation() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, d) = (200, 12);
    let x = gaussian(&mut rng, n * d);
    for bits in [1usize, 64, 129] {
        let h = SimHash::new(d, bits, 3);
        let r = h.projections();
        let codes = h.codes(&x, n);
        let w = h.words();
        let mut close = 0;
        for i in 0..n {
            for k in 0..bits {
                let p: f64 = (0..d)
                    .map(|c| x[i * d + c] as f64 * r[c * bits + k] as f64)
                    .sum();
                let bit = (codes[i * w + k / 64] >> (k % 64)) & 1;
                if p.abs() < 1e-4 {
                    close += 1;
                    continue;
                }
                assert_eq!(bit == 1, p > 0.0, "row {i} bit {k} (proj {p})");
            }
            // Signatures of τ = 3: bits [3g, 3g + 3) as an integer, bit 3g lowest.
            for g in 0..bits / 3 {
                let want: u32 = (0..3)
                    .map(|t| {
                        (((codes[i * w + (3 * g + t) / 64] >> ((3 * g + t) % 64)) & 1) as u32) << t
                    })
                    .sum();
                assert_eq!(signature(&codes[i * w..(i + 1) * w], g, 3), want);
            }
        }
        assert!(close <= n * bits / 1000, "{close} borderline bits");
    }
}

/// Over many random pairs at known angles, the τ-bit signature collision frequency matches
/// (1 − θ/π)^τ within 4 standard errors, and the mean Hamming distance of 64-bit codes matches
/// 64·θ/π.
#[test]
fn simhash_collision_frequency_matches_angle() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let d = 16;
    let (tau, groups) = (3usize, 16usize);
    for theta in [0.3f64, 1.0, 2.0] {
        let trials = 400;
        let (mut hits, mut total, mut ham) = (0usize, 0usize, 0f64);
        for t in 0..trials {
            // a unit vector u, and v at angle θ from it in a random plane.
            let u = gaussian(&mut rng, d);
            let mut w = gaussian(&mut rng, d);
            let un: f32 = u.iter().map(|x| x * x).sum::<f32>().sqrt();
            let u: Vec<f32> = u.iter().map(|x| x / un).collect();
            let dotp: f32 = u.iter().zip(&w).map(|(a, b)| a * b).sum();
            w.iter_mut().zip(&u).for_each(|(x, a)| *x -= dotp * a);
            let wn: f32 = w.iter().map(|x| x * x).sum::<f32>().sqrt();
            let v: Vec<f32> = u
                .iter()
                .zip(&w)
                .map(|(a, b)| a * theta.cos() as f32 + b / wn * theta.sin() as f32)
                .collect();
            let h = SimHash::new(d, groups * tau, 1000 + t as u64);
            let x: Vec<f32> = u.iter().chain(&v).copied().collect();
            let c = h.codes(&x, 2);
            for g in 0..groups {
                hits += (signature(&c[0..1], g, tau) == signature(&c[1..2], g, tau)) as usize;
                total += 1;
            }
            let h64 = SimHash::new(d, 64, 5000 + t as u64);
            let c = h64.codes(&x, 2);
            ham += hamming(&c[0..1], &c[1..2]) as f64;
        }
        let p = (1.0 - theta / std::f64::consts::PI).powi(tau as i32);
        let freq = hits as f64 / total as f64;
        let se = (p * (1.0 - p) / total as f64).sqrt();
        assert!(
            (freq - p).abs() < 4.0 * se,
            "θ = {theta}: {freq} vs {p} (se {se})"
        );
        let mean = ham / trials as f64;
        let want = 64.0 * theta / std::f64::consts::PI;
        let se = (64.0 * (theta / std::f64::consts::PI) * (1.0 - theta / std::f64::consts::PI)
            / trials as f64)
            .sqrt();
        assert!(
            (mean - want).abs() < 4.0 * se,
            "θ = {theta}: Hamming {mean} vs {want}"
        );
    }
}

/// Sort-then-truncate with the tie rule: by score descending, then position descending.
fn reference_topk(scores: &[f32], mask: Option<&[u8]>, k: usize) -> Vec<u32> {
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut idx: Vec<usize> = (0..scores.len())
        .filter(|&j| mask.is_none_or(|m| m[j] != 0))
        .collect();
    idx.sort_by(|&a, &b| {
        key(scores[b])
            .partial_cmp(&key(scores[a]))
            .unwrap()
            .then(b.cmp(&a))
    });
    idx.truncate(k);
    idx.into_iter().map(|j| j as u32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The blocked attention-search scores equal, bit for bit, the plain loop they promise:
    /// `Σ_c q[b][c]·et[c][j]` summed over c in order, a multiply then an add, from 0; for query
    /// counts around the 4-query tile and lengths around the 64-behavior tile (edges of both).
    #[test]
    fn query_scores_equal_the_sequential_sums_bit_for_bit(
        nq in 0usize..11,
        l in 0usize..200,
        w in 1usize..70,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let q = gaussian(&mut rng, nq * w);
        let et = gaussian(&mut rng, w * l);
        let mut got = vec![f32::NAN; nq * l];
        query_scores(&q, &et, l, &mut got);
        for b in 0..nq {
            for j in 0..l {
                let mut want = 0f32;
                for c in 0..w {
                    want += std::hint::black_box(q[b * w + c] * et[c * l + j]);
                }
                prop_assert_eq!(got[b * l + j].to_bits(), want.to_bits(), "query {} behavior {}", b, j);
            }
        }
    }

    /// Score top-k equals sort-then-truncate: few distinct values (many ties), masks, k ≥ L, L = 1.
    #[test]
    fn topk_scores_match_sort_then_truncate(
        scores in prop::collection::vec(prop::sample::select(vec![-2.0f32, -0.0, 0.0, 0.5, 1.0, 3.0, f32::NAN]), 1..60),
        mask_bits in prop::collection::vec(0u8..4, 60),
        k in 0usize..70,
        masked in any::<bool>(),
    ) {
        let mask: Vec<u8> = mask_bits[..scores.len()].iter().map(|&m| (m != 0) as u8).collect();
        let m = masked.then_some(mask.as_slice());
        let mut got = Vec::new();
        topk_row(&scores, m, k, &mut got);
        // -0.0 and 0.0 are equal scores: compare by value and then the tie rule.
        let want = reference_topk(&scores.iter().map(|&x| if x == 0.0 { 0.0 } else { x }).collect::<Vec<_>>(), m, k);
        prop_assert_eq!(got, want);
    }

    /// A running top-k fed a row in pieces of any size, in any order, equals sort-then-truncate.
    #[test]
    fn stream_topk_is_independent_of_the_order_of_pieces(
        scores in prop::collection::vec(prop::sample::select(vec![-2.0f32, -0.0, 0.0, 0.5, 1.0, 3.0, f32::NAN, f32::NEG_INFINITY]), 0..2000),
        cuts in prop::collection::vec(0usize..2000, 0..12),
        k in 0usize..70,
        seed in any::<u64>(),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < scores.len()).collect();
        cuts.extend([0, scores.len()]);
        cuts.sort_unstable();
        let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.random_range(0..=i));
        }
        let mut top = StreamTopK::new(k);
        for (a, b) in pieces {
            top.offer(a, &scores[a..b]);
        }
        let mut got = Vec::new();
        top.finish(&mut got);
        // -inf ranks above NaN here (the reference's NaN is -inf: none of both in one row).
        let has_nan = scores.iter().any(|x| x.is_nan());
        let row: Vec<f32> = scores.iter().map(|&x| if x == 0.0 { 0.0 } else if has_nan && x == f32::NEG_INFINITY { -1e30 } else { x }).collect();
        prop_assert_eq!(got, reference_topk(&row, None, k));
    }

    /// Rows longer than the running threshold's buffer (4k, at least 64), ties, NaN, -0.0, masks,
    /// and rows in ascending order (every score passes the threshold: the buffer refills often).
    #[test]
    fn topk_scores_long_rows_match_sort_then_truncate(
        scores in prop::collection::vec(prop::sample::select(vec![-2.0f32, -0.0, 0.0, 0.25, 0.5, 1.0, 3.0, 7.5, f32::NAN]), 60..3200),
        wide in prop::collection::vec(-1000i32..1000, 3200),
        spread in any::<bool>(),
        mask_bits in prop::collection::vec(0u8..4, 3200),
        k in 1usize..40,
        masked in any::<bool>(),
        ascending in any::<bool>(),
    ) {
        // Many ties (few values) or nearly distinct values.
        let mut scores: Vec<f32> = if spread {
            scores.iter().zip(&wide).map(|(&x, &w)| if x.is_nan() { x } else { w as f32 / 7.0 }).collect()
        } else {
            scores
        };
        if ascending {
            scores.sort_by(f32::total_cmp);
        }
        let mask: Vec<u8> = mask_bits[..scores.len()].iter().map(|&m| (m != 0) as u8).collect();
        let m = masked.then_some(mask.as_slice());
        let mut got = Vec::new();
        topk_row(&scores, m, k, &mut got);
        let want = reference_topk(&scores.iter().map(|&x| if x == 0.0 { 0.0 } else { x }).collect::<Vec<_>>(), m, k);
        prop_assert_eq!(got, want);
    }

    /// Hamming top-k over packed codes (byte distances, one and two words) equals
    /// sort-then-truncate by (distance ↑, position ↓).
    #[test]
    fn topk_hamming_codes_match_sort_then_truncate(
        codes in prop::collection::vec(any::<u64>(), 2..1200),
        low in any::<bool>(),
        target in prop::collection::vec(any::<u64>(), 2),
        two_words in any::<bool>(),
        k in 0usize..80,
    ) {
        let words = if two_words { 2 } else { 1 };
        // Low-entropy codes give many equal distances.
        let codes: Vec<u64> = codes.iter().map(|&c| if low { c & 0x0F0F } else { c }).collect();
        let n = codes.len() / words;
        let codes = &codes[..n * words];
        let t = &target[..words];
        let dist = |j: usize| hamming(t, &codes[j * words..(j + 1) * words]);
        let mut got = Vec::new();
        topk_hamming_codes(t, codes, 64 * words as u32, k, &mut got, &mut Vec::new());
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| dist(a).cmp(&dist(b)).then(b.cmp(&a)));
        idx.truncate(k);
        prop_assert_eq!(got, idx.into_iter().map(|j| j as u32).collect::<Vec<_>>());
    }

    /// Hamming top-k (counting select) equals sort-then-truncate by (distance ↑, position ↓).
    #[test]
    fn topk_hamming_matches_sort_then_truncate(
        codes in prop::collection::vec(0u64..16, 1..80),
        target in 0u64..16,
        k in 0usize..90,
    ) {
        let dist = |j: usize| (codes[j] ^ target).count_ones();
        let mut got = Vec::new();
        topk_hamming_row(codes.len(), 64, k, dist, &mut got);
        let mut idx: Vec<usize> = (0..codes.len()).collect();
        idx.sort_by(|&a, &b| dist(a).cmp(&dist(b)).then(b.cmp(&a)));
        idx.truncate(k);
        prop_assert_eq!(got, idx.into_iter().map(|j| j as u32).collect::<Vec<_>>());
    }
}

/// Row-wise top-k over a long row (L = 10^5) with a mask equals the reference; k ≥ L returns
/// every unmasked position.
#[test]
fn topk_rows_long_rows_and_k_at_least_l() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let l = 100_000;
    let scores: Vec<f32> = (0..2 * l)
        .map(|_| rng.random_range(0..1000) as f32)
        .collect();
    let mask: Vec<u8> = (0..2 * l).map(|_| rng.random_bool(0.9) as u8).collect();
    let (idx, count) = topk_rows(&scores, l, Some(&mask), 200);
    for r in 0..2 {
        let want = reference_topk(
            &scores[r * l..(r + 1) * l],
            Some(&mask[r * l..(r + 1) * l]),
            200,
        );
        assert_eq!(count[r], 200);
        assert_eq!(&idx[r * 200..(r + 1) * 200], want.as_slice());
    }
    let (idx, count) = topk_rows(&scores[..5], 5, None, 9);
    assert_eq!(count, vec![5]);
    assert_eq!(&idx[..5], reference_topk(&scores[..5], None, 9).as_slice());
    assert!(idx[5..].iter().all(|&x| x == u32::MAX));
}

fn tables(seed: u64) -> Tables {
    tables_with(seed, None)
}

fn tables_with(seed: u64, attention: Option<lifelong::config::AttentionDims>) -> Tables {
    let cfg = EmbeddingConfig {
        item_dim: 3,
        cate_dim: 2,
        pos_dim: 2,
        user_dim: 0,
        time: None,
        attention,
        init: Init::Normal { std: 1.0 },
    };
    Tables::new(&cfg, crate::common::TINY_VOCAB, 6, seed).unwrap()
}

/// `token_codes` (per-unique-row projections added per behavior) equals hashing each
/// concatenated token directly.
#[test]
fn token_codes_equal_codes_of_concatenated_tokens() {
    let t = tables(3);
    let batch = crate::common::tiny_batch(6);
    let view = t.view(View::Attention);
    let h = SimHash::new(view.width, 40, 8);
    let (tc, hc) = token_codes(&t, view, &h, &batch).unwrap();
    let token = |field_ids: &[(usize, u32)]| -> Vec<f32> {
        let mut v = vec![0f32; view.width];
        for (f, &(table, id)) in view.fields.iter().zip(field_ids) {
            assert_eq!(f.table, table);
            v[f.col..f.col + f.dim].copy_from_slice(t.table(table).row(id));
        }
        v
    };
    let ids = |b: &lifelong::data::Batch, hist: Option<usize>, i: usize| -> Vec<(usize, u32)> {
        view.fields
            .iter()
            .map(|f| {
                let id = match hist {
                    None => b.target_ids(f.field)[i],
                    Some(_) => b.hist_ids(f.field).unwrap()[i],
                };
                (f.table, id)
            })
            .collect()
    };
    for i in 0..batch.size() {
        assert_eq!(
            h.codes(&token(&ids(&batch, None, i)), 1),
            tc[i..i + 1].to_vec()
        );
    }
    for j in 0..batch.n_packed() {
        assert_eq!(
            h.codes(&token(&ids(&batch, Some(0), j)), 1),
            hc[j..j + 1].to_vec()
        );
    }
}

/// Leaves and a values index over the whole history of the tiny batch.
fn leaf_setup(
    grad: bool,
) -> (
    Tables,
    lifelong::data::Batch,
    lifelong::embedding::Leaves,
    Vec<Arc<lifelong::embedding::TokenIndex>>,
) {
    let t = tables(5);
    let batch = crate::common::tiny_batch(6);
    let mut lb = LeafBuilder::new(&t, &batch);
    lb.request(t.view(View::Representation), Tokens::AllHistory);
    lb.request(t.view(View::Representation), Tokens::Targets);
    let (leaves, idx) = lb.build(&Device::Cpu, grad).unwrap();
    (t, batch, leaves, idx)
}

/// The token of packed history row `j`, read straight from the tables.
fn host_token(t: &Tables, b: &lifelong::data::Batch, j: usize) -> Vec<f32> {
    let view = t.view(View::Representation);
    let mut v = vec![0f32; view.width];
    for f in &view.fields {
        let id = b.hist_ids(f.field).unwrap()[j];
        v[f.col..f.col + f.dim].copy_from_slice(t.table(f.table).row(id));
    }
    v
}

/// SDIM's fused op equals a brute-force loop over the tables (values), an empty bucket gives
/// zeros (not NaN), and its leaf gradient equals candle autograd through an op-by-op composite.
#[test]
fn sdim_buckets_match_bruteforce_and_autograd() {
    let (t, batch, leaves, idx) = leaf_setup(true);
    let (b, n, g, d) = (
        batch.size(),
        batch.n_packed(),
        3usize,
        t.view(View::Representation).width,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let rows: Vec<u16> = (0..n * g).map(|_| rng.random_range(0..4)).collect();
    let mut target: Vec<u16> = (0..b * g).map(|_| rng.random_range(0..4)).collect();
    target[0..g].iter_mut().for_each(|x| *x = 9); // sample 0 collides nowhere
    let sigs = Signatures {
        target: Arc::new(target.clone()),
        rows: Arc::new(rows.clone()),
    };
    let packed = Packed::new(batch.offsets.clone()).unwrap();
    for normalize in [true, false] {
        let unit = Sdim {
            groups: g,
            tau: 2,
            normalize,
        };
        let u = unit.forward(&leaves, &idx[0], &packed, &sigs).unwrap();
        let got = u.to_vec2::<f32>().unwrap();
        // Brute force.
        for s in 0..b {
            let mut want = vec![0f64; d];
            for q in 0..g {
                let mut sum = vec![0f64; d];
                for j in batch.offsets[s]..batch.offsets[s + 1] {
                    if rows[j * g + q] == target[s * g + q] {
                        host_token(&t, &batch, j)
                            .iter()
                            .zip(sum.iter_mut())
                            .for_each(|(x, a)| *a += *x as f64);
                    }
                }
                let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
                let f = if !normalize {
                    1.0
                } else if norm > 0.0 {
                    1.0 / norm
                } else {
                    0.0
                };
                want.iter_mut()
                    .zip(&sum)
                    .for_each(|(w, x)| *w += x * f / g as f64);
            }
            for c in 0..d {
                assert!(
                    (got[s][c] as f64 - want[c]).abs() < 1e-5,
                    "sample {s} col {c}: {} vs {}",
                    got[s][c],
                    want[c]
                );
                assert!(got[s][c].is_finite());
            }
        }
        assert!(
            got[0].iter().all(|&x| x == 0.0),
            "empty buckets must give zeros"
        );
        // Gradient vs autograd of a composite: S = M · tokens, with M [B·G, n] the collision matrix.
        let w = Tensor::from_vec(gaussian(&mut rng, b * d), (b, d), &Device::Cpu).unwrap();
        let g_op = (u * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let x = leaves.take_grad(&g_op).unwrap().unwrap();
        let tokens = gather(&leaves, &idx[0]).unwrap(); // [n, d]
        let mut m = vec![0f32; b * g * n];
        for s in 0..b {
            for j in batch.offsets[s]..batch.offsets[s + 1] {
                for q in 0..g {
                    if rows[j * g + q] == target[s * g + q] {
                        m[(s * g + q) * n + j] = 1.0;
                    }
                }
            }
        }
        let m = Tensor::from_vec(m, (b * g, n), &Device::Cpu).unwrap();
        let sums = m.matmul(&tokens).unwrap(); // [B·G, d]
        let a = if normalize {
            // ‖S‖, with empty buckets (S = 0) divided by 1 instead (sqrt's gradient at 0 is inf).
            let sq = sums.sqr().unwrap().sum_keepdim(1).unwrap();
            let nz = sq
                .gt(0f64)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let safe = (&sq + (1.0 - &nz).unwrap()).unwrap().sqrt().unwrap();
            sums.broadcast_div(&safe)
                .unwrap()
                .broadcast_mul(&nz)
                .unwrap()
        } else {
            sums
        };
        let uc = (a.reshape((b, g, d)).unwrap().sum(1).unwrap() / g as f64).unwrap();
        let g_ref = (uc * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let y = leaves.take_grad(&g_ref).unwrap().unwrap();
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() < 1e-5,
                "normalize={normalize} leaf[{i}]: {p} vs {q}"
            );
        }
        assert!(x.iter().any(|v| v.abs() > 1e-3));
    }
}

/// BSE: every bucket of every group equals a loop over the behaviors.
#[test]
fn bucket_table_matches_bruteforce() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (m, d, g, tau) = (50, 4, 5, 3);
    let v = gaussian(&mut rng, m * d);
    let sigs: Vec<u16> = (0..m * g).map(|_| rng.random_range(0..8)).collect();
    let t = bucket_table(&v, d, &sigs, g, tau);
    for q in 0..g {
        for s in 0..8 {
            for c in 0..d {
                let want: f32 = (0..m)
                    .filter(|&j| sigs[j * g + q] == s as u16)
                    .map(|j| v[j * d + c])
                    .sum();
                assert!((t[(q * 8 + s) * d + c] - want).abs() < 1e-5);
            }
        }
    }
}

/// The full-attention pooling op (auxiliary heads) equals candle ops on gathered, padded
/// tokens, values and gradients (query and leaf), with softmax and raw weights, with keys and
/// values of one view (the same tokens) and of two (DARE's attention and representation tables).
#[test]
fn score_pool_matches_reference() {
    let batch = crate::common::tiny_batch(6);
    let b = batch.size();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let packed = Packed::new(batch.offsets.clone()).unwrap();
    let l = packed.len();
    let mut pad_rows = vec![lifelong::embedding::NONE; b * l];
    for s in 0..b {
        for (i, j) in (batch.offsets[s]..batch.offsets[s + 1]).enumerate() {
            pad_rows[s * l + i] = j as u32;
        }
    }
    let pad_rows = Arc::new(pad_rows);
    let mask = packed.mask(&Device::Cpu).unwrap();
    for decoupled in [false, true] {
        let dims = lifelong::config::AttentionDims {
            item_dim: 2,
            cate_dim: 3,
            pos_dim: 1,
            time_dim: 0,
        };
        let t = tables_with(5, decoupled.then_some(dims));
        let (att, rep) = (t.view(View::Attention), t.view(View::Representation));
        let (dk, dv) = (att.width, rep.width);
        let mut lb = LeafBuilder::new(&t, &batch);
        let (ka, va) = (
            lb.request(att, Tokens::AllHistory),
            lb.request(rep, Tokens::AllHistory),
        );
        assert_eq!(ka == va, !decoupled);
        let (leaves, idx) = lb.build(&Device::Cpu, true).unwrap();
        let mut lb = LeafBuilder::new(&t, &batch);
        let kp = lb.request(att, Tokens::History(pad_rows.clone()));
        let vp = lb.request(rep, Tokens::History(pad_rows.clone()));
        let (leaves2, idx2) = lb.build(&Device::Cpu, true).unwrap();
        for softmax in [true, false] {
            let q = Var::from_vec(gaussian(&mut rng, b * dk), (b, dk), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(gaussian(&mut rng, b * dv), (b, dv), &Device::Cpu).unwrap();
            let out =
                score_pool(q.as_tensor(), &leaves, &idx[ka], &idx[va], &packed, softmax).unwrap();
            let keys = gather(&leaves2, &idx2[kp])
                .unwrap()
                .reshape((b, l, dk))
                .unwrap();
            let vals = gather(&leaves2, &idx2[vp])
                .unwrap()
                .reshape((b, l, dv))
                .unwrap();
            let reference =
                score_pool_reference(q.as_tensor(), &keys, &vals, &mask, softmax).unwrap();
            let (o, r) = (
                out.to_vec2::<f32>().unwrap(),
                reference.to_vec2::<f32>().unwrap(),
            );
            for (x, y) in o.iter().flatten().zip(r.iter().flatten()) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "decoupled={decoupled} softmax={softmax}: {x} vs {y}"
                );
            }
            let go = (out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{what}: {x} vs {y}");
                }
            };
            close(
                go.get(q.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                gr.get(q.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                "query",
            );
            // Both leaves hold the same rows in the same order (same tables, same ids).
            close(
                leaves.take_grad(&go).unwrap().unwrap(),
                leaves2.take_grad(&gr).unwrap().unwrap(),
                "leaf",
            );
        }
    }
}
