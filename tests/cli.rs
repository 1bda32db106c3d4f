//! The `lifelong` binary end to end: synth → prepare → train → eval (JSON metrics checked
//! against the predictions file and the prepared split), resuming a finished run, `--help` of
//! every subcommand, and bad input turned into exit status 2 with a one-line `error:` naming
//! the offending file, column, key or row (never a panic).

use arrow_array::{Array, ArrayRef, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
use lifelong::checkpoint::read_metadata;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs the binary with `args`, in `cwd` (so relative paths of a config never land in the
/// repository).
pub(crate) fn lifelong(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifelong"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("the lifelong binary runs")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status 0 and returns stdout.
pub(crate) fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = lifelong(cwd, args);
    assert!(
        o.status.success(),
        "lifelong {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts exit status 2, no panic, and a last stderr line `error: ...` containing every string
/// of `needles`; returns that line.
pub(crate) fn fails(cwd: &Path, args: &[&str], needles: &[&str]) -> String {
    let o = lifelong(cwd, args);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "lifelong {args:?}: expected exit status 2\nstdout:\n{}\nstderr:\n{err}",
        stdout(&o)
    );
    assert!(
        !err.contains("panicked"),
        "lifelong {args:?} panicked:\n{err}"
    );
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    assert!(
        last.starts_with("error:"),
        "lifelong {args:?}: last stderr line is not an error: {last:?}\n{err}"
    );
    for n in needles {
        assert!(
            last.contains(n),
            "lifelong {args:?}: error line does not mention {n:?}: {last}"
        );
    }
    last
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `synth` into `dir`; returns the events file.
pub(crate) fn synth(cwd: &Path, dir: &Path, users: usize, items: usize) -> PathBuf {
    let (u, i) = (users.to_string(), items.to_string());
    let out = ok(
        cwd,
        &[
            "synth",
            "--out",
            s(dir),
            "--users",
            &u,
            "--items",
            &i,
            "--cates",
            "20",
            "--len",
            "30",
        ],
    );
    let events = dir.join("events.parquet");
    assert!(events.is_file(), "synth did not write {}", events.display());
    assert!(out.contains("events.parquet"), "synth stdout: {out}");
    events
}

pub(crate) fn prepare(cwd: &Path, events: &Path, out: &Path) {
    ok(cwd, &["prepare", "--events", s(events), "--out", s(out)]);
    assert!(out.join("meta.json").is_file());
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

/// A tiny DIN config whose `data.dir` and `train.out` point nowhere: the tests pass `--data`
/// and `--out`, so a run that works proves the flags override the TOML.
fn write_config(dir: &Path, extra_model: &str) -> PathBuf {
    let text = format!(
        r#"
[data]
dir = "no/such/prepared"
max_len = 30

[model]
kind = "din"
[model.embedding]
item_dim = 8
cate_dim = 8
[[model.aggregate]]
hidden = [8]
{extra_model}
[model.head]
hidden = [16]

[train]
epochs = 1
batch_size = 128
eval_batch_size = 512
lr = 0.003
sparse_lr = 0.01
seed = 5
out = "no/such/run"
"#
    );
    let path = dir.join("din.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `train --config CONFIG --data DATA --out RUN EXTRA...`, asserting success; returns stdout.
pub(crate) fn train(cwd: &Path, config: &Path, data: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--config",
        s(config),
        "--data",
        s(data),
        "--out",
        s(run),
    ];
    args.extend_from_slice(extra);
    ok(cwd, &args)
}

/// synth (150 users, 500 items) → prepare → train; returns (prepared dir, run dir).
fn trained_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let events = synth(tmp, &tmp.join("events"), 150, 500);
    let data = tmp.join("prepared");
    prepare(tmp, &events, &data);
    let config = write_config(tmp, "");
    let run = tmp.join("run");
    let out = train(tmp, &config, &data, &run, &[]);
    assert!(out.contains("trained"), "train stdout: {out}");
    for f in ["best.safetensors", "last.safetensors", "metrics.jsonl"] {
        assert!(run.join(f).is_file(), "train did not write {f}");
    }
    // The config's own (bogus) directories were never used.
    assert!(!tmp.join("no").exists());
    (data, run)
}

/// Every record batch of a parquet file, read with plain arrow-rs.
fn read_batches(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Column `name` of every batch, concatenated, through `f` (downcast + copy).
fn column<T>(batches: &[RecordBatch], name: &str, f: impl Fn(&ArrayRef) -> Vec<T>) -> Vec<T> {
    batches
        .iter()
        .flat_map(|b| {
            f(b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}")))
        })
        .collect()
}

fn f32s(a: &ArrayRef) -> Vec<f32> {
    a.as_any()
        .downcast_ref::<Float32Array>()
        .expect("float32")
        .values()
        .to_vec()
}
fn i32s(a: &ArrayRef) -> Vec<i32> {
    a.as_any()
        .downcast_ref::<Int32Array>()
        .expect("int32")
        .values()
        .to_vec()
}
fn i64s(a: &ArrayRef) -> Vec<i64> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64")
        .values()
        .to_vec()
}
fn i8s(a: &ArrayRef) -> Vec<i8> {
    a.as_any()
        .downcast_ref::<Int8Array>()
        .expect("int8")
        .values()
        .to_vec()
}

/// Writes `batches` (one schema) as a parquet file with plain arrow-rs.
pub(crate) fn write_batches(path: &Path, batches: &[RecordBatch]) {
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batches[0].schema(),
        None,
    )
    .unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Writes an event log with the given Int64 columns.
pub(crate) fn write_log(path: &Path, cols: Vec<(&str, Vec<i64>)>) {
    let batch = RecordBatch::try_from_iter(
        cols.into_iter()
            .map(|(n, v)| (n, Arc::new(Int64Array::from(v)) as ArrayRef)),
    )
    .unwrap();
    write_batches(path, &[batch]);
}

/// An event log of the default columns `user_id, item_id, cate_id, ts`.
pub(crate) fn write_events(path: &Path, (u, i, c, t): (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>)) {
    write_log(
        path,
        vec![("user_id", u), ("item_id", i), ("cate_id", c), ("ts", t)],
    );
}

/// A tiny log: 4 users × 6 behaviors over 9 items in 3 categories (item k in category k % 3).
fn tiny_log() -> (Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) {
    let (mut u, mut i, mut c, mut t) = (vec![], vec![], vec![], vec![]);
    for user in 0..4i64 {
        for k in 0..6i64 {
            let item = (user * 2 + k) % 9;
            u.push(100 + user);
            i.push(1000 + item);
            c.push(50 + item % 3);
            t.push(k * 10 + user);
        }
    }
    (u, i, c, t)
}

/// Pairwise AUC (ties count one half), computed directly.
fn pairwise_auc(labels: &[i8], scores: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, &li) in labels.iter().enumerate() {
        if li != 1 {
            continue;
        }
        for (j, &lj) in labels.iter().enumerate() {
            if lj != 0 {
                continue;
            }
            den += 1.0;
            if scores[i] > scores[j] {
                num += 1.0;
            } else if scores[i] == scores[j] {
                num += 0.5;
            }
        }
    }
    num / den
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

#[test]
fn pipeline_synth_prepare_train_eval_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (data, run) = trained_run(tmp);

    // The test split's row count, independently: parquet footer and meta.json.
    let test_file = data.join("test.parquet");
    let reader = SerializedFileReader::new(std::fs::File::open(&test_file).unwrap()).unwrap();
    let n_test = reader.metadata().file_metadata().num_rows() as u64;
    assert!(n_test > 0);
    assert_eq!(meta(&data)["n_test"].as_u64(), Some(n_test));

    let preds = tmp.join("preds.parquet");
    let out = ok(
        tmp,
        &[
            "eval",
            "--checkpoint",
            s(&run),
            "--data",
            s(&data),
            "--json",
            "--predictions",
            s(&preds),
        ],
    );
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?}: {e}"));
    for k in ["auc", "gauc", "logloss", "n"] {
        assert!(j.get(k).is_some(), "no `{k}` in {j}");
    }
    assert_eq!(j["n"].as_u64(), Some(n_test), "{j}");
    let auc = j["auc"].as_f64().expect("numeric auc");
    assert!(auc > 0.0 && auc <= 1.0, "auc {auc}");
    let logloss = j["logloss"].as_f64().expect("numeric logloss");
    assert!(logloss.is_finite() && logloss > 0.0, "logloss {logloss}");
    assert!(j["gauc"].is_null() || j["gauc"].as_f64().is_some_and(|g| (0.0..=1.0).contains(&g)));
    // The human-readable line names the checkpoint file that was used (the run's best).
    assert!(out.contains("best.safetensors"), "{out}");

    // Predictions: one row per test row, in order, prob = sigmoid(logit).
    let pb = read_batches(&preds);
    let logit = column(&pb, "logit", f32s);
    let prob = column(&pb, "prob", f32s);
    let row = column(&pb, "row", i64s);
    let label = column(&pb, "label", i8s);
    let item = column(&pb, "item", i32s);
    assert_eq!(logit.len() as u64, n_test);
    assert_eq!(row, (0..n_test as i64).collect::<Vec<_>>());
    for (k, (&x, &p)) in logit.iter().zip(&prob).enumerate() {
        let want = 1.0 / (1.0 + (-(x as f64)).exp());
        assert!(
            x.is_finite() && (p as f64 - want).abs() <= 1e-6,
            "row {k}: logit {x}, prob {p}, sigmoid {want}"
        );
    }
    let tb = read_batches(&test_file);
    assert_eq!(label, column(&tb, "label", i8s));
    assert_eq!(item, column(&tb, "item", i32s));
    // The JSON metrics agree with the predictions file.
    let want_auc = pairwise_auc(&label, &logit);
    assert!(
        (auc - want_auc).abs() < 1e-6,
        "auc {auc} vs pairwise {want_auc}"
    );
    let want_ll = label
        .iter()
        .zip(&logit)
        .map(|(&y, &x)| {
            let x = x as f64;
            // -log σ(x) = log(1 + e^-x), -log(1 - σ(x)) = log(1 + e^x)
            if y == 1 {
                (-x).exp().ln_1p()
            } else {
                x.exp().ln_1p()
            }
        })
        .sum::<f64>()
        / label.len() as f64;
    assert!(
        (logloss - want_ll).abs() < 1e-4,
        "logloss {logloss} vs {want_ll}"
    );

    // Resuming a finished run trains nothing and leaves `last` untouched.
    let last_file = run.join("last.safetensors");
    let step_of = |p: &Path| -> u64 {
        let m = read_metadata(p).unwrap();
        let t: serde_json::Value = serde_json::from_str(&m["trainer"]).unwrap();
        t["step"].as_u64().unwrap()
    };
    let step = step_of(&last_file);
    assert!(step > 0);
    let before = std::fs::read(&last_file).unwrap();
    let config = tmp.join("din.toml");
    let out = train(tmp, &config, &data, &run, &["--resume"]);
    assert!(
        out.contains(&format!("trained {step} steps (0 samples")),
        "resume stdout: {out}"
    );
    assert_eq!(step_of(&last_file), step);
    assert!(
        std::fs::read(&last_file).unwrap() == before,
        "resume rewrote last.safetensors"
    );
}

// ---------------------------------------------------------------------------------------------
// --help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_works_for_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 5] = [
        (
            "synth",
            &["--out", "--users", "--items", "--cates", "--len", "--seed"],
        ),
        (
            "prepare",
            &[
                "--events",
                "--out",
                "--negatives",
                "--seed",
                "--min-history",
                "--stride",
                "--user-col",
                "--item-col",
                "--cate-col",
                "--ts-col",
                "--label-col",
            ],
        ),
        ("train", &["--config", "--data", "--out", "--resume"]),
        (
            "eval",
            &[
                "--checkpoint",
                "--data",
                "--split",
                "--json",
                "--predictions",
            ],
        ),
        ("demo", &["--help"]),
    ];
    let top = ok(tmp.path(), &["--help"]);
    for (sub, flags) in cases {
        assert!(
            top.contains(sub),
            "top-level help does not list {sub}:\n{top}"
        );
        let out = ok(tmp.path(), &[sub, "--help"]);
        assert!(
            out.contains("Usage:") && out.contains(sub),
            "{sub} --help:\n{out}"
        );
        for f in flags {
            assert!(out.contains(f), "{sub} --help does not mention {f}:\n{out}");
        }
        // `help SUB` is the same text.
        assert_eq!(ok(tmp.path(), &["help", sub]), out);
    }
    // No subcommand is a usage error (clap's status 2), not a panic.
    let o = lifelong(tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
}

// ---------------------------------------------------------------------------------------------
// Bad input: status 2 and a named error
// ---------------------------------------------------------------------------------------------

#[test]
fn prepare_without_the_category_column_names_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (u, i, _, t) = tiny_log();
    let log = tmp.join("no_cate.parquet");
    write_log(&log, vec![("user_id", u), ("item_id", i), ("ts", t)]);
    let out = tmp.join("out");
    let err = fails(
        tmp,
        &["prepare", "--events", s(&log), "--out", s(&out)],
        &[s(&log), "cate_id"],
    );
    assert_eq!(
        err.matches(s(&log)).count(),
        1,
        "the file is named once: {err}"
    );
    assert!(!out.join("meta.json").exists());
}

#[test]
fn prepare_reads_a_renamed_category_column() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (u, i, c, t) = tiny_log();
    let log = tmp.join("renamed.parquet");
    let n_events = u.len();
    let distinct = |v: &[i64]| v.iter().collect::<std::collections::HashSet<_>>().len();
    let (nu, ni, nc) = (distinct(&u), distinct(&i), distinct(&c));
    write_log(
        &log,
        vec![
            ("user_id", u),
            ("item_id", i),
            ("category_id", c),
            ("ts", t),
        ],
    );
    let out = tmp.join("out");
    // The default name fails, naming the column it looked for ...
    fails(
        tmp,
        &["prepare", "--events", s(&log), "--out", s(&out)],
        &["cate_id"],
    );
    // ... and `--cate-col` reads the file.
    ok(
        tmp,
        &[
            "prepare",
            "--events",
            s(&log),
            "--out",
            s(&out),
            "--cate-col",
            "category_id",
        ],
    );
    let m = meta(&out);
    assert_eq!(m["n_cates"].as_u64(), Some(nc as u64 + 2), "{m}");
    assert_eq!(m["n_items"].as_u64(), Some(ni as u64 + 2), "{m}");
    assert_eq!(m["n_users"].as_u64(), Some(nu as u64 + 2), "{m}");
    assert_eq!(m["n_behaviors"].as_u64(), Some(n_events as u64), "{m}");
    // Every user has 6 behaviors: one test and one validation positive each (plus negatives).
    assert!(m["n_test"].as_u64().unwrap() >= nu as u64, "{m}");
    assert_eq!(
        SerializedFileReader::new(std::fs::File::open(out.join("test.parquet")).unwrap())
            .unwrap()
            .metadata()
            .file_metadata()
            .num_rows() as u64,
        m["n_test"].as_u64().unwrap()
    );
}

#[test]
fn prepare_of_a_missing_path_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let missing = tmp.join("nowhere").join("events.parquet");
    fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&missing),
            "--out",
            s(&tmp.join("out")),
        ],
        &[s(&missing)],
    );
}

#[test]
fn prepare_of_a_truncated_parquet_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (u, i, c, t) = tiny_log();
    let good = tmp.join("good.parquet");
    write_events(&good, (u, i, c, t));
    // The intact file prepares, so the failure below is the truncation's.
    ok(
        tmp,
        &["prepare", "--events", s(&good), "--out", s(&tmp.join("ok"))],
    );
    let bytes = std::fs::read(&good).unwrap();
    let cut = tmp.join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(
        tmp,
        &["prepare", "--events", s(&cut), "--out", s(&tmp.join("out"))],
        &[s(&cut)],
    );
    assert_eq!(
        err.matches(s(&cut)).count(),
        1,
        "the file is named once: {err}"
    );
}

#[test]
fn prepare_within_a_memory_budget_writes_the_same_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let events = synth(tmp, &tmp.join("log"), 300, 500);
    prepare(tmp, &events, &tmp.join("whole"));
    let scratch = tmp.join("scratch");
    ok(
        tmp,
        &[
            "prepare",
            "--events",
            s(&events),
            "--out",
            s(&tmp.join("parts")),
            "--memory-budget",
            "200K",
            "--scratch",
            s(&scratch),
        ],
    );
    for f in ["meta.json", "vocab/item.parquet"] {
        assert_eq!(
            std::fs::read(tmp.join("whole").join(f)).unwrap(),
            std::fs::read(tmp.join("parts").join(f)).unwrap(),
            "{f}"
        );
    }
    let rows = |d: &str, f: &str| read_batches(&tmp.join(d).join(f));
    for f in ["users.parquet", "train.parquet", "test.parquet"] {
        assert_eq!(rows("whole", f), rows("parts", f), "{f}");
    }
    // The scratch directory given is left empty; a bad budget is refused by name.
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    let o = lifelong(
        tmp,
        &[
            "prepare",
            "--events",
            s(&events),
            "--out",
            s(&tmp.join("x")),
            "--memory-budget",
            "2Q",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--memory-budget") && err.contains("unknown unit"),
        "{err}"
    );
}

/// `train` killed with SIGKILL at random moments, many times, checkpointing every step: after
/// every kill the last checkpoint loads, and resuming always works, to the end of training.
#[test]
fn train_killed_at_random_moments_always_resumes() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let events = synth(tmp, &tmp.join("events"), 200, 500);
    let data = tmp.join("prepared");
    prepare(tmp, &events, &data);
    let config = write_config(tmp, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "epochs = 1",
        "epochs = 12\ncheckpoint_every = 1\neval_every = 7",
    );
    std::fs::write(&config, text).unwrap();
    let run = tmp.join("run");
    let last = run.join("last.safetensors");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut kills_after_a_checkpoint, mut steps) = (0, Vec::new());
    for _ in 0..10 {
        let mut args = vec![
            "train",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--out",
            s(&run),
        ];
        if last.exists() {
            args.push("--resume");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifelong"))
            .args(&args)
            .current_dir(tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !last.exists() {
            // The first run: wait for its first checkpoint (however slow the machine), so every
            // kill below lands in a run that has one.
            let t0 = std::time::Instant::now();
            while !last.exists() && t0.elapsed().as_secs() < 300 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(x % 300));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(150 + x % 900));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if last.exists() {
            let (_, meta) = lifelong::checkpoint::read_checkpoint(&last)
                .unwrap_or_else(|e| panic!("after a kill the last checkpoint must load: {e}"));
            assert_eq!(meta.config.train.epochs, 12);
            kills_after_a_checkpoint += 1;
            let meta = read_metadata(&last).unwrap();
            let state: serde_json::Value =
                serde_json::from_str(&meta[lifelong::checkpoint::meta::KEY_TRAINER]).unwrap();
            steps.push(state["step"].as_u64().unwrap());
        }
    }
    assert_eq!(
        kills_after_a_checkpoint, 10,
        "every kill came after a first checkpoint"
    );
    // Progress is never lost: each kill's checkpoint is at least as far as the one before.
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    let out = train(tmp, &config, &data, &run, &["--resume"]);
    assert!(out.contains("trained"), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ok(tmp, &["eval", "--checkpoint", s(&run), "--data", s(&data)]);
}

#[test]
fn demo_outside_a_checkout_says_where_it_looks() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let err = fails(tmp, &["demo"], &["examples/din.toml", "--root"]);
    assert!(err.contains(s(tmp)), "{err}");
    // Nothing was written where it ran.
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[test]
fn train_with_a_misspelt_config_key_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let config = write_config(tmp, "hiden = [8]");
    fails(
        tmp,
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&tmp.join("data")),
            "--out",
            s(&tmp.join("run")),
        ],
        &["hiden", "model.aggregate[0]"],
    );
    assert!(!tmp.join("run").exists());
}

#[test]
fn eval_errors_name_the_checkpoint_the_vocabulary_and_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (data, run) = trained_run(tmp);

    // A truncated checkpoint: a run directory whose best.safetensors is cut in half.
    let broken = tmp.join("broken_run");
    std::fs::create_dir_all(&broken).unwrap();
    let bytes = std::fs::read(run.join("best.safetensors")).unwrap();
    let best = broken.join("best.safetensors");
    std::fs::write(&best, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        tmp,
        &["eval", "--checkpoint", s(&broken), "--data", s(&data)],
        &[s(&best)],
    );
    // The same file named directly.
    fails(
        tmp,
        &["eval", "--checkpoint", s(&best), "--data", s(&data)],
        &[s(&best)],
    );

    // A dataset with a bigger item vocabulary than the checkpoint's table (same users).
    let big_events = synth(tmp, &tmp.join("big_events"), 150, 2000);
    let big = tmp.join("big");
    prepare(tmp, &big_events, &big);
    let (small_items, big_items) = (
        meta(&data)["n_items"].as_u64().unwrap(),
        meta(&big)["n_items"].as_u64().unwrap(),
    );
    assert!(big_items > small_items, "{big_items} vs {small_items}");
    let line = fails(
        tmp,
        &["eval", "--checkpoint", s(&run), "--data", s(&big)],
        &[
            s(&big),
            "`item`",
            "vocabulary",
            "table",
            &big_items.to_string(),
            &small_items.to_string(),
        ],
    );
    eprintln!("{line}");

    // test.parquet with an item index equal to the vocabulary size, same schema otherwise.
    let test_file = data.join("test.parquet");
    let n_items = i32::try_from(small_items).unwrap();
    let mut batches = read_batches(&test_file);
    let b0 = &batches[0];
    let k = b0.schema().index_of("item").unwrap();
    let mut items = i32s(b0.column(k));
    items[0] = n_items;
    let mut cols = b0.columns().to_vec();
    cols[k] = Arc::new(Int32Array::from(items));
    batches[0] = RecordBatch::try_new(b0.schema(), cols).unwrap();
    write_batches(&test_file, &batches);
    let line = fails(
        tmp,
        &["eval", "--checkpoint", s(&run), "--data", s(&data)],
        &[s(&test_file), "row 0", "`item`", &n_items.to_string()],
    );
    eprintln!("{line}");
}

// ---------------------------------------------------------------------------------------------
// What a user sees: joinable predictions, curves, checkpoint inspection
// ---------------------------------------------------------------------------------------------

/// A log with string user ids and integer item ids (60 users × 14 behaviors); returns the file
/// and, per user id, its behaviors in time order.
fn string_user_log(dir: &Path) -> (PathBuf, std::collections::BTreeMap<String, Vec<i64>>) {
    use arrow_array::StringArray;
    let (mut u, mut i, mut c, mut t) = (vec![], vec![], vec![], vec![]);
    let mut by_user = std::collections::BTreeMap::new();
    for user in 0..60i64 {
        let name = format!("user-{user:03}");
        for k in 0..14i64 {
            let item = (user * 7 + k * 3) % 80;
            u.push(name.clone());
            i.push(5000 + item);
            c.push(item % 8);
            t.push(k * 100 + user);
            by_user
                .entry(name.clone())
                .or_insert_with(Vec::new)
                .push(5000 + item);
        }
    }
    let batch = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(u)) as ArrayRef),
        ("item_id", Arc::new(Int64Array::from(i)) as ArrayRef),
        ("cate_id", Arc::new(Int64Array::from(c)) as ArrayRef),
        ("ts", Arc::new(Int64Array::from(t)) as ArrayRef),
    ])
    .unwrap();
    let path = dir.join("events.parquet");
    write_batches(&path, &[batch]);
    (path, by_user)
}

#[test]
fn predictions_carry_raw_ids_and_runs_can_be_plotted_and_inspected() {
    use parquet::basic::{LogicalType, Repetition, Type as Physical};
    use parquet::record::Field;
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (events, by_user) = string_user_log(tmp);
    let data = tmp.join("prepared");
    prepare(tmp, &events, &data);
    let config = write_config(tmp, "");
    let run = tmp.join("run");
    let out = train(tmp, &config, &data, &run, &["--set", "train.epochs=2"]);
    // train draws the run's curves beside its checkpoints.
    let svg = std::fs::read_to_string(run.join("curves.svg")).expect("train wrote curves.svg");
    assert!(out.contains("curves.svg"), "{out}");
    for title in [
        "training loss",
        "validation AUC",
        "validation GAUC",
        "validation logloss",
    ] {
        assert!(svg.contains(title), "no panel `{title}`");
    }

    let preds = tmp.join("preds.parquet");
    ok(
        tmp,
        &[
            "eval",
            "--checkpoint",
            s(&run),
            "--data",
            s(&data),
            "--predictions",
            s(&preds),
        ],
    );
    // The schema as any parquet reader (pyarrow, polars) sees it: the raw ids typed as in the
    // log (a UTF-8 string and an int64), nullable, beside the indices.
    let reader = SerializedFileReader::new(std::fs::File::open(&preds).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let col = |name: &str| {
        (0..schema.num_columns())
            .map(|k| schema.column(k))
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let user_id = col("user_id");
    assert_eq!(user_id.physical_type(), Physical::BYTE_ARRAY);
    assert_eq!(user_id.logical_type_ref(), Some(&LogicalType::String));
    assert_eq!(
        user_id.self_type().get_basic_info().repetition(),
        Repetition::OPTIONAL
    );
    assert_eq!(col("item_id").physical_type(), Physical::INT64);
    for (name, ty) in [
        ("user", Physical::INT32),
        ("item", Physical::INT32),
        ("label", Physical::INT32),
    ] {
        assert_eq!(col(name).physical_type(), ty, "{name}");
    }
    // The values, read row by row with parquet's record API: each positive is its user's last
    // behavior in the log (the test split rule), each negative an item the user never touched.
    let (mut pos, mut neg) = (0, 0);
    for row in reader.get_row_iter(None).unwrap() {
        let row = row.unwrap();
        let get = |name: &str| {
            row.get_column_iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        let (Field::Str(user), Field::Long(item), Field::Byte(label)) =
            (get("user_id"), get("item_id"), get("label"))
        else {
            panic!("row {row:?}: unexpected field types");
        };
        let seq = &by_user[&user];
        if label == 1 {
            assert_eq!(
                item,
                *seq.last().unwrap(),
                "{user}: positive is not the last behavior"
            );
            pos += 1;
        } else {
            assert!(!seq.contains(&item), "{user}: negative {item} was touched");
            neg += 1;
        }
    }
    assert_eq!(pos, by_user.len(), "one test positive per user");
    assert_eq!(neg, by_user.len(), "one sampled negative per positive");

    // inspect --json: parts, vocabulary, parameter counts, step and best validation.
    let j: serde_json::Value =
        serde_json::from_str(ok(tmp, &["inspect", s(&run), "--json"]).trim()).unwrap();
    assert_eq!(j["kind"], "din");
    let m = meta(&data);
    let n_items = m["n_items"].as_u64().unwrap();
    assert_eq!(
        n_items,
        80 + 2,
        "80 distinct items plus padding and unknown"
    );
    assert_eq!(j["vocab"]["items"].as_u64(), Some(n_items));
    let params: Vec<(String, u64)> = j["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect();
    let table = |name: &str| params.iter().find(|(n, _)| n == name).map(|p| p.1);
    assert_eq!(
        table("table/item"),
        Some(n_items * 8),
        "item_dim = 8 in the config"
    );
    assert_eq!(
        j["total_parameters"].as_u64(),
        Some(params.iter().map(|p| p.1).sum())
    );
    // The best validation: the record of metrics.jsonl with the highest AUC.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "one validation per epoch");
    let best = records
        .iter()
        .max_by(|a, b| {
            let auc = |r: &serde_json::Value| r["valid"]["auc"].as_f64().unwrap();
            auc(a).total_cmp(&auc(b))
        })
        .unwrap();
    assert_eq!(j["state"]["best_step"], best["step"]);
    assert_eq!(j["state"]["best_auc"], best["valid"]["auc"]);
    let text = ok(tmp, &["inspect", s(&run.join("last.safetensors"))]);
    assert!(text.contains("resumable   yes"), "{text}");
    let item_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("table/item"))
        .unwrap_or_else(|| panic!("no table/item line in {text}"));
    assert_eq!(
        item_line.split_whitespace().last(),
        Some((n_items * 8).to_string().as_str())
    );

    // Several runs on one chart: each run's name in every panel's legend.
    let run2 = tmp.join("run2");
    train(tmp, &config, &data, &run2, &["--set", "train.lr=0.01"]);
    let both = tmp.join("both.svg");
    ok(tmp, &["plot", s(&run), s(&run2), "--out", s(&both)]);
    let svg = std::fs::read_to_string(&both).unwrap();
    assert_eq!(
        svg.matches(">\nrun\n<").count(),
        4,
        "`run` in each of 4 legends"
    );
    assert_eq!(
        svg.matches(">\nrun2\n<").count(),
        4,
        "`run2` in each of 4 legends"
    );
    // A fresh run into a used directory starts its own metrics (one epoch: one validation).
    train(tmp, &config, &data, &run, &[]);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    // A directory without metrics is an error naming the file.
    fails(tmp, &["plot", s(&data)], &["metrics.jsonl"]);
    fails(tmp, &["inspect", s(&data)], &["safetensors"]);
}

/// A Taobao-UserBehavior-shaped log (`user_id,item_id,category_id,behavior_type,timestamp`,
/// no header): 30 users × 12 events, every third one a `cart` instead of a `pv`. Returns the
/// lines and, per user, the items of its `pv` events in time order.
fn taobao_lines() -> (Vec<String>, std::collections::BTreeMap<i64, Vec<i64>>) {
    let mut lines = Vec::new();
    let mut pv = std::collections::BTreeMap::new();
    for user in 0..30i64 {
        for k in 0..12i64 {
            let item = 7000 + (user * 5 + k * 11) % 90;
            let kind = if k % 3 == 2 { "cart" } else { "pv" };
            lines.push(format!(
                "{},{item},{},{kind},{}",
                100 + user,
                item % 9,
                1_511_000_000 + k * 60 + user
            ));
            if kind == "pv" {
                pv.entry(100 + user).or_insert_with(Vec::new).push(item);
            }
        }
    }
    (lines, pv)
}

#[test]
fn prepare_reads_csv_logs_with_or_without_a_header_and_keeps_matching_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (lines, pv) = taobao_lines();
    let bare = tmp.join("UserBehavior.csv");
    std::fs::write(&bare, lines.join("\n") + "\n").unwrap();
    let names = "user_id,item_id,cate_id,behavior_type,ts";
    let headed = tmp.join("headed.csv");
    std::fs::write(&headed, format!("{names}\n{}\n", lines.join("\n"))).unwrap();

    let a = tmp.join("a");
    ok(
        tmp,
        &[
            "prepare",
            "--events",
            s(&bare),
            "--out",
            s(&a),
            "--columns",
            names,
            "--keep",
            "behavior_type=pv",
        ],
    );
    let b = tmp.join("b");
    ok(
        tmp,
        &[
            "prepare",
            "--events",
            s(&headed),
            "--out",
            s(&b),
            "--keep",
            "behavior_type=pv",
        ],
    );
    // Only the page views are behaviors; both layouts give the same dataset.
    let m = meta(&a);
    let n_pv: usize = pv.values().map(Vec::len).sum();
    assert_eq!(m["n_behaviors"].as_u64(), Some(n_pv as u64));
    assert_eq!(m["n_users"].as_u64(), Some(pv.len() as u64 + 2));
    for f in [
        "users.parquet",
        "train.parquet",
        "test.parquet",
        "vocab/item.parquet",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between the headed and the bare CSV"
        );
    }
    // Each user's history is its page views in time order, with the log's own item ids.
    let items = read_batches(&a.join("vocab/item.parquet"));
    let raw = column(&items, "raw", i64s);
    let users = read_batches(&a.join("users.parquet"));
    let hist: Vec<Vec<i32>> = users
        .iter()
        .flat_map(|b| {
            let l = b
                .column_by_name("items")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::ListArray>()
                .unwrap()
                .clone();
            (0..l.len()).map(move |r| i32s(&l.value(r)))
        })
        .collect();
    let mut got: Vec<Vec<i64>> = hist
        .iter()
        .map(|h| h.iter().map(|&i| raw[i as usize - 2]).collect())
        .collect();
    let mut want: Vec<Vec<i64>> = pv.values().cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // The same filter on a parquet log.
    let (u, i, c, t) = tiny_log();
    let kind: Vec<i64> = (0..u.len() as i64).map(|r| r % 2).collect();
    let log = tmp.join("log.parquet");
    write_log(
        &log,
        vec![
            ("user_id", u),
            ("item_id", i),
            ("cate_id", c),
            ("ts", t),
            ("kind", kind),
        ],
    );
    let p = tmp.join("p");
    ok(
        tmp,
        &[
            "prepare",
            "--events",
            s(&log),
            "--out",
            s(&p),
            "--keep",
            "kind=1",
        ],
    );
    assert_eq!(
        meta(&p)["n_behaviors"].as_u64(),
        Some(12),
        "half of 24 events"
    );
    fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&log),
            "--out",
            s(&p),
            "--keep",
            "kind=7",
        ],
        &["no rows matching kind=7"],
    );
    fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&log),
            "--out",
            s(&p),
            "--keep",
            "nosuch=1",
        ],
        &["log.parquet", "nosuch"],
    );
}

#[test]
fn bad_csv_logs_are_named_by_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let names = "user_id,item_id,cate_id,behavior_type,ts";
    let (mut lines, _) = taobao_lines();
    // A ragged row (4 fields) at line 8.
    let mut ragged = lines.clone();
    ragged[7] = "105,7001,3,1511000100".into();
    let f = tmp.join("ragged.csv");
    std::fs::write(&f, ragged.join("\n")).unwrap();
    let err = fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&f),
            "--out",
            s(&tmp.join("o")),
            "--columns",
            names,
        ],
        &["ragged.csv", "line"],
    );
    assert!(err.contains('8'), "{err}");
    // A text id in an integer column, after the rows the types are inferred from.
    while lines.len() <= lifelong::data::csv::INFER_ROWS {
        lines.extend_from_within(..360);
    }
    let bad_line = lines.len() + 1;
    lines.push("abc,7001,3,pv,1511000100".into());
    let f = tmp.join("text.csv");
    std::fs::write(&f, lines.join("\n")).unwrap();
    let err = fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&f),
            "--out",
            s(&tmp.join("o")),
            "--columns",
            names,
        ],
        &["text.csv", "abc"],
    );
    assert!(
        err.contains(&bad_line.to_string()),
        "line {bad_line} not named: {err}"
    );
    // --columns naming fewer columns than the file has.
    fails(
        tmp,
        &[
            "prepare",
            "--events",
            s(&f),
            "--out",
            s(&tmp.join("o")),
            "--columns",
            "user_id,item_id",
        ],
        &["text.csv", "2 columns"],
    );
}

/// A CUDA device on a build without the `cuda` feature is refused by every command that takes
/// `--device`, naming the device and the feature, before any work (status 2); a misspelt device
/// is refused by name.
#[cfg(not(feature = "cuda"))]
#[test]
fn every_device_taking_command_refuses_cuda_without_the_feature() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let config = write_config(tmp, "");
    let nowhere_path = tmp.join("nowhere");
    let (nowhere, cfg) = (s(&nowhere_path), s(&config));
    let commands: [Vec<&str>; 4] = [
        vec!["train", "--config", cfg, "--device", "cuda"],
        vec!["eval", "--checkpoint", nowhere, "--data", nowhere],
        vec![
            "encode",
            "--checkpoint",
            nowhere,
            "--data",
            nowhere,
            "--out",
            nowhere,
        ],
        vec!["serve", "--checkpoint", nowhere, "--encodings", nowhere],
    ];
    for (i, mut args) in commands.into_iter().enumerate() {
        if i > 0 {
            args.extend(["--device", "cuda:1"]);
        }
        let dev = if i == 0 { "cuda:0" } else { "cuda:1" };
        fails(tmp, &args, &[dev, "--features cuda"]);
    }
    // The config key is read the same way.
    fails(
        tmp,
        &["train", "--config", cfg, "--set", "train.device=\"cuda\""],
        &["cuda:0", "--features cuda"],
    );
    // A misspelt device: clap's usage error (status 2) quoting it.
    let o = lifelong(
        tmp,
        &[
            "eval",
            "--checkpoint",
            nowhere,
            "--data",
            nowhere,
            "--device",
            "gpu",
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("`gpu`") && err.contains("cuda:N"), "{err}");
}
