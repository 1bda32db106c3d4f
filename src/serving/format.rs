//! The encodings file format: one parquet row per user, its columns, its footer and its
//! shards (see [`super`] for the layout).

use crate::data::io;
use crate::data::vocab::RawId;
use crate::model::{EncodingLayout, UserEncoding};
use crate::{Error, Result};
use arrow_array::builder::OffsetBufferBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, Int32Array, Int64Array, ListArray, PrimitiveArray,
    RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use std::path::Path;
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
pub(crate) const USERS_PER_BATCH: usize = 512;

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

pub(crate) fn schema(layout: &EncodingLayout, str_ids: bool) -> SchemaRef {
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
    if layout.time {
        fields.push(Field::new("ts", list(DataType::Int64), false));
    }
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

pub(crate) fn list_array<T: ArrowPrimitiveType>(rows: Vec<&[T::Native]>) -> Result<ArrayRef> {
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

pub(crate) fn to_batch(
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
    if layout.time {
        cols.push(list_array::<Int64Type>(
            users.iter().map(|u| u.enc.ts.as_slice()).collect(),
        )?);
    }
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
pub(crate) fn from_batch(
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
        row0: usize,
        name: &str,
        a: &'a ArrayRef,
    ) -> Result<&'a PrimitiveArray<T>> {
        if let Some(r) = (0..a.len()).find(|&r| a.is_null(r)) {
            return Err(Error::value(path, row0 + r, name, "null"));
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
    let user = prim::<Int32Type>(path, row0, "user", user_a)?;
    let last_a = col("last_ts")?;
    let last = last_a
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::schema(path, "last_ts", "expected int64"))?;
    let items = lists("items")?;
    let cates = lists("cates")?;
    let times = if layout.time {
        Some(lists("ts")?)
    } else {
        None
    };
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
        let ts = match times {
            Some(l) => {
                let v = l.value(r);
                let v = v
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| Error::schema(path, "ts", "expected int64 elements"))?;
                if v.len() != it.len() {
                    return Err(Error::value(
                        path,
                        row0 + r,
                        "ts",
                        format!("{} timestamps for {} behaviors", v.len(), it.len()),
                    ));
                }
                if let Some(k) = v.values().windows(2).position(|w| w[1] < w[0]) {
                    return Err(Error::value(
                        path,
                        row0 + r,
                        "ts",
                        format!("not chronological at position {}", k + 1),
                    ));
                }
                v.values().to_vec()
            }
            None => Vec::new(),
        };
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
                ts,
                codes: cd,
                buckets: bk,
            },
        });
    }
    Ok(out)
}

/// The footer metadata an encodings file of `model` for `shard` carries.
pub(crate) fn footer(
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
