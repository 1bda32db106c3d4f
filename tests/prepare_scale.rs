//! `prepare` within a memory budget: partitioned and spilled runs give the dataset an in-memory
//! run gives, and the reader's cross-file checks (id kinds, timestamp units, footer row counts).

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_array::{BooleanArray, TimestampSecondArray};
use lifelong::data::io::{self, ColumnSpec, Kind, RawIds};
use lifelong::data::synth::SynthConfig;
use lifelong::data::{prepare, write_synth, Dataset, PrepareConfig, Split};
use lifelong::Error;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

fn write(path: &Path, cols: Vec<(&str, ArrayRef)>, rg: usize) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rg))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A log that exercises every rule: string users, integer items, a label column with label-0
/// rows, timestamp ties, two files (rows of one user in both), small row groups, and one user
/// with more rows than a partition of the smallest budget holds.
fn mixed_log(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 12345;
    let mut rnd = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for part in 0..2 {
        let (mut u, mut i, mut c, mut t, mut l) = (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..6000 {
            // User 0 is heavy (a third of the rows), the rest spread over 300 users.
            let user = if rnd(3) == 0 { 0 } else { 1 + rnd(300) };
            let item = rnd(400) as i64;
            u.push(format!("u{user}"));
            i.push(item * 7 + 1000);
            c.push(item % 13);
            t.push(rnd(50) as i64); // many ties
            l.push(rnd(4) != 0);
        }
        let u: Vec<&str> = u.iter().map(String::as_str).collect();
        write(
            &dir.join(format!("part-{part}.parquet")),
            vec![
                ("user_id", Arc::new(StringArray::from(u)) as ArrayRef),
                ("item_id", Arc::new(Int64Array::from(i))),
                ("cate_id", Arc::new(Int64Array::from(c))),
                ("ts", Arc::new(Int64Array::from(t))),
                ("label", Arc::new(BooleanArray::from(l))),
            ],
            1000,
        );
    }
}

fn assert_same_dataset(a: &Path, b: &Path) {
    let (mut da, mut db) = (Dataset::open(a).unwrap(), Dataset::open(b).unwrap());
    // Everything but the input paths.
    da.meta.prepare["inputs"] = serde_json::Value::Null;
    db.meta.prepare["inputs"] = serde_json::Value::Null;
    assert_eq!(da.meta, db.meta);
    assert_eq!(da.histories, db.histories);
    for s in [Split::Train, Split::Valid, Split::Test] {
        assert_eq!(
            da.load_split(s).unwrap(),
            db.load_split(s).unwrap(),
            "{s:?}"
        );
    }
    for v in ["user", "item", "cate"] {
        let f = format!("vocab/{v}.parquet");
        assert_eq!(
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
            "{f}"
        );
    }
}

fn scratch_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".prepare-scratch"))
        .collect()
}

#[test]
fn partitioned_and_spilled_prepare_equals_in_memory_prepare() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    mixed_log(&log);
    let base = PrepareConfig {
        negatives: Some(2),
        ..PrepareConfig::default()
    };
    let whole = tmp.path().join("whole");
    let s = prepare(&log, &whole, &base).unwrap();
    assert_eq!((s.partitions, s.spilled_rows), (1, 0));
    assert!(
        s.meta.n_train > 1000
            && s.meta.prepare["counts"]["label0_impressions"].as_u64() > Some(100)
    );

    // A budget of 1 byte: partitions of the minimum size (1,024 rows), every row spilled.
    let parts = tmp.path().join("parts");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let cfg = PrepareConfig {
        memory_budget: 1,
        scratch: Some(scratch.clone()),
        ..base.clone()
    };
    let p = prepare(&log, &parts, &cfg).unwrap();
    assert!(p.partitions > 5, "{} partitions", p.partitions);
    assert!(p.spilled_rows > 10_000, "{} rows spilled", p.spilled_rows);
    assert_same_dataset(&whole, &parts);
    assert!(
        scratch_left(&scratch).is_empty(),
        "{:?}",
        scratch_left(&scratch)
    );

    // The heavy user (about 4,000 rows, more than a partition holds) sits alone in its
    // partition and still gets its whole history.
    let ds = Dataset::open(&parts).unwrap();
    let heavy = ds.vocab("user").unwrap().lookup_str("u0");
    assert_eq!(heavy, 2, "the most frequent user gets the first index");
    assert!(ds.histories.len_of(heavy) > 2000);

    // A budget between the two: fewer, larger partitions; scratch defaults to a directory
    // inside the output, removed afterwards.
    let mid = tmp.path().join("mid");
    let q = prepare(
        &log,
        &mid,
        &PrepareConfig {
            memory_budget: 600_000,
            ..base.clone()
        },
    )
    .unwrap();
    assert!(
        q.partitions > 1 && q.partitions < p.partitions,
        "{}",
        q.partitions
    );
    assert_same_dataset(&whole, &mid);
    assert!(scratch_left(&mid).is_empty());
}

#[test]
fn synth_streams_the_same_events_and_prepares_in_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    // More users than one generated block (16,384), so the file is written in several.
    let cfg = SynthConfig {
        users: 20_000,
        items: 3000,
        cates: 30,
        len: 6,
        seed: 5,
    };
    let path = write_synth(&cfg, tmp.path()).unwrap();
    let ev = lifelong::data::synth::generate(&cfg).unwrap();
    let spec = |name: &str, kind: Kind| ColumnSpec::new(name, kind);
    let mut t = io::read_table(
        &path,
        &[
            spec("user_id", Kind::RawId),
            spec("item_id", Kind::RawId),
            spec("ts", Kind::Timestamp),
        ],
    )
    .unwrap();
    assert!(t.file_rows[0] == ev.len() && ev.len() > 16_384);
    assert_eq!(
        t.take(0).unwrap().into_raw_ids(),
        Some(RawIds::Int(ev.user_id))
    );
    assert_eq!(
        t.take(1).unwrap().into_raw_ids(),
        Some(RawIds::Int(ev.item_id))
    );
    assert_eq!(t.take(2).unwrap().into_i64(), Some(ev.ts));

    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    prepare(&path, &a, &PrepareConfig::default()).unwrap();
    let s = prepare(
        &path,
        &b,
        &PrepareConfig {
            memory_budget: 2_000_000,
            ..PrepareConfig::default()
        },
    )
    .unwrap();
    assert!(s.partitions > 3, "{}", s.partitions);
    assert_same_dataset(&a, &b);
}

#[test]
fn files_with_different_timestamp_units_or_id_kinds_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    std::fs::create_dir_all(&dir).unwrap();
    let ids = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
    write(
        &dir.join("a.parquet"),
        vec![
            ("user_id", ids(&[1, 2])),
            ("item_id", ids(&[1, 2])),
            ("cate_id", ids(&[1, 1])),
            ("ts", Arc::new(TimestampSecondArray::from(vec![10, 20]))),
        ],
        10,
    );
    write(
        &dir.join("b.parquet"),
        vec![
            ("user_id", ids(&[1, 2])),
            ("item_id", ids(&[1, 2])),
            ("cate_id", ids(&[1, 1])),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![15_000, 5])),
            ),
        ],
        10,
    );
    let e = prepare(&dir, &tmp.path().join("o"), &PrepareConfig::default()).unwrap_err();
    assert!(matches!(e, Error::Schema { .. }), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("b.parquet")
            && m.contains("ts")
            && m.contains("milliseconds")
            && m.contains("a.parquet"),
        "{m}"
    );

    // Integer users in one file, string users in another.
    std::fs::remove_file(dir.join("b.parquet")).unwrap();
    write(
        &dir.join("b.parquet"),
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["1", "2"])) as ArrayRef,
            ),
            ("item_id", ids(&[1, 2])),
            ("cate_id", ids(&[1, 1])),
            ("ts", Arc::new(TimestampSecondArray::from(vec![30, 40]))),
        ],
        10,
    );
    let m = prepare(&dir, &tmp.path().join("o"), &PrepareConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("b.parquet") && m.contains("user_id") && m.contains("string ids"),
        "{m}"
    );
}

/// One row per user with the history in lists: three parallel lists, or one list of structs
/// (what Spark's `collect_list(struct(ts, item_id, cate_id))` writes).
fn history_table(path: &Path, ev: &lifelong::data::synth::SynthEvents, structs: bool, rg: usize) {
    use arrow_array::{ListArray, StructArray};
    use arrow_schema::{DataType, Field, Fields};
    // Runs of one user (the log is grouped by user).
    let (mut users, mut lens): (Vec<i64>, Vec<usize>) = (Vec::new(), Vec::new());
    for &u in &ev.user_id {
        if users.last() == Some(&u) {
            *lens.last_mut().unwrap() += 1;
        } else {
            users.push(u);
            lens.push(1);
        }
    }
    let mut ob = arrow_array::builder::OffsetBufferBuilder::<i32>::new(lens.len());
    lens.iter().for_each(|&l| ob.push_length(l));
    let buf = ob.finish();
    let col = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
    let mut cols: Vec<(&str, ArrayRef)> = vec![("user_id", col(&users))];
    if structs {
        let fields = Fields::from(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("item_id", DataType::Int64, false),
            Field::new("cate_id", DataType::Int64, false),
        ]);
        let s = StructArray::new(
            fields.clone(),
            vec![col(&ev.ts), col(&ev.item_id), col(&ev.cate_id)],
            None,
        );
        let item = Arc::new(Field::new("element", DataType::Struct(fields), false));
        cols.push((
            "history",
            Arc::new(ListArray::new(item, buf, Arc::new(s), None)),
        ));
    } else {
        for (name, v) in [
            ("item_id", &ev.item_id),
            ("cate_id", &ev.cate_id),
            ("ts", &ev.ts),
        ] {
            let item = Arc::new(Field::new("item", DataType::Int64, false));
            cols.push((
                name,
                Arc::new(ListArray::new(item, buf.clone(), col(v), None)),
            ));
        }
    }
    write(path, cols, rg);
}

#[test]
fn a_per_user_history_table_prepares_like_its_event_log() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        users: 150,
        items: 400,
        cates: 12,
        len: 30,
        seed: 9,
    };
    // The event log grouped by user, chronological: the order an exploded table has.
    let log = write_synth(&cfg, &tmp.path().join("log")).unwrap();
    let ev = lifelong::data::synth::generate(&cfg).unwrap();
    let flat = tmp.path().join("flat");
    prepare(&log, &flat, &PrepareConfig::default()).unwrap();
    for structs in [false, true] {
        let table = tmp.path().join(format!("hist-{structs}.parquet"));
        history_table(&table, &ev, structs, 40);
        let out = tmp.path().join(format!("from-hist-{structs}"));
        let s = prepare(&table, &out, &PrepareConfig::default()).unwrap();
        assert_eq!(
            s.meta.prepare["counts"]["events"].as_u64(),
            Some(ev.len() as u64)
        );
        assert_same_dataset(&flat, &out);
        for f in ["users.parquet", "train.parquet", "test.parquet"] {
            assert_eq!(
                std::fs::read(flat.join(f)).unwrap(),
                std::fs::read(out.join(f)).unwrap(),
                "{f} (structs: {structs})"
            );
        }
    }
}

#[test]
fn a_history_table_with_ragged_or_null_lists_names_the_user_row() {
    use arrow_array::builder::{Int64Builder, ListBuilder};
    let tmp = tempfile::tempdir().unwrap();
    let list = |rows: &[Option<&[i64]>]| {
        let mut b = ListBuilder::new(Int64Builder::new());
        for r in rows {
            match r {
                Some(v) => {
                    v.iter().for_each(|&x| b.values().append_value(x));
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish()) as ArrayRef
    };
    let users = || Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef;
    let path = tmp.path().join("ragged.parquet");
    write(
        &path,
        vec![
            ("user_id", users()),
            ("item_id", list(&[Some(&[1, 2]), Some(&[3]), Some(&[4, 5])])),
            ("cate_id", list(&[Some(&[1, 1]), Some(&[1]), Some(&[1])])),
            ("ts", list(&[Some(&[1, 2]), Some(&[3]), Some(&[4, 5])])),
        ],
        10,
    );
    let e = prepare(&path, &tmp.path().join("o"), &PrepareConfig::default()).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("ragged.parquet") && m.contains("row 2") && m.contains("cate_id"),
        "{m}"
    );
    let path = tmp.path().join("null.parquet");
    write(
        &path,
        vec![
            ("user_id", users()),
            ("item_id", list(&[Some(&[1]), None, Some(&[4])])),
            ("cate_id", list(&[Some(&[1]), Some(&[1]), Some(&[1])])),
            ("ts", list(&[Some(&[1]), Some(&[3]), Some(&[4])])),
        ],
        10,
    );
    let m = prepare(&path, &tmp.path().join("o"), &PrepareConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("null.parquet") && m.contains("row 1") && m.contains("null history"),
        "{m}"
    );
    // A value error inside a list names the user's row too: a null item in user 9's list.
    let mut b = ListBuilder::new(Int64Builder::new());
    b.values().append_value(1);
    b.append(true);
    b.values().append_value(2);
    b.append(true);
    b.values().append_value(3);
    b.values().append_null();
    b.append(true);
    let path = tmp.path().join("nullitem.parquet");
    write(
        &path,
        vec![
            ("user_id", users()),
            ("item_id", Arc::new(b.finish()) as ArrayRef),
            ("cate_id", list(&[Some(&[1]), Some(&[1]), Some(&[1, 1])])),
            ("ts", list(&[Some(&[1]), Some(&[3]), Some(&[4, 5])])),
        ],
        10,
    );
    let m = prepare(&path, &tmp.path().join("o"), &PrepareConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("nullitem.parquet") && m.contains("row 2") && m.contains("item_id"),
        "{m}"
    );
}

/// An event log with an unrelated list column (tags) is an event log, not a history table: the
/// list is ignored and the rows are not multiplied.
#[test]
fn an_unrelated_list_column_leaves_an_event_log_as_it_is() {
    use arrow_array::builder::{ListBuilder, StringBuilder};
    let tmp = tempfile::tempdir().unwrap();
    let ids = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
    let base = || {
        vec![
            ("user_id", ids(&[1, 1, 2, 2, 2])),
            ("item_id", ids(&[5, 6, 5, 7, 8])),
            ("cate_id", ids(&[1, 1, 1, 2, 2])),
            ("ts", ids(&[1, 2, 1, 2, 3])),
        ]
    };
    let plain = tmp.path().join("plain.parquet");
    write(&plain, base(), 10);
    let mut tags = ListBuilder::new(StringBuilder::new());
    for k in 0..5 {
        for _ in 0..k {
            tags.values().append_value("t");
        }
        tags.append(true);
    }
    let mut cols = base();
    cols.push(("tags", Arc::new(tags.finish()) as ArrayRef));
    let tagged = tmp.path().join("tagged.parquet");
    write(&tagged, cols, 10);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    prepare(&plain, &a, &PrepareConfig::default()).unwrap();
    let s = prepare(&tagged, &b, &PrepareConfig::default()).unwrap();
    assert_eq!(s.meta.prepare["counts"]["events"].as_u64(), Some(5));
    assert_same_dataset(&a, &b);
}

/// Re-preparing into a directory that holds a dataset: a run that fails while writing leaves no
/// `meta.json`, so the mix of new and old files is never opened as a dataset.
#[test]
fn a_failed_rewrite_never_leaves_an_old_meta_json_beside_new_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        users: 50,
        items: 80,
        cates: 5,
        len: 10,
        seed: 1,
    };
    let log = write_synth(&cfg, &tmp.path().join("log")).unwrap();
    let out = tmp.path().join("out");
    prepare(&log, &out, &PrepareConfig::default()).unwrap();
    assert!(Dataset::open(&out).is_ok());
    // test.parquet cannot be replaced (a directory with a file in it stands there now).
    std::fs::remove_file(out.join("test.parquet")).unwrap();
    std::fs::create_dir_all(out.join("test.parquet/x")).unwrap();
    let other = write_synth(&SynthConfig { seed: 2, ..cfg }, &tmp.path().join("log2")).unwrap();
    let e = prepare(&other, &out, &PrepareConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.parquet"), "{e}");
    assert!(!out.join("meta.json").exists());
    let e = Dataset::open(&out).unwrap_err().to_string();
    assert!(e.contains("meta.json"), "{e}");
}

/// A CSV log within a budget: streamed batch by batch, spilled and partitioned like parquet, the
/// same dataset as in memory.
#[test]
fn a_csv_log_prepares_the_same_within_a_tiny_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("csv");
    std::fs::create_dir_all(&dir).unwrap();
    let mut x: u64 = 777;
    for part in 0..2 {
        let mut text = String::from("user_id,item_id,cate_id,ts\n");
        for _ in 0..70_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (u, i, t) = (x % 500, (x >> 20) % 300, (x >> 40) % 1000);
            text.push_str(&format!("u{u},{i},c{},{t}\n", i % 7));
        }
        std::fs::write(dir.join(format!("part-{part}.csv")), text).unwrap();
    }
    let whole = tmp.path().join("whole");
    prepare(&dir, &whole, &PrepareConfig::default()).unwrap();
    let parts = tmp.path().join("parts");
    let s = prepare(
        &dir,
        &parts,
        &PrepareConfig {
            memory_budget: 1,
            ..PrepareConfig::default()
        },
    )
    .unwrap();
    // 140,000 rows in CSV batches of 65,536: three batches, every row spilled.
    assert_eq!(s.spilled_rows, 140_000);
    assert!(s.partitions > 50, "{}", s.partitions);
    assert_same_dataset(&whole, &parts);
}
