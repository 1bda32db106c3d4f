//! Metrics against values derived by hand in the comments, and AUC / GAUC against an O(n²)
//! brute-force pair count.

use lifelong::metrics::{auc, compute, gauc, logloss, sigmoid, Metrics};
use lifelong::Error;
use proptest::prelude::*;
use std::cmp::Ordering;

fn assert_close(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "got {got}, want {want} (tolerance {tol})"
    );
}

#[test]
fn auc_counts_tied_pair_as_half() {
    // Positives score 0.9 and 0.4, negatives 0.4 and 0.1. Pairs (pos, neg):
    // (0.9 > 0.4) = 1, (0.9 > 0.1) = 1, (0.4 = 0.4) = 0.5, (0.4 > 0.1) = 1 → 3.5 / 4 = 0.875.
    assert_eq!(
        auc(&[1.0, 0.0, 1.0, 0.0], &[0.9, 0.4, 0.4, 0.1]),
        Some(0.875)
    );
}

#[test]
fn auc_ties_across_several_rows() {
    // Positives 0.8, 0.5; negatives 0.5, 0.5, 0.2.
    // pos 0.8: beats all 3 negatives → 3.
    // pos 0.5: ties two negatives (0.5 + 0.5) and beats 0.2 (1) → 2.
    // (3 + 2) / (2 · 3) = 5/6.
    let a = auc(&[1.0, 1.0, 0.0, 0.0, 0.0], &[0.8, 0.5, 0.5, 0.5, 0.2]);
    assert_close(a.unwrap(), 5.0 / 6.0, 1e-15);
}

#[test]
fn auc_all_tied_is_half() {
    // Every pair ties → each counts 1/2 → 0.5.
    assert_eq!(auc(&[1.0, 0.0, 1.0, 0.0, 0.0], &[0.3; 5]), Some(0.5));
}

#[test]
fn auc_perfect_is_one_and_reversed_is_zero() {
    // Every positive above every negative → 4/4; the mirror → 0/4.
    let labels = [0.0, 0.0, 1.0, 1.0];
    assert_eq!(auc(&labels, &[0.1, 0.2, 0.3, 0.4]), Some(1.0));
    assert_eq!(auc(&labels, &[0.4, 0.3, 0.2, 0.1]), Some(0.0));
}

#[test]
fn auc_single_class_or_empty_is_none() {
    assert_eq!(auc(&[1.0, 1.0, 1.0], &[0.1, 0.2, 0.3]), None);
    assert_eq!(auc(&[0.0, 0.0], &[0.1, 0.2]), None);
    assert_eq!(auc(&[], &[]), None);
}

#[test]
fn auc_nan_scores_rank_lowest_and_tie() {
    // NaN ranks below every number, −∞ included; NaNs tie with each other; −0.0 ties +0.0.
    assert_eq!(auc(&[1.0, 0.0], &[f32::NAN, 0.0]), Some(0.0));
    assert_eq!(auc(&[1.0, 0.0], &[f32::NEG_INFINITY, f32::NAN]), Some(1.0));
    assert_eq!(auc(&[1.0, 0.0], &[f32::NAN, -f32::NAN]), Some(0.5));
    assert_eq!(auc(&[1.0, 0.0], &[-0.0, 0.0]), Some(0.5));
    assert_eq!(auc(&[1.0, 0.0], &[f32::INFINITY, f32::MAX]), Some(1.0));
}

#[test]
fn gauc_weights_users_by_impressions_and_skips_single_class() {
    // user 7: labels [1, 0, 0], scores [0.9, 0.5, 0.95]: the positive beats 0.5, loses to 0.95
    //         → AUC 1/2, weight 3.
    // user 3: labels [1, 1, 0, 0], scores [0.8, 0.3, 0.3, 0.1]: 0.8 beats both (2); 0.3 ties
    //         0.3 (0.5) and beats 0.1 (1) → 3.5/4 = 0.875, weight 4.
    // user 5: labels [1, 1] → one class, skipped.
    // GAUC = (3 · 0.5 + 4 · 0.875) / (3 + 4) = 5/7.
    // Rows are interleaved across users to exercise the grouping.
    let groups = [7, 3, 5, 7, 3, 3, 5, 7, 3];
    let labels = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0];
    let scores = [0.9, 0.8, 0.2, 0.5, 0.3, 0.3, 0.7, 0.95, 0.1];
    assert_close(gauc(&groups, &labels, &scores).unwrap(), 5.0 / 7.0, 1e-15);
}

#[test]
fn gauc_without_a_qualifying_group_is_none() {
    // Each user holds one class only.
    assert_eq!(gauc(&[1, 1, 2], &[1.0, 1.0, 0.0], &[0.1, 0.2, 0.3]), None);
    assert_eq!(gauc(&[], &[], &[]), None);
}

#[test]
fn logloss_matches_hand_values_and_clips() {
    // −(ln 0.8 + ln(1 − 0.4)) / 2 = (0.22314355 + 0.51082562) / 2 = 0.36698459.
    assert_close(
        logloss(&[1.0, 0.0], &[0.8, 0.4]),
        0.366_984_587_540_100_2,
        1e-7,
    );
    // p = 0 for a positive is clipped to 1e-7: −ln(1e-7) = 16.11809565.
    assert_close(logloss(&[1.0], &[0.0]), 16.118_095_650_958_32, 1e-6);
    // p = 1 for a negative is clipped to 1 − 1e-7: −ln(1e-7) again.
    assert_close(logloss(&[0.0], &[1.0]), 16.118_095_650_958_32, 1e-6);
    assert!(logloss(&[], &[]).is_nan());
}

#[test]
fn sigmoid_is_stable_at_extremes() {
    assert_eq!(sigmoid(0.0), 0.5);
    // 1 / (1 + e^−2) = 0.88079708.
    assert!((sigmoid(2.0) - 0.880_797_1).abs() < 1e-6);
    assert!((sigmoid(-2.0) - (1.0 - 0.880_797_1)).abs() < 1e-6);
    assert_eq!(sigmoid(1e4), 1.0);
    assert_eq!(sigmoid(-1e4), 0.0);
    assert!(sigmoid(-100.0) > 0.0 && sigmoid(-100.0).is_finite()); // e^−100 ≈ 3.7e-44 (subnormal)
}

#[test]
fn evaluate_matches_hand_values() {
    // groups [1, 1, 2, 2], labels [1, 0, 1, 0], logits [2, −1, 0, 0.5].
    // AUC: (2 > −1) + (2 > 0.5) + (0 > −1) + (0 < 0.5 → 0) = 3/4.
    // GAUC: user 1: 2 > −1 → 1.0; user 2: 0 < 0.5 → 0.0; weights 2 and 2 → 0.5.
    // probs: σ(2) = 0.88079708, σ(−1) = 0.26894142, σ(0) = 0.5, σ(0.5) = 0.62245933.
    // logloss = (0.12692801 + 0.31326169 + 0.69314718 + 0.97407698) / 4 = 0.52685347.
    // CTR = 0.5, entropy = ln 2 → NE = 0.52685347 / 0.69314718 = 0.76008888.
    // calibration = mean prob / CTR = (2.27219783 / 4) / 0.5 = 1.13609892.
    let m = compute(&[1, 1, 2, 2], &[1.0, 0.0, 1.0, 0.0], &[2.0, -1.0, 0.0, 0.5]).unwrap();
    assert_eq!(m.n, 4);
    assert_eq!(m.auc, Some(0.75));
    assert_eq!(m.gauc, Some(0.5));
    assert_close(m.logloss, 0.526_853_465_825_311_9, 1e-6);
    assert_close(m.ne.unwrap(), 0.760_088_882_421_340_4, 1e-6);
    assert_close(m.calibration.unwrap(), 1.136_098_915_274_866, 1e-6);
}

#[test]
fn evaluate_single_class_leaves_undefined_metrics_none() {
    // All negatives: AUC, GAUC and NE undefined, calibration undefined (observed CTR 0).
    let m = compute(&[1, 2], &[0.0, 0.0], &[0.0, 1.0]).unwrap();
    assert_eq!(
        (m.auc, m.gauc, m.ne, m.calibration),
        (None, None, None, None)
    );
    assert!(m.logloss.is_finite());
    // The struct round-trips through JSON even with `None`s (NaN would come back as `null` and
    // fail to parse). serde_json without its `float_roundtrip` feature may be 1 ulp off.
    let back: Metrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(
        back,
        Metrics {
            logloss: back.logloss,
            ..m
        }
    );
    assert_close(back.logloss, m.logloss, 1e-15);
}

#[test]
fn evaluate_rejects_bad_input() {
    let bad = [
        compute(&[1], &[1.0, 0.0], &[0.0, 0.0]),
        compute(&[1, 1], &[1.0, 0.0], &[0.0]),
        compute(&[], &[], &[]),
        compute(&[1, 1], &[1.0, 0.0], &[0.0, f32::NAN]),
    ];
    for r in bad {
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
}

/// Score order used by the brute force, written independently of the library's bit trick:
/// NaN lowest and tied with NaN, otherwise IEEE order (so −0.0 == +0.0).
fn rank_cmp(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// O(n²) AUC: count each (positive, negative) pair, ties as 1/2.
fn brute_auc(labels: &[f32], scores: &[f32]) -> Option<f64> {
    let (mut good, mut pairs) = (0.0, 0.0);
    for (i, &yi) in labels.iter().enumerate() {
        for (j, &yj) in labels.iter().enumerate() {
            if yi > 0.5 && yj <= 0.5 {
                pairs += 1.0;
                good += match rank_cmp(scores[i], scores[j]) {
                    Ordering::Greater => 1.0,
                    Ordering::Equal => 0.5,
                    Ordering::Less => 0.0,
                };
            }
        }
    }
    (pairs > 0.0).then(|| good / pairs)
}

/// A score drawn mostly from a few values (to force ties), sometimes NaN, ±∞, ±0 or any float.
fn score() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => prop::sample::select(vec![-1.0f32, 0.0, 0.25, 0.5, 1.0]),
        1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]),
        2 => any::<f32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn auc_matches_bruteforce(rows in prop::collection::vec((any::<bool>(), score()), 0..60)) {
        let labels: Vec<f32> = rows.iter().map(|r| if r.0 { 1.0 } else { 0.0 }).collect();
        let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
        match (auc(&labels, &scores), brute_auc(&labels, &scores)) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
            (a, b) => prop_assert_eq!(a, b),
        }
    }

    #[test]
    fn gauc_matches_bruteforce(
        rows in prop::collection::vec((0u32..5, any::<bool>(), score()), 0..80)
    ) {
        let groups: Vec<u32> = rows.iter().map(|r| r.0).collect();
        let labels: Vec<f32> = rows.iter().map(|r| if r.1 { 1.0 } else { 0.0 }).collect();
        let scores: Vec<f32> = rows.iter().map(|r| r.2).collect();
        let (mut num, mut den) = (0.0, 0.0);
        for g in 0..5u32 {
            let idx: Vec<usize> = (0..rows.len()).filter(|&i| groups[i] == g).collect();
            let l: Vec<f32> = idx.iter().map(|&i| labels[i]).collect();
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            if let Some(a) = brute_auc(&l, &s) {
                num += a * idx.len() as f64;
                den += idx.len() as f64;
            }
        }
        let want = (den > 0.0).then(|| num / den);
        match (gauc(&groups, &labels, &scores), want) {
            (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
            (a, b) => prop_assert_eq!(a, b),
        }
    }
}
