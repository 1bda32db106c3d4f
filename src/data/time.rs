//! The time-interval field: each behavior's gap to its target's time, bucketed on a log scale
//! (SIM's time-interval embedding; TWIN and ETA in production carry one too).
//!
//! A gap `g = now − ts` (in the timestamps' own unit; `now` is the target's time in training,
//! the request's or the encoding's time in serving) falls in bucket `1 + #{edges ≤ g}`: bucket 1
//! holds gaps below the first edge, bucket `edges.len() + 1` the gaps at or above the last.
//! Row 0 is the target's own row (gap 0 *by definition*, as the position field's row 0), so the
//! table has `edges.len() + 2` rows. A negative gap (a behavior stamped after the target: clock
//! skew in a log, a request time before the encoding's last behavior) counts as 0.

use crate::{Error, Result};

/// The default bucket edges: powers of two from 1 to 2^40. Whatever the unit (seconds,
/// milliseconds), a doubling of the gap moves one bucket: seconds resolve the first minute and
/// reach 35,000 years; milliseconds reach 35 years.
pub fn default_edges() -> Vec<i64> {
    (0..=40).map(|k| 1i64 << k).collect()
}

/// Bucketing of gaps by ascending edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeBuckets {
    edges: Vec<i64>,
}

impl TimeBuckets {
    /// The most edges a config may give (the table stays small).
    pub const MAX_EDGES: usize = 256;

    /// Buckets for `edges`, which must be strictly ascending, non-negative and at most
    /// [`Self::MAX_EDGES`] long.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first edge out of order.
    pub fn new(edges: Vec<i64>) -> Result<Self> {
        check_edges(&edges).map_err(Error::Config)?;
        Ok(Self { edges })
    }

    /// The edges.
    pub fn edges(&self) -> &[i64] {
        &self.edges
    }

    /// Rows of the embedding table: the target's row 0, then `edges.len() + 1` buckets.
    pub fn rows(&self) -> usize {
        self.edges.len() + 2
    }

    /// The bucket (table row, ≥ 1) of a gap.
    #[inline]
    pub fn bucket(&self, gap: i64) -> u32 {
        1 + self.edges.partition_point(|&e| e <= gap.max(0)) as u32
    }

    /// The buckets of behaviors at times `ts` seen from `now`.
    pub fn of<'a>(&'a self, ts: &'a [i64], now: i64) -> impl Iterator<Item = u32> + 'a {
        ts.iter().map(move |&t| self.bucket(now.saturating_sub(t)))
    }
}

/// Checks a config's edges: strictly ascending, non-negative, at most
/// [`TimeBuckets::MAX_EDGES`], at least one.
pub fn check_edges(edges: &[i64]) -> std::result::Result<(), String> {
    if edges.is_empty() || edges.len() > TimeBuckets::MAX_EDGES {
        return Err(format!(
            "model.embedding.time.edges: {} edges; give 1 to {}",
            edges.len(),
            TimeBuckets::MAX_EDGES
        ));
    }
    if edges[0] < 0 {
        return Err(format!(
            "model.embedding.time.edges[0] = {} is negative (gaps are never below 0)",
            edges[0]
        ));
    }
    if let Some(i) = edges.windows(2).position(|w| w[1] <= w[0]) {
        return Err(format!(
            "model.embedding.time.edges must be strictly ascending: edges[{}] = {} follows {}",
            i + 1,
            edges[i + 1],
            edges[i]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_the_edges_at_or_below_the_gap() {
        let b = TimeBuckets::new(vec![1, 10, 100]).unwrap();
        assert_eq!(b.rows(), 5);
        // gap: 0 → below 1 → bucket 1; 1..9 → 2; 10..99 → 3; ≥ 100 → 4; negative counts as 0.
        let got: Vec<u32> = [0, 1, 9, 10, 99, 100, 1_000_000, -5]
            .iter()
            .map(|&g| b.bucket(g))
            .collect();
        assert_eq!(got, vec![1, 2, 2, 3, 3, 4, 4, 1]);
        assert_eq!(b.of(&[90, 95, 100], 100).collect::<Vec<_>>(), vec![3, 2, 1]);
    }

    #[test]
    fn the_default_is_log2_and_edges_are_checked() {
        let b = TimeBuckets::new(default_edges()).unwrap();
        // A gap of 2^k .. 2^(k+1)-1 is bucket k + 2.
        for k in 0..40 {
            assert_eq!(b.bucket(1 << k), k as u32 + 2);
            assert_eq!(b.bucket((2i64 << k) - 1), k as u32 + 2);
        }
        assert!(TimeBuckets::new(vec![]).is_err());
        let e = TimeBuckets::new(vec![1, 5, 5]).unwrap_err().to_string();
        assert!(e.contains("edges[2] = 5"), "{e}");
        assert!(TimeBuckets::new(vec![-1, 3]).is_err());
    }
}
