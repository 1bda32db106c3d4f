//! Offline encoding and the serving `Scorer` end to end, for every model: `lifelong encode` (one
//! process and two shards), the Scorer's probabilities against `eval`'s on the same users and
//! candidates, `encode --update` against encoding the extended history, and bad input (unknown
//! user, no candidates, malformed requests, encodings of other weights, truncated files).

use crate::cli::{fails, ok, prepare, s, synth, write_events};
use crate::common::assert_same_encoding;
use lifelong::checkpoint::ModelFile;
use lifelong::data::{Dataset, Impressions, RawId, UNKNOWN};
use lifelong::serving::{self as encodings, EncodedUser};
use lifelong::serving::{Candidate, Scorer, User};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const KINDS: [&str; 6] = ["din", "sdim", "sim", "eta", "twin", "dare"];

pub(crate) struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pub(crate) data: PathBuf,
}

impl Fixture {
    pub(crate) fn run(&self, kind: &str) -> PathBuf {
        self.root.join(format!("run_{kind}"))
    }
    pub(crate) fn enc(&self, kind: &str) -> PathBuf {
        self.root.join(format!("enc_{kind}"))
    }
}

/// One synthetic dataset; every kind trained 15 steps on it and encoded.
pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let events = synth(&root, &root.join("events"), 120, 400);
        let data = root.join("prepared");
        prepare(&root, &events, &data);
        let f = Fixture {
            _tmp: tmp,
            root: root.clone(),
            data,
        };
        for kind in KINDS {
            let search = if matches!(kind, "din" | "sdim") {
                ""
            } else {
                "[model.search]\nk = 5"
            };
            let cfg = root.join(format!("{kind}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[data]\ndir = \"unused\"\nmax_len = 20\n[model]\nkind = \"{kind}\"\n\
                     [model.embedding]\nitem_dim = 8\ncate_dim = 8\n{search}\n\
                     [train]\nepochs = 1\nbatch_size = 128\nmax_steps = 15\nseed = 5\n"
                ),
            )
            .unwrap();
            let run = f.run(kind);
            ok(
                &root,
                &[
                    "train",
                    "--config",
                    s(&cfg),
                    "--data",
                    s(&f.data),
                    "--out",
                    s(&run),
                ],
            );
            let out = ok(
                &root,
                &[
                    "encode",
                    "--checkpoint",
                    s(&run),
                    "--data",
                    s(&f.data),
                    "--out",
                    s(&f.enc(kind)),
                ],
            );
            assert!(out.contains("encoded 120 users"), "{kind}: {out}");
        }
        f
    })
}

/// Asserts that the encodings of `got` equal those of `want` user by user; `want`'s rows.
fn assert_same_dirs(
    got: &Path,
    want: &Path,
    run: &Path,
    kind: &str,
) -> HashMap<RawId, EncodedUser> {
    let (want, got) = (read_all(want, run), read_all(got, run));
    assert_eq!(got.len(), want.len(), "{kind}");
    for (id, w) in &want {
        let g = &got[id];
        assert_eq!(g.last_ts, w.last_ts, "{kind} user {id}");
        assert_same_encoding(&format!("{kind} user {id}"), &g.enc, &w.enc);
    }
    want
}

/// Every row of an encodings directory, by raw user id.
fn read_all(dir: &Path, run: &Path) -> HashMap<RawId, EncodedUser> {
    let mf = ModelFile::open(run, &candle_core::Device::Cpu).unwrap();
    let layout = mf.model.encoding_layout();
    let fp = lifelong::checkpoint::model_fingerprint(&mf.model).unwrap();
    let mut out = HashMap::new();
    for (file, _) in encodings::parts(dir, &fp, &layout).unwrap() {
        encodings::read_part(&file, &layout, |rows| {
            for r in rows {
                assert!(
                    out.insert(r.id.clone(), r).is_none(),
                    "a user encoded twice"
                );
            }
            Ok(())
        })
        .unwrap();
    }
    out
}

#[test]
fn scorer_equals_eval_for_every_model() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let item_cates = ds.item_cates().unwrap();
    let hist = ds.histories.clone();
    // 30 known items and one never seen.
    let cand_items: Vec<u32> = (2..32).chain([UNKNOWN]).collect();
    let mut cands: Vec<Candidate> = (2..32)
        .map(|i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    cands.push(Candidate::item(RawId::Int(987_654_321)));
    for kind in KINDS {
        let scorer = Scorer::open(&f.run(kind), &f.enc(kind)).unwrap();
        assert_eq!(scorer.num_users(), 120, "{kind}");
        let mf = ModelFile::open(&f.run(kind), &candle_core::Device::Cpu).unwrap();
        let mut worst = 0f32;
        for u in (2..122u32).step_by(7) {
            let n = cand_items.len();
            let imp = std::sync::Arc::new(Impressions {
                label: vec![0.0; n],
                user: vec![u; n],
                item: cand_items.clone(),
                cate: cand_items.iter().map(|&i| item_cates[i as usize]).collect(),
                seq_len: vec![hist.len_of(u) as u32; n],
                history: Vec::new(),
                ts: Vec::new(),
            });
            let want: Vec<f32> = lifelong::eval::predict(&mf.model, &hist, &imp, 64)
                .unwrap()
                .into_iter()
                .map(lifelong::metrics::sigmoid)
                .collect();
            let id = users.raw(u).unwrap();
            let got = scorer.score(&User::Id(id.clone()), &cands).unwrap();
            // The same user given by its raw history instead of its encoding.
            let (hi, hc) = hist.get(u);
            let cates = ds.vocab("cate").unwrap();
            let by_history = User::History {
                ts: None,
                id: Some(id),
                items: hi.iter().map(|&i| items.raw(i).unwrap()).collect(),
                cates: Some(hc.iter().map(|&c| cates.raw(c).unwrap()).collect()),
            };
            let raw = scorer.score(&by_history, &cands).unwrap();
            for r in 0..n {
                worst = worst
                    .max((got[r] - want[r]).abs())
                    .max((raw[r] - want[r]).abs());
            }
        }
        assert!(worst < 1e-5, "{kind}: served vs eval differ by {worst}");
    }
}

#[test]
fn two_shards_hold_exactly_the_users_of_one_encode() {
    let f = fixture();
    let dir = f.root.join("enc_sdim_sharded");
    let run = f.run("sdim");
    for shard in ["0/2", "1/2"] {
        ok(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--data",
                s(&f.data),
                "--out",
                s(&dir),
                "--shard",
                shard,
            ],
        );
    }
    let one = read_all(&f.enc("sdim"), &run);
    let two = read_all(&dir, &run);
    assert_eq!(one.len(), 120);
    assert_eq!(one, two, "sharded encodings differ from one process's");
    // One shard alone is refused as incomplete.
    let half = f.root.join("enc_half");
    std::fs::create_dir_all(half.join("vocab")).unwrap();
    for v in ["user", "item", "cate"] {
        let name = format!("vocab/{v}.parquet");
        std::fs::copy(dir.join(&name), half.join(&name)).unwrap();
    }
    std::fs::copy(
        dir.join("part-00000-of-00002.parquet"),
        half.join("part-00000-of-00002.parquet"),
    )
    .unwrap();
    let e = Scorer::open(&run, &half).unwrap_err().to_string();
    assert!(e.contains("shard 1 of 2"), "{e}");
}

#[test]
fn update_equals_encoding_the_extended_history() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    let item_cates = ds.item_cates().unwrap();
    let t_max = *ds.histories.ts.iter().max().unwrap();
    // New events: users 2..40 get 1 to 25 new behaviors (more than max_len = 20 for some), one of
    // them an item never seen; a brand-new user gets 3.
    let (mut eu, mut ei, mut ec, mut et) = (vec![], vec![], vec![], vec![]);
    let mut expect_new: HashMap<RawId, Vec<(u32, u32)>> = HashMap::new();
    for u in 2..40u32 {
        let RawId::Int(uid) = users.raw(u).unwrap() else {
            panic!("int ids")
        };
        for k in 0..(1 + (u as usize * 7) % 25) {
            let i = 2 + ((u as usize * 13 + k * 5) % 300) as u32;
            let (raw_i, idx) = if k == 3 {
                (555_555_555, UNKNOWN)
            } else {
                let RawId::Int(x) = items.raw(i).unwrap() else {
                    panic!()
                };
                (x, i)
            };
            let c = if idx == UNKNOWN {
                UNKNOWN
            } else {
                item_cates[idx as usize]
            };
            let RawId::Int(raw_c) = cates.raw(c).unwrap_or(RawId::Int(777_777)) else {
                panic!()
            };
            eu.push(uid);
            ei.push(raw_i);
            ec.push(raw_c);
            et.push(t_max + 1 + k as i64);
            expect_new
                .entry(RawId::Int(uid))
                .or_default()
                .push((idx, c));
        }
    }
    for k in 0..3 {
        let i = 2 + k as u32;
        let RawId::Int(x) = items.raw(i).unwrap() else {
            panic!()
        };
        let RawId::Int(cx) = cates.raw(item_cates[i as usize]).unwrap() else {
            panic!()
        };
        eu.push(-42);
        ei.push(x);
        ec.push(cx);
        et.push(t_max + 1 + k);
        expect_new
            .entry(RawId::Int(-42))
            .or_default()
            .push((i, item_cates[i as usize]));
    }
    let log = f.root.join("new_events.parquet");
    write_events(&log, (eu, ei, ec, et));
    for kind in ["sdim", "eta", "dare"] {
        let run = f.run(kind);
        let out_dir = f.root.join(format!("enc_{kind}_updated"));
        let msg = ok(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--update",
                s(&f.enc(kind)),
                "--events",
                s(&log),
                "--out",
                s(&out_dir),
            ],
        );
        assert!(msg.contains("(1 new; 121 in all)"), "{kind}: {msg}");
        let mf = ModelFile::open(&run, &candle_core::Device::Cpu).unwrap();
        let got = read_all(&out_dir, &run);
        assert_eq!(got.len(), 121);
        let mut checked = 0;
        for (id, row) in &got {
            let u = users.lookup(id);
            let (mut hi, mut hc) = if u == UNKNOWN {
                (vec![], vec![])
            } else {
                let (a, b) = ds.histories.get(u);
                (a.to_vec(), b.to_vec())
            };
            for &(i, c) in expect_new.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                hi.push(i);
                hc.push(c);
            }
            let want = mf.model.encode_user(u, &hi, &hc).unwrap();
            assert_same_encoding(&format!("{kind} user {id}"), &row.enc, &want);
            checked += expect_new.contains_key(id) as usize;
        }
        assert_eq!(checked, 39, "{kind}");
        // Events older than an encoding are refused, naming the user.
        let old = f.root.join(format!("old_{kind}.parquet"));
        let RawId::Int(uid) = users.raw(5).unwrap() else {
            panic!()
        };
        write_events(
            &old,
            (vec![uid], vec![1_000_000], vec![1], vec![i64::MIN + 1]),
        );
        fails(
            &f.root,
            &[
                "encode",
                "--checkpoint",
                s(&run),
                "--update",
                s(&out_dir),
                "--events",
                s(&old),
            ],
            &[&format!("user {uid}"), "older than the encoding"],
        );
        // The failed in-place update left every file as it was (atomic writes).
        assert_eq!(
            read_all(&out_dir, &run),
            got,
            "{kind}: a failed update changed the encodings"
        );
    }
}

#[test]
fn serving_bad_input_gets_a_named_error_and_the_scorer_keeps_working() {
    let f = fixture();
    let run = f.run("eta");
    let scorer = Scorer::open(&run, &f.enc("eta")).unwrap();
    let ds = Dataset::open(&f.data).unwrap();
    let uid = match ds.vocab("user").unwrap().raw(3).unwrap() {
        RawId::Int(x) => x,
        RawId::Str(_) => panic!("int ids"),
    };
    let item = match ds.vocab("item").unwrap().raw(2).unwrap() {
        RawId::Int(x) => x,
        RawId::Str(_) => panic!(),
    };
    let req = |body: String| scorer.handle_json(body.as_bytes());
    let (code, body) = req(format!(
        r#"{{"user": {uid}, "candidates": [{item}, {{"item": "{item}"}}, 123456789]}}"#
    ));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p: Vec<f64> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(p.len(), 3);
    assert!(
        (p[0] - p[1]).abs() < 1e-7,
        "a string id of an integer vocabulary is the same item"
    );
    assert!(p.iter().all(|x| (0.0..=1.0).contains(x)));
    for (body, status, needle) in [
        (
            format!(r#"{{"user": 31337, "candidates": [{item}]}}"#),
            404,
            "unknown user 31337",
        ),
        (
            format!(r#"{{"user": {uid}, "candidates": []}}"#),
            400,
            "no candidates",
        ),
        ("{\"user\": ".to_string(), 400, "malformed request"),
        (
            r#"{"candidates": [1]}"#.to_string(),
            400,
            "\\\"user\\\" or \\\"history\\\"",
        ),
        (
            format!(r#"{{"user": {uid}, "candidates": [1], "extra": 1}}"#),
            400,
            "unknown field",
        ),
        (
            r#"{"history": {"items": [1, 2], "cates": [1]}, "candidates": [1]}"#.to_string(),
            400,
            "2 items but 1 categories",
        ),
    ] {
        let (code, out) = req(body.clone());
        assert_eq!(code, status, "{body} → {out}");
        assert!(
            out.contains("\"error\"") && out.contains(needle),
            "{body} → {out}"
        );
    }
    // Still serving after every error.
    assert_eq!(
        req(format!(r#"{{"user": {uid}, "candidates": [{item}]}}"#)).0,
        200
    );

    // Encodings of other weights (another kind's run) and a truncated file are refused by name.
    let e = Scorer::open(&f.run("sdim"), &f.enc("eta"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("part-00000-of-00001.parquet"), "{e}");
    let cut = f.root.join("enc_truncated");
    std::fs::create_dir_all(cut.join("vocab")).unwrap();
    for v in ["user", "item", "cate"] {
        std::fs::copy(
            f.enc("eta").join("vocab").join(format!("{v}.parquet")),
            cut.join("vocab").join(format!("{v}.parquet")),
        )
        .unwrap();
    }
    let bytes = std::fs::read(f.enc("eta").join("part-00000-of-00001.parquet")).unwrap();
    std::fs::write(
        cut.join("part-00000-of-00001.parquet"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = Scorer::open(&run, &cut).unwrap_err().to_string();
    assert!(e.contains("part-00000-of-00001.parquet"), "{e}");
    // A failed reload keeps the old encodings.
    assert!(scorer.reload(&cut).is_err());
    assert_eq!(scorer.num_users(), 120);
    assert_eq!(scorer.reload(&f.enc("eta")).unwrap(), 120);
}

/// `encode --data DIR --events LOG` (users straight from an event log, the dataset's
/// vocabularies) gives the encodings `encode --data DIR` gives from the prepared histories.
#[test]
fn encoding_from_the_event_log_equals_encoding_the_prepared_histories() {
    let f = fixture();
    let events = f.root.join("events").join("events.parquet");
    for kind in ["sdim", "eta"] {
        let run = f.run(kind);
        let dir = f.root.join(format!("enc_{kind}_from_log"));
        for shard in ["0/2", "1/2"] {
            let out = ok(
                &f.root,
                &[
                    "encode",
                    "--checkpoint",
                    s(&run),
                    "--data",
                    s(&f.data),
                    "--events",
                    s(&events),
                    "--out",
                    s(&dir),
                    "--shard",
                    shard,
                ],
            );
            assert!(out.contains("encoded"), "{out}");
        }
        assert_same_dirs(&dir, &f.enc(kind), &run, kind);
    }
}

/// The fixture's event log as one record batch, its rows grouped by user and each user's rows
/// newest first (so the encoder must order them by time itself); rows of equal timestamps keep
/// the log's order (the order `prepare` keeps for ties).
fn events_by_user_newest_first(f: &Fixture) -> arrow_array::RecordBatch {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let path = f.root.join("events").join("events.parquet");
    let batches: Vec<_> = lifelong::data::io::parquet_batches(&path, 4096)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let all = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    let user = all
        .column_by_name("user_id")
        .unwrap()
        .as_primitive::<Int64Type>();
    let ts = all
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by_key(|&r| {
        let r = r as usize;
        (user.value(r), std::cmp::Reverse(ts.value(r)), r)
    });
    let idx = arrow_array::UInt32Array::from(order);
    arrow_select::take::take_record_batch(&all, &idx).unwrap()
}

#[test]
fn batch_encoder_through_two_part_writers_equals_lifelong_encode() {
    use lifelong::serving::{shards_of, BatchEncoder, PartWriter, Shard, StreamEncoder};
    let f = fixture();
    let events = events_by_user_newest_first(f);
    for kind in ["sdim", "eta", "twin"] {
        let run = f.run(kind);
        let enc =
            std::sync::Arc::new(BatchEncoder::open(&run, &f.data, Default::default()).unwrap());
        let dir = f.root.join(format!("enc_{kind}_from_batches"));
        let mut writers: Vec<PartWriter> = (0..2)
            .map(|i| PartWriter::create(&dir, &enc, Shard { index: i, count: 2 }).unwrap())
            .collect();
        // A stream cut every 97 rows: users straddle batches and wait for their last rows.
        let mut stream = StreamEncoder::new(enc.clone());
        let mut write = |b: arrow_array::RecordBatch| {
            let shard = shards_of(b.column(0).as_ref(), 2).unwrap();
            for (i, w) in writers.iter_mut().enumerate() {
                let mine = arrow_array::BooleanArray::from_iter(
                    shard.iter().map(|&s| Some(s as usize == i)),
                );
                w.write(&arrow_select::filter::filter_record_batch(&b, &mine).unwrap())
                    .unwrap();
            }
        };
        let mut at = 0;
        while at < events.num_rows() {
            let n = 97.min(events.num_rows() - at);
            if let Some(b) = stream.push(&events.slice(at, n)).unwrap() {
                assert_eq!(b.schema(), enc.schema());
                write(b);
            }
            at += n;
        }
        if let Some(b) = stream.finish().unwrap() {
            write(b);
        }
        let users: usize = writers.iter().map(PartWriter::users).sum();
        assert_eq!(users, 120, "{kind}");
        for w in &mut writers {
            w.finish().unwrap();
        }
        let want = assert_same_dirs(&dir, &f.enc(kind), &run, kind);
        // The Scorer opens it and scores as from `lifelong encode`'s directory.
        let a = Scorer::open(&run, &f.enc(kind)).unwrap();
        let b = Scorer::open(&run, &dir).unwrap();
        let id = want.keys().next().unwrap().clone();
        let cands: Vec<Candidate> = (0..5).map(|i| Candidate::item(RawId::Int(i))).collect();
        assert_eq!(
            a.score(&User::Id(id.clone()), &cands).unwrap(),
            b.score(&User::Id(id), &cands).unwrap()
        );
        // One batch holding whole users encodes them all at once, in the same way.
        let whole = enc.encode(&events).unwrap();
        assert_eq!(whole.num_rows(), 120, "{kind}");
    }
}

#[test]
fn batch_encoder_and_part_writer_refuse_bad_input_by_name() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use lifelong::serving::{BatchEncoder, PartWriter, Shard};
    use std::sync::Arc;
    let f = fixture();
    let enc = BatchEncoder::open(&f.run("sdim"), &f.data, Default::default()).unwrap();
    let batch = |cols: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(cols).unwrap();
    let ints = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    let good = || {
        vec![
            ("user_id", ints(vec![Some(1_000_000), Some(1_000_000)])),
            ("item_id", ints(vec![Some(5), Some(6)])),
            ("cate_id", ints(vec![Some(1), Some(2)])),
            ("ts", ints(vec![Some(10), Some(11)])),
        ]
    };
    let err = |cols: Vec<(&str, ArrayRef)>| enc.encode(&batch(cols)).unwrap_err().to_string();
    // A missing column, by name.
    let mut cols = good();
    cols.remove(3);
    let e = err(cols);
    assert!(e.contains("`ts`"), "{e}");
    // A null, with its row.
    let mut cols = good();
    cols[1].1 = ints(vec![Some(5), None]);
    let e = err(cols);
    assert!(
        e.contains("row 1") && e.contains("`item_id`") && e.contains("null"),
        "{e}"
    );
    // String user ids against an integer vocabulary.
    let mut cols = good();
    cols[0].1 = Arc::new(StringArray::from(vec!["a", "a"]));
    let e = err(cols);
    assert!(
        e.contains("`user_id`") && e.contains("string user ids"),
        "{e}"
    );
    // A float timestamp.
    let mut cols = good();
    cols[3].1 = Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.0]));
    let e = err(cols);
    assert!(e.contains("`ts`") && e.contains("Float64"), "{e}");
    // The writer: a user of the other shard, a user twice, encodings of another model.
    let ok_batch = enc.encode(&batch(good())).unwrap();
    let home = lifelong::serving::shard_of(&RawId::Int(1_000_000), 2);
    let dir = f.root.join("enc_refusals");
    let mut other = PartWriter::create(
        &dir,
        &enc,
        Shard {
            index: 1 - home,
            count: 2,
        },
    )
    .unwrap();
    let e = other.write(&ok_batch).unwrap_err().to_string();
    assert!(e.contains("user 1000000 belongs to shard"), "{e}");
    let mut mine = PartWriter::create(
        &dir,
        &enc,
        Shard {
            index: home,
            count: 2,
        },
    )
    .unwrap();
    mine.write(&ok_batch).unwrap();
    let e = mine.write(&ok_batch).unwrap_err().to_string();
    assert!(e.contains("written twice"), "{e}");
    let eta = BatchEncoder::open(&f.run("eta"), &f.data, Default::default()).unwrap();
    let eta_batch = eta.encode(&batch(good())).unwrap();
    let mut fresh = PartWriter::create(
        &f.root.join("enc_refusals2"),
        &enc,
        Shard {
            index: home,
            count: 2,
        },
    )
    .unwrap();
    let e = fresh.write(&eta_batch).unwrap_err().to_string();
    assert!(e.contains("columns") && e.contains("codes"), "{e}");
    // A writer dropped without finishing leaves no part behind.
    drop(other);
    assert!(!dir
        .join(
            Shard {
                index: 1 - home,
                count: 2
            }
            .file_name()
        )
        .exists());
    // A checkpoint with a foreign vocabulary directory is refused at open.
    let e = BatchEncoder::open(&f.run("sdim"), &f.root, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocab"), "{e}");
}

/// A model with the time field through the files: `encode` writes each behavior's time and the
/// encodings equal the model's own of the full history; `--update` moves "now" and equals
/// re-encoding the extended history; the Scorer (in memory and mapped) and a JSON request with
/// `"time"` score what the model scores at that time.
#[test]
fn a_timed_model_encodes_updates_and_serves_through_the_files() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let users = ds.vocab("user").unwrap();
    let (items_v, item_cates) = (ds.vocab("item").unwrap(), ds.item_cates().unwrap());
    let t_max = *ds.histories.ts.iter().max().unwrap();
    // New events: users 2..12 get 1 to 7 behaviors, later than anything encoded.
    let (mut eu, mut ei, mut ec, mut et) = (vec![], vec![], vec![], vec![]);
    let mut new: HashMap<RawId, Vec<(u32, u32, i64)>> = HashMap::new();
    for u in 2..12u32 {
        let uid = users.raw(u).unwrap();
        for k in 0..(1 + u as usize % 7) {
            let i = 2 + ((u as usize * 11 + k * 3) % 300) as u32;
            let (RawId::Int(ri), RawId::Int(ru)) = (items_v.raw(i).unwrap(), uid.clone()) else {
                panic!("int ids")
            };
            let c = item_cates[i as usize];
            let RawId::Int(rc) = ds.vocab("cate").unwrap().raw(c).unwrap() else {
                panic!()
            };
            let t = t_max + 100 * (k as i64 + 1);
            eu.push(ru);
            ei.push(ri);
            ec.push(rc);
            et.push(t);
            new.entry(uid.clone()).or_default().push((i, c, t));
        }
    }
    let log = f.root.join("timed_new_events.parquet");
    write_events(&log, (eu, ei, ec, et));
    for (kind, emb) in [
        ("sdim", "time = { dim = 4 }"),
        (
            "dare",
            "pos_dim = 8\ntime = { dim = 4 }\nattention = { item_dim = 8, cate_dim = 8, pos_dim = 8, time_dim = 4 }",
        ),
    ] {
        let search = if kind == "dare" { "[model.search]\nk = 5" } else { "" };
        let cfg = f.root.join(format!("{kind}_time.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[data]\ndir = \"unused\"\nmax_len = 20\n[model]\nkind = \"{kind}\"\n\
                 [model.embedding]\nitem_dim = 8\ncate_dim = 8\n{emb}\n{search}\n\
                 [train]\nepochs = 1\nbatch_size = 128\nmax_steps = 15\nseed = 5\n"
            ),
        )
        .unwrap();
        let run = f.root.join(format!("run_{kind}_time"));
        let (enc, upd) = (
            f.root.join(format!("enc_{kind}_time")),
            f.root.join(format!("enc_{kind}_time_updated")),
        );
        ok(&f.root, &["train", "--config", s(&cfg), "--data", s(&f.data), "--out", s(&run)]);
        ok(&f.root, &["encode", "--checkpoint", s(&run), "--data", s(&f.data), "--out", s(&enc)]);
        ok(
            &f.root,
            &["encode", "--checkpoint", s(&run), "--update", s(&enc), "--events", s(&log), "--out", s(&upd)],
        );
        let mf = ModelFile::open(&run, &candle_core::Device::Cpu).unwrap();
        let m = &mf.model;
        let history = |id: &RawId, with_new: bool| {
            let u = users.lookup(id);
            let (hi, hc) = ds.histories.get(u);
            let (s0, e0) = (
                ds.histories.offsets[u as usize] as usize,
                ds.histories.offsets[u as usize + 1] as usize,
            );
            let (mut hi, mut hc, mut ht) = (hi.to_vec(), hc.to_vec(), ds.histories.ts[s0..e0].to_vec());
            if with_new {
                for &(i, c, t) in new.get(id).map(Vec::as_slice).unwrap_or(&[]) {
                    hi.push(i);
                    hc.push(c);
                    ht.push(t);
                }
            }
            (u, hi, hc, ht)
        };
        for (dir, with_new) in [(&enc, false), (&upd, true)] {
            let rows = read_all(dir, &run);
            assert_eq!(rows.len(), 120, "{kind}");
            for (id, row) in &rows {
                let (u, hi, hc, ht) = history(id, with_new);
                let want = m.encode_user_at(u, &hi, &hc, Some(&ht)).unwrap();
                let ctx = format!("{kind} user {id} (updated: {with_new})");
                assert_same_encoding(&ctx, &row.enc, &want);
                assert_eq!(row.enc.ts, want.ts, "{ctx}");
                assert_eq!(row.last_ts, ht.last().copied(), "{ctx}");
            }
        }
        // Scoring at a request's time, from the updated encodings.
        let cands: Vec<RawId> = (2..8u32).map(|i| items_v.raw(i).unwrap()).collect();
        let (ci, cc): (Vec<u32>, Vec<u32>) = (2..8u32).map(|i| (i, item_cates[i as usize])).unzip();
        let mapped = f.root.join(format!("store_{kind}_time"));
        let scorers = [
            Scorer::open(&run, &upd).unwrap(),
            Scorer::open_with(
                &run,
                &upd,
                lifelong::serving::StoreOptions {
                    mapped: Some(mapped),
                    ..Default::default()
                },
            )
            .unwrap(),
        ];
        for id in [users.raw(3).unwrap(), users.raw(9).unwrap()] {
            let (u, hi, hc, ht) = history(&id, true);
            let e = m.encode_user_at(u, &hi, &hc, Some(&ht)).unwrap();
            let at = ht.last().unwrap() + 5_000;
            let want: Vec<f32> = m
                .score_encoded_at(&e, &ci, &cc, Some(at))
                .unwrap()
                .into_iter()
                .map(lifelong::metrics::sigmoid)
                .collect();
            let cs: Vec<Candidate> = cands.iter().cloned().map(Candidate::item).collect();
            for (k, sc) in scorers.iter().enumerate() {
                let got = sc.score_at(&User::Id(id.clone()), &cs, Some(at)).unwrap();
                assert!(close(&got, &want), "{kind} scorer {k} user {id}: {got:?} vs {want:?}");
            }
            let RawId::Int(x) = id else { panic!() };
            let ids: Vec<String> = cands
                .iter()
                .map(|c| match c {
                    RawId::Int(v) => v.to_string(),
                    RawId::Str(s) => format!("{s:?}"),
                })
                .collect();
            let body = format!(r#"{{"user": {x}, "candidates": [{}], "time": {at}}}"#, ids.join(","));
            let (status, resp) = scorers[0].handle_json(body.as_bytes());
            assert_eq!(status, 200, "{resp}");
            let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
            let got: Vec<f32> = v["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert!(close(&got, &want), "{kind} JSON user {id}");
            if kind == "dare" {
                // DARE's parts are computed per request: the time matters.
                let now = scorers[0].score(&User::Id(id.clone()), &cs).unwrap();
                assert!(!close(&now, &want), "{kind}: the request's time changed nothing");
            }
        }
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}
