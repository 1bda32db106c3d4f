//! Collation and the batcher against hand-computed batches: the last `min(seq_len, max_len)`
//! behaviors of each row's history, positions, segments, the `history` column of imported
//! impressions, seeded shuffling and the mid-epoch skip of a resumed run.

use crate::common::tiny_data;
use lifelong::data::batcher::collate;
use lifelong::data::{Batcher, BatcherConfig};
use std::sync::Arc;

#[test]
fn collate_takes_the_last_behaviors_before_each_impression() {
    let (hist, imp) = tiny_data();
    // Rows 0 (user 2, seq_len 5), 2 (user 3, seq_len 0) and 4 (user 4, seq_len 6), max_len 4.
    let b = collate(&hist, &imp, &[0, 2, 4], 4, false);
    assert_eq!(b.rows, vec![0, 2, 4]);
    assert_eq!(b.label, vec![1.0, 1.0, 1.0]);
    assert_eq!(b.user, vec![2, 3, 4]);
    assert_eq!(b.target_item, vec![6, 10, 11]);
    // User 2's history (flat entries 0..5) is items [2, 3, 4, 5, 6]: the last 4 of its first 5
    // are [3, 4, 5, 6]. User 3's seq_len 0: nothing. User 4's (entries 8..14) is
    // [10, 11, 2, 3, 4, 5] with categories [4, 2, 3, 4, 2, 3]: the last 4 of its first 6.
    assert_eq!(b.seq_lens, vec![4, 0, 4]);
    assert_eq!(*b.offsets, vec![0, 4, 4, 8]);
    assert_eq!(b.hist_item, vec![3, 4, 5, 6, 2, 3, 4, 5]);
    assert_eq!(b.hist_cate, vec![2, 3, 3, 4, 3, 4, 2, 3]);
    // Positions count back from the newest (1); segments name the sample.
    assert_eq!(b.hist_pos, vec![4, 3, 2, 1, 4, 3, 2, 1]);
    assert_eq!(b.seg, vec![0, 0, 0, 0, 2, 2, 2, 2]);
    assert_eq!(b.len, 4);
    // A seq_len below max_len keeps all of it: row 1 (user 2, seq_len 3) → items [2, 3, 4].
    let b = collate(&hist, &imp, &[1], 50, false);
    assert_eq!(
        (b.hist_item.clone(), b.hist_pos.clone()),
        (vec![2, 3, 4], vec![3, 2, 1])
    );
}

#[test]
fn collate_reads_the_history_row_of_imported_impressions() {
    let (hist, mut imp) = tiny_data();
    // Row 0 (user 2, seq_len 5) reads history row 5: entries 14..21, items
    // [6, 8, 10, 3, 9, 11, 7]; the last 3 of its first 5 are [10, 3, 9].
    imp.history = vec![5, 2, 3, 3, 4, 4, 5];
    let b = collate(&hist, &imp, &[0], 3, false);
    assert_eq!(b.user, vec![2]);
    assert_eq!(b.hist_item, vec![10, 3, 9]);
}

fn batcher(shuffle: bool, seed: u64, bs: usize) -> Batcher {
    let (hist, imp) = tiny_data();
    Batcher::new(
        Arc::new(hist),
        Arc::new(imp),
        BatcherConfig {
            batch_size: bs,
            max_len: 3,
            shuffle,
            seed,
            prefetch: 2,
            full_ids: false,
            time: None,
        },
    )
}

#[test]
fn batcher_shuffles_by_seed_and_epoch_and_resumes_mid_epoch() {
    let a = batcher(true, 7, 3);
    // A permutation of the 7 rows, the same for the same (seed, epoch), another for another
    // epoch or seed.
    let o0 = a.order(0);
    let mut sorted = o0.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..7).collect::<Vec<u32>>());
    assert_eq!(o0, batcher(true, 7, 3).order(0));
    assert_ne!(o0, a.order(1));
    assert_ne!(o0, batcher(true, 8, 3).order(0));
    assert_eq!(batcher(false, 7, 3).order(0), (0..7).collect::<Vec<u32>>());

    // The batches of an epoch cover its order in chunks of 3 (the last one smaller).
    let batches: Vec<_> = a.iter(0, 0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), a.num_batches());
    assert_eq!(a.num_batches(), 3);
    let rows: Vec<u32> = batches.iter().flat_map(|b| b.rows.clone()).collect();
    assert_eq!(rows, o0);
    assert_eq!(batches[2].size(), 1);
    // Resuming at batch 1 yields exactly batches 1 and 2, collated the same.
    let resumed: Vec<_> = a.iter(0, 1).map(|b| b.unwrap()).collect();
    assert_eq!(resumed, batches[1..].to_vec());
    // Each batch is what collate makes of its rows.
    let (hist, imp) = tiny_data();
    for b in &batches {
        assert_eq!(*b, collate(&hist, &imp, &b.rows, 3, false));
    }
}

/// A panic while collating (here: a row whose seq_len exceeds its history, which `load_split`
/// would have refused) reaches the consumer as an error, not as the end of the epoch, in
/// training and in scoring.
#[test]
fn a_failing_producer_is_an_error_not_the_end_of_the_epoch() {
    let (hist, mut imp) = tiny_data();
    imp.seq_len[3] = 99;
    let b = Batcher::new(
        Arc::new(hist.clone()),
        Arc::new(imp.clone()),
        BatcherConfig {
            batch_size: 2,
            max_len: 3,
            shuffle: false,
            seed: 1,
            prefetch: 1,
            full_ids: false,
            time: None,
        },
    );
    let got: Vec<_> = b.iter(0, 0).collect();
    // Batch 0 (rows 0, 1) is fine; batch 1 (rows 2, 3) fails, and the iterator ends there.
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ok());
    let e = got[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("batch producer failed"), "{e}");
    // Scoring the same rows fails with that error instead of returning fewer logits.
    let (_, model) = crate::common::tiny_model(lifelong::config::Preset::Din, "");
    let e = lifelong::eval::predict(&model, &Arc::new(hist), &Arc::new(imp), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch producer failed"), "{e}");
}
