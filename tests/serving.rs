//! Serving from encodings against `eval`: every preset's `score_encoded` equals `predict` on a
//! batch of the same candidates with the user's history, and an encoding extended behavior by
//! behavior equals the encoding of the whole history.

use crate::common::{
    assert_same_encoding, model_of, random_histories, tiny_config, tiny_data, TINY_VOCAB,
};
use lifelong::config::Preset;
use lifelong::data::batcher::collate;
use lifelong::data::Impressions;
use lifelong::model::CtrModel;

/// Every preset, plus SDIM and ETA with the position field in their hashed tokens (the
/// encodings that shift with every new behavior), the model of parts, and every preset on the
/// generic path.
fn models() -> Vec<(String, CtrModel)> {
    let mut out: Vec<(String, CtrModel)> = Preset::ALL
        .iter()
        .filter(|p| **p != Preset::Custom)
        .map(|&p| (format!("{p:?}"), model_of(&tiny_config(p, ""))))
        .collect();
    for p in [Preset::Sdim, Preset::Eta] {
        let mut cfg = tiny_config(p, "");
        cfg.model.embedding.pos_dim = 2;
        out.push((format!("{p:?}+pos"), model_of(&cfg)));
    }
    let mean = tiny_config(Preset::Custom, crate::common::MEAN_MODEL);
    out.push(("mean".into(), model_of(&mean)));
    // The generic path (a GPU's): serving through its forms of every part.
    for p in Preset::ALL {
        let mut cfg = tiny_config(p, "");
        cfg.model.ops = lifelong::device::Ops::Generic;
        out.push((format!("{p:?} generic"), model_of(&cfg)));
    }
    let mut mean_pos = mean.clone();
    mean_pos.model.embedding.pos_dim = 2;
    out.push(("mean+pos".into(), model_of(&mean_pos)));
    out
}

#[test]
fn every_model_scores_from_encodings_as_eval_does() {
    let hist = random_histories(3);
    let (items, cates): (Vec<u32>, Vec<u32>) = (0..TINY_VOCAB.items as u32)
        .map(|i| (i, 2 + i % 3))
        .chain([(1, 1), (7, 2)])
        .unzip();
    for (name, model) in models() {
        let (mut spread, mut worst) = (0f32, 0f32);
        for u in 2..hist.n_users() as u32 {
            let (hi, hc) = hist.get(u);
            let enc = model.encode_user(u, hi, hc).unwrap();
            let got = model.score_encoded(&enc, &items, &cates).unwrap();
            let imp = Impressions {
                label: vec![0.0; items.len()],
                user: vec![u; items.len()],
                item: items.clone(),
                cate: cates.clone(),
                seq_len: vec![hi.len() as u32; items.len()],
                history: Vec::new(),
                ts: Vec::new(),
            };
            let rows: Vec<u32> = (0..items.len() as u32).collect();
            let want = model
                .predict(&collate(&hist, &imp, &rows, model.max_len(), true))
                .unwrap();
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-5,
                    "{name} user {u} candidate {r}: served {g} vs eval {w}"
                );
                worst = worst.max((g - w).abs());
            }
            let (lo, hi) = want
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            spread = spread.max(hi - lo);
        }
        assert!(spread > 1e-2, "{name}: candidates barely differ ({spread})");
        eprintln!("{name}: served = eval (largest logit difference {worst:.1e}), logit spread {spread:.3}");
    }
}

#[test]
fn extending_an_encoding_equals_encoding_the_whole_history() {
    let hist = random_histories(5);
    for (name, model) in models() {
        for u in 2..hist.n_users() as u32 {
            let (hi, hc) = hist.get(u);
            let full = model.encode_user(u, hi, hc).unwrap();
            for split in 0..=hi.len() {
                // One fold of the rest, and the rest one behavior at a time.
                let head = model.encode_user(u, &hi[..split], &hc[..split]).unwrap();
                let once = model
                    .extend_encoding(&head, &hi[split..], &hc[split..])
                    .unwrap();
                let mut step = head.clone();
                for j in split..hi.len() {
                    step = model
                        .extend_encoding(&step, &hi[j..j + 1], &hc[j..j + 1])
                        .unwrap();
                }
                for (how, e) in [("once", &once), ("stepwise", &step)] {
                    let ctx = format!("{name} user {u} split {split} {how}");
                    assert_same_encoding(&ctx, e, &full);
                }
            }
        }
    }
}

/// The mean part's encoding is its window's sum and count, read by hand from the tables.
#[test]
fn the_mean_parts_encoding_is_the_windows_sum_and_count() {
    let model = model_of(&tiny_config(Preset::Custom, crate::common::MEAN_MODEL));
    let hist = random_histories(5);
    let (hi, hc) = hist.get(5); // 11 behaviors: max_len 6 keeps the last 6, the window the last 4
    let enc = model.encode_user(5, hi, hc).unwrap();
    let t = model.tables();
    let (item, cate) = (t.table(0), t.table(1));
    assert_eq!((item.name(), cate.name()), ("item", "cate"));
    let mut want = vec![0f32; 6];
    for j in hi.len() - 4..hi.len() {
        for (c, &x) in item.row(hi[j]).iter().chain(cate.row(hc[j])).enumerate() {
            want[c] += x;
        }
    }
    want[5] = 4.0;
    assert_eq!(enc.buckets[0].len(), 6);
    for (g, w) in enc.buckets[0].iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "{:?} vs {want:?}", enc.buckets[0]);
    }
    // The retrieved window's mean is computed per candidate, not encoded.
    assert!(enc.buckets[1].is_empty() && enc.buckets[2].is_empty());
    assert_eq!(model.encoding_layout().buckets, vec![6, 0, 0]);
}

#[test]
fn score_encoded_rejects_what_does_not_fit() {
    let model = model_of(&tiny_config(Preset::Sdim, ""));
    let (hist, _) = tiny_data();
    let (hi, hc) = hist.get(3);
    let enc = model.encode_user(3, hi, hc).unwrap();
    // Candidate ids outside the table, lists of different lengths, a foreign layout.
    let e = model
        .score_encoded(&enc, &[99], &[2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("item index 99"), "{e}");
    let e = model
        .score_encoded(&enc, &[2, 3], &[2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 items but 1 categories"), "{e}");
    let mut bad = enc.clone();
    bad.buckets[0].pop();
    let e = model
        .score_encoded(&bad, &[2], &[2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("bucket tables"), "{e}");
    assert!(model.score_encoded(&enc, &[], &[]).unwrap().is_empty());
}
