//! The serving side's paths no other test reads: encodings trimmed to a serving window shorter
//! than `max_len` (scores still equal `eval`'s on the full history), every refusal of the
//! encodings reader (footers, shard sets, bad cells) and of `encode`, the Scorer's request options
//! (explicit categories, histories without categories, JSON histories, number ids of a string
//! vocabulary, the request limits), `reload` under concurrent scoring, and the error paths of
//! `score_encoded` / `extend_encoding`.
//!
//! The checkpoints are untrained (weights at their init, saved by a `Trainer`): what is tested is
//! serving equal to `eval` for the same weights, not the weights. Expectations come from
//! `eval::predict` on batches the batcher collates (full histories), from hand-built inputs, or
//! from the source's documented messages.

// Imports are kept here, at the top, so that moved modules (encodings, serve, model::serving)
// are one edit away.
use crate::cli::{write_events, write_log};
use crate::common::{tiny_data, tiny_model};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, Float64Array, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray,
};
use arrow_schema::{Field, Schema};
use candle_core::Device;
use lifelong::checkpoint::{self as model_file, ModelFile};
use lifelong::config::{Config, Preset};
use lifelong::data::{
    prepare, write_synth, Dataset, Histories, Impressions, PrepareConfig, RawId, SynthConfig,
    Vocab, UNKNOWN,
};
use lifelong::eval;
use lifelong::metrics::sigmoid;
use lifelong::model::{CtrModel, EncodingLayout};
use lifelong::serving::format::{KEY_FORMAT, KEY_LAYOUT, KEY_MODEL, KEY_SHARD};
use lifelong::serving::{
    self as encodings, check_footer, load_all, parts, read_part, EncodedUser, Shard,
};
use lifelong::serving::{
    Candidate, Precision, Scorer, StoreOptions, User, MAX_CANDIDATES, MAX_HISTORY,
};
use lifelong::train::Trainer;
use lifelong::{Error, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------------------------------------
// Fixture: two prepared datasets, untrained checkpoints, their encodings
// ---------------------------------------------------------------------------------------------

/// `data.max_len` of every fixture model.
pub(crate) const MAX_LEN: usize = 20;
/// The part file of a one-shard encodings directory.
pub(crate) const PART: &str = "part-00000-of-00001.parquet";

const EMB: &str =
    "[model.embedding]\nitem_dim = 4\ncate_dim = 4\ninit = { kind = \"normal\", std = 0.5 }\n";

/// The fixture's models: DIN over the 5 most recent behaviors (positions in its tokens), SDIM
/// over the 12 most recent with a target attention over 4 (both serve a window shorter than
/// `max_len`), ETA (codes; a search reads all of `max_len`).
fn model_toml(name: &str) -> String {
    match name {
        "din" | "str_din" => format!(
            "kind = \"din\"\n{EMB}pos_dim = 2\n[[model.aggregate]]\nwindow = {{ recent = 5 }}\nhidden = [8]\n"
        ),
        "sdim" => format!(
            "kind = \"sdim\"\n{EMB}[[model.aggregate]]\nwindow = {{ recent = 12 }}\ngroups = 3\nbits = 2\n\
             [[model.aggregate]]\nwindow = {{ recent = 4 }}\nheads = 2\ndim = 8\n"
        ),
        "eta" => format!(
            "kind = \"eta\"\n{EMB}[model.search]\nk = 3\n[[model.aggregate]]\nheads = 2\ndim = 8\n\
             [[model.aggregate]]\nwindow = {{ recent = 4 }}\nheads = 2\ndim = 8\n"
        ),
        _ => unreachable!("{name}"),
    }
}

pub(crate) struct Fixture {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// 30 users (histories of 22 to 44 behaviors), integer raw ids.
    pub data: PathBuf,
    /// 12 users, every raw id a string of digits.
    pub str_data: PathBuf,
}

impl Fixture {
    pub fn run(&self, name: &str) -> PathBuf {
        self.root.join(format!("run_{name}"))
    }
    pub fn enc(&self, name: &str) -> PathBuf {
        self.root.join(format!("enc_{name}"))
    }
    pub fn model(&self, name: &str) -> ModelFile {
        ModelFile::open(&self.run(name), &Device::Cpu).unwrap()
    }
}

/// A log whose user, item and category ids are all strings of digits: users "101".."112" with
/// 8 to 25 behaviors over items "5000".."5039" (item k in category "7" + k % 5).
fn string_log(path: &Path) {
    let (mut u, mut i, mut c, mut t) = (vec![], vec![], vec![], vec![]);
    for user in 0..12i64 {
        for k in 0..(8 + (user * 5) % 18) {
            let item = (user * 7 + k * 3) % 40;
            u.push((101 + user).to_string());
            i.push((5000 + item).to_string());
            c.push((7 + item % 5).to_string());
            t.push(k * 100 + user);
        }
    }
    let batch = RecordBatch::try_from_iter([
        ("user_id", Arc::new(StringArray::from(u)) as ArrayRef),
        ("item_id", Arc::new(StringArray::from(i)) as ArrayRef),
        ("cate_id", Arc::new(StringArray::from(c)) as ArrayRef),
        ("ts", Arc::new(Int64Array::from(t)) as ArrayRef),
    ])
    .unwrap();
    crate::cli::write_batches(path, &[batch]);
}

/// An untrained checkpoint of `name` for `data` (saved by a Trainer, vocabulary fingerprint
/// included) and its encodings (one shard).
fn build(root: &Path, data: &Path, name: &str) {
    let text = format!(
        "[data]\ndir = \"unused\"\nmax_len = {MAX_LEN}\n[model]\n{}\n[model.head]\nhidden = [8]\n\
         [train]\nseed = 4\n",
        model_toml(name)
    );
    let cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    let ds = Dataset::open(data).unwrap();
    let run = root.join(format!("run_{name}"));
    let t = Trainer::new(cfg, &ds, &run, &Device::Cpu).unwrap();
    t.save(&run.join(model_file::BEST), false).unwrap();
    let mf = ModelFile::open(&run, &Device::Cpu).unwrap();
    let out = root.join(format!("enc_{name}"));
    let s = encodings::encode_dataset(&mf, data, &out, Shard::ALL, false).unwrap();
    assert_eq!(s.users, ds.meta.n_users - 2, "{name}");
}

pub(crate) fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let cfg = SynthConfig {
            users: 30,
            items: 80,
            cates: 6,
            len: 44,
            seed: 21,
        };
        let events = write_synth(&cfg, &root.join("log")).unwrap();
        let data = root.join("prepared");
        prepare(&events, &data, &PrepareConfig::default()).unwrap();
        std::fs::create_dir_all(root.join("str_log")).unwrap();
        let str_events = root.join("str_log").join("events.parquet");
        string_log(&str_events);
        let str_data = root.join("str_prepared");
        prepare(&str_events, &str_data, &PrepareConfig::default()).unwrap();
        for name in ["din", "sdim", "eta"] {
            build(&root, &data, name);
        }
        build(&root, &str_data, "str_din");
        Fixture {
            _tmp: tmp,
            root,
            data,
            str_data,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers: expectations from eval, raw part files, error matchers
// ---------------------------------------------------------------------------------------------

/// Click probabilities `eval::predict` gives user `u` of `hist` (its first `seq_len` behaviors)
/// for the candidates.
pub(crate) fn eval_probs(
    model: &CtrModel,
    hist: &Arc<Histories>,
    u: u32,
    seq_len: usize,
    items: &[u32],
    cates: &[u32],
) -> Vec<f32> {
    let n = items.len();
    let imp = Arc::new(Impressions {
        label: vec![0.0; n],
        user: vec![u; n],
        item: items.to_vec(),
        cate: cates.to_vec(),
        seq_len: vec![seq_len as u32; n],
        history: Vec::new(),
        ts: Vec::new(),
    });
    eval::predict(model, hist, &imp, 64)
        .unwrap()
        .into_iter()
        .map(sigmoid)
        .collect()
}

/// Histories in which user 2 alone has `items`/`cates` (for raw-history requests; the fixture
/// models have no user table, so the index does not matter).
fn one_history(items: &[u32], cates: &[u32]) -> Arc<Histories> {
    Arc::new(Histories {
        offsets: vec![0, 0, 0, items.len() as u64],
        items: items.to_vec(),
        cates: cates.to_vec(),
        ts: vec![0; items.len()],
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn spread(p: &[f32]) -> f32 {
    let (lo, hi) = p
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    hi - lo
}

fn int(id: RawId) -> i64 {
    match id {
        RawId::Int(x) => x,
        RawId::Str(s) => panic!("expected an integer id, got {s:?}"),
    }
}

/// Every row of one part file.
pub(crate) fn read_rows(path: &Path, layout: &EncodingLayout) -> Result<Vec<EncodedUser>> {
    let mut out = Vec::new();
    read_part(path, layout, |rows| {
        out.extend(rows);
        Ok(())
    })?;
    Ok(out)
}

/// A part file's rows (one batch, with plain arrow-rs) and its footer without arrow's own schema
/// key.
pub(crate) fn read_raw(path: &Path) -> (RecordBatch, Vec<(String, String)>) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let kv = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|e| e.key != "ARROW:schema")
                .filter_map(|e| Some((e.key.clone(), e.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let batches: Vec<RecordBatch> = b
        .with_batch_size(1 << 20)
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let batch = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    (batch, kv)
}

/// Writes `batch` with footer `kv` (plain arrow-rs writer).
pub(crate) fn write_raw(path: &Path, batch: &RecordBatch, kv: &[(String, String)]) {
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(
            kv.iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// `kv` with `key` set to `value` (`None`: removed).
pub(crate) fn with_key(
    kv: &[(String, String)],
    key: &str,
    value: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kv.iter().filter(|(k, _)| k != key).cloned().collect();
    if let Some(v) = value {
        out.push((key.to_string(), v.to_string()));
    }
    out
}

/// `batch` with column `name` replaced by `a` (appended if absent; `None`: removed).
pub(crate) fn with_col(batch: &RecordBatch, name: &str, a: Option<ArrayRef>) -> RecordBatch {
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    let mut done = false;
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.name() == name {
            done = true;
            if let Some(a) = &a {
                fields.push(Field::new(name, a.data_type().clone(), true));
                cols.push(a.clone());
            }
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    if let (false, Some(a)) = (done, a) {
        fields.push(Field::new(name, a.data_type().clone(), true));
        cols.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// The rows of a list column (`None`: a null row).
pub(crate) fn lists<T: ArrowPrimitiveType>(
    b: &RecordBatch,
    name: &str,
) -> Vec<Option<Vec<T::Native>>> {
    let l = b.column_by_name(name).unwrap().as_list::<i32>();
    (0..l.len())
        .map(|r| (!l.is_null(r)).then(|| l.value(r).as_primitive::<T>().values().to_vec()))
        .collect()
}

/// A list column of `rows`.
pub(crate) fn list_of<T: ArrowPrimitiveType>(rows: &[Option<Vec<T::Native>>]) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<T, _, _>(rows.iter().map(
        |r| {
            r.as_ref()
                .map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>())
        },
    )))
}

/// A copy of encodings directory `from`'s vocabularies in a new directory, without parts.
pub(crate) fn bare_copy(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("enc");
    std::fs::create_dir_all(dir.join("vocab")).unwrap();
    for v in ["user", "item", "cate"] {
        let name = format!("vocab/{v}.parquet");
        std::fs::copy(from.join(&name), dir.join(&name)).unwrap();
    }
    (tmp, dir)
}

/// A result for a failure message: the error, or that it was accepted.
fn shown<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "Ok (accepted)".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[track_caller]
fn expect_corrupt<T>(r: Result<T>, file: &str, needle: &str) {
    match r {
        Err(Error::Corrupt { path, reason }) => {
            assert!(
                path.ends_with(file),
                "names {} instead of {file}",
                path.display()
            );
            assert!(
                reason.contains(needle),
                "`{reason}` does not say `{needle}`"
            );
        }
        other => panic!(
            "expected Error::Corrupt ({needle}) for {file}, got {}",
            shown(&other)
        ),
    }
}

#[track_caller]
fn expect_schema<T>(r: Result<T>, col: &str, needle: &str) {
    match r {
        Err(Error::Schema {
            path,
            column,
            reason,
        }) => {
            assert!(path.ends_with(PART), "{}", path.display());
            assert_eq!(column, col, "{reason}");
            assert!(
                reason.contains(needle),
                "`{reason}` does not say `{needle}`"
            );
        }
        other => panic!(
            "expected Error::Schema on `{col}` ({needle}), got {}",
            shown(&other)
        ),
    }
}

#[track_caller]
fn expect_value<T>(r: Result<T>, at: usize, col: &str, needle: &str) {
    match r {
        Err(Error::Value {
            path,
            row,
            column,
            reason,
        }) => {
            assert!(path.ends_with(PART), "{}", path.display());
            assert_eq!((row, column.as_str()), (at, col), "{reason}");
            assert!(
                reason.contains(needle),
                "`{reason}` does not say `{needle}`"
            );
        }
        other => panic!(
            "expected Error::Value at row {at}, `{col}` ({needle}), got {}",
            shown(&other)
        ),
    }
}

#[track_caller]
fn expect_invalid<T>(r: Result<T>, needle: &str) {
    match r {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(needle), "`{m}` does not say `{needle}`")
        }
        other => panic!(
            "expected Error::InvalidArgument ({needle}), got {}",
            shown(&other)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Encodings trimmed to the serving window
// ---------------------------------------------------------------------------------------------

/// DIN over the last 5 and SDIM with a target attention over the last 4 serve a window shorter
/// than max_len = 20: the files keep 20 behaviors, the Scorer holds only the window, and its
/// probabilities equal eval's on the full history for every user.
#[test]
fn trimmed_encodings_score_as_eval_with_the_full_history() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let hist = Arc::new(ds.histories.clone());
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let item_cates = ds.item_cates().unwrap();
    let cand_items: Vec<u32> = (2..ds.meta.n_items as u32)
        .step_by(5)
        .chain([UNKNOWN])
        .collect();
    let cand_cates: Vec<u32> = cand_items.iter().map(|&i| item_cates[i as usize]).collect();
    let mut cands: Vec<Candidate> = cand_items[..cand_items.len() - 1]
        .iter()
        .map(|&i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    cands.push(Candidate::item(RawId::Int(-123_456)));
    for (name, window) in [("din", 5), ("sdim", 4)] {
        let mf = f.model(name);
        let layout = mf.model.encoding_layout();
        assert_eq!(
            (layout.max_len, layout.serving_window),
            (MAX_LEN, window),
            "{name}"
        );
        let rows = read_rows(&f.enc(name).join(PART), &layout).unwrap();
        assert_eq!(rows.len(), 30, "{name}");
        let scorer = Scorer::open(&f.run(name), &f.enc(name)).unwrap();
        let (mut worst, mut widest) = (0f32, 0f32);
        for u in 2..ds.meta.n_users as u32 {
            let id = users.raw(u).unwrap();
            let (hi, hc) = hist.get(u);
            assert!(hi.len() > MAX_LEN, "user {u}: a history of {}", hi.len());
            // The file holds the last max_len behaviors, the scorer the last `window` of them.
            let row = rows.iter().find(|r| r.id == id).unwrap();
            assert_eq!(row.enc.items, hi[hi.len() - MAX_LEN..], "{name} user {u}");
            let held = scorer.encoding(&id).unwrap();
            assert_eq!(held.items, hi[hi.len() - window..], "{name} user {u}");
            assert_eq!(held.cates, hc[hc.len() - window..], "{name} user {u}");
            assert_eq!(held.buckets, row.enc.buckets, "{name} user {u}");
            let want = eval_probs(&mf.model, &hist, u, hi.len(), &cand_items, &cand_cates);
            let got = scorer.score(&User::Id(id), &cands).unwrap();
            worst = worst.max(max_diff(&got, &want));
            widest = widest.max(spread(&want));
        }
        assert!(worst < 1e-5, "{name}: served vs eval differ by {worst}");
        assert!(widest > 1e-3, "{name}: candidates barely differ ({widest})");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals of the encodings reader and of `encode`
// ---------------------------------------------------------------------------------------------

/// Footers of another format, other weights, another layout, an unparsable layout, a bad shard,
/// and a parquet file that is no encodings file: each a Corrupt error naming the file and what
/// differs, from `check_footer` and from `Scorer::open`.
#[test]
fn footer_refusals_name_the_file_and_what_differs() {
    let f = fixture();
    let mf = f.model("sdim");
    let layout = mf.model.encoding_layout();
    let fp = model_file::model_fingerprint(&mf.model).unwrap();
    let din_fp = model_file::model_fingerprint(&f.model("din").model).unwrap();
    assert_ne!(fp, din_fp);
    let src = f.enc("sdim").join(PART);
    assert_eq!(check_footer(&src, &fp, &layout).unwrap(), Shard::ALL);
    let (batch, kv) = read_raw(&src);
    let lay_json = |l: &EncodingLayout| serde_json::to_string(l).unwrap();
    let mut wider = layout.clone();
    wider.serving_window += 1;
    let mut buckets = layout.clone();
    buckets.buckets[0] += 1;
    let cases: Vec<(Vec<(String, String)>, String)> = vec![
        (
            with_key(&kv, KEY_FORMAT, Some("2")),
            "encodings format 2 (this build reads 1)".into(),
        ),
        (
            with_key(&kv, KEY_MODEL, None),
            "no `lifelong.model` in the footer: not an encodings file".into(),
        ),
        (
            with_key(&kv, KEY_MODEL, Some(&din_fp)),
            format!(
                "encoded with other weights (model fingerprint {din_fp}; the checkpoint's is {fp})"
            ),
        ),
        (
            with_key(&kv, KEY_LAYOUT, Some(&lay_json(&wider))),
            format!("layout {wider:?} differs from the model's {layout:?}"),
        ),
        (
            with_key(&kv, KEY_LAYOUT, Some(&lay_json(&buckets))),
            format!("layout {buckets:?} differs from the model's {layout:?}"),
        ),
        (
            with_key(&kv, KEY_LAYOUT, Some("{\"max_len\": 20")),
            "`lifelong.layout`: ".into(),
        ),
        (
            with_key(&kv, KEY_SHARD, Some("2/2")),
            "shard `2/2`: expected I/N with 0 <= I < N".into(),
        ),
        (
            with_key(&kv, KEY_SHARD, None),
            "no `lifelong.shard` in the footer".into(),
        ),
    ];
    for (kv, needle) in cases {
        let (_t, dir) = bare_copy(&f.enc("sdim"));
        let file = dir.join(PART);
        write_raw(&file, &batch, &kv);
        expect_corrupt(check_footer(&file, &fp, &layout), PART, &needle);
        expect_corrupt(
            Scorer::open(&f.run("sdim"), &dir).map(|_| ()),
            PART,
            &needle,
        );
    }
    // A parquet file of no encodings (a vocabulary) posing as a part.
    let (_t, dir) = bare_copy(&f.enc("sdim"));
    std::fs::copy(dir.join("vocab/user.parquet"), dir.join(PART)).unwrap();
    expect_corrupt(
        load_all(&dir, &mf.model),
        PART,
        "no `lifelong.encodings_format` in the footer: not an encodings file",
    );
}

/// The shard set of a directory: no part at all, a missing shard, shards of two counts, one
/// shard twice, one user in two shards.
#[test]
fn parts_refuse_missing_mixed_and_doubled_shards_and_users_encoded_twice() {
    let f = fixture();
    let mf = f.model("sdim");
    let (layout, model) = (mf.model.encoding_layout(), &mf.model);
    let fp = model_file::model_fingerprint(model).unwrap();
    let (_t2, two) = bare_copy(&f.enc("sdim"));
    for index in 0..2 {
        encodings::encode_dataset(&mf, &f.data, &two, Shard { index, count: 2 }, false).unwrap();
    }
    let (p0, p1) = ("part-00000-of-00002.parquet", "part-00001-of-00002.parquet");
    // Control: the two shards load, every user once.
    assert_eq!(parts(&two, &fp, &layout).unwrap().len(), 2);
    assert_eq!(load_all(&two, model).unwrap().len(), 30);

    // No part file.
    let (_t, dir) = bare_copy(&f.enc("sdim"));
    match load_all(&dir, model) {
        Err(Error::Io { path, err }) => {
            assert_eq!(path, dir);
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
            assert!(
                err.to_string()
                    .contains("no part-*.parquet encodings files"),
                "{err}"
            );
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    // Shard 1 of 2 missing: the error names the directory and the missing file.
    std::fs::copy(two.join(p0), dir.join(p0)).unwrap();
    match parts(&dir, &fp, &layout) {
        Err(Error::Corrupt { path, reason }) => {
            assert_eq!(path, dir);
            assert!(
                reason.contains(&format!("shard 1 of 2 ({p1}) is missing")),
                "{reason}"
            );
        }
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
    // Shard 0 of 2 beside a shard 1 of 3.
    let (batch1, kv1) = read_raw(&two.join(p1));
    let p1_of_3 = "part-00001-of-00003.parquet";
    write_raw(
        &dir.join(p1_of_3),
        &batch1,
        &with_key(&kv1, KEY_SHARD, Some("1/3")),
    );
    expect_corrupt(
        parts(&dir, &fp, &layout),
        p1_of_3,
        "shard 1/3 among shards of 2",
    );
    std::fs::remove_file(dir.join(p1_of_3)).unwrap();
    // Shard 0 twice: a copy of shard 0 under shard 1's name.
    std::fs::copy(two.join(p0), dir.join(p1)).unwrap();
    expect_corrupt(parts(&dir, &fp, &layout), p1, "shard 0 appears twice");
    expect_corrupt(
        Scorer::open(&f.run("sdim"), &dir).map(|_| ()),
        p1,
        "shard 0 appears twice",
    );
    // Shard 0's users again, in a file that says it is shard 1: the shard set is complete, but
    // the users do not hash to the part they are in.
    let (batch0, kv0) = read_raw(&two.join(p0));
    write_raw(
        &dir.join(p1),
        &batch0,
        &with_key(&kv0, KEY_SHARD, Some("1/2")),
    );
    assert_eq!(parts(&dir, &fp, &layout).unwrap().len(), 2);
    let first_of = |b: &RecordBatch| {
        b.column_by_name("user_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    expect_corrupt(
        load_all(&dir, model),
        p1,
        &format!(
            "user {} is in part 1/2 but its id hashes to part 0",
            first_of(&batch0)
        ),
    );
    // Shard 1's users twice in its own part: the users are not unique.
    let twice = arrow_select::concat::concat_batches(&batch1.schema(), [&batch1, &batch1]).unwrap();
    write_raw(&dir.join(p1), &twice, &kv1);
    std::fs::copy(two.join(p0), dir.join(p0)).unwrap();
    expect_corrupt(
        load_all(&dir, model),
        p1,
        &format!("user {} is encoded twice", first_of(&batch1)),
    );
}

/// One scorer per shard serves exactly the users whose raw id's CRC-32 (computed here from the
/// id's little-endian bytes) is its index modulo N, each with the scores the all-users scorer
/// gives, and names the right shard for a user of another; both when the directory has as many
/// parts as there are shards (only the own part is read) and when it has one part (filtered).
#[test]
fn a_scorer_per_shard_serves_exactly_the_users_hashed_to_it() {
    let f = fixture();
    let mf = f.model("sdim");
    let (_t2, two) = bare_copy(&f.enc("sdim"));
    for index in 0..2 {
        encodings::encode_dataset(&mf, &f.data, &two, Shard { index, count: 2 }, false).unwrap();
    }
    let full = Scorer::open(&f.run("sdim"), &f.enc("sdim")).unwrap();
    let ids: Vec<RawId> = load_all(&f.enc("sdim"), &mf.model)
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(ids.len(), 30);
    let cands: Vec<Candidate> = (0..6).map(|k| Candidate::item(RawId::Int(k))).collect();
    for (dir, n) in [(&two, 2usize), (&f.enc("sdim"), 3)] {
        let shards: Vec<Scorer> = (0..n)
            .map(|index| {
                let options = StoreOptions {
                    shard: Shard { index, count: n },
                    ..StoreOptions::default()
                };
                Scorer::open_with(&f.run("sdim"), dir, options).unwrap()
            })
            .collect();
        let mut served = 0;
        for id in &ids {
            let home = crc32fast::hash(&int(id.clone()).to_le_bytes()) as usize % n;
            for (i, s) in shards.iter().enumerate() {
                let got = s.score(&User::Id(id.clone()), &cands);
                if i == home {
                    served += 1;
                    let want = full.score(&User::Id(id.clone()), &cands).unwrap();
                    assert_eq!(got.unwrap(), want, "user {id}, shard {i}/{n}");
                } else {
                    let e = got.expect_err("another shard's user");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("user {id} belongs to shard {home}/{n}"))
                            && msg.contains(&format!("serves shard {i}/{n}")),
                        "{msg}"
                    );
                }
            }
        }
        assert_eq!(served, 30, "{n} shards");
        let counts: usize = shards.iter().map(Scorer::num_users).sum();
        assert_eq!(counts, 30, "{n} shards");
        assert!(shards.iter().all(|s| s.num_users() > 0), "{n} shards");
    }
}

/// Bucket sums held in f16 are the f32 sums each rounded to the nearest half (compared against
/// `half::f16::from_f32` per value), score within 1e-3 of f32, survive a reload, and a model
/// without bucket sums (ETA) is held exactly as encoded.
#[test]
fn f16_bucket_sums_are_the_rounded_f32_sums_and_score_close() {
    let f = fixture();
    let half = StoreOptions {
        buckets: Precision::F16,
        ..StoreOptions::default()
    };
    let cands: Vec<Candidate> = (0..8).map(|k| Candidate::item(RawId::Int(k))).collect();
    let s32 = Scorer::open(&f.run("sdim"), &f.enc("sdim")).unwrap();
    let s16 = Scorer::open_with(&f.run("sdim"), &f.enc("sdim"), half.clone()).unwrap();
    let ids: Vec<RawId> = load_all(&f.enc("sdim"), &f.model("sdim").model)
        .unwrap()
        .into_keys()
        .collect();
    let (mut worst, mut changed) = (0f32, 0usize);
    for round in 0..2 {
        for id in &ids {
            let (a, b) = (s32.encoding(id).unwrap(), s16.encoding(id).unwrap());
            assert_eq!(
                (&a.items, &a.cates, &a.codes),
                (&b.items, &b.cates, &b.codes)
            );
            assert_eq!(a.buckets.len(), b.buckets.len());
            for (x, y) in a.buckets.iter().zip(&b.buckets) {
                assert_eq!(x.len(), y.len());
                for (&v, &h) in x.iter().zip(y) {
                    assert_eq!(h, half::f16::from_f32(v).to_f32(), "user {id}");
                    changed += usize::from(h != v);
                }
            }
            let (p, q) = (
                s32.score(&User::Id(id.clone()), &cands).unwrap(),
                s16.score(&User::Id(id.clone()), &cands).unwrap(),
            );
            worst = worst.max(max_diff(&p, &q));
        }
        if round == 0 {
            assert_eq!(s16.reload(&f.enc("sdim")).unwrap(), 30);
            assert_eq!(*s16.options(), half);
        }
    }
    assert!(
        changed > 0,
        "no bucket sum was rounded: were they held in f16?"
    );
    assert!(worst <= 1e-3, "f16 buckets moved a probability by {worst}");
    let e32 = Scorer::open(&f.run("eta"), &f.enc("eta")).unwrap();
    let e16 = Scorer::open_with(&f.run("eta"), &f.enc("eta"), half.clone()).unwrap();
    for id in &ids {
        assert_eq!(*e32.encoding(id).unwrap(), *e16.encoding(id).unwrap());
    }
}

/// A scorer on the memory-mapped store answers exactly as the in-memory one (f32 and f16 sums,
/// codes, string ids, one shard), reuses its file while the parts are unchanged, builds a new
/// one (and drops the stale) after a re-encode, rebuilds a truncated file, and refuses a record
/// overwritten with garbage by naming the store file.
#[test]
fn the_mapped_store_scores_as_memory_and_is_rebuilt_when_stale_or_broken() {
    let f = fixture();
    let cands: Vec<Candidate> = (0..5).map(|k| Candidate::item(RawId::Int(k))).collect();
    let str_cands: Vec<Candidate> = (0..5)
        .map(|k| Candidate::item(RawId::Str((5000 + k).to_string())))
        .collect();
    let store = tempfile::tempdir().unwrap();
    for (name, data) in [
        ("sdim", &f.data),
        ("eta", &f.data),
        ("str_din", &f.str_data),
    ] {
        for (buckets, shard) in [
            (Precision::F32, Shard::ALL),
            (Precision::F16, Shard { index: 1, count: 2 }),
        ] {
            let mem = StoreOptions {
                shard,
                buckets,
                mapped: None,
                device: Default::default(),
            };
            let mapped = StoreOptions {
                mapped: Some(store.path().join(name)),
                ..mem.clone()
            };
            let a = Scorer::open_with(&f.run(name), &f.enc(name), mem).unwrap();
            let b = Scorer::open_with(&f.run(name), &f.enc(name), mapped).unwrap();
            assert_eq!(a.num_users(), b.num_users(), "{name}");
            let ds = Dataset::open(data).unwrap();
            let users = ds.vocab("user").unwrap();
            let mut served = 0;
            for i in 2..users.len() as u32 {
                let id = users.raw(i).unwrap();
                assert_eq!(a.encoding(&id), b.encoding(&id), "{name} user {id}");
                let c = if name == "str_din" {
                    &str_cands
                } else {
                    &cands
                };
                match (
                    a.score(&User::Id(id.clone()), c),
                    b.score(&User::Id(id.clone()), c),
                ) {
                    (Ok(x), Ok(y)) => {
                        assert_eq!(x, y, "{name} user {id}");
                        served += 1;
                    }
                    (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string()),
                    (x, y) => panic!("{name} user {id}: {x:?} vs {y:?}"),
                }
            }
            assert_eq!(served, a.num_users(), "{name}");
        }
    }
    // Reuse, then a re-encode: a new file, the stale one gone.
    let (_t, enc) = bare_copy(&f.enc("sdim"));
    let mf = f.model("sdim");
    encodings::encode_dataset(&mf, &f.data, &enc, Shard::ALL, false).unwrap();
    let dir = store.path().join("again");
    let opts = StoreOptions {
        mapped: Some(dir.clone()),
        ..StoreOptions::default()
    };
    let files = || -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        v.sort();
        v
    };
    let s1 = Scorer::open_with(&f.run("sdim"), &enc, opts.clone()).unwrap();
    let first = files();
    assert_eq!(first.len(), 1, "{first:?}");
    drop(Scorer::open_with(&f.run("sdim"), &enc, opts.clone()).unwrap());
    assert_eq!(files(), first, "an unchanged store is reused, not rebuilt");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::remove_file(enc.join(PART)).unwrap();
    encodings::encode_dataset(&mf, &f.data, &enc, Shard::ALL, false).unwrap();
    assert_eq!(s1.reload(&enc).unwrap(), 30);
    let second = files();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0].0, first[0].0, "a re-encode builds a new store");
    // A truncated store is a broken cache: rebuilt.
    let path = second[0].0.clone();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let s2 = Scorer::open_with(&f.run("sdim"), &enc, opts.clone()).unwrap();
    assert_eq!(s2.num_users(), 30);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    // A record overwritten (its behavior count made huge): refused, naming the store file.
    let bytes = std::fs::read(&path).unwrap();
    let at = u64::from_le_bytes(bytes[bytes.len() - 16..bytes.len() - 8].try_into().unwrap());
    let (kind, first_id) = (bytes[at as usize], &bytes[at as usize + 1..at as usize + 9]);
    assert_eq!(kind, 0, "integer ids");
    let uid = RawId::Int(i64::from_le_bytes(first_id.try_into().unwrap()));
    let rec = u64::from_le_bytes(bytes[at as usize + 9..at as usize + 17].try_into().unwrap());
    let mut broken = bytes.clone();
    broken[rec as usize + 4..rec as usize + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &broken).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let s3 = Scorer::open_with(&f.run("sdim"), &enc, opts).unwrap();
    let e = s3.score(&User::Id(uid.clone()), &cands).unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { path: p, .. } if *p == path)
            && e.to_string().contains(&format!("record of user {uid}")),
        "{e}"
    );
    let (status, body) =
        s3.handle_json(format!(r#"{{"user": {uid}, "candidates": [1]}}"#).as_bytes());
    assert_eq!(status, 500, "{body}");
}

/// Writes `batch` as the one part of a copy of the `name` encodings (original footer).
fn bad_part(f: &Fixture, name: &str, batch: &RecordBatch) -> (tempfile::TempDir, PathBuf) {
    let (t, dir) = bare_copy(&f.enc(name));
    let (_, kv) = read_raw(&f.enc(name).join(PART));
    write_raw(&dir.join(PART), batch, &kv);
    (t, dir)
}

/// Columns missing or of the wrong type, nulls, negative indices, lists that do not fit the
/// layout (lengths, max_len, code words, bucket floats), non-finite bucket sums, a user index
/// below 1: each a Schema or Value error naming the column (and row) of the part.
#[test]
fn read_part_refuses_bad_columns_and_cells() {
    let f = fixture();
    type Check = Box<dyn Fn(Result<Vec<EncodedUser>>)>;
    fn chk(f: impl Fn(Result<Vec<EncodedUser>>) + 'static) -> Check {
        Box::new(f)
    }
    type Case = (&'static str, RecordBatch, Check);
    for name in ["sdim", "eta"] {
        let mf = f.model(name);
        let layout = mf.model.encoding_layout();
        let (b, _) = read_raw(&f.enc(name).join(PART));
        let r = 3usize;
        let items = lists::<Int32Type>(&b, "items");
        let cates = lists::<Int32Type>(&b, "cates");
        let l = items[r].as_ref().unwrap().len();
        assert_eq!(l, MAX_LEN);
        let set_items = |f: &dyn Fn(&mut Vec<i32>)| {
            let mut v = items.clone();
            f(v[r].as_mut().unwrap());
            with_col(&b, "items", Some(list_of::<Int32Type>(&v)))
        };
        let user: Vec<Option<i32>> = b
            .column_by_name("user")
            .unwrap()
            .as_primitive::<Int32Type>()
            .iter()
            .collect();
        let with_user = |x: Option<i32>| {
            let mut u = user.clone();
            u[r] = x;
            with_col(&b, "user", Some(Arc::new(Int32Array::from(u)) as ArrayRef))
        };
        let ids: Vec<Option<i64>> = b
            .column_by_name("user_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .iter()
            .collect();
        let n = b.num_rows();
        let mut cases: Vec<Case> = vec![
            (
                "no cates",
                with_col(&b, "cates", None),
                chk(|e| expect_schema(e, "cates", "missing from the encodings file")),
            ),
            (
                "float ids",
                with_col(
                    &b,
                    "user_id",
                    Some(Arc::new(Float64Array::from(vec![1.5; n])) as ArrayRef),
                ),
                chk(|e| expect_schema(e, "user_id", "has type Float64; expected int64 or utf8")),
            ),
            (
                "int64 user",
                with_col(
                    &b,
                    "user",
                    Some(Arc::new(Int64Array::from(vec![2i64; n])) as ArrayRef),
                ),
                chk(|e| expect_schema(e, "user", "has type Int64; expected Int32")),
            ),
            (
                "string last_ts",
                with_col(
                    &b,
                    "last_ts",
                    Some(Arc::new(StringArray::from(vec!["x"; n])) as ArrayRef),
                ),
                chk(|e| expect_schema(e, "last_ts", "expected int64")),
            ),
            (
                "null user_id",
                {
                    let mut v = ids.clone();
                    v[r] = None;
                    with_col(
                        &b,
                        "user_id",
                        Some(Arc::new(Int64Array::from(v)) as ArrayRef),
                    )
                },
                chk(move |e| expect_value(e, r, "user_id", "null")),
            ),
            (
                "null user",
                with_user(None),
                // The row is not checked here: see `a_null_user_index_names_its_row`.
                chk(|e| match e {
                    Err(Error::Value { column, reason, .. }) => {
                        assert_eq!(column, "user");
                        assert_eq!(reason, "null");
                    }
                    other => panic!("expected Error::Value, got {other:?}"),
                }),
            ),
            (
                "user index 0",
                with_user(Some(0)),
                chk(move |e| expect_value(e, r, "user", "user index 0 (1 = unknown, 2.. known)")),
            ),
            (
                "null items row",
                {
                    let mut v = items.clone();
                    v[r] = None;
                    with_col(&b, "items", Some(list_of::<Int32Type>(&v)))
                },
                chk(move |e| expect_value(e, r, "items", "null")),
            ),
            (
                "items not a list",
                with_col(
                    &b,
                    "items",
                    Some(Arc::new(Int32Array::from(vec![2; n])) as ArrayRef),
                ),
                chk(|e| expect_schema(e, "items", "has type Int32; expected a list")),
            ),
            (
                "int64 items",
                {
                    let v: Vec<Option<Vec<i64>>> = items
                        .iter()
                        .map(|x| x.as_ref().map(|x| x.iter().map(|&y| y as i64).collect()))
                        .collect();
                    with_col(&b, "items", Some(list_of::<Int64Type>(&v)))
                },
                chk(|e| expect_schema(e, "items", "has elements of type Int64; expected int32")),
            ),
            (
                "negative item",
                set_items(&|v| v[7] = -4),
                chk(move |e| expect_value(e, r, "items", "negative index -4")),
            ),
            (
                "negative cate",
                {
                    let mut v = cates.clone();
                    v[r].as_mut().unwrap()[0] = -1;
                    with_col(&b, "cates", Some(list_of::<Int32Type>(&v)))
                },
                chk(move |e| expect_value(e, r, "cates", "negative index -1")),
            ),
            (
                "one item short",
                set_items(&|v| {
                    v.pop();
                }),
                chk(move |e| {
                    expect_value(
                        e,
                        r,
                        "items",
                        &format!(
                            "{} items, {l} cates (at most max_len = {MAX_LEN} each)",
                            l - 1
                        ),
                    )
                }),
            ),
            (
                "longer than max_len",
                {
                    let (mut vi, mut vc) = (items.clone(), cates.clone());
                    vi[r].as_mut().unwrap().push(2);
                    vc[r].as_mut().unwrap().push(2);
                    let b = with_col(&b, "items", Some(list_of::<Int32Type>(&vi)));
                    with_col(&b, "cates", Some(list_of::<Int32Type>(&vc)))
                },
                chk(move |e| {
                    expect_value(
                        e,
                        r,
                        "items",
                        &format!(
                            "{0} items, {0} cates (at most max_len = {MAX_LEN} each)",
                            l + 1
                        ),
                    )
                }),
            ),
        ];
        if name == "sdim" {
            let bk = lists::<Float32Type>(&b, "buckets_0");
            let floats = layout.buckets[0];
            assert_eq!(bk[r].as_ref().unwrap().len(), floats);
            let set_bk = |f: &dyn Fn(&mut Vec<f32>)| {
                let mut v = bk.clone();
                f(v[r].as_mut().unwrap());
                with_col(&b, "buckets_0", Some(list_of::<Float32Type>(&v)))
            };
            assert!(b.column_by_name("codes").is_none() && b.column_by_name("buckets_1").is_none());
            cases.extend([
                (
                    "no buckets",
                    with_col(&b, "buckets_0", None),
                    chk(|e| expect_schema(e, "buckets_0", "missing from the encodings file")),
                ),
                (
                    "one float short",
                    set_bk(&|v| {
                        v.pop();
                    }),
                    chk(move |e| {
                        expect_value(
                            e,
                            r,
                            "buckets_0",
                            &format!(
                                "{} floats; the model's bucket table has {floats}",
                                floats - 1
                            ),
                        )
                    }),
                ),
                (
                    "NaN",
                    set_bk(&|v| v[5] = f32::NAN),
                    chk(move |e| expect_value(e, r, "buckets_0", "non-finite value NaN")),
                ),
                (
                    "infinity",
                    set_bk(&|v| v[0] = f32::NEG_INFINITY),
                    chk(move |e| expect_value(e, r, "buckets_0", "non-finite value -inf")),
                ),
                (
                    "float64 buckets",
                    {
                        let v: Vec<Option<Vec<f64>>> = bk
                            .iter()
                            .map(|x| x.as_ref().map(|x| x.iter().map(|&y| y as f64).collect()))
                            .collect();
                        with_col(&b, "buckets_0", Some(list_of::<Float64Type>(&v)))
                    },
                    chk(|e| expect_schema(e, "buckets_0", "expected float32 elements")),
                ),
            ]);
        } else {
            assert_eq!(layout.code_words, 1);
            let codes = lists::<UInt64Type>(&b, "codes");
            assert_eq!(codes[r].as_ref().unwrap().len(), l);
            cases.extend([
                (
                    "no codes",
                    with_col(&b, "codes", None),
                    chk(|e| expect_schema(e, "codes", "missing from the encodings file")),
                ),
                (
                    "one code short",
                    {
                        let mut v = codes.clone();
                        v[r].as_mut().unwrap().pop();
                        with_col(&b, "codes", Some(list_of::<UInt64Type>(&v)))
                    },
                    chk(move |e| {
                        expect_value(
                            e,
                            r,
                            "codes",
                            &format!("{} words for {l} behaviors (1 each)", l - 1),
                        )
                    }),
                ),
                (
                    "int64 codes",
                    {
                        let v: Vec<Option<Vec<i64>>> = codes
                            .iter()
                            .map(|x| x.as_ref().map(|x| x.iter().map(|&y| y as i64).collect()))
                            .collect();
                        with_col(&b, "codes", Some(list_of::<Int64Type>(&v)))
                    },
                    chk(|e| expect_schema(e, "codes", "expected uint64 elements")),
                ),
            ]);
        }
        // Control: the batch as read, rewritten the same way, loads.
        let (_t, dir) = bad_part(f, name, &b);
        assert_eq!(read_rows(&dir.join(PART), &layout).unwrap().len(), 30);
        for (what, batch, check) in &cases {
            let (_t, dir) = bad_part(f, name, batch);
            eprintln!("{name}: {what}");
            check(read_rows(&dir.join(PART), &layout));
            // The Scorer reads parts through the same reader: the same error.
            let e = Scorer::open(&f.run(name), &dir).map(|_| ()).unwrap_err();
            let direct = read_rows(&dir.join(PART), &layout).unwrap_err();
            assert_eq!(e.to_string(), direct.to_string(), "{name}: {what}");
        }
    }
}

/// A null user index is an Error::Value naming its row, as every other null is.
#[test]
fn a_null_user_index_names_its_row() {
    let f = fixture();
    let layout = f.model("sdim").model.encoding_layout();
    let (b, _) = read_raw(&f.enc("sdim").join(PART));
    let mut u: Vec<Option<i32>> = b
        .column_by_name("user")
        .unwrap()
        .as_primitive::<Int32Type>()
        .iter()
        .collect();
    u[3] = None;
    let (_t, dir) = bad_part(
        f,
        "sdim",
        &with_col(&b, "user", Some(Arc::new(Int32Array::from(u)) as ArrayRef)),
    );
    expect_value(read_rows(&dir.join(PART), &layout), 3, "user", "null");
}

/// A part whose user ids are strings while the vocabulary's are integers cannot be served as
/// written: the Scorer refuses it naming `user_id`, or serves its users by their ids.
#[test]
fn user_ids_of_another_type_than_the_vocabulary_are_refused_or_found() {
    let f = fixture();
    let (b, _) = read_raw(&f.enc("sdim").join(PART));
    let ids: Vec<i64> = b
        .column_by_name("user_id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let text: Vec<String> = ids.iter().map(|x| x.to_string()).collect();
    let (_t, dir) = bad_part(
        f,
        "sdim",
        &with_col(
            &b,
            "user_id",
            Some(Arc::new(StringArray::from(text)) as ArrayRef),
        ),
    );
    match Scorer::open(&f.run("sdim"), &dir) {
        Err(e) => expect_schema(Err::<(), _>(e), "user_id", "utf8"),
        Ok(s) => {
            let found = ids
                .iter()
                .filter(|&&x| s.encoding(&RawId::Int(x)).is_some())
                .count();
            assert_eq!(found, ids.len(), "{} of {} users found", found, ids.len());
        }
    }
}

/// `b` with item index `bad` at row 3 and position `at` of its items.
fn with_item(b: &RecordBatch, at: usize, bad: i32) -> RecordBatch {
    let mut items = lists::<Int32Type>(b, "items");
    items[3].as_mut().unwrap()[at] = bad;
    with_col(b, "items", Some(list_of::<Int32Type>(&items)))
}

/// An item index outside the model's table, in the window served or in the part kept for
/// updates, never yields a score: it is refused when loading or when scoring, by name, and
/// never panics.
#[test]
fn an_out_of_range_item_index_never_yields_a_score() {
    let f = fixture();
    let mf = f.model("din");
    let rows = mf.model.vocab().items as i32;
    let (b, _) = read_raw(&f.enc("din").join(PART));
    let id = RawId::Int(
        b.column_by_name("user_id")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(3),
    );
    let items = Dataset::open(&f.data).unwrap().vocab("item").unwrap();
    let cands = [Candidate::item(items.raw(2).unwrap())];
    // Position 19 is in the served window (the last 5), position 0 is not.
    for at in [19usize, 0] {
        let (_t, dir) = bad_part(f, "din", &with_item(&b, at, rows + 7));
        match Scorer::open(&f.run("din"), &dir) {
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains(PART) && m.contains(&format!("{}", rows + 7)),
                    "{m}"
                );
            }
            Ok(s) => {
                if at == 19 {
                    expect_invalid(
                        s.score(&User::Id(id.clone()), &cands),
                        &format!(
                            "item index {} is outside the model's table of {rows} rows",
                            rows + 7
                        ),
                    );
                } else {
                    // Outside the served window the index is never read by scoring; folding new
                    // behaviors into that encoding must refuse it.
                    let row = read_rows(&dir.join(PART), &mf.model.encoding_layout())
                        .unwrap()
                        .into_iter()
                        .find(|r| r.id == id)
                        .unwrap();
                    expect_invalid(
                        mf.model.extend_encoding(&row.enc, &[2], &[2]),
                        &format!("item index {} is outside", rows + 7),
                    );
                }
            }
        }
    }
}

/// An encodings file holding an item index outside the checkpoint's table is corrupt: the
/// Scorer refuses it when it loads (naming the file, row and column) rather than serving a user
/// whose every request then fails.
#[test]
fn an_out_of_range_item_index_is_refused_at_load() {
    let f = fixture();
    let mf = f.model("din");
    let rows = mf.model.vocab().items as i32;
    let (b, _) = read_raw(&f.enc("din").join(PART));
    let (_t, dir) = bad_part(f, "din", &with_item(&b, 19, rows + 7));
    expect_value(
        load_all(&dir, &mf.model),
        3,
        "items",
        &format!("{}", rows + 7),
    );
    assert!(Scorer::open(&f.run("din"), &dir).is_err());
}

/// `encode` refuses a dataset with more items than the checkpoint's table, one whose
/// vocabularies are not the checkpoint's (same sizes), and a users.parquet with an index out of
/// its vocabulary, naming what is wrong; nothing is served from a failed encode.
#[test]
fn encode_refuses_a_dataset_of_other_vocabularies_or_sizes() {
    let f = fixture();
    let mf = f.model("sdim");
    let tmp = tempfile::tempdir().unwrap();
    // Larger vocabularies: another synthetic log with more items.
    let cfg = SynthConfig {
        users: 30,
        items: 400,
        cates: 6,
        len: 40,
        seed: 22,
    };
    let events = write_synth(&cfg, &tmp.path().join("log")).unwrap();
    let big = tmp.path().join("big");
    prepare(&events, &big, &PrepareConfig::default()).unwrap();
    let n_items = Dataset::open(&big).unwrap().meta.n_items;
    let have = mf.model.vocab().items;
    assert!(n_items > have, "{n_items} vs {have}");
    let out = tmp.path().join("out");
    expect_invalid(
        encodings::encode_dataset(&mf, &big, &out, Shard::ALL, false),
        &format!("the `item` vocabulary has {n_items} entries but the checkpoint's table has {have} rows: not the checkpoint's data"),
    );
    assert!(!out.join(PART).exists());
    // Same sizes, other vocabularies: the user ids in reverse order.
    let copy = |to: &Path| {
        std::fs::create_dir_all(to.join("vocab")).unwrap();
        for file in crate::common::PREPARED_FILES {
            std::fs::copy(f.data.join(file), to.join(file)).unwrap();
        }
    };
    let other = tmp.path().join("other");
    copy(&other);
    let users = Vocab::read(&other.join("vocab/user.parquet")).unwrap();
    let mut raw: Vec<i64> = users.int_ids().unwrap().to_vec();
    raw.reverse();
    Vocab::from_ints(raw)
        .write(&other.join("vocab/user.parquet"), None)
        .unwrap();
    let fp = model_file::vocab_fingerprint(&other).unwrap();
    expect_invalid(
        encodings::encode_dataset(&mf, &other, &out, Shard::ALL, false),
        &format!("vocabularies (fingerprint {fp}) are not the ones"),
    );
    assert!(!out.join(PART).exists());
    // A users.parquet row with an item index past the vocabulary, or a user index below 2.
    let meta = Dataset::open(&f.data).unwrap().meta;
    let (b, _) = read_raw(&f.data.join("users.parquet"));
    let bad_rows = tmp.path().join("bad_rows");
    copy(&bad_rows);
    let mut items = lists::<Int32Type>(&b, "items");
    items[4].as_mut().unwrap()[2] = meta.n_items as i32;
    write_raw(
        &bad_rows.join("users.parquet"),
        &with_col(&b, "items", Some(list_of::<Int32Type>(&items))),
        &[],
    );
    let users_file =
        |r: Result<encodings::EncodeSummary>, row: usize, col: &str, needle: &str| match r {
            Err(Error::Value {
                path,
                row: at,
                column,
                reason,
            }) => {
                assert!(path.ends_with("users.parquet"), "{}", path.display());
                assert_eq!((at, column.as_str()), (row, col), "{reason}");
                assert!(
                    reason.contains(needle),
                    "`{reason}` does not say `{needle}`"
                );
            }
            other => panic!("expected Error::Value ({needle}), got {other:?}"),
        };
    // The dataset reader's own error, as `Dataset::open` gives it (one reader for both).
    match encodings::encode_dataset(&mf, &bad_rows, &out, Shard::ALL, false) {
        Err(Error::IdOutOfRange {
            path,
            row,
            field,
            id,
            vocab,
        }) => {
            assert!(path.ends_with("users.parquet"), "{}", path.display());
            assert_eq!(
                (row, field.as_str(), id, vocab),
                (4, "item", meta.n_items as i64, meta.n_items)
            );
        }
        other => panic!("expected Error::IdOutOfRange, got {other:?}"),
    }
    assert_eq!(
        Dataset::open(&bad_rows)
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        encodings::encode_dataset(&mf, &bad_rows, &out, Shard::ALL, false)
            .unwrap_err()
            .to_string()
    );
    let mut user: Vec<i32> = b
        .column_by_name("user")
        .unwrap()
        .as_primitive::<Int32Type>()
        .values()
        .to_vec();
    user[6] = 1;
    write_raw(
        &bad_rows.join("users.parquet"),
        &with_col(
            &b,
            "user",
            Some(Arc::new(Int32Array::from(user)) as ArrayRef),
        ),
        &[],
    );
    users_file(
        encodings::encode_dataset(&mf, &bad_rows, &out, Shard::ALL, false),
        6,
        "user",
        "user index 1 is reserved (0 = padding, 1 = unknown)",
    );
    assert!(!out.join(PART).exists());
}

// ---------------------------------------------------------------------------------------------
// 3. The Scorer's request options
// ---------------------------------------------------------------------------------------------

/// A candidate's explicit category replaces the item's own (an unknown raw category maps to the
/// unknown index), as eval scores the same (item, category) pairs.
#[test]
fn an_explicit_candidate_category_replaces_the_items_own() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let hist = Arc::new(ds.histories.clone());
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    let item_cates = ds.item_cates().unwrap();
    let n_cates = ds.meta.n_cates as u32;
    let scorer = Scorer::open(&f.run("din"), &f.enc("din")).unwrap();
    let mf = f.model("din");
    let u = 7u32;
    let id = users.raw(u).unwrap();
    // Items 2..12, each with a category other than its own; one with an unseen category; an
    // unseen item with a known category.
    let mut it: Vec<u32> = (2..12).collect();
    let mut ct: Vec<u32> = it
        .iter()
        .map(|&i| 2 + (item_cates[i as usize] - 2 + 1) % (n_cates - 2))
        .collect();
    let mut cands: Vec<Candidate> = it
        .iter()
        .zip(&ct)
        .map(|(&i, &c)| Candidate {
            item: items.raw(i).unwrap(),
            cate: Some(cates.raw(c).unwrap()),
        })
        .collect();
    assert!(it
        .iter()
        .zip(&ct)
        .all(|(&i, &c)| item_cates[i as usize] != c));
    cands.push(Candidate {
        item: items.raw(3).unwrap(),
        cate: Some(RawId::Int(-999)),
    });
    it.push(3);
    ct.push(UNKNOWN);
    cands.push(Candidate {
        item: RawId::Int(-5),
        cate: Some(cates.raw(2).unwrap()),
    });
    it.push(UNKNOWN);
    ct.push(2);
    let want = eval_probs(&mf.model, &hist, u, hist.len_of(u), &it, &ct);
    let got = scorer.score(&User::Id(id.clone()), &cands).unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{got:?} vs {want:?}");
    // The category matters: the items' own categories score otherwise.
    let own: Vec<Candidate> = (2..12)
        .map(|i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    let by_own = scorer.score(&User::Id(id), &own).unwrap();
    assert!(
        max_diff(&by_own, &got[..10]) > 1e-4,
        "categories had no effect"
    );
}

/// A raw history without categories takes the items' own (the unknown item's being the
/// vocabulary's), and only its last max_len behaviors count, as eval of the whole history.
#[test]
fn a_history_without_categories_scores_with_the_items_own() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (items, cates) = (ds.vocab("item").unwrap(), ds.vocab("cate").unwrap());
    let item_cates = ds.item_cates().unwrap();
    let n_items = ds.meta.n_items as u32;
    for name in ["din", "sdim", "eta"] {
        let scorer = Scorer::open(&f.run(name), &f.enc(name)).unwrap();
        let mf = f.model(name);
        // 30 behaviors (past max_len = 20), one of an unseen item.
        let hi: Vec<u32> = (0..30u32)
            .map(|k| {
                if k == 25 {
                    UNKNOWN
                } else {
                    2 + (k * 11) % (n_items - 2)
                }
            })
            .collect();
        let hc: Vec<u32> = hi.iter().map(|&i| item_cates[i as usize]).collect();
        let raw: Vec<RawId> = hi
            .iter()
            .map(|&i| items.raw(i).unwrap_or(RawId::Int(-31)))
            .collect();
        let cand_items: Vec<u32> = (2..n_items).step_by(3).collect();
        let cand_cates: Vec<u32> = cand_items.iter().map(|&i| item_cates[i as usize]).collect();
        let cands: Vec<Candidate> = cand_items
            .iter()
            .map(|&i| Candidate::item(items.raw(i).unwrap()))
            .collect();
        let want = eval_probs(
            &mf.model,
            &one_history(&hi, &hc),
            2,
            hi.len(),
            &cand_items,
            &cand_cates,
        );
        let no_cates = User::History {
            ts: None,
            id: None,
            items: raw.clone(),
            cates: None,
        };
        let got = scorer.score(&no_cates, &cands).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{name}: {got:?} vs {want:?}");
        // Given explicitly, the same categories score the same.
        let given = User::History {
            ts: None,
            id: None,
            items: raw.clone(),
            cates: Some(
                hc.iter()
                    .map(|&c| cates.raw(c).unwrap_or(RawId::Int(-32)))
                    .collect(),
            ),
        };
        assert_eq!(scorer.score(&given, &cands).unwrap(), got, "{name}");
        // Only the last max_len count: the first 10 behaviors do not change a score.
        let tail = User::History {
            ts: None,
            id: None,
            items: raw[10..].to_vec(),
            cates: None,
        };
        assert_eq!(scorer.score(&tail, &cands).unwrap(), got, "{name}");
        // An empty history scores too, as eval of a user without behaviors.
        let want0 = eval_probs(
            &mf.model,
            &one_history(&[], &[]),
            2,
            0,
            &cand_items,
            &cand_cates,
        );
        let empty = User::History {
            ts: None,
            id: None,
            items: vec![],
            cates: None,
        };
        assert!(
            max_diff(&scorer.score(&empty, &cands).unwrap(), &want0) < 1e-5,
            "{name}"
        );
    }
}

fn scores_of(body: &str) -> Vec<f32> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["scores"]
        .as_array()
        .unwrap_or_else(|| panic!("no scores in {body}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `"history"` requests through `handle_json`: with and without categories, with a `"user"`
/// beside it (the history is scored, not the user's encoding), as eval scores the history.
#[test]
fn json_history_requests_score_the_history() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    let item_cates = ds.item_cates().unwrap();
    let scorer = Scorer::open(&f.run("sdim"), &f.enc("sdim")).unwrap();
    let mf = f.model("sdim");
    let hi: Vec<u32> = vec![4, 9, 9, 2, 17, 30, 5, 12];
    let hc: Vec<u32> = vec![2, 3, 2, 4, 5, 2, 3, 4];
    let raw_i = |i: u32| int(items.raw(i).unwrap());
    let raw_c = |c: u32| int(cates.raw(c).unwrap());
    let cand: Vec<u32> = vec![3, 8, 21, 40];
    let cand_c: Vec<u32> = cand.iter().map(|&i| item_cates[i as usize]).collect();
    let cands_json = format!(
        "[{}, {{\"item\": {}}}, \"{}\", {{\"item\": {}, \"cate\": {}}}]",
        raw_i(3),
        raw_i(8),
        raw_i(21),
        raw_i(40),
        raw_c(cand_c[3])
    );
    let list = |v: Vec<i64>| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let items_json = list(hi.iter().map(|&i| raw_i(i)).collect());
    let cates_json = list(hc.iter().map(|&c| raw_c(c)).collect());
    let want = eval_probs(
        &mf.model,
        &one_history(&hi, &hc),
        2,
        hi.len(),
        &cand,
        &cand_c,
    );
    let uid = int(users.raw(5).unwrap());
    let by_user = scorer
        .score(
            &User::Id(RawId::Int(uid)),
            &cand
                .iter()
                .map(|&i| Candidate::item(items.raw(i).unwrap()))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    for body in [
        format!(
            r#"{{"history": {{"items": [{items_json}], "cates": [{cates_json}]}}, "candidates": {cands_json}}}"#
        ),
        format!(
            r#"{{"user": {uid}, "history": {{"items": [{items_json}], "cates": [{cates_json}]}}, "candidates": {cands_json}}}"#
        ),
    ] {
        let (code, out) = scorer.handle_json(body.as_bytes());
        assert_eq!(code, 200, "{body} → {out}");
        let got = scores_of(&out);
        assert!(max_diff(&got, &want) < 1e-5, "{body}: {got:?} vs {want:?}");
        assert!(
            max_diff(&got, &by_user) > 1e-4,
            "{body}: scored the user's encoding"
        );
    }
    // Without categories: the items' own.
    let own: Vec<u32> = hi.iter().map(|&i| item_cates[i as usize]).collect();
    assert_ne!(own, hc);
    let want_own = eval_probs(
        &mf.model,
        &one_history(&hi, &own),
        2,
        hi.len(),
        &cand,
        &cand_c,
    );
    let body = format!(r#"{{"history": {{"items": [{items_json}]}}, "candidates": {cands_json}}}"#);
    let (code, out) = scorer.handle_json(body.as_bytes());
    assert_eq!(code, 200, "{out}");
    assert!(max_diff(&scores_of(&out), &want_own) < 1e-5, "{out}");
    // A history field the format does not have is a 400 naming it.
    let body = r#"{"history": {"items": [1], "times": [3]}, "candidates": [1]}"#;
    let (code, out) = scorer.handle_json(body.as_bytes());
    assert_eq!(code, 400, "{out}");
    assert!(
        out.contains("unknown field") && out.contains("times"),
        "{out}"
    );
    // Times on a model without the time field are ignored, as the items' own order is kept.
    let body = format!(
        r#"{{"history": {{"items": [{items_json}], "ts": [{}]}}, "candidates": {cands_json}, "time": 99}}"#,
        (0..items_json.split(',').count())
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let (code, out) = scorer.handle_json(body.as_bytes());
    assert_eq!(code, 200, "{out}");
    assert!(max_diff(&scores_of(&out), &want_own) < 1e-5, "{out}");
}

/// A dataset whose raw ids are strings of digits: number ids in requests (users, items,
/// categories, history items) find the same entries the strings do, and score as eval.
#[test]
fn number_ids_find_the_entries_of_a_string_vocabulary() {
    let f = fixture();
    let ds = Dataset::open(&f.str_data).unwrap();
    let hist = Arc::new(ds.histories.clone());
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    assert!(users.is_string() && items.is_string() && cates.is_string());
    let item_cates = ds.item_cates().unwrap();
    let scorer = Scorer::open(&f.run("str_din"), &f.enc("str_din")).unwrap();
    assert_eq!(scorer.num_users(), 12);
    let mf = f.model("str_din");
    let digits = |id: RawId| -> i64 {
        match id {
            RawId::Str(s) => s.parse().unwrap(),
            RawId::Int(x) => panic!("a string vocabulary gave {x}"),
        }
    };
    let u = 6u32;
    let uid = digits(users.raw(u).unwrap());
    assert!(scorer.encoding(&RawId::Int(uid)).is_some());
    assert_eq!(
        scorer.encoding(&RawId::Int(uid)),
        scorer.encoding(&RawId::Str(uid.to_string()))
    );
    let cand: Vec<u32> = vec![2, 5, 9, 13];
    let other_cate = 2 + (item_cates[13] - 2 + 1) % (ds.meta.n_cates as u32 - 2);
    let cand_c: Vec<u32> = vec![item_cates[2], item_cates[5], item_cates[9], other_cate];
    let (i2, i5, i9, i13) = (
        digits(items.raw(2).unwrap()),
        digits(items.raw(5).unwrap()),
        digits(items.raw(9).unwrap()),
        digits(items.raw(13).unwrap()),
    );
    let c = digits(cates.raw(other_cate).unwrap());
    let want = eval_probs(&mf.model, &hist, u, hist.len_of(u), &cand, &cand_c);
    let as_numbers = format!(
        r#"{{"user": {uid}, "candidates": [{i2}, {{"item": {i5}}}, {i9}, {{"item": {i13}, "cate": {c}}}]}}"#
    );
    let as_strings = format!(
        r#"{{"user": "{uid}", "candidates": ["{i2}", {{"item": "{i5}"}}, "{i9}", {{"item": "{i13}", "cate": "{c}"}}]}}"#
    );
    let (code, numbers) = scorer.handle_json(as_numbers.as_bytes());
    assert_eq!(code, 200, "{numbers}");
    let (code, strings) = scorer.handle_json(as_strings.as_bytes());
    assert_eq!(code, 200, "{strings}");
    assert_eq!(scores_of(&numbers), scores_of(&strings));
    assert!(
        max_diff(&scores_of(&numbers), &want) < 1e-5,
        "{numbers} vs {want:?}"
    );
    // A history of number ids.
    let (hi, hc) = hist.get(3);
    let raw_hist: Vec<String> = hi
        .iter()
        .map(|&i| digits(items.raw(i).unwrap()).to_string())
        .collect();
    let want_h = eval_probs(&mf.model, &one_history(hi, hc), 2, hi.len(), &cand, &cand_c);
    let body = format!(
        r#"{{"history": {{"items": [{}]}}, "candidates": [{i2}, {i5}, {i9}, {{"item": {i13}, "cate": {c}}}]}}"#,
        raw_hist.join(", ")
    );
    let (code, out) = scorer.handle_json(body.as_bytes());
    assert_eq!(code, 200, "{out}");
    assert!(
        max_diff(&scores_of(&out), &want_h) < 1e-5,
        "{out} vs {want_h:?}"
    );
    // A number that is no user of the vocabulary is unknown.
    let (code, out) = scorer.handle_json(br#"{"user": 100, "candidates": [5000]}"#);
    assert_eq!(code, 404, "{out}");
    assert!(
        out.contains("unknown user 100: no encoding for it"),
        "{out}"
    );
}

/// MAX_CANDIDATES candidates are scored (each as it scores alone), one more is refused;
/// MAX_HISTORY behaviors are accepted (the last max_len count), one more is refused.
#[test]
fn request_limits_on_candidates_and_history() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items) = (ds.vocab("user").unwrap(), ds.vocab("item").unwrap());
    let item_cates = ds.item_cates().unwrap();
    let scorer = Scorer::open(&f.run("din"), &f.enc("din")).unwrap();
    let mf = f.model("din");
    let user = User::Id(users.raw(4).unwrap());
    let few: Vec<Candidate> = (2..9)
        .map(|i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    let alone = scorer.score(&user, &few).unwrap();
    let many: Vec<Candidate> = (0..MAX_CANDIDATES)
        .map(|k| few[k % few.len()].clone())
        .collect();
    let got = scorer.score(&user, &many).unwrap();
    assert_eq!(got.len(), MAX_CANDIDATES);
    let worst = got
        .iter()
        .enumerate()
        .map(|(k, p)| (p - alone[k % alone.len()]).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "a candidate scores {worst} off its score alone"
    );
    let mut too_many = many;
    too_many.push(few[0].clone());
    expect_invalid(
        scorer.score(&user, &too_many),
        &format!(
            "{} candidates (at most {MAX_CANDIDATES} per request)",
            MAX_CANDIDATES + 1
        ),
    );
    expect_invalid(scorer.score(&user, &[]), "no candidates to score");

    let n_items = ds.meta.n_items as u32;
    let idx = |k: usize| 2 + (k as u32 * 7) % (n_items - 2);
    let long: Vec<RawId> = (0..MAX_HISTORY)
        .map(|k| items.raw(idx(k)).unwrap())
        .collect();
    let hi: Vec<u32> = (MAX_HISTORY - MAX_LEN..MAX_HISTORY).map(idx).collect();
    let hc: Vec<u32> = hi.iter().map(|&i| item_cates[i as usize]).collect();
    let cand: Vec<u32> = (2..9).collect();
    let cand_c: Vec<u32> = cand.iter().map(|&i| item_cates[i as usize]).collect();
    let want = eval_probs(
        &mf.model,
        &one_history(&hi, &hc),
        2,
        hi.len(),
        &cand,
        &cand_c,
    );
    let mut h = User::History {
        ts: None,
        id: None,
        items: long,
        cates: None,
    };
    assert!(max_diff(&scorer.score(&h, &few).unwrap(), &want) < 1e-5);
    if let User::History { items, .. } = &mut h {
        items.push(few[0].item.clone());
    }
    expect_invalid(
        scorer.score(&h, &few),
        &format!(
            "{} behaviors in the history (at most {MAX_HISTORY})",
            MAX_HISTORY + 1
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. reload under concurrent scoring
// ---------------------------------------------------------------------------------------------

/// Threads score while another reloads the old and the updated encodings in turn: every answer
/// is entirely the old encodings' or entirely the new ones' (never a mix, never an error for a
/// user both hold), and readers see both.
#[test]
fn reload_while_scoring_gives_the_old_or_the_new_scores() {
    let f = fixture();
    let ds = Dataset::open(&f.data).unwrap();
    let (users, items, cates) = (
        ds.vocab("user").unwrap(),
        ds.vocab("item").unwrap(),
        ds.vocab("cate").unwrap(),
    );
    let item_cates = ds.item_cates().unwrap();
    let run = f.run("din");
    let mf = f.model("din");
    let t_max = *ds.histories.ts.iter().max().unwrap();
    // New behaviors for users 2..8 and a user never seen.
    let (mut eu, mut ei, mut ec, mut et) = (vec![], vec![], vec![], vec![]);
    for (u, uid) in (2..8u32)
        .map(|u| (u, int(users.raw(u).unwrap())))
        .chain([(0, -77)])
    {
        for k in 0..3u32 {
            let i = 2 + (u * 5 + k * 3) % 40;
            eu.push(uid);
            ei.push(int(items.raw(i).unwrap()));
            ec.push(int(cates.raw(item_cates[i as usize]).unwrap()));
            et.push(t_max + 1 + k as i64);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("new.parquet");
    write_events(&log, (eu, ei, ec, et));
    let (old_dir, new_dir) = (f.enc("din"), tmp.path().join("enc_new"));
    let s = encodings::update(&mf, &old_dir, &log, &PrepareConfig::default(), &new_dir).unwrap();
    assert_eq!((s.updated, s.added, s.users), (6, 1, 31));

    let cands: Vec<Candidate> = (2..20)
        .map(|i| Candidate::item(items.raw(i).unwrap()))
        .collect();
    let ids: Vec<RawId> = (2..12u32)
        .map(|u| users.raw(u).unwrap())
        .chain([RawId::Int(-77)])
        .collect();
    let (old, new) = (
        Scorer::open(&run, &old_dir).unwrap(),
        Scorer::open(&run, &new_dir).unwrap(),
    );
    let want: Vec<(Option<Vec<f32>>, Vec<f32>)> = ids
        .iter()
        .map(|id| {
            let o = old.score(&User::Id(id.clone()), &cands).ok();
            (o, new.score(&User::Id(id.clone()), &cands).unwrap())
        })
        .collect();
    for (k, (o, n)) in want.iter().enumerate() {
        match (k, o) {
            (0..=5, Some(o)) => assert!(
                max_diff(o, n) > 1e-4,
                "user {}: the update changed nothing",
                ids[k]
            ),
            (6..=9, Some(o)) => assert_eq!(o, n, "user {}", ids[k]),
            (10, None) => {}
            _ => panic!("user {}: old scores {o:?}", ids[k]),
        }
    }

    let scorer = Scorer::open(&run, &old_dir).unwrap();
    let readers_left = AtomicUsize::new(4);
    let stop = AtomicBool::new(false);
    let reloads = std::thread::scope(|s| {
        for t in 0..4usize {
            let (scorer, ids, want, cands) = (&scorer, &ids, &want, &cands);
            let (readers_left, stop) = (&readers_left, &stop);
            s.spawn(move || {
                let (mut saw_old, mut saw_new, mut k) = (false, false, t);
                let t0 = std::time::Instant::now();
                while !(saw_old && saw_new)
                    && t0.elapsed().as_secs() < 30
                    && !stop.load(Ordering::Relaxed)
                {
                    let i = k % ids.len();
                    k += 1;
                    let (o, n) = &want[i];
                    match scorer.score(&User::Id(ids[i].clone()), cands) {
                        Ok(got) => {
                            let is_new = max_diff(&got, n) < 1e-6;
                            let is_old = o.as_ref().is_some_and(|o| max_diff(&got, o) < 1e-6);
                            assert!(
                                is_old || is_new,
                                "user {}: {got:?} is neither {o:?} nor {n:?}",
                                ids[i]
                            );
                            if o.as_ref() != Some(n) {
                                saw_old |= is_old;
                                saw_new |= is_new;
                            }
                        }
                        Err(e) => {
                            assert!(o.is_none(), "user {}: {e}", ids[i]);
                            assert!(e.to_string().contains("unknown user -77"), "{e}");
                            saw_old = true;
                        }
                    }
                }
                readers_left.fetch_sub(1, Ordering::SeqCst);
                assert!(
                    saw_old && saw_new,
                    "reader {t} saw old {saw_old}, new {saw_new}"
                );
            });
        }
        let mut reloads = 0usize;
        while readers_left.load(Ordering::SeqCst) > 0 {
            let (dir, n) = if reloads.is_multiple_of(2) {
                (&new_dir, 31)
            } else {
                (&old_dir, 30)
            };
            let got = scorer.reload(dir);
            if !matches!(got, Ok(x) if x == n) {
                stop.store(true, Ordering::Relaxed);
                panic!("reload {reloads} of {}: {got:?}", dir.display());
            }
            reloads += 1;
        }
        reloads
    });
    assert!(reloads >= 2, "{reloads} reloads");
    assert_eq!(scorer.reload(&new_dir).unwrap(), 31);
    assert_eq!(
        (scorer.num_users(), scorer.encodings_dir()),
        (31, new_dir.clone())
    );
    for (id, (_, n)) in ids.iter().zip(&want) {
        assert_eq!(
            &scorer.score(&User::Id(id.clone()), &cands).unwrap(),
            n,
            "user {id}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. score_encoded / extend_encoding error paths
// ---------------------------------------------------------------------------------------------

/// Encodings that do not fit the model: code words of another count (ETA), more behaviors than
/// max_len, lists of different lengths, ids outside the tables, bucket tables of another layout
/// (SDIM), codes on a model without a Hamming search; each an InvalidArgument naming what does
/// not fit, from score_encoded and extend_encoding.
#[test]
fn score_encoded_and_extend_encoding_refuse_encodings_that_do_not_fit() {
    let (hist, _) = tiny_data();
    let (hi, hc) = hist.get(5);
    assert_eq!(hi.len(), 7);
    // ETA: one 64-bit word per behavior, max_len 6.
    let (_, eta) = tiny_model(Preset::Eta, "");
    assert_eq!(eta.encoding_layout().code_words, 1);
    let enc = eta.encode_user(5, hi, hc).unwrap();
    assert_eq!((enc.items.len(), enc.codes.len()), (6, 6));
    assert!(eta
        .score_encoded(&enc, &[2, 3], &[2, 3])
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    let mut short = enc.clone();
    short.codes.pop();
    expect_invalid(
        eta.score_encoded(&short, &[2], &[2]),
        "encoding: 5 code words for 6 behaviors",
    );
    expect_invalid(
        eta.extend_encoding(&short, &[2], &[2]),
        "encoding: 5 code words for 6 behaviors (1 each)",
    );
    let mut long = enc.clone();
    long.items.push(2);
    long.cates.push(2);
    long.codes.push(enc.codes[0]);
    for r in [
        eta.score_encoded(&long, &[2], &[2]).map(|_| ()),
        eta.extend_encoding(&long, &[2], &[2]).map(|_| ()),
    ] {
        expect_invalid(r, "encoding: 7 items and 7 categories (max_len 6)");
    }
    let mut uneven = enc.clone();
    uneven.cates.pop();
    for r in [
        eta.score_encoded(&uneven, &[2], &[2]).map(|_| ()),
        eta.extend_encoding(&uneven, &[2], &[2]).map(|_| ()),
    ] {
        expect_invalid(r, "encoding: 6 items and 5 categories (max_len 6)");
    }
    let mut outside = enc.clone();
    outside.cates[2] = 5;
    for r in [
        eta.score_encoded(&outside, &[2], &[2]).map(|_| ()),
        eta.extend_encoding(&outside, &[2], &[2]).map(|_| ()),
    ] {
        expect_invalid(r, "cate index 5 is outside the model's table of 5 rows");
    }
    // New behaviors that do not fit.
    expect_invalid(
        eta.extend_encoding(&enc, &[2, 3], &[2]),
        "2 items but 1 categories",
    );
    expect_invalid(
        eta.extend_encoding(&enc, &[12], &[2]),
        "item index 12 is outside the model's table of 12 rows",
    );

    // SDIM: one bucket table per aggregation (the attention's empty).
    let (_, sdim) = tiny_model(Preset::Sdim, "");
    let lay = sdim.encoding_layout();
    let enc = sdim.encode_user(5, hi, hc).unwrap();
    let mut wide = enc.clone();
    wide.buckets[0].push(0.0);
    let msg = format!(
        "encoding: bucket tables of [{}, 0] floats; the model's are {:?}",
        lay.buckets[0] + 1,
        lay.buckets
    );
    expect_invalid(sdim.score_encoded(&wide, &[2], &[2]), &msg);
    expect_invalid(sdim.extend_encoding(&wide, &[2], &[2]), &msg);
    let mut one_table = enc.clone();
    one_table.buckets.pop();
    let msg = format!(
        "encoding: bucket tables of [{}] floats; the model's are {:?}",
        lay.buckets[0], lay.buckets
    );
    expect_invalid(sdim.score_encoded(&one_table, &[2], &[2]), &msg);
    expect_invalid(sdim.extend_encoding(&one_table, &[2], &[2]), &msg);
    // Codes on a model without a Hamming search: an update refuses them (scoring ignores them).
    let mut coded = enc.clone();
    coded.codes = vec![7; enc.items.len()];
    expect_invalid(
        sdim.extend_encoding(&coded, &[2], &[2]),
        "encoding: 6 code words for 6 behaviors (0 each)",
    );
    assert_eq!(
        sdim.score_encoded(&coded, &[2, 4], &[2, 3]).unwrap(),
        sdim.score_encoded(&enc, &[2, 4], &[2, 3]).unwrap()
    );
}

/// An encodings directory whose `vocab/` is another dataset's (here: the same sizes, the user
/// ids in another order, so only the fingerprint can tell) would map raw ids to the wrong rows:
/// `Scorer::open`, `Scorer::reload` and `encode --update` refuse it, naming the vocabulary
/// directory and the checkpoint, and a refused reload keeps serving the old encodings.
#[test]
fn a_vocab_dir_of_another_dataset_is_refused_by_open_reload_and_update() {
    let f = fixture();
    let (run, good) = (f.run("din"), f.enc("din"));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("enc");
    std::fs::create_dir_all(bad.join("vocab")).unwrap();
    for name in [
        PART,
        "vocab/user.parquet",
        "vocab/item.parquet",
        "vocab/cate.parquet",
    ] {
        std::fs::copy(good.join(name), bad.join(name)).unwrap();
    }
    let users = Vocab::read(&bad.join("vocab/user.parquet")).unwrap();
    let mut raw: Vec<i64> = users.int_ids().unwrap().to_vec();
    raw.reverse();
    Vocab::from_ints(raw)
        .write(&bad.join("vocab/user.parquet"), None)
        .unwrap();
    let refused = |r: Result<()>, what: &str| match r {
        Err(Error::InvalidArgument(m)) => {
            let vocab = bad.join("vocab").display().to_string();
            assert!(
                m.contains(&vocab)
                    && m.contains("best.safetensors")
                    && m.contains("are not the ones checkpoint"),
                "{what}: {m}"
            );
        }
        other => panic!("{what}: expected a refusal naming the vocabularies, got {other:?}"),
    };
    refused(Scorer::open(&run, &bad).map(|_| ()), "open");
    let scorer = Scorer::open(&run, &good).unwrap();
    let before = scorer.num_users();
    refused(scorer.reload(&bad).map(|_| ()), "reload");
    assert_eq!(
        (scorer.num_users(), scorer.encodings_dir()),
        (before, good.clone())
    );
    let log = tmp.path().join("new.parquet");
    write_log(
        &log,
        vec![
            ("user_id", vec![int(users.raw(2).unwrap())]),
            ("item_id", vec![1]),
            ("cate_id", vec![1]),
            ("ts", vec![i64::MAX / 2]),
        ],
    );
    let out = tmp.path().join("out");
    let mf = f.model("din");
    refused(
        encodings::update(&mf, &bad, &log, &PrepareConfig::default(), &out).map(|_| ()),
        "update",
    );
    assert!(!out.join(PART).exists());
    // The same files with the checkpoint's own vocabularies are accepted.
    for v in ["user", "item", "cate"] {
        let name = format!("vocab/{v}.parquet");
        std::fs::copy(good.join(&name), bad.join(&name)).unwrap();
    }
    assert_eq!(scorer.reload(&bad).unwrap(), before);
}
