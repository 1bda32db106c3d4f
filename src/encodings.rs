//! Encodings files: every user's [`UserEncoding`] precomputed offline (`lifelong encode`), read by
//! the serving [`crate::serve::Scorer`], and folded forward with new events without the history
//! (`lifelong encode --update`).
//!
//! An encodings directory holds
//! - `part-IIIII-of-NNNNN.parquet`: one row per user of shard `I` of `N` (users are split by a
//!   hash of their raw id, [`shard_of`], so `N` processes can encode a dataset side by side);
//! - `vocab/{user,item,cate}.parquet`: the vocabularies the model was trained with (copied from
//!   the prepared dataset), so serving maps raw ids exactly as training did.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `user_id` | int64 or utf8 | the raw user id |
//! | `user` | int32 | its vocabulary index (1 = unseen at prepare time) |
//! | `last_ts` | int64, nullable | the newest behavior's timestamp (null: no behavior) |
//! | `items`, `cates` | list\<int32\> | the last `max_len` behaviors' indices, oldest first |
//! | `codes` | list\<uint64\> | the Hamming search's SimHash codes, `words` per behavior (only for a Hamming search) |
//! | `buckets_<i>` | list\<float32\> | SDIM aggregation `i`'s bucket sums, dense `[G][2^τ][d]` row-major, empty buckets 0 (only for SDIM aggregations) |
//!
//! The footer's key-value metadata holds `lifelong.encodings_format`, `lifelong.model` (the
//! fingerprint of the weights, [`crate::model_file::model_fingerprint`]: encodings of other
//! weights are refused), `lifelong.layout` (JSON [`EncodingLayout`]) and `lifelong.shard`.
//! Every file is written atomically and streamed: memory is a batch of users, not the file.

use crate::data::io::{self, ParquetSink};
use crate::data::vocab::{RawId, Vocab};
use crate::data::{dataset, PrepareConfig};
use crate::model::{CtrModel, EncodingLayout, UserEncoding};
use crate::model_file::{self, ModelFile};
use crate::{Error, Result};
use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, Int32Array, Int64Array, ListArray, PrimitiveArray,
    RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The encodings layout this build writes and reads.
pub const FORMAT: u32 = 1;
/// Footer key: [`FORMAT`].
pub const KEY_FORMAT: &str = "lifelong.encodings_format";
/// Footer key: the model fingerprint.
pub const KEY_MODEL: &str = "lifelong.model";
/// Footer key: the [`EncodingLayout`] (JSON).
pub const KEY_LAYOUT: &str = "lifelong.layout";
/// Footer key: `I/N`.
pub const KEY_SHARD: &str = "lifelong.shard";
/// Users encoded per batch (and per row group).
const USERS_PER_BATCH: usize = 512;

/// One shard of the users: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: usize,
    /// At least 1.
    pub count: usize,
}

impl Shard {
    /// Every user.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` (0 ≤ I < N).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for anything else.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::InvalidArgument(format!("shard `{s}`: expected I/N with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The file of this shard: `part-IIIII-of-NNNNN.parquet`.
    pub fn file_name(&self) -> String {
        format!("part-{:05}-of-{:05}.parquet", self.index, self.count)
    }

    /// Whether user `id` belongs to this shard.
    pub fn owns(&self, id: &RawId) -> bool {
        shard_of(id, self.count) == self.index
    }
}

/// The shard of a raw user id among `count`: CRC-32 of its bytes (little-endian int64 or the
/// UTF-8 string) modulo `count`. Stable across runs, machines and vocabularies.
pub fn shard_of(id: &RawId, count: usize) -> usize {
    let mut h = crc32fast::Hasher::new();
    match id {
        RawId::Int(x) => h.update(&x.to_le_bytes()),
        RawId::Str(s) => h.update(s.as_bytes()),
    }
    h.finalize() as usize % count.max(1)
}

/// One row of an encodings file.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedUser {
    /// The raw user id.
    pub id: RawId,
    /// The newest behavior's timestamp.
    pub last_ts: Option<i64>,
    /// The encoding.
    pub enc: UserEncoding,
}

fn schema(layout: &EncodingLayout, str_ids: bool) -> SchemaRef {
    let list = |dt: DataType| DataType::List(Arc::new(Field::new_list_field(dt, false)));
    let mut fields = vec![
        Field::new(
            "user_id",
            if str_ids {
                DataType::Utf8
            } else {
                DataType::Int64
            },
            false,
        ),
        Field::new("user", DataType::Int32, false),
        Field::new("last_ts", DataType::Int64, true),
        Field::new("items", list(DataType::Int32), false),
        Field::new("cates", list(DataType::Int32), false),
    ];
    if layout.code_words > 0 {
        fields.push(Field::new("codes", list(DataType::UInt64), false));
    }
    for (i, &n) in layout.buckets.iter().enumerate() {
        if n > 0 {
            fields.push(Field::new(
                format!("buckets_{i}"),
                list(DataType::Float32),
                false,
            ));
        }
    }
    Arc::new(Schema::new(fields))
}

fn list_array<T: ArrowPrimitiveType>(rows: Vec<&[T::Native]>) -> Result<ArrayRef> {
    let mut offsets = OffsetBufferBuilder::<i32>::new(rows.len());
    for r in &rows {
        offsets.push_length(r.len());
    }
    let offsets = offsets.try_finish().map_err(|_| {
        Error::InvalidArgument("encodings: more than 2^31 values in a batch".into())
    })?;
    let values: PrimitiveArray<T> =
        PrimitiveArray::from_iter_values(rows.iter().flat_map(|r| r.iter().copied()));
    let field = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
    Ok(Arc::new(
        ListArray::try_new(field, offsets, Arc::new(values), None)
            .map_err(|e| Error::InvalidArgument(format!("encodings: {e}")))?,
    ))
}

fn to_batch(
    schema: &SchemaRef,
    layout: &EncodingLayout,
    users: &[EncodedUser],
) -> Result<RecordBatch> {
    let as_i32 = |v: &[u32]| -> Vec<i32> { v.iter().map(|&x| x as i32).collect() };
    let items: Vec<Vec<i32>> = users.iter().map(|u| as_i32(&u.enc.items)).collect();
    let cates: Vec<Vec<i32>> = users.iter().map(|u| as_i32(&u.enc.cates)).collect();
    let user_id: ArrayRef = if schema.field(0).data_type() == &DataType::Utf8 {
        Arc::new(StringArray::from_iter_values(users.iter().map(
            |u| match &u.id {
                RawId::Str(s) => s.clone(),
                RawId::Int(x) => x.to_string(),
            },
        )))
    } else {
        let ids: Result<Vec<i64>> = users
            .iter()
            .map(|u| match &u.id {
                RawId::Int(x) => Ok(*x),
                RawId::Str(s) => Err(Error::InvalidArgument(format!(
                    "user id `{s}` is a string but the encodings' user ids are integers"
                ))),
            })
            .collect();
        Arc::new(Int64Array::from(ids?))
    };
    let mut cols: Vec<ArrayRef> = vec![
        user_id,
        Arc::new(Int32Array::from_iter_values(
            users.iter().map(|u| u.enc.user as i32),
        )),
        Arc::new(Int64Array::from_iter(users.iter().map(|u| u.last_ts))),
        list_array::<Int32Type>(items.iter().map(Vec::as_slice).collect())?,
        list_array::<Int32Type>(cates.iter().map(Vec::as_slice).collect())?,
    ];
    if layout.code_words > 0 {
        cols.push(list_array::<UInt64Type>(
            users.iter().map(|u| u.enc.codes.as_slice()).collect(),
        )?);
    }
    for (i, &n) in layout.buckets.iter().enumerate() {
        if n > 0 {
            cols.push(list_array::<Float32Type>(
                users.iter().map(|u| u.enc.buckets[i].as_slice()).collect(),
            )?);
        }
    }
    RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| Error::InvalidArgument(format!("encodings: {e}")))
}

/// Reads the rows of one record batch of an encodings file (rows `row0..` of `path`), checked
/// against the layout: named errors for a missing or mistyped column, a null, a list of the
/// wrong length.
fn from_batch(
    path: &Path,
    row0: usize,
    layout: &EncodingLayout,
    batch: &RecordBatch,
) -> Result<Vec<EncodedUser>> {
    let col = |name: &str| -> Result<&ArrayRef> {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::schema(path, name, "missing from the encodings file"))
    };
    let no_nulls = |name: &str, a: &dyn Array| -> Result<()> {
        match (0..a.len()).find(|&r| a.is_null(r)) {
            Some(r) => Err(Error::value(path, row0 + r, name, "null")),
            None => Ok(()),
        }
    };
    let lists = |name: &str| -> Result<&ListArray> {
        let a = col(name)?;
        no_nulls(name, a.as_ref())?;
        a.as_list_opt::<i32>().ok_or_else(|| {
            Error::schema(
                path,
                name,
                format!("has type {}; expected a list", a.data_type()),
            )
        })
    };
    fn prim<'a, T: ArrowPrimitiveType>(
        path: &Path,
        name: &str,
        a: &'a ArrayRef,
    ) -> Result<&'a PrimitiveArray<T>> {
        if a.null_count() > 0 {
            return Err(Error::value(path, 0, name, "null values"));
        }
        a.as_primitive_opt::<T>().ok_or_else(|| {
            Error::schema(
                path,
                name,
                format!("has type {}; expected {}", a.data_type(), T::DATA_TYPE),
            )
        })
    }
    let ids = col("user_id")?;
    no_nulls("user_id", ids.as_ref())?;
    let raw: Vec<RawId> = match ids.data_type() {
        DataType::Int64 => ids
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&x| RawId::Int(x))
            .collect(),
        DataType::Utf8 => ids
            .as_string::<i32>()
            .iter()
            .map(|s| RawId::Str(s.unwrap_or_default().to_string()))
            .collect(),
        dt => {
            return Err(Error::schema(
                path,
                "user_id",
                format!("has type {dt}; expected int64 or utf8"),
            ))
        }
    };
    let user_a = col("user")?;
    let user = prim::<Int32Type>(path, "user", user_a)?;
    let last_a = col("last_ts")?;
    let last = last_a
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::schema(path, "last_ts", "expected int64"))?;
    let items = lists("items")?;
    let cates = lists("cates")?;
    let codes = if layout.code_words > 0 {
        Some(lists("codes")?)
    } else {
        None
    };
    let mut buckets = Vec::new();
    for (i, &n) in layout.buckets.iter().enumerate() {
        buckets.push(if n > 0 {
            Some(lists(&format!("buckets_{i}"))?)
        } else {
            None
        });
    }
    let ints = |l: &ListArray, name: &str, r: usize| -> Result<Vec<u32>> {
        let v = l.value(r);
        let v = v.as_primitive_opt::<Int32Type>().ok_or_else(|| {
            Error::schema(
                path,
                name,
                format!("has elements of type {}; expected int32", v.data_type()),
            )
        })?;
        if let Some(&bad) = v.values().iter().find(|&&x| x < 0) {
            return Err(Error::value(
                path,
                row0 + r,
                name,
                format!("negative index {bad}"),
            ));
        }
        Ok(v.values().iter().map(|&x| x as u32).collect())
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for (r, id) in raw.into_iter().enumerate() {
        let it = ints(items, "items", r)?;
        let ct = ints(cates, "cates", r)?;
        if it.len() != ct.len() || it.len() > layout.max_len {
            return Err(Error::value(
                path,
                row0 + r,
                "items",
                format!(
                    "{} items, {} cates (at most max_len = {} each)",
                    it.len(),
                    ct.len(),
                    layout.max_len
                ),
            ));
        }
        let cd = match codes {
            Some(l) => {
                let v = l.value(r);
                let v = v
                    .as_primitive_opt::<UInt64Type>()
                    .ok_or_else(|| Error::schema(path, "codes", "expected uint64 elements"))?;
                if v.len() != it.len() * layout.code_words {
                    return Err(Error::value(
                        path,
                        row0 + r,
                        "codes",
                        format!(
                            "{} words for {} behaviors ({} each)",
                            v.len(),
                            it.len(),
                            layout.code_words
                        ),
                    ));
                }
                v.values().to_vec()
            }
            None => Vec::new(),
        };
        let mut bk = Vec::with_capacity(buckets.len());
        for (i, b) in buckets.iter().enumerate() {
            bk.push(match b {
                Some(l) => {
                    let v = l.value(r);
                    let name = format!("buckets_{i}");
                    let v = v
                        .as_primitive_opt::<Float32Type>()
                        .ok_or_else(|| Error::schema(path, &name, "expected float32 elements"))?;
                    if v.len() != layout.buckets[i] {
                        return Err(Error::value(
                            path,
                            row0 + r,
                            &name,
                            format!(
                                "{} floats; the model's bucket table has {}",
                                v.len(),
                                layout.buckets[i]
                            ),
                        ));
                    }
                    if let Some(x) = v.values().iter().find(|x| !x.is_finite()) {
                        return Err(Error::value(
                            path,
                            row0 + r,
                            &name,
                            format!("non-finite value {x}"),
                        ));
                    }
                    v.values().to_vec()
                }
                None => Vec::new(),
            });
        }
        let u = user.value(r);
        if u < 1 {
            return Err(Error::value(
                path,
                row0 + r,
                "user",
                format!("user index {u} (1 = unknown, 2.. known)"),
            ));
        }
        out.push(EncodedUser {
            id,
            last_ts: (!last.is_null(r)).then(|| last.value(r)),
            enc: UserEncoding {
                user: u as u32,
                items: it,
                cates: ct,
                codes: cd,
                buckets: bk,
            },
        });
    }
    Ok(out)
}

/// The footer metadata an encodings file of `model` for `shard` carries.
fn footer(
    fingerprint: &str,
    layout: &EncodingLayout,
    shard: Shard,
) -> Result<Vec<(String, String)>> {
    Ok(vec![
        (KEY_FORMAT.into(), FORMAT.to_string()),
        (KEY_MODEL.into(), fingerprint.to_string()),
        (
            KEY_LAYOUT.into(),
            serde_json::to_string(layout).map_err(|e| Error::InvalidArgument(e.to_string()))?,
        ),
        (KEY_SHARD.into(), format!("{}/{}", shard.index, shard.count)),
    ])
}

/// Checks an encodings file's footer against the model; returns its shard.
///
/// # Errors
/// [`Error::Corrupt`] naming the file: another format, missing keys, or encodings of other
/// weights or another layout.
pub fn check_footer(path: &Path, fingerprint: &str, layout: &EncodingLayout) -> Result<Shard> {
    let kv = io::parquet_key_values(path)?;
    let get = |k: &str| {
        kv.get(k).ok_or_else(|| {
            Error::corrupt(
                path,
                format!("no `{k}` in the footer: not an encodings file"),
            )
        })
    };
    if get(KEY_FORMAT)? != &FORMAT.to_string() {
        return Err(Error::corrupt(
            path,
            format!(
                "encodings format {} (this build reads {FORMAT})",
                get(KEY_FORMAT)?
            ),
        ));
    }
    let fp = get(KEY_MODEL)?;
    if fp != fingerprint {
        return Err(Error::corrupt(
            path,
            format!("encoded with other weights (model fingerprint {fp}; the checkpoint's is {fingerprint}): run `lifelong encode` again"),
        ));
    }
    let lay: EncodingLayout = serde_json::from_str(get(KEY_LAYOUT)?)
        .map_err(|e| Error::corrupt(path, format!("`{KEY_LAYOUT}`: {e}")))?;
    if &lay != layout {
        return Err(Error::corrupt(
            path,
            format!("layout {lay:?} differs from the model's {layout:?}"),
        ));
    }
    Shard::parse(get(KEY_SHARD)?).map_err(|e| Error::corrupt(path, e))
}

/// The part files of an encodings directory, each with its shard, checked: the footers match
/// the model, and the shards are exactly `0..N` of one `N`.
///
/// # Errors
/// [`Error::Io`] for a missing directory or no part files; [`Error::Corrupt`] naming the file or
/// the missing shard.
pub fn parts(
    dir: &Path,
    fingerprint: &str,
    layout: &EncodingLayout,
) -> Result<Vec<(PathBuf, Shard)>> {
    let files: Vec<PathBuf> = io::list_parquet_files(dir)?
        .into_iter()
        .filter(|p| {
            p.parent() == Some(dir)
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no part-*.parquet encodings files",
            ),
        ));
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let s = check_footer(&f, fingerprint, layout)?;
        out.push((f, s));
    }
    let n = out[0].1.count;
    let mut seen = vec![false; n];
    for (f, s) in &out {
        if s.count != n {
            return Err(Error::corrupt(
                f,
                format!("shard {}/{} among shards of {n}", s.index, s.count),
            ));
        }
        if std::mem::replace(&mut seen[s.index], true) {
            return Err(Error::corrupt(
                f,
                format!("shard {} appears twice", s.index),
            ));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(Error::corrupt(
            dir,
            format!(
                "shard {i} of {n} ({}) is missing",
                Shard { index: i, count: n }.file_name()
            ),
        ));
    }
    Ok(out)
}

/// [`read_part`] of a part file, or nothing for a part that does not exist yet.
fn read_part_opt(
    path: Option<&Path>,
    layout: &EncodingLayout,
    f: impl FnMut(Vec<EncodedUser>) -> Result<()>,
) -> Result<()> {
    match path {
        Some(p) => read_part(p, layout, f),
        None => Ok(()),
    }
}

/// Every row of one part file, batch by batch.
pub fn read_part(
    path: &Path,
    layout: &EncodingLayout,
    mut f: impl FnMut(Vec<EncodedUser>) -> Result<()>,
) -> Result<()> {
    let mut row0 = 0;
    for b in io::parquet_batches(path, USERS_PER_BATCH)? {
        let b = b?;
        let n = b.num_rows();
        f(from_batch(path, row0, layout, &b)?)?;
        row0 += n;
    }
    Ok(())
}

fn copy_vocab(from: &Path, to: &Path) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let dir = to.join("vocab");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for field in ["user", "item", "cate"] {
        let src = from.join("vocab").join(format!("{field}.parquet"));
        let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        crate::atomic::atomic_write_bytes(&dir.join(format!("{field}.parquet")), &bytes)?;
    }
    Ok(())
}

fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
    let pb =
        indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} users {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// A [`ParquetSink`] on its own thread: batches are handed over (two in flight at most) so
/// writing (zstd) overlaps the next batch's encoding.
struct Writer {
    tx: Option<std::sync::mpsc::SyncSender<Option<RecordBatch>>>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writer {
    fn new(mut sink: ParquetSink) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<RecordBatch>>(2);
        let handle = std::thread::spawn(move || {
            for msg in rx {
                match msg {
                    Some(b) => sink.write(&b)?,
                    None => return sink.finish(),
                }
            }
            // Dropped without `finish` (an error upstream): the temporary file goes, the
            // previous file stays.
            Err(Error::InvalidArgument(
                "encoding stopped before the end".into(),
            ))
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn write(&mut self, b: RecordBatch) -> Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(Some(b)).is_ok());
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error says why.
            self.join().and(Err(Error::InvalidArgument(
                "the encodings writer stopped".into(),
            )))
        }
    }

    /// Closes the file (renamed into place) and returns the writer's error, if any.
    fn finish(&mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        self.tx.take();
        match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument(
                    "the encodings writer panicked".into(),
                ))
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.join(); // without `finish`: the file is abandoned, not committed
    }
}

/// Refuses a prepared dataset whose vocabularies are not the checkpoint's (their fingerprint).
fn check_vocabularies(mf: &ModelFile, data: &Path) -> Result<()> {
    if let Some(fp) = mf.metadata.get(model_file::KEY_VOCAB_FINGERPRINT) {
        let here = model_file::vocab_fingerprint(data)?;
        if &here != fp {
            return Err(Error::InvalidArgument(format!(
                "{}: vocabularies (fingerprint {here}) are not the ones {} was trained with ({fp})",
                data.display(),
                mf.file.display()
            )));
        }
    }
    Ok(())
}

/// What `encode` did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncodeSummary {
    /// Users written.
    pub users: usize,
    /// Behaviors read (before the `max_len` cut).
    pub behaviors: u64,
    /// The file written.
    pub file: PathBuf,
}

/// Encodes the users of a prepared dataset that belong to `shard` into `out/part-…parquet`,
/// streamed (a batch of users at a time, users of a batch in parallel), and copies the
/// vocabularies into `out/vocab`.
///
/// # Errors
/// Named errors for a dataset the checkpoint was not trained with (vocabulary fingerprint or
/// sizes), a corrupt `users.parquet` (file, row, column), and I/O.
pub fn encode_dataset(
    mf: &ModelFile,
    data: &Path,
    out: &Path,
    shard: Shard,
    show: bool,
) -> Result<EncodeSummary> {
    let meta = dataset::read_meta(data)?;
    let model = &mf.model;
    let v = model.vocab();
    for (field, have, need) in [
        ("item", v.items, meta.n_items),
        ("cate", v.cates, meta.n_cates),
    ] {
        if need > have {
            return Err(Error::InvalidArgument(format!(
                "{}: {need} {field} ids but the checkpoint's table has {have} rows: not the checkpoint's data",
                data.display()
            )));
        }
    }
    check_vocabularies(mf, data)?;
    let users_vocab = Vocab::read(&data.join("vocab").join("user.parquet"))?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_vocab(data, out)?;
    let layout = model.encoding_layout();
    let fingerprint = model_file::model_fingerprint(model)?;
    let schema = schema(&layout, users_vocab.is_string());
    let file = out.join(shard.file_name());
    let mut sink = Writer::new(ParquetSink::create(
        &file,
        schema.clone(),
        &footer(&fingerprint, &layout, shard)?,
        USERS_PER_BATCH,
    )?);
    let path = data.join("users.parquet");
    let pb = progress(meta.n_users.saturating_sub(2) as u64, "encode");
    if !show {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut users, mut behaviors, mut row0) = (0usize, 0u64, 0usize);
    for b in io::parquet_batches(&path, USERS_PER_BATCH)? {
        let b = b?;
        let rows = read_users_batch(&path, row0, &b, &meta)?;
        row0 += b.num_rows();
        pb.inc(b.num_rows() as u64);
        let mine: Vec<_> = rows
            .into_iter()
            .filter_map(|(u, it, ct, ts)| {
                let id = users_vocab.raw(u)?;
                shard.owns(&id).then_some((id, u, it, ct, ts))
            })
            .collect();
        let encoded: Vec<EncodedUser> = mine
            .par_iter()
            .map(|(id, u, it, ct, ts)| {
                Ok(EncodedUser {
                    id: id.clone(),
                    last_ts: ts.last().copied(),
                    enc: model
                        .encode_user(*u, it, ct)
                        .map_err(|e| Error::value(&path, 0, "items", format!("user {id}: {e}")))?,
                })
            })
            .collect::<Result<_>>()?;
        behaviors += mine.iter().map(|m| m.2.len() as u64).sum::<u64>();
        users += encoded.len();
        if !encoded.is_empty() {
            sink.write(to_batch(&schema, &layout, &encoded)?)?;
        }
    }
    pb.finish_and_clear();
    sink.finish()?;
    Ok(EncodeSummary {
        users,
        behaviors,
        file,
    })
}

type UserRow = (u32, Vec<u32>, Vec<u32>, Vec<i64>);

/// The rows of a `users.parquet` batch, validated as the dataset reader does.
fn read_users_batch(
    path: &Path,
    row0: usize,
    b: &RecordBatch,
    meta: &dataset::Meta,
) -> Result<Vec<UserRow>> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| Error::schema(path, name, "missing"))
    };
    let user = col("user")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| Error::schema(path, "user", "expected int32"))?;
    let list = |name: &str| -> Result<&ListArray> {
        col(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::schema(path, name, "expected a list"))
    };
    let (items, cates, ts) = (list("items")?, list("cates")?, list("ts")?);
    let mut out = Vec::with_capacity(b.num_rows());
    for r in 0..b.num_rows() {
        let here = |c: &str, why: String| Error::value(path, row0 + r, c, why);
        if user.is_null(r) || items.is_null(r) || cates.is_null(r) || ts.is_null(r) {
            return Err(here("user", "null".into()));
        }
        let u = user.value(r);
        if u < 2 || u as usize >= meta.history_rows() {
            return Err(here(
                "user",
                format!("user index {u} outside 2..{}", meta.history_rows()),
            ));
        }
        if u as usize >= meta.n_users {
            // A history of imported impressions that belongs to no user row: nothing to serve.
            continue;
        }
        let ids = |l: &ListArray, c: &str, bound: usize| -> Result<Vec<u32>> {
            let v = l.value(r);
            let v = v
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| Error::schema(path, c, "expected int32 elements"))?;
            if v.null_count() > 0 {
                return Err(here(c, "null element".into()));
            }
            if let Some(&x) = v.values().iter().find(|&&x| x < 0 || x as usize >= bound) {
                return Err(here(c, format!("index {x} outside 0..{bound}")));
            }
            Ok(v.values().iter().map(|&x| x as u32).collect())
        };
        let it = ids(items, "items", meta.n_items)?;
        let ct = ids(cates, "cates", meta.n_cates)?;
        let tv = ts.value(r);
        let tv: Vec<i64> = tv
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::schema(path, "ts", "expected int64 elements"))?
            .values()
            .to_vec();
        if ct.len() != it.len() || tv.len() != it.len() {
            return Err(here(
                "cates",
                format!("{} items, {} cates, {} ts", it.len(), ct.len(), tv.len()),
            ));
        }
        out.push((u as u32, it, ct, tv));
    }
    Ok(out)
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpdateSummary {
    /// New behaviors folded in.
    pub events: usize,
    /// Users whose encoding changed.
    pub updated: usize,
    /// Users encoded for the first time.
    pub added: usize,
    /// Users in all.
    pub users: usize,
}

/// A user's new behaviors: (ts, item, cate), chronological.
type NewEvents = Vec<(i64, u32, u32)>;

/// Folds the events of `events` (an event log as `prepare` reads it; rows with label 0 are
/// impressions, not behaviors, and are skipped) into the encodings of `dir`, writing every part
/// to `out` (which may be `dir`: each part is replaced atomically). Users without an encoding
/// get one from their new events alone. The delta is held in memory; the encodings are
/// streamed.
///
/// # Errors
/// Named errors for a log without the columns, encodings of other weights, and an event older
/// than the user's encoding (`last_ts`): folding it in would not equal a re-encode.
pub fn update(
    mf: &ModelFile,
    dir: &Path,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
) -> Result<UpdateSummary> {
    let layout = mf.model.encoding_layout();
    let fingerprint = model_file::model_fingerprint(&mf.model)?;
    let parts = parts(dir, &fingerprint, &layout)?
        .into_iter()
        .map(|(f, s)| (Some(f), s))
        .collect();
    fold_into(mf, dir, parts, events, cfg, out, None)
}

/// Encodes the users of an event log (every behavior of theirs in it, chronological) with the
/// vocabularies of the prepared dataset `data` (the checkpoint's: their fingerprint is
/// checked), the users of `shard` only, into `out/part-…parquet`. For logs that were never
/// prepared, e.g. a day's users in production.
///
/// # Errors
/// As [`update`], and a dataset of other vocabularies.
pub fn encode_events(
    mf: &ModelFile,
    data: &Path,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
    shard: Shard,
) -> Result<UpdateSummary> {
    check_vocabularies(mf, data)?;
    fold_into(mf, data, vec![(None, shard)], events, cfg, out, Some(shard))
}

/// Folds the events into `parts` (a part without a file starts empty), writing each to `out`;
/// with `only`, events of users outside that shard are left out.
fn fold_into(
    mf: &ModelFile,
    vocab_dir: &Path,
    parts: Vec<(Option<PathBuf>, Shard)>,
    events: &Path,
    cfg: &PrepareConfig,
    out: &Path,
    only: Option<Shard>,
) -> Result<UpdateSummary> {
    let model = &mf.model;
    let layout = model.encoding_layout();
    let fingerprint = model_file::model_fingerprint(model)?;
    let dir = vocab_dir;
    let vocab = |f: &str| Vocab::read(&dir.join("vocab").join(format!("{f}.parquet")));
    let (users_vocab, items_vocab, cates_vocab) = (vocab("user")?, vocab("item")?, vocab("cate")?);
    let mut delta = read_delta(events, cfg, &items_vocab, &cates_vocab)?;
    if let Some(sh) = only {
        delta.retain(|id, _| sh.owns(id));
    }
    let n_events: usize = delta.values().map(Vec::len).sum();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_vocab(dir, out)?;
    let schema = schema(&layout, users_vocab.is_string());
    let (mut updated, mut added, mut users) = (0, 0, 0);
    let pb = progress(0, "update");
    for (file, shard) in &parts {
        let target = out.join(shard.file_name());
        let mut sink = Writer::new(ParquetSink::create(
            &target,
            schema.clone(),
            &footer(&fingerprint, &layout, *shard)?,
            USERS_PER_BATCH,
        )?);
        // Errors name the part file, or the event log for a part that starts empty.
        let name = file.clone().unwrap_or_else(|| events.to_path_buf());
        read_part_opt(file.as_deref(), &layout, |rows| {
            let todo: Vec<(EncodedUser, Option<NewEvents>)> = rows
                .into_iter()
                .map(|r| {
                    let d = delta.remove(&r.id);
                    (r, d)
                })
                .collect();
            updated += todo.iter().filter(|t| t.1.is_some()).count();
            let done = fold_all(model, todo, &name)?;
            users += done.len();
            pb.inc(done.len() as u64);
            sink.write(to_batch(&schema, &layout, &done)?)
        })?;
        // New users of this shard.
        let mine: Vec<RawId> = delta.keys().filter(|id| shard.owns(id)).cloned().collect();
        let fresh: Vec<(EncodedUser, Option<NewEvents>)> = mine
            .into_iter()
            .map(|id| {
                let d = delta.remove(&id);
                let user = users_vocab.lookup(&id);
                let enc = model.encode_user(user, &[], &[]);
                enc.map(|enc| {
                    (
                        EncodedUser {
                            id,
                            last_ts: None,
                            enc,
                        },
                        d,
                    )
                })
            })
            .collect::<Result<_>>()?;
        added += fresh.len();
        let done = fold_all(model, fresh, events)?;
        users += done.len();
        if !done.is_empty() {
            sink.write(to_batch(&schema, &layout, &done)?)?;
        }
        sink.finish()?;
    }
    pb.finish_and_clear();
    if let Some(id) = delta.keys().next() {
        return Err(Error::InvalidArgument(format!(
            "user {id}: no shard of {} takes it",
            dir.display()
        )));
    }
    Ok(UpdateSummary {
        events: n_events,
        updated,
        added,
        users,
    })
}

fn fold_all(
    model: &CtrModel,
    todo: Vec<(EncodedUser, Option<NewEvents>)>,
    file: &Path,
) -> Result<Vec<EncodedUser>> {
    todo.into_par_iter()
        .map(|(mut r, d)| {
            let Some(d) = d else { return Ok(r) };
            if let (Some(last), Some(first)) = (r.last_ts, d.first()) {
                if first.0 < last {
                    return Err(Error::InvalidArgument(format!(
                        "{}: user {}: a new event at ts {} is older than the encoding's newest behavior ({last}); \
                         re-encode from the full log instead",
                        file.display(),
                        r.id,
                        first.0
                    )));
                }
            }
            let items: Vec<u32> = d.iter().map(|e| e.1).collect();
            let cates: Vec<u32> = d.iter().map(|e| e.2).collect();
            r.enc = model
                .extend_encoding(&r.enc, &items, &cates)
                .map_err(|e| Error::InvalidArgument(format!("{}: user {}: {e}", file.display(), r.id)))?;
            r.last_ts = d.last().map(|e| e.0).or(r.last_ts);
            Ok(r)
        })
        .collect()
}

/// The new behaviors of an event log per raw user id, chronological (ties in log order).
fn read_delta(
    events: &Path,
    cfg: &PrepareConfig,
    items: &Vocab,
    cates: &Vocab,
) -> Result<HashMap<RawId, NewEvents>> {
    use crate::data::io::Column;
    let specs = crate::data::prepare::event_specs(&cfg.columns);
    let mut t = crate::data::prepare::read_events(events, &specs, cfg)?;
    let raw = |c: Option<Column>| {
        c.and_then(Column::into_raw_ids)
            .unwrap_or(io::RawIds::Int(Vec::new()))
    };
    let (u, i, k) = (raw(t.take(0)), raw(t.take(1)), raw(t.take(2)));
    let ts = t.take(3).and_then(Column::into_i64).unwrap_or_default();
    let label = t.take(4).and_then(Column::into_u8);
    let mut out: HashMap<RawId, NewEvents> = HashMap::new();
    for r in 0..ts.len() {
        if label.as_ref().is_some_and(|l| l[r] == 0) {
            continue;
        }
        out.entry(u.get(r)).or_default().push((
            ts[r],
            items.lookup(&i.get(r)),
            cates.lookup(&k.get(r)),
        ));
    }
    for v in out.values_mut() {
        v.sort_by_key(|e| e.0); // stable: ties keep log order
    }
    Ok(out)
}

/// Every encoding of a directory in memory, keyed by raw user id, with the ids cut to what
/// scoring reads ([`EncodingLayout::serving_window`]).
///
/// # Errors
/// As [`parts`] and [`read_part`], and [`Error::Corrupt`] for a user encoded twice.
pub fn load_all(dir: &Path, model: &CtrModel) -> Result<HashMap<RawId, Arc<UserEncoding>>> {
    let layout = model.encoding_layout();
    let fp = model_file::model_fingerprint(model)?;
    let mut map = HashMap::new();
    for (file, _) in parts(dir, &fp, &layout)? {
        read_part(&file, &layout, |rows| {
            for mut r in rows {
                let keep = layout.serving_window.min(r.enc.items.len());
                let cut = r.enc.items.len() - keep;
                if cut > 0 {
                    r.enc.items.drain(..cut);
                    r.enc.cates.drain(..cut);
                }
                if map.insert(r.id.clone(), Arc::new(r.enc)).is_some() {
                    return Err(Error::corrupt(
                        &file,
                        format!("user {} is encoded twice", r.id),
                    ));
                }
            }
            Ok(())
        })?;
    }
    Ok(map)
}
