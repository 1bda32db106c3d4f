//! The time-interval field: `prepare` writes each impression's time, collation buckets each
//! behavior's gap to it (against a loop), a model learns a signal only the gaps carry, serving
//! equals eval at the encoding's "now" and at a request's time, extending a timed encoding
//! equals re-encoding, and data without timestamps is refused by name.

use crate::cli::write_log;
use crate::common::{
    assert_same_encoding, gradient_check, model_of, random_histories, tiny_config, with_time,
    TINY_VOCAB,
};
use candle_core::Device;
use lifelong::config::{Config, Preset};
use lifelong::data::batcher::collate_with;
use lifelong::data::{prepare, Dataset, Histories, Impressions, PrepareConfig, Split, TimeBuckets};
use lifelong::eval;
use lifelong::model::CtrModel;
use lifelong::train::Trainer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;

/// The edges of [`with_time`]'s field.
const EDGES: [i64; 3] = [2, 5, 20];

/// Every preset with the time field, fused and generic.
fn timed_models() -> Vec<(String, CtrModel)> {
    let mut out = Vec::new();
    for p in Preset::ALL {
        out.push((format!("{p:?}"), model_of(&with_time(tiny_config(p, "")))));
        let mut cfg = with_time(tiny_config(p, ""));
        cfg.model.ops = lifelong::device::Ops::Generic;
        out.push((format!("{p:?} generic"), model_of(&cfg)));
    }
    out
}

fn user_slices(h: &Histories, u: u32) -> (&[u32], &[u32], &[i64]) {
    let (s, e) = (
        h.offsets[u as usize] as usize,
        h.offsets[u as usize + 1] as usize,
    );
    (&h.items[s..e], &h.cates[s..e], &h.ts[s..e])
}

/// Impressions of `items` for user `u` after their whole history, at time `now`.
fn candidates_at(u: u32, n: usize, items: &[u32], cates: &[u32], now: i64) -> Impressions {
    Impressions {
        label: vec![0.0; items.len()],
        user: vec![u; items.len()],
        item: items.to_vec(),
        cate: cates.to_vec(),
        seq_len: vec![n as u32; items.len()],
        history: Vec::new(),
        ts: vec![now; items.len()],
    }
}

/// A gap per behavior, bucketed by a loop over the edges (independent of `TimeBuckets`).
fn bucket_by_loop(gap: i64) -> u32 {
    let mut b = 1;
    for e in EDGES {
        if gap.max(0) >= e {
            b += 1;
        }
    }
    b
}

#[test]
fn prepare_writes_each_impressions_time_and_collation_buckets_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.parquet");
    // User 7: clicks at 10, 20, 30, 40 (items 1..4) and a shown-not-clicked row at 25 (item 9).
    write_log(
        &log,
        vec![
            ("user_id", vec![7, 7, 7, 7, 7]),
            ("item_id", vec![1, 2, 9, 3, 4]),
            ("cate_id", vec![1, 1, 2, 1, 1]),
            ("ts", vec![10, 20, 25, 30, 40]),
            ("label", vec![1, 1, 0, 1, 1]),
        ],
    );
    let out = dir.path().join("prepared");
    prepare(&log, &out, &PrepareConfig::default()).unwrap();
    let ds = Dataset::open(&out).unwrap();
    assert!(ds.meta.timestamps);
    let rows = |s: Split| {
        let i = ds.load_split(s).unwrap();
        (0..i.len())
            .map(|r| (i.label[r] as u8, i.seq_len[r], i.ts[r]))
            .collect::<Vec<_>>()
    };
    // n = 4 clicks: the click at position 1 (t = 20) trains; position 2 (t = 30) validates with
    // the shown row at 25 (2 clicks before it); position 3 (t = 40) tests.
    assert_eq!(rows(Split::Train), vec![(1, 1, 20)]);
    assert_eq!(rows(Split::Valid), vec![(1, 2, 30), (0, 2, 25)]);
    assert_eq!(rows(Split::Test), vec![(1, 3, 40)]);
    // Collation: the validation rows see behaviors at 10 and 20 from 30 and from 25.
    let valid = ds.load_split(Split::Valid).unwrap();
    let tb = TimeBuckets::new(EDGES.to_vec()).unwrap();
    let b = collate_with(&ds.histories, &valid, &[0, 1], 50, false, Some(&tb));
    let want: Vec<u32> = [30 - 10, 30 - 20, 25 - 10, 25 - 20]
        .iter()
        .map(|&g| bucket_by_loop(g))
        .collect();
    assert_eq!(b.hist_time, want);
    assert_eq!(want, vec![4, 3, 3, 3]);
}

#[test]
fn collated_buckets_equal_a_loop_over_random_histories() {
    let hist = random_histories(9);
    let tb = TimeBuckets::new(EDGES.to_vec()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut imp = Impressions::default();
    for u in 2..6u32 {
        let n = hist.len_of(u);
        for s in 0..=n {
            imp.label.push(0.0);
            imp.user.push(u);
            imp.item.push(2);
            imp.cate.push(2);
            imp.seq_len.push(s as u32);
            // A time at or after the s-th behavior (or before it: gaps below 0 count as 0).
            let (_, _, ts) = user_slices(&hist, u);
            let base = if s == 0 { 1000 } else { ts[s - 1] };
            imp.ts.push(base + rng.random_range(-3..40));
        }
    }
    let rows: Vec<u32> = (0..imp.len() as u32).collect();
    let max_len = 4;
    let b = collate_with(&hist, &imp, &rows, max_len, false, Some(&tb));
    let mut want = Vec::new();
    for r in 0..imp.len() {
        let (_, _, ts) = user_slices(&hist, imp.user[r]);
        let end = imp.seq_len[r] as usize;
        for &t in &ts[end.saturating_sub(max_len)..end] {
            want.push(bucket_by_loop(imp.ts[r] - t));
        }
    }
    assert_eq!(b.hist_time, want);
    assert_eq!(b.hist_time.len(), b.n_packed());
    // Without times the batch has none, and a model with the field says so by name.
    let mut bare = imp.clone();
    bare.ts.clear();
    let b = collate_with(&hist, &bare, &rows, max_len, false, Some(&tb));
    assert!(b.hist_time.is_empty());
    let model = model_of(&with_time(tiny_config(Preset::Din, "")));
    let e = model.predict(&b).unwrap_err().to_string();
    assert!(e.contains("time field"), "{e}");
    let e = eval::predict(&model, &Arc::new(hist), &Arc::new(bare), 64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.embedding.time") && e.contains("no timestamps"),
        "{e}"
    );
}

/// The time table is a real, trained input: every preset with it passes the gradient check
/// (the time rows included) on a batch with times.
#[test]
fn every_timed_preset_passes_the_gradient_check() {
    let hist = random_histories(4);
    let mut imp = Impressions::default();
    for u in 2..6u32 {
        let n = hist.len_of(u);
        let (_, _, ts) = user_slices(&hist, u);
        for (k, item) in [(n, 3u32), (n / 2, 7)] {
            imp.label.push((item % 2) as f32);
            imp.user.push(u);
            imp.item.push(item);
            imp.cate.push(2 + item % 3);
            imp.seq_len.push(k as u32);
            imp.ts.push(ts.get(k).copied().unwrap_or(1000) + 7);
        }
    }
    let tb = TimeBuckets::new(EDGES.to_vec()).unwrap();
    let rows: Vec<u32> = (0..imp.len() as u32).collect();
    for p in Preset::ALL {
        let model = model_of(&with_time(tiny_config(p, "")));
        let batch = collate_with(&hist, &imp, &rows, 6, true, Some(&tb));
        let (checked, worst) = gradient_check(&model, &batch, 2e-3);
        assert!(checked > 0, "{p:?}: nothing checked");
        eprintln!("{p:?} + time: {checked} gradients checked, worst {worst:.1e}");
        // The time field changes the prediction: the same batch with every gap in bucket 1.
        let mut flat = batch.clone();
        flat.hist_time.iter_mut().for_each(|t| *t = 1);
        let (a, b) = (
            model.predict(&batch).unwrap(),
            model.predict(&flat).unwrap(),
        );
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d > 1e-4, "{p:?}: the gaps do not reach the logits ({d})");
    }
}

#[test]
fn serving_a_timed_model_equals_eval_at_now_and_at_the_requests_time() {
    let hist = random_histories(3);
    let (items, cates): (Vec<u32>, Vec<u32>) =
        (0..TINY_VOCAB.items as u32).map(|i| (i, 2 + i % 3)).unzip();
    let tb = TimeBuckets::new(EDGES.to_vec()).unwrap();
    let hist_arc = Arc::new(hist.clone());
    for (name, model) in timed_models() {
        // Precomputed parts (ETA's codes, SDIM's sums) are as of the encoding's "now".
        let precomputed = name.starts_with("Eta") || name.starts_with("Sdim");
        for u in 2..hist.n_users() as u32 {
            let (hi, hc, ht) = user_slices(&hist, u);
            let enc = model.encode_user_at(u, hi, hc, Some(ht)).unwrap();
            assert_eq!(enc.ts, ht[ht.len().saturating_sub(6)..]);
            let now = ht.last().copied().unwrap_or(0);
            let rows: Vec<u32> = (0..items.len() as u32).collect();
            let eval_at = |t: i64| {
                let imp = candidates_at(u, hi.len(), &items, &cates, t);
                model
                    .predict(&collate_with(&hist_arc, &imp, &rows, 6, true, Some(&tb)))
                    .unwrap()
            };
            let close = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            let served = model.score_encoded(&enc, &items, &cates).unwrap();
            let d = close(&served, &eval_at(now));
            assert!(d < 1e-5, "{name} user {u}: served at now vs eval: {d}");
            if hi.is_empty() || precomputed {
                continue;
            }
            let later = now + 25;
            let served = model
                .score_encoded_at(&enc, &items, &cates, Some(later))
                .unwrap();
            let d = close(&served, &eval_at(later));
            assert!(d < 1e-5, "{name} user {u}: served at {later} vs eval: {d}");
            assert!(
                close(&served, &eval_at(now)) > 1e-5,
                "{name} user {u}: the request's time changed nothing"
            );
        }
    }
}

#[test]
fn extending_a_timed_encoding_equals_encoding_the_whole_history() {
    let hist = random_histories(5);
    for (name, model) in timed_models() {
        for u in 2..hist.n_users() as u32 {
            let (hi, hc, ht) = user_slices(&hist, u);
            let full = model.encode_user_at(u, hi, hc, Some(ht)).unwrap();
            for split in 0..=hi.len() {
                let head = model
                    .encode_user_at(u, &hi[..split], &hc[..split], Some(&ht[..split]))
                    .unwrap();
                let once = model
                    .extend_encoding_at(&head, &hi[split..], &hc[split..], Some(&ht[split..]))
                    .unwrap();
                let ctx = format!("{name} user {u} split {split}");
                assert_same_encoding(&ctx, &once, &full);
                assert_eq!(once.ts, full.ts, "{ctx}");
            }
        }
        // Times are required, and must not go back.
        let (hi, hc, ht) = user_slices(&hist, 5);
        let enc = model.encode_user_at(5, hi, hc, Some(ht)).unwrap();
        let e = model.encode_user(5, hi, hc).unwrap_err().to_string();
        assert!(e.contains("timestamps"), "{name}: {e}");
        let back = [ht[ht.len() - 1] - 1];
        let e = model
            .extend_encoding_at(&enc, &hi[..1], &hc[..1], Some(&back))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not chronological"), "{name}: {e}");
    }
}

/// An event log whose clicks follow the previous click within a minute and whose shown-not-
/// clicked rows come a week or more after it: the label is in the gap, not in the (random)
/// items. Per user: sessions a fortnight apart, each a shown row and then 5 clicks; after the
/// last click one more shown row (the test split's negative).
fn write_gap_log(path: &Path, users: i64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut u, mut i, mut c, mut t, mut l) = (vec![], vec![], vec![], vec![], vec![]);
    let mut push = |user: i64, ts: i64, label: i64, rng: &mut ChaCha8Rng| {
        let item = rng.random_range(0..300i64);
        u.push(user);
        i.push(item);
        c.push(item % 12);
        t.push(ts);
        l.push(label);
    };
    for user in 0..users {
        let mut ts = 0i64;
        for s in 0..8 {
            ts = s * 1_209_600 + rng.random_range(0..86_400);
            push(user, ts, 0, &mut rng);
            for _ in 0..5 {
                ts += rng.random_range(10..60);
                push(user, ts, 1, &mut rng);
            }
        }
        push(
            user,
            ts + 604_800 + rng.random_range(0..604_800),
            0,
            &mut rng,
        );
    }
    write_log(
        path,
        vec![
            ("user_id", u),
            ("item_id", i),
            ("cate_id", c),
            ("ts", t),
            ("label", l),
        ],
    );
}

fn gap_config(data: &Path, out: &Path, time: bool) -> Config {
    let time = if time { "time = { dim = 4 }" } else { "" };
    Config::from_toml(&format!(
        r#"
[data]
dir = "{}"
max_len = 20
[model]
kind = "din"
[model.embedding]
item_dim = 4
cate_dim = 4
{time}
[[model.aggregate]]
hidden = [8]
[model.head]
hidden = [16]
[train]
epochs = 2
batch_size = 128
lr = 0.01
sparse_lr = 0.01
patience = 0
seed = 1
out = "{}"
"#,
        data.display(),
        out.display()
    ))
    .unwrap()
}

/// On the gap log only a model with the time field separates clicks from shown rows (test
/// AUC: measured 1.000 with it, 0.55 without).
#[test]
fn a_signal_in_the_gaps_is_learned_only_with_the_time_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.parquet");
    write_gap_log(&log, 300, 5);
    let data = dir.path().join("prepared");
    prepare(&log, &data, &PrepareConfig::default()).unwrap();
    let ds = Dataset::open(&data).unwrap();
    let hist = ds.histories.clone();
    let (tr, va, te) = (
        Arc::new(ds.load_split(Split::Train).unwrap()),
        Arc::new(ds.load_split(Split::Valid).unwrap()),
        Arc::new(ds.load_split(Split::Test).unwrap()),
    );
    let auc = |time: bool| {
        let run = dir.path().join(format!("run-{time}"));
        let mut t = Trainer::new(gap_config(&data, &run, time), &ds, &run, &Device::Cpu).unwrap();
        t.progress = false;
        t.fit(hist.clone(), tr.clone(), va.clone()).unwrap();
        eval::evaluate(t.model(), &hist, &te, 4096)
            .unwrap()
            .0
            .auc
            .unwrap()
    };
    let (with, without) = (auc(true), auc(false));
    eprintln!("gap log test AUC: with the time field {with:.4}, without {without:.4}");
    assert!(with > 0.9, "with the time field: {with}");
    assert!(without < 0.7, "without it: {without}");
}

#[test]
fn data_without_timestamps_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.parquet");
    write_gap_log(&log, 20, 1);
    let data = dir.path().join("prepared");
    prepare(&log, &data, &PrepareConfig::default()).unwrap();
    // The same dataset as an impression import would say it: no timestamps.
    let meta_path = data.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["timestamps"] = false.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let ds = Dataset::open(&data).unwrap();
    assert!(ds.load_split(Split::Train).unwrap().ts.is_empty());
    let run = dir.path().join("run");
    let mut t = Trainer::new(gap_config(&data, &run, true), &ds, &run, &Device::Cpu).unwrap();
    t.progress = false;
    let e = t
        .fit(
            ds.histories.clone(),
            Arc::new(ds.load_split(Split::Train).unwrap()),
            Arc::new(ds.load_split(Split::Valid).unwrap()),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.embedding.time") && e.contains(&data.display().to_string()),
        "{e}"
    );
    // Width 0 is no time field: the same data trains.
    let mut off = gap_config(&data, &run, true);
    off.model.embedding.time.as_mut().unwrap().dim = 0;
    let mut t = Trainer::new(off, &ds, &run, &Device::Cpu).unwrap();
    assert!(t.model().time_buckets().is_none());
    t.progress = false;
    t.set_max_steps(2);
    t.fit(
        ds.histories.clone(),
        Arc::new(ds.load_split(Split::Train).unwrap()),
        Arc::new(ds.load_split(Split::Valid).unwrap()),
    )
    .unwrap();
    // Bad edges are named.
    let mut cfg = gap_config(&data, &run, true);
    cfg.model.embedding.time.as_mut().unwrap().edges = vec![10, 5];
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("strictly ascending"), "{e}");
}
