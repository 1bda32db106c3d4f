//! Offline metrics for CTR models: AUC, GAUC (per-user AUC), logloss, normalized entropy and
//! calibration.
//!
//! - **AUC** (area under the ROC curve) is the probability that a random positive scores higher
//!   than a random negative, a tied pair counting 1/2. It is computed from ranks after one sort:
//!   `AUC = Σ_pos (#neg below + ½ #neg tied) / (P · N)`, which is `O(n log n)`.
//! - **GAUC** (Zhou et al., DIN, KDD'18) is the impression-weighted mean of per-user AUCs:
//!   `GAUC = Σ_u n_u · AUC_u / Σ_u n_u` over users whose impressions hold both classes.
//! - **Logloss** is the mean binary cross-entropy, with probabilities clipped to
//!   `[1e-7, 1 − 1e-7]`.
//! - **NE** (normalized entropy, He et al., ADKDD'14) is the logloss divided by the entropy of
//!   the observed CTR, so a model that always predicts the base rate scores 1 and lower is better.
//! - **Calibration** is the mean predicted probability divided by the observed CTR (1 = calibrated).
//!
//! | input    | shape | meaning                                                       |
//! |----------|-------|---------------------------------------------------------------|
//! | `groups` | `[n]` | the group of each row (the user for GAUC)                     |
//! | `labels` | `[n]` | 1 = positive (click), 0 = negative; `> 0.5` counts positive   |
//! | `scores` | `[n]` | any monotone score (a logit or a probability); higher = positive |
//! | `logits` | `[n]` | the model's logits; probabilities are `sigmoid(logits)`       |
//!
//! The low-level functions ([`auc`], [`gauc`], [`logloss`]) take slices of equal length: that is a
//! precondition checked with `debug_assert!` (in release builds the common prefix is used).
//! [`compute`] checks its inputs and returns an error instead.

use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[EPS, 1 − EPS]` before taking logarithms.
const EPS: f64 = 1e-7;

/// A key whose unsigned order is the order of the scores: every NaN maps to 0 (below every
/// number, including −∞, and tied with the other NaNs), and −0.0 is tied with +0.0.
#[inline]
fn order_key(s: f32) -> u32 {
    if s.is_nan() {
        return 0;
    }
    // `-0.0 == 0.0`, so this folds -0.0 into +0.0 (they must tie, not be ordered).
    let s = if s == 0.0 { 0.0 } else { s };
    let b = s.to_bits();
    // Negative floats: flipping all bits reverses their order and puts them below positives;
    // positive floats: setting the sign bit puts them above all negatives. −∞ maps to 0x007F_FFFF
    // (> 0, so strictly above NaN).
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Whether a label counts as a positive.
#[inline]
fn is_positive(label: f32) -> bool {
    label > 0.5
}

/// `(order_key << 1) | label`: sorting these puts equal scores next to each other, negatives first.
#[inline]
fn pair_key(label: f32, score: f32) -> u64 {
    (u64::from(order_key(score)) << 1) | u64::from(is_positive(label))
}

/// AUC of rows already sorted by `key(row)` (as built by [`pair_key`]); `None` with one class.
fn auc_of_sorted<T: Copy>(sorted: &[T], key: impl Fn(T) -> u64) -> Option<f64> {
    // 2 × (number of correctly ordered pairs + ½ tied pairs), kept exact in integers.
    let mut twice_correct: u128 = 0;
    let mut neg_below: u64 = 0;
    let mut pos_total: u64 = 0;
    let mut i = 0;
    while i < sorted.len() {
        let score = key(sorted[i]) >> 1;
        let (mut p, mut q) = (0u64, 0u64);
        while i < sorted.len() {
            let k = key(sorted[i]);
            if k >> 1 != score {
                break;
            }
            if k & 1 == 1 {
                p += 1;
            } else {
                q += 1;
            }
            i += 1;
        }
        twice_correct += 2 * u128::from(p) * u128::from(neg_below) + u128::from(p) * u128::from(q);
        neg_below += q;
        pos_total += p;
    }
    if pos_total == 0 || neg_below == 0 {
        return None;
    }
    let pairs = u128::from(pos_total) * u128::from(neg_below);
    Some(twice_correct as f64 / (2.0 * pairs as f64))
}

/// ROC AUC of `scores` against `labels` (positive when `label > 0.5`).
///
/// Ties get the average rank, i.e. a tied positive/negative pair counts 1/2: all-equal scores give
/// 0.5. NaN scores rank below every number (−∞ included) and tie with each other; −0.0 ties with
/// +0.0. Runs in `O(n log n)` (one parallel sort of packed 64-bit keys).
///
/// Returns `None` when only one class is present (AUC is undefined).
///
/// # Shapes
/// `labels` `[n]`, `scores` `[n]` (equal lengths; checked by `debug_assert!` only).
///
/// ```
/// // pairs (pos, neg): (0.9, 0.4) = 1, (0.9, 0.1) = 1, (0.4, 0.4) = ½, (0.4, 0.1) = 1 → 3.5 / 4
/// let a = lifelong::metrics::auc(&[1.0, 0.0, 1.0, 0.0], &[0.9, 0.4, 0.4, 0.1]);
/// assert_eq!(a, Some(0.875));
/// ```
pub fn auc(labels: &[f32], scores: &[f32]) -> Option<f64> {
    debug_assert_eq!(
        labels.len(),
        scores.len(),
        "auc: labels and scores differ in length"
    );
    let mut keys: Vec<u64> = labels
        .iter()
        .zip(scores)
        .map(|(&y, &s)| pair_key(y, s))
        .collect();
    keys.par_sort_unstable();
    auc_of_sorted(&keys, |k| k)
}

/// Group AUC: the AUC of each group (user), weighted by the group's number of rows
/// (impressions). Groups holding only one class are skipped; `None` if no group qualifies.
///
/// One parallel sort of packed `(group, score, label)` keys orders rows by group and, inside each
/// group, by score; the per-group AUCs are then linear scans, run in parallel with rayon. Ties
/// and NaN scores are handled as in [`auc`].
///
/// # Shapes
/// `groups` `[n]`, `labels` `[n]`, `scores` `[n]` (equal lengths; checked by `debug_assert!`).
pub fn gauc(groups: &[u32], labels: &[f32], scores: &[f32]) -> Option<f64> {
    debug_assert!(
        groups.len() == labels.len() && labels.len() == scores.len(),
        "gauc: groups, labels and scores differ in length"
    );
    let mut keys: Vec<u128> = groups
        .iter()
        .zip(labels.iter().zip(scores))
        .map(|(&g, (&y, &s))| (u128::from(g) << 64) | u128::from(pair_key(y, s)))
        .collect();
    keys.par_sort_unstable();

    // Boundaries of the runs of equal group.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..=keys.len() {
        if i == keys.len() || keys[i] >> 64 != keys[start] >> 64 {
            runs.push((start, i));
            start = i;
        }
    }
    let (weighted, weight) = runs
        .par_iter()
        .filter_map(|&(s, e)| {
            auc_of_sorted(&keys[s..e], |k| k as u64).map(|a| (a * (e - s) as f64, (e - s) as f64))
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if weight == 0.0 {
        None
    } else {
        Some(weighted / weight)
    }
}

/// Mean binary cross-entropy `−mean(y ln p + (1 − y) ln(1 − p))`, with `p` clipped to
/// `[1e-7, 1 − 1e-7]` (computed in `f64`). Soft labels in `[0, 1]` are allowed.
///
/// Returns NaN for empty input or when a probability is NaN.
///
/// # Shapes
/// `labels` `[n]`, `probs` `[n]` (equal lengths; checked by `debug_assert!` only).
pub fn logloss(labels: &[f32], probs: &[f32]) -> f64 {
    debug_assert_eq!(
        labels.len(),
        probs.len(),
        "logloss: labels and probs differ in length"
    );
    let n = labels.len().min(probs.len());
    if n == 0 {
        return f64::NAN;
    }
    let sum: f64 = labels
        .par_iter()
        .zip(probs.par_iter())
        .map(|(&y, &p)| {
            let (y, p) = (f64::from(y), f64::from(p).clamp(EPS, 1.0 - EPS));
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    sum / n as f64
}

/// The logistic function `1 / (1 + e^(−x))`, computed without overflow for large `|x|`.
///
/// ```
/// use lifelong::metrics::sigmoid;
/// assert_eq!(sigmoid(0.0), 0.5);
/// assert_eq!(sigmoid(-1000.0), 0.0);
/// assert_eq!(sigmoid(1000.0), 1.0);
/// ```
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        // e^x cannot overflow for x < 0.
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The metrics of one evaluation, as returned by [`compute`].
///
/// Undefined values are `None` rather than NaN, so the struct round-trips through JSON
/// (`serde_json` writes NaN as `null`, which does not read back as an `f64`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// ROC AUC over all rows; `None` when only one class is present.
    pub auc: Option<f64>,
    /// Impression-weighted per-group AUC; `None` when no group holds both classes.
    pub gauc: Option<f64>,
    /// Mean binary cross-entropy of `sigmoid(logits)`.
    pub logloss: f64,
    /// Normalized entropy: logloss divided by the entropy of the observed CTR (lower is better,
    /// 1 = no better than predicting the base rate); `None` when only one class is present.
    pub ne: Option<f64>,
    /// Mean predicted probability divided by the observed CTR (1 = calibrated); `None` when there
    /// is no positive.
    pub calibration: Option<f64>,
    /// Number of rows.
    pub n: usize,
}

/// Computes every [`Metrics`] field from per-row groups (users), labels and logits.
///
/// # Shapes
/// `groups` `[n]`, `labels` `[n]` (0/1, `> 0.5` counts positive), `logits` `[n]`.
///
/// # Errors
/// [`Error::InvalidArgument`] when the slices differ in length, when they are empty, or when a
/// logit is NaN (a diverged model: every metric would be meaningless).
pub fn compute(groups: &[u32], labels: &[f32], logits: &[f32]) -> Result<Metrics> {
    let n = labels.len();
    if groups.len() != n || logits.len() != n {
        return Err(Error::InvalidArgument(format!(
            "evaluate: groups, labels and logits must have equal lengths, got {}, {n} and {}",
            groups.len(),
            logits.len()
        )));
    }
    if n == 0 {
        return Err(Error::InvalidArgument(
            "evaluate: no rows to evaluate".into(),
        ));
    }
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        return Err(Error::InvalidArgument(format!(
            "evaluate: logit of row {i} is NaN"
        )));
    }
    let probs: Vec<f32> = logits.par_iter().map(|&x| sigmoid(x)).collect();
    let ll = logloss(labels, &probs);
    let (label_sum, prob_sum) = labels
        .par_iter()
        .zip(probs.par_iter())
        .map(|(&y, &p)| (f64::from(y), f64::from(p)))
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let ctr = label_sum / n as f64;
    let ne = (ctr > 0.0 && ctr < 1.0).then(|| {
        let c = ctr.clamp(EPS, 1.0 - EPS);
        ll / -(c * c.ln() + (1.0 - c) * (1.0 - c).ln())
    });
    let calibration = (label_sum > 0.0).then(|| prob_sum / label_sum);
    Ok(Metrics {
        auc: auc(labels, logits),
        gauc: gauc(groups, labels, logits),
        logloss: ll,
        ne,
        calibration,
        n,
    })
}
