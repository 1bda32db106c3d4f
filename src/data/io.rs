//! Parquet/Arrow I/O with named errors.
//!
//! Reading: [`read_table`] reads a projection of a parquet file, or of every `*.parquet` file
//! under a directory (recursively, sorted by path, hidden and `_`-prefixed entries such as Spark's
//! `_SUCCESS` skipped), into typed, null-free, flat columns ([`Column`]). Row groups are read in
//! parallel with rayon; rows come back concatenated in *file order* (files sorted by path, rows
//! in file order within a file).
//!
//! Every problem is a named [`Error`]: a missing path or an empty directory is
//! [`Error::Io`], a truncated or corrupt file [`Error::Corrupt`], a missing or mistyped column
//! [`Error::Schema`], a null or an invalid value [`Error::Value`] naming the file, the column and
//! the 0-based row *within that file*, and an index outside its vocabulary
//! [`Error::IdOutOfRange`].
//!
//! Types are matched on their [`DataType`] variant, never on equality, so list columns written by
//! arrow-rs (child field `item`), pyarrow or Spark (child field `element`), `List` or `LargeList`,
//! all read the same.
//!
//! Writing: [`write_parquet`] / [`write_batch`] write record batches atomically (zstd level 3).

use crate::atomic::atomic_write_bytes;
use crate::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Default number of rows per parquet row group written by [`write_parquet`].
pub const ROW_GROUP_ROWS: usize = 65_536;

/// Rows per record batch when reading flat columns.
const BATCH_ROWS: usize = 8192;
/// Rows per record batch when a list column is read (lists can be long).
const LIST_BATCH_ROWS: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Column specifications and typed columns
// ---------------------------------------------------------------------------------------------

/// How a column is read and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A raw id: any integer type (Int8..Int64, UInt8..UInt64) → [`RawIds::Int`]; Utf8,
    /// LargeUtf8 or Utf8View → [`RawIds::Str`]; a dictionary of either is decoded.
    RawId,
    /// A timestamp: any integer type, `Timestamp(any unit)` (its raw count in that unit), `Date32`
    /// (days) or `Date64` (ms) → [`Column::I64`].
    Timestamp,
    /// A label: any integer type or Boolean, values 0/1 → [`Column::U8`].
    Label,
    /// An index into a vocabulary of `bound` entries: any integer type, values in `0..bound`
    /// (else [`Error::IdOutOfRange`] naming `field`) → [`Column::U32`].
    Index {
        /// The field named in errors (`user`, `item`, `cate`).
        field: String,
        /// The vocabulary size.
        bound: u64,
    },
    /// A count: any integer type, values in `0..=u32::MAX` → [`Column::U32`].
    Count,
    /// A `List`/`LargeList` of any integer type → [`Column::I64List`].
    IntList,
    /// A `List`/`LargeList` of integer indices in `0..bound` → [`Column::U32List`].
    IndexList {
        /// The field named in errors.
        field: String,
        /// The vocabulary size.
        bound: u64,
    },
}

impl Kind {
    /// An [`Kind::Index`] for `field` with `bound` entries.
    pub fn index(field: &str, bound: usize) -> Self {
        Kind::Index {
            field: field.to_string(),
            bound: bound as u64,
        }
    }
    /// An [`Kind::IndexList`] for `field` with `bound` entries.
    pub fn index_list(field: &str, bound: usize) -> Self {
        Kind::IndexList {
            field: field.to_string(),
            bound: bound as u64,
        }
    }

    fn is_list(&self) -> bool {
        matches!(self, Kind::IntList | Kind::IndexList { .. })
    }

    pub(crate) fn accepts(&self, dt: &DataType) -> bool {
        match self {
            Kind::RawId => {
                is_int(dt)
                    || is_str(dt)
                    || matches!(dt, DataType::Dictionary(_, v) if is_int(v) || is_str(v))
            }
            Kind::Timestamp => {
                is_int(dt)
                    || matches!(
                        dt,
                        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                    )
            }
            Kind::Label => is_int(dt) || matches!(dt, DataType::Boolean),
            Kind::Index { .. } | Kind::Count => is_int(dt),
            Kind::IntList | Kind::IndexList { .. } => match dt {
                DataType::List(f) | DataType::LargeList(f) => is_int(f.data_type()),
                _ => false,
            },
        }
    }

    /// What must agree between the files of one table for this kind: string or integer ids,
    /// and the unit of a timestamp (`None`: anything accepted goes).
    pub(crate) fn family(&self, dt: &DataType) -> Option<&'static str> {
        let dt = match dt {
            DataType::Dictionary(_, v) => v.as_ref(),
            other => other,
        };
        match self {
            Kind::RawId => Some(if is_str(dt) {
                "string ids"
            } else {
                "integer ids"
            }),
            Kind::Timestamp => Some(match dt {
                DataType::Timestamp(TimeUnit::Second, _) => "timestamps in seconds",
                DataType::Timestamp(TimeUnit::Millisecond, _) => "timestamps in milliseconds",
                DataType::Timestamp(TimeUnit::Microsecond, _) => "timestamps in microseconds",
                DataType::Timestamp(TimeUnit::Nanosecond, _) => "timestamps in nanoseconds",
                DataType::Date32 => "dates (days)",
                DataType::Date64 => "dates (milliseconds)",
                _ => "integer timestamps",
            }),
            _ => None,
        }
    }

    pub(crate) fn expected(&self) -> &'static str {
        match self {
            Kind::RawId => "an integer or string id column",
            Kind::Timestamp => "an integer, timestamp or date column",
            Kind::Label => "an integer or boolean label column (values 0/1)",
            Kind::Index { .. } | Kind::Count => "an integer column",
            Kind::IntList | Kind::IndexList { .. } => "a list of integers (List or LargeList)",
        }
    }
}

fn is_int(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn is_str(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// One column to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Column name in the file.
    pub name: String,
    /// How to read it.
    pub kind: Kind,
    /// An optional column may be absent from *every* file (then [`Table::columns`] holds `None`
    /// for it); absent from some files only is an error.
    pub optional: bool,
}

impl ColumnSpec {
    /// A required column.
    pub fn new(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_string(),
            kind,
            optional: false,
        }
    }
    /// An optional column.
    pub fn optional(name: &str, kind: Kind) -> Self {
        Self {
            name: name.to_string(),
            kind,
            optional: true,
        }
    }
}

/// Raw (not yet indexed) ids: integers or strings.
#[derive(Debug, Clone, PartialEq)]
pub enum RawIds {
    /// Integer ids (any integer type, widened to i64).
    Int(Vec<i64>),
    /// String ids.
    Str(StrIds),
}

impl RawIds {
    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            RawIds::Int(v) => v.len(),
            RawIds::Str(s) => s.len(),
        }
    }
    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Id `i`.
    pub fn get(&self, i: usize) -> crate::data::raw_id::RawId {
        use crate::data::raw_id::RawId;
        match self {
            RawIds::Int(v) => RawId::Int(v[i]),
            RawIds::Str(s) => RawId::Str(s.get(i).to_string()),
        }
    }
}

/// A column of strings stored flat: one buffer and `len + 1` byte offsets (no per-row
/// allocation).
#[derive(Debug, Clone, PartialEq)]
pub struct StrIds {
    /// All strings concatenated.
    pub data: String,
    /// `len + 1` byte offsets into `data`, starting at 0.
    pub offsets: Vec<usize>,
}

impl Default for StrIds {
    fn default() -> Self {
        Self {
            data: String::new(),
            offsets: vec![0],
        }
    }
}

impl StrIds {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// No strings.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th string.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn get(&self, i: usize) -> &str {
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }
    /// Appends a string.
    pub fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.offsets.push(self.data.len());
    }
    /// Iterates over the strings.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.offsets.windows(2).map(|w| &self.data[w[0]..w[1]])
    }
    fn append(&mut self, other: StrIds) {
        let base = self.data.len();
        self.data.push_str(&other.data);
        self.offsets
            .extend(other.offsets[1..].iter().map(|o| o + base));
    }
}

/// A jagged column: row `r` is `values[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListColumn<T> {
    /// `len + 1` offsets, starting at 0.
    pub offsets: Vec<u64>,
    /// All rows' values, concatenated.
    pub values: Vec<T>,
}

impl<T> Default for ListColumn<T> {
    fn default() -> Self {
        Self {
            offsets: vec![0],
            values: Vec::new(),
        }
    }
}

impl<T> ListColumn<T> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `r`.
    ///
    /// # Panics
    /// If `r >= len()`.
    pub fn row(&self, r: usize) -> &[T] {
        &self.values[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }
    fn append(&mut self, other: ListColumn<T>) {
        let base = self.values.len() as u64;
        self.values.extend(other.values);
        self.offsets
            .extend(other.offsets[1..].iter().map(|o| o + base));
    }
}

/// A column read by [`read_table`], typed by its [`Kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// [`Kind::RawId`].
    RawIds(RawIds),
    /// [`Kind::Timestamp`].
    I64(Vec<i64>),
    /// [`Kind::Label`] (0/1).
    U8(Vec<u8>),
    /// [`Kind::Index`] and [`Kind::Count`].
    U32(Vec<u32>),
    /// [`Kind::IntList`].
    I64List(ListColumn<i64>),
    /// [`Kind::IndexList`].
    U32List(ListColumn<u32>),
}

impl Column {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Column::RawIds(c) => c.len(),
            Column::I64(c) => c.len(),
            Column::U8(c) => c.len(),
            Column::U32(c) => c.len(),
            Column::I64List(c) => c.len(),
            Column::U32List(c) => c.len(),
        }
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw ids, if this is a [`Column::RawIds`].
    pub fn into_raw_ids(self) -> Option<RawIds> {
        match self {
            Column::RawIds(c) => Some(c),
            _ => None,
        }
    }
    /// The values, if this is a [`Column::I64`].
    pub fn into_i64(self) -> Option<Vec<i64>> {
        match self {
            Column::I64(c) => Some(c),
            _ => None,
        }
    }
    /// The values, if this is a [`Column::U8`].
    pub fn into_u8(self) -> Option<Vec<u8>> {
        match self {
            Column::U8(c) => Some(c),
            _ => None,
        }
    }
    /// The values, if this is a [`Column::U32`].
    pub fn into_u32(self) -> Option<Vec<u32>> {
        match self {
            Column::U32(c) => Some(c),
            _ => None,
        }
    }
    /// The lists, if this is a [`Column::I64List`].
    pub fn into_i64_list(self) -> Option<ListColumn<i64>> {
        match self {
            Column::I64List(c) => Some(c),
            _ => None,
        }
    }
    /// The lists, if this is a [`Column::U32List`].
    pub fn into_u32_list(self) -> Option<ListColumn<u32>> {
        match self {
            Column::U32List(c) => Some(c),
            _ => None,
        }
    }

    /// An empty column for `kind`, for data of type `dt`.
    pub(crate) fn empty(kind: &Kind, dt: &DataType) -> Column {
        match kind {
            Kind::RawId => {
                let dt = match dt {
                    DataType::Dictionary(_, v) => v.as_ref(),
                    other => other,
                };
                if is_str(dt) {
                    Column::RawIds(RawIds::Str(StrIds::default()))
                } else {
                    Column::RawIds(RawIds::Int(Vec::new()))
                }
            }
            Kind::Timestamp => Column::I64(Vec::new()),
            Kind::Label => Column::U8(Vec::new()),
            Kind::Index { .. } | Kind::Count => Column::U32(Vec::new()),
            Kind::IntList => Column::I64List(ListColumn::default()),
            Kind::IndexList { .. } => Column::U32List(ListColumn::default()),
        }
    }

    fn reserve(&mut self, additional: usize) {
        match self {
            Column::RawIds(RawIds::Int(c)) => c.reserve(additional),
            Column::RawIds(RawIds::Str(c)) => c.offsets.reserve(additional),
            Column::I64(c) => c.reserve(additional),
            Column::U8(c) => c.reserve(additional),
            Column::U32(c) => c.reserve(additional),
            Column::I64List(c) => c.offsets.reserve(additional),
            Column::U32List(c) => c.offsets.reserve(additional),
        }
    }

    /// Appends `other` (same variant) or says which variants clashed.
    pub(crate) fn append(&mut self, other: Column) -> std::result::Result<(), &'static str> {
        match (self, other) {
            (Column::RawIds(RawIds::Int(a)), Column::RawIds(RawIds::Int(b))) => a.extend(b),
            (Column::RawIds(RawIds::Str(a)), Column::RawIds(RawIds::Str(b))) => a.append(b),
            (Column::RawIds(RawIds::Int(_)), Column::RawIds(RawIds::Str(_))) => {
                return Err("string ids here but integer ids in the files before it")
            }
            (Column::RawIds(RawIds::Str(_)), Column::RawIds(RawIds::Int(_))) => {
                return Err("integer ids here but string ids in the files before it")
            }
            (Column::I64(a), Column::I64(b)) => a.extend(b),
            (Column::U8(a), Column::U8(b)) => a.extend(b),
            (Column::U32(a), Column::U32(b)) => a.extend(b),
            (Column::I64List(a), Column::I64List(b)) => a.append(b),
            (Column::U32List(a), Column::U32List(b)) => a.append(b),
            _ => return Err("column kinds differ between files"),
        }
        Ok(())
    }
}

/// The result of [`read_table`].
#[derive(Debug, Clone)]
pub struct Table {
    /// The files read, in file order.
    pub files: Vec<PathBuf>,
    /// Rows per file (same order).
    pub file_rows: Vec<usize>,
    /// One entry per requested [`ColumnSpec`], in request order; `None` only for an optional
    /// column absent from every file.
    pub columns: Vec<Option<Column>>,
}

impl Table {
    /// Total number of rows.
    pub fn num_rows(&self) -> usize {
        self.file_rows.iter().sum()
    }
    /// Takes column `i` out of the table (`None` if absent or already taken).
    pub fn take(&mut self, i: usize) -> Option<Column> {
        self.columns.get_mut(i).and_then(Option::take)
    }
    /// The file and the 0-based row within it of global row `row` (for error messages).
    pub fn locate(&self, row: usize) -> (PathBuf, usize) {
        let mut r = row;
        for (f, &n) in self.files.iter().zip(&self.file_rows) {
            if r < n {
                return (f.clone(), r);
            }
            r -= n;
        }
        (self.files.last().cloned().unwrap_or_default(), r)
    }
}

// ---------------------------------------------------------------------------------------------
// Listing and opening files
// ---------------------------------------------------------------------------------------------

/// The parquet files at `path`: the file itself, or every `*.parquet` file under the directory
/// `path` (recursively), sorted by path. Entries whose name starts with `.` or `_` (hidden files,
/// Spark's `_SUCCESS`, `_temporary/`, `.crc` files) are skipped.
///
/// # Errors
/// [`Error::Io`] naming the path when it does not exist, cannot be listed, or holds no parquet
/// file.
pub fn list_parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    list_files(path, "parquet")
}

/// The files at `path` ending in `.{ext}` (case-insensitive): the file itself, or every such
/// file under the directory (recursively, sorted, hidden and `_` entries skipped).
///
/// # Errors
/// [`Error::Io`] naming the path when it does not exist, cannot be listed, or holds no such file.
pub fn list_files(path: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !md.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let p = entry.path();
            let md = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
            if md.is_dir() {
                stack.push(p);
            } else if name.to_ascii_lowercase().ends_with(&format!(".{ext}")) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no *.{ext} files in this directory"),
            ),
        ));
    }
    out.sort();
    Ok(out)
}

fn open_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    guard(path, || {
        ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| Error::corrupt(path, format!("not a readable parquet file: {e}")))
    })
}

/// Runs `f`, turning a panic inside the parquet/arrow readers (malformed input) into
/// [`Error::Corrupt`].
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::corrupt(
                path,
                format!("the parquet reader failed on this file: {msg}"),
            ))
        }
    }
}

/// Number of rows of a parquet file, from its footer only.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] naming the file.
pub fn parquet_num_rows(path: &Path) -> Result<usize> {
    let meta = open_metadata(path)?;
    let n = meta.metadata().file_metadata().num_rows();
    usize::try_from(n).map_err(|_| Error::corrupt(path, format!("negative row count {n}")))
}

/// The names and types of a parquet file's columns, from its footer.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] naming the file.
pub fn parquet_schema(path: &Path) -> Result<SchemaRef> {
    Ok(open_metadata(path)?.schema().clone())
}

// ---------------------------------------------------------------------------------------------
// read_table
// ---------------------------------------------------------------------------------------------

/// Reads the columns `specs` of the parquet file or directory `path`, rows concatenated in file
/// order. Files and row groups are read in parallel (rayon).
///
/// # Errors
/// Named errors: [`Error::Io`] (missing path, no parquet files), [`Error::Corrupt`] (truncated
/// or corrupt file), [`Error::Schema`] (missing column, with the file's column list; wrong
/// type; id type differing between files), [`Error::Value`] (null, value not allowed by the
/// kind) and [`Error::IdOutOfRange`], each naming the file and the 0-based row within it.
/// When several files are bad, the error of the first in file order is returned.
pub fn read_table(path: &Path, specs: &[ColumnSpec]) -> Result<Table> {
    read_table_with(path, specs, false)
}

/// [`read_table`] for an event log: a per-user history table (list columns) is read as the
/// event rows it collects ([`crate::data::history_table`]).
///
/// # Errors
/// As [`read_table`].
pub fn read_event_table(path: &Path, specs: &[ColumnSpec]) -> Result<Table> {
    read_table_with(path, specs, true)
}

fn read_table_with(path: &Path, specs: &[ColumnSpec], histories: bool) -> Result<Table> {
    let plan = TablePlan::open(path, specs, histories)?;
    let chunks = first_error(
        (0..plan.tasks.len())
            .into_par_iter()
            .map(|t| plan.read_task(t))
            .collect::<Vec<_>>(),
    )?;

    // Concatenate in task (= file) order, dropping each chunk as soon as it is copied.
    let total: usize = plan.file_rows.iter().sum();
    let mut columns: Vec<Option<Column>> = vec![None; specs.len()];
    for (chunk, task) in chunks.into_iter().zip(&plan.tasks) {
        for (si, col) in chunk.into_iter().enumerate() {
            let Some(col) = col else { continue };
            match &mut columns[si] {
                slot @ None => {
                    let mut c = col;
                    c.reserve(total.saturating_sub(c.len()));
                    *slot = Some(c);
                }
                Some(acc) => acc
                    .append(col)
                    .map_err(|why| Error::schema(&plan.files[task.file], &specs[si].name, why))?,
            }
        }
    }
    // A present column in files without row groups still gets an (empty) column.
    for (si, col) in columns.iter_mut().enumerate() {
        if col.is_none() {
            *col = plan.empty_column(si);
        }
    }
    Ok(Table {
        files: plan.files,
        file_rows: plan.file_rows,
        columns,
    })
}

/// A run of consecutive rows of one file, read by [`read_chunks`].
#[derive(Debug)]
pub struct Chunk {
    /// The file the rows come from.
    pub file: PathBuf,
    /// 0-based row within `file` of the chunk's first row.
    pub row0: usize,
    /// Rows in the chunk.
    pub rows: usize,
    /// One entry per requested [`ColumnSpec`]; `None` only for an optional column absent from
    /// every file.
    pub columns: Vec<Option<Column>>,
}

impl Chunk {
    /// Takes column `i` out of the chunk (`None` if absent or already taken).
    pub fn take(&mut self, i: usize) -> Option<Column> {
        self.columns.get_mut(i).and_then(Option::take)
    }
}

/// Reads the columns `specs` of the event log (parquet file or directory) `path` one row group
/// at a time, in file order, handing each to `f`: memory is bounded by a few row groups, not by
/// the files. With `histories`, a per-user history table is read as its event rows, as in
/// [`read_event_table`]; without, list columns are read as lists.
/// Up to `window` row groups are decoded in parallel ahead of `f`. Every file's footer and
/// schema is checked before the first chunk. Returns the total number of rows (from the
/// footers, reconciled with the rows decoded).
///
/// # Errors
/// The errors of [`read_table`], and whatever `f` returns (reading stops there).
pub fn read_chunks(
    path: &Path,
    specs: &[ColumnSpec],
    window: usize,
    histories: bool,
    mut f: impl FnMut(Chunk) -> Result<()>,
) -> Result<usize> {
    let plan = TablePlan::open(path, specs, histories)?;
    let window = window.max(1);
    for start in (0..plan.tasks.len()).step_by(window) {
        let end = (start + window).min(plan.tasks.len());
        let read = first_error(
            (start..end)
                .into_par_iter()
                .map(|t| plan.read_task(t))
                .collect::<Vec<_>>(),
        )?;
        for (t, mut columns) in (start..end).zip(read) {
            let task = plan.tasks[t];
            for (si, col) in columns.iter_mut().enumerate() {
                if col.is_none() {
                    *col = plan.empty_column(si);
                }
            }
            f(Chunk {
                file: plan.files[task.file].clone(),
                row0: task.row0,
                rows: task.rows,
                columns,
            })?;
        }
    }
    Ok(plan.file_rows.iter().sum())
}

/// The total number of rows of the parquet file or directory `path`, from the footers.
///
/// # Errors
/// As [`parquet_num_rows`], for every file.
pub fn parquet_total_rows(path: &Path) -> Result<usize> {
    let files = list_parquet_files(path)?;
    first_error(files.par_iter().map(|f| parquet_num_rows(f)).collect())
        .map(|n| n.into_iter().sum())
}

/// One row group of one file.
#[derive(Debug, Clone, Copy)]
struct Task {
    file: usize,
    row_group: usize,
    row0: usize,
    rows: usize,
}

/// The files of a table, their footers checked against `specs`, and their row groups.
struct TablePlan {
    files: Vec<PathBuf>,
    metas: Vec<ArrowReaderMetadata>,
    /// Per file, the exploded schema of a history table (`None`: an event table).
    exploded: Vec<Option<SchemaRef>>,
    /// Per file, which specs it holds.
    present: Vec<Vec<bool>>,
    tasks: Vec<Task>,
    file_rows: Vec<usize>,
    specs: Vec<ColumnSpec>,
    batch_rows: usize,
}

impl TablePlan {
    /// `histories`: read history tables (list columns) as event rows.
    fn open(path: &Path, specs: &[ColumnSpec], histories: bool) -> Result<Self> {
        let files = list_parquet_files(path)?;
        let metas: Vec<ArrowReaderMetadata> = first_error(
            files
                .par_iter()
                .map(|f| open_metadata(f))
                .collect::<Vec<_>>(),
        )?;

        // A history table (list columns) is read as the event rows it collects.
        let wanted: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let exploded: Vec<Option<SchemaRef>> = metas
            .iter()
            .map(|m| {
                histories
                    .then(|| crate::data::history_table::exploded_schema(m.schema(), &wanted))
                    .flatten()
            })
            .collect();
        let schema_of = |fi: usize| {
            exploded[fi]
                .clone()
                .unwrap_or_else(|| metas[fi].schema().clone())
        };
        // Schema check per file: which specs are present, and their types.
        let present: Vec<Vec<bool>> = files
            .iter()
            .enumerate()
            .map(|(fi, file)| check_columns(file, &schema_of(fi), specs))
            .collect::<Result<_>>()?;
        for (si, spec) in specs.iter().enumerate().filter(|(_, s)| s.optional) {
            let any = present.iter().any(|p| p[si]);
            if let Some(fi) = present.iter().position(|p| !p[si]).filter(|_| any) {
                let with = present.iter().position(|p| p[si]).unwrap_or(0);
                return Err(Error::schema(
                    &files[fi],
                    &spec.name,
                    format!(
                        "missing here but present in {}; the file has columns [{}]",
                        files[with].display(),
                        column_names(&schema_of(fi))
                    ),
                ));
            }
        }
        // Id columns must hold one kind of id (integer or string), and timestamp columns one
        // unit, across files: mixing them would order or join rows wrongly without an error.
        for (si, spec) in specs.iter().enumerate() {
            let mut first: Option<(usize, &'static str)> = None;
            for fi in (0..metas.len()).filter(|&fi| present[fi][si]) {
                let schema = schema_of(fi);
                let Ok(ci) = schema.index_of(&spec.name) else {
                    continue;
                };
                let Some(family) = spec.kind.family(schema.field(ci).data_type()) else {
                    continue;
                };
                match first {
                    None => first = Some((fi, family)),
                    Some((f0, fam0)) if fam0 != family => {
                        return Err(Error::schema(
                            &files[fi],
                            &spec.name,
                            format!(
                                "holds {family} here but {fam0} in {}; convert the files to one \
                                 type first",
                                files[f0].display()
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }

        // One task per (file, row group).
        let mut tasks = Vec::new();
        let mut file_rows = Vec::with_capacity(files.len());
        for (fi, meta) in metas.iter().enumerate() {
            let mut row0 = 0usize;
            for (rg, g) in meta.metadata().row_groups().iter().enumerate() {
                let n = usize::try_from(g.num_rows()).map_err(|_| {
                    Error::corrupt(
                        &files[fi],
                        format!("row group {rg} has {} rows", g.num_rows()),
                    )
                })?;
                tasks.push(Task {
                    file: fi,
                    row_group: rg,
                    row0,
                    rows: n,
                });
                row0 += n;
            }
            file_rows.push(row0);
        }
        let batch_rows = if specs.iter().any(|s| s.kind.is_list()) {
            LIST_BATCH_ROWS
        } else {
            BATCH_ROWS
        };
        Ok(Self {
            files,
            metas,
            exploded,
            present,
            tasks,
            file_rows,
            specs: specs.to_vec(),
            batch_rows,
        })
    }

    /// Reads row group `t`, and checks that it decoded as many rows as its footer says.
    fn read_task(&self, t: usize) -> Result<Vec<Option<Column>>> {
        let task = self.tasks[t];
        let path = &self.files[task.file];
        let exploded = self.exploded[task.file].as_ref();
        let cols = read_row_group(
            path,
            &self.metas[task.file],
            exploded,
            task.row_group,
            task.row0,
            &self.specs,
            &self.present[task.file],
            self.batch_rows,
        )?;
        // (A history table's row group holds users, its columns events.)
        if let Some(n) = cols
            .iter()
            .flatten()
            .map(Column::len)
            .next()
            .filter(|_| exploded.is_none())
        {
            if n != task.rows {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "row group {} decoded {n} rows but its footer says {}",
                        task.row_group, task.rows
                    ),
                ));
            }
        }
        Ok(cols)
    }

    /// An empty column for spec `si` if some file holds it (`None` for an absent optional one).
    fn empty_column(&self, si: usize) -> Option<Column> {
        let fi = self.present.iter().position(|p| p[si])?;
        let schema = self.exploded[fi]
            .as_ref()
            .unwrap_or(self.metas[fi].schema());
        let ci = schema.index_of(&self.specs[si].name).ok()?;
        Some(Column::empty(
            &self.specs[si].kind,
            schema.field(ci).data_type(),
        ))
    }
}

fn first_error<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    results.into_iter().collect()
}

fn column_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of `specs` the file's `schema` holds (an optional one may be absent), each of a type
/// its kind accepts.
///
/// # Errors
/// [`Error::Schema`] naming the file and the column that is missing or mistyped.
pub(crate) fn check_columns(
    file: &Path,
    schema: &SchemaRef,
    specs: &[ColumnSpec],
) -> Result<Vec<bool>> {
    specs
        .iter()
        .map(|spec| match schema.index_of(&spec.name) {
            Ok(ci) => {
                let dt = schema.field(ci).data_type();
                if spec.kind.accepts(dt) {
                    Ok(true)
                } else {
                    Err(Error::schema(
                        file,
                        &spec.name,
                        format!("has type {dt}; expected {}", spec.kind.expected()),
                    ))
                }
            }
            Err(_) if spec.optional => Ok(false),
            Err(_) => Err(missing_column(file, &spec.name, schema)),
        })
        .collect()
}

pub(crate) fn missing_column(file: &Path, column: &str, schema: &SchemaRef) -> Error {
    Error::schema(
        file,
        column,
        format!("missing; the file has columns [{}]", column_names(schema)),
    )
}

#[allow(clippy::too_many_arguments)]
fn read_row_group(
    path: &Path,
    meta: &ArrowReaderMetadata,
    exploded: Option<&SchemaRef>,
    rg: usize,
    row0: usize,
    specs: &[ColumnSpec],
    present: &[bool],
    batch_rows: usize,
) -> Result<Vec<Option<Column>>> {
    let file_schema = meta.schema();
    let schema = exploded.unwrap_or(file_schema);
    // A history table is read whole (its few columns are all lists or keys); an event table
    // only the requested columns.
    let mut roots = Vec::new();
    if exploded.is_some() {
        roots.extend(0..file_schema.fields().len());
    } else {
        for (spec, &p) in specs.iter().zip(present) {
            if p {
                let ci = schema
                    .index_of(&spec.name)
                    .map_err(|_| missing_column(path, &spec.name, schema))?;
                roots.push(ci);
            }
        }
    }
    roots.sort_unstable();
    roots.dedup();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    guard(path, move || {
        let mask = ProjectionMask::roots(meta.metadata().file_metadata().schema_descr(), roots);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| Error::corrupt(path, e))?;
        let mut out: Vec<Option<Column>> = specs
            .iter()
            .zip(present)
            .map(|(spec, &p)| {
                p.then(|| {
                    let ci = schema.index_of(&spec.name).unwrap_or(0);
                    Column::empty(&spec.kind, schema.field(ci).data_type())
                })
            })
            .collect();
        let mut row = row0;
        for batch in reader {
            let batch = batch.map_err(|e| Error::corrupt(path, format!("row group {rg}: {e}")))?;
            let rows = batch.num_rows();
            // A history table's events, and the row of the file each comes from.
            let (batch, source) = match exploded {
                Some(_) => {
                    let wanted: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
                    let (b, s) = crate::data::history_table::explode(path, row, &batch, &wanted)?;
                    (b, Some(s))
                }
                None => (batch, None),
            };
            for ((spec, col), &p) in specs.iter().zip(out.iter_mut()).zip(present) {
                let Some(col) = col.as_mut().filter(|_| p) else {
                    continue;
                };
                let arr = batch
                    .column_by_name(&spec.name)
                    .ok_or_else(|| missing_column(path, &spec.name, schema))?;
                let ctx = Ctx {
                    path,
                    column: &spec.name,
                    row0: if source.is_some() { 0 } else { row },
                };
                convert(&ctx, &spec.kind, arr, col).map_err(|e| match &source {
                    Some(s) => crate::data::history_table::locate(e, row, s),
                    None => e,
                })?;
            }
            row += rows;
        }
        Ok(out)
    })
}

/// Converts an in-memory `List`/`LargeList` array of integers (any child field name, offsets
/// not necessarily starting at 0) into a [`ListColumn`]; errors name `column` and the file
/// `<memory>`.
///
/// # Errors
/// [`Error::Schema`] for another type, [`Error::Value`] for a null list or a null element.
pub fn int_list_from_arrow(column: &str, arr: &ArrayRef) -> Result<ListColumn<i64>> {
    let ctx = Ctx {
        path: Path::new("<memory>"),
        column,
        row0: 0,
    };
    if !Kind::IntList.accepts(arr.data_type()) {
        return Err(ctx.schema(format!(
            "has type {}; expected {}",
            arr.data_type(),
            Kind::IntList.expected()
        )));
    }
    let mut out = Column::empty(&Kind::IntList, arr.data_type());
    convert(&ctx, &Kind::IntList, arr, &mut out)?;
    Ok(out.into_i64_list().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Conversion of one batch's array
// ---------------------------------------------------------------------------------------------

/// Appends `arr` (rows `row0..` of `path`'s column `column`) to `out` as `kind`, with the same
/// checks and named errors as the parquet reader (nulls, types, ranges).
pub(crate) fn append_array(
    path: &Path,
    column: &str,
    row0: usize,
    kind: &Kind,
    arr: &ArrayRef,
    out: &mut Column,
) -> Result<()> {
    convert(&Ctx { path, column, row0 }, kind, arr, out)
}

/// Where a batch's array comes from, for error messages.
struct Ctx<'a> {
    path: &'a Path,
    column: &'a str,
    /// Row (within the file) of the array's first element.
    row0: usize,
}

impl Ctx<'_> {
    fn value(&self, i: usize, reason: impl ToString) -> Error {
        Error::value(self.path, self.row0 + i, self.column, reason)
    }
    fn schema(&self, reason: impl ToString) -> Error {
        Error::schema(self.path, self.column, reason)
    }
    fn out_of_range(&self, i: usize, field: &str, id: i64, bound: u64) -> Error {
        Error::IdOutOfRange {
            path: self.path.to_path_buf(),
            row: self.row0 + i,
            field: field.to_string(),
            id,
            vocab: bound as usize,
        }
    }
}

fn first_null(arr: &dyn Array) -> Option<usize> {
    let nulls = arr.logical_nulls()?;
    if nulls.null_count() == 0 {
        return None;
    }
    (0..arr.len()).find(|&i| nulls.is_null(i))
}

fn convert(ctx: &Ctx, kind: &Kind, arr: &ArrayRef, out: &mut Column) -> Result<()> {
    if let Some(i) = first_null(arr.as_ref()) {
        return Err(ctx.value(i, "null value (nulls are not allowed)"));
    }
    let n = arr.len();
    match (kind, out) {
        (Kind::RawId, Column::RawIds(ids)) => raw_ids(ctx, arr.as_ref(), ids),
        (Kind::Timestamp, Column::I64(v)) => {
            v.reserve(n);
            each_int(ctx, arr.as_ref(), &|i| i, |_, x| {
                v.push(x);
                Ok(())
            })
        }
        (Kind::Label, Column::U8(v)) => {
            v.reserve(n);
            if let Some(b) = arr.as_boolean_opt() {
                v.extend(b.values().iter().map(u8::from));
                return Ok(());
            }
            each_int(ctx, arr.as_ref(), &|i| i, |i, x| {
                if x == 0 || x == 1 {
                    v.push(x as u8);
                    Ok(())
                } else {
                    Err(ctx.value(i, format!("label {x} is not 0 or 1")))
                }
            })
        }
        (Kind::Index { field, bound }, Column::U32(v)) => {
            v.reserve(n);
            each_int(ctx, arr.as_ref(), &|i| i, |i, x| {
                if x >= 0 && (x as u64) < *bound && x <= i64::from(u32::MAX) {
                    v.push(x as u32);
                    Ok(())
                } else {
                    Err(ctx.out_of_range(i, field, x, *bound))
                }
            })
        }
        (Kind::Count, Column::U32(v)) => {
            v.reserve(n);
            each_int(ctx, arr.as_ref(), &|i| i, |i, x| match u32::try_from(x) {
                Ok(x) => {
                    v.push(x);
                    Ok(())
                }
                Err(_) => Err(ctx.value(i, format!("{x} is not a count in 0..=4294967295"))),
            })
        }
        (Kind::IntList, Column::I64List(l)) => list(ctx, arr.as_ref(), l, |_, x| Ok(x)),
        (Kind::IndexList { field, bound }, Column::U32List(l)) => {
            list(ctx, arr.as_ref(), l, |row, x| {
                if x >= 0 && (x as u64) < *bound && x <= i64::from(u32::MAX) {
                    Ok(x as u32)
                } else {
                    Err(ctx.out_of_range(row, field, x, *bound))
                }
            })
        }
        (_, out) => Err(ctx.schema(format!(
            "has type {} in this row group, which does not match the earlier rows ({})",
            arr.data_type(),
            match out {
                Column::RawIds(RawIds::Int(_)) => "integer ids",
                Column::RawIds(RawIds::Str(_)) => "string ids",
                _ => "another type",
            }
        ))),
    }
}

/// Calls `f(i, value)` for every element of an integer/timestamp/date array (no nulls).
/// `row_of(i)` maps an element index to the row (relative to `ctx.row0`) named in errors.
fn each_int(
    ctx: &Ctx,
    arr: &dyn Array,
    row_of: &dyn Fn(usize) -> usize,
    mut f: impl FnMut(usize, i64) -> Result<()>,
) -> Result<()> {
    macro_rules! prim {
        ($t:ty) => {{
            for (i, &x) in arr.as_primitive::<$t>().values().iter().enumerate() {
                f(i, i64::from(x))?;
            }
        }};
    }
    match arr.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => {
            for (i, &x) in arr.as_primitive::<UInt64Type>().values().iter().enumerate() {
                let x = i64::try_from(x).map_err(|_| {
                    ctx.value(
                        row_of(i),
                        format!("value {x} does not fit in a signed 64-bit integer"),
                    )
                })?;
                f(i, x)?;
            }
        }
        DataType::Timestamp(TimeUnit::Second, _) => prim!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => prim!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => prim!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => prim!(TimestampNanosecondType),
        DataType::Date32 => prim!(Date32Type),
        DataType::Date64 => prim!(Date64Type),
        other => return Err(ctx.schema(format!("has type {other}; expected integers"))),
    }
    Ok(())
}

fn raw_ids(ctx: &Ctx, arr: &dyn Array, out: &mut RawIds) -> Result<()> {
    if let Some(dict) = arr.as_any_dictionary_opt() {
        if arr.is_empty() {
            return Ok(());
        }
        if dict.values().is_empty() {
            return Err(ctx.value(0, "dictionary-encoded column with an empty dictionary"));
        }
        let mut values = match out {
            RawIds::Int(_) => RawIds::Int(Vec::new()),
            RawIds::Str(_) => RawIds::Str(StrIds::default()),
        };
        let vctx = Ctx {
            path: ctx.path,
            column: ctx.column,
            row0: ctx.row0,
        };
        raw_ids(&vctx, dict.values().as_ref(), &mut values)?;
        let keys = dict.normalized_keys();
        match (out, &values) {
            (RawIds::Int(o), RawIds::Int(v)) => o.extend(keys.iter().map(|&k| v[k])),
            (RawIds::Str(o), RawIds::Str(v)) => keys.iter().for_each(|&k| o.push(v.get(k))),
            _ => return Err(ctx.schema("dictionary value type differs from the earlier rows")),
        }
        return Ok(());
    }
    match out {
        RawIds::Int(v) => {
            v.reserve(arr.len());
            each_int(ctx, arr, &|i| i, |_, x| {
                v.push(x);
                Ok(())
            })
        }
        RawIds::Str(s) => {
            match arr.data_type() {
                DataType::Utf8 => arr
                    .as_string::<i32>()
                    .iter()
                    .for_each(|x| s.push(x.unwrap_or(""))),
                DataType::LargeUtf8 => arr
                    .as_string::<i64>()
                    .iter()
                    .for_each(|x| s.push(x.unwrap_or(""))),
                DataType::Utf8View => arr
                    .as_string_view()
                    .iter()
                    .for_each(|x| s.push(x.unwrap_or(""))),
                other => {
                    return Err(ctx.schema(format!(
                        "has type {other} here but string ids in the earlier rows"
                    )))
                }
            }
            Ok(())
        }
    }
}

/// Appends a `List`/`LargeList` array to `out`, mapping each element with `f(row, value)`.
fn list<T>(
    ctx: &Ctx,
    arr: &dyn Array,
    out: &mut ListColumn<T>,
    f: impl FnMut(usize, i64) -> Result<T>,
) -> Result<()> {
    match arr.data_type() {
        DataType::List(_) => list_generic(ctx, arr.as_list::<i32>(), out, f),
        DataType::LargeList(_) => list_generic(ctx, arr.as_list::<i64>(), out, f),
        other => Err(ctx.schema(format!("has type {other}; expected a list of integers"))),
    }
}

fn list_generic<O: OffsetSizeTrait, T>(
    ctx: &Ctx,
    l: &GenericListArray<O>,
    out: &mut ListColumn<T>,
    mut f: impl FnMut(usize, i64) -> Result<T>,
) -> Result<()> {
    let offs = l.value_offsets();
    let n = l.len();
    // Offsets need not start at 0: take the used slice of the child array and rebase.
    let (s, e) = (offs[0].as_usize(), offs[n].as_usize());
    let values = l.values().slice(s, e - s);
    // Row (relative to the batch) that contains element j of the slice.
    let rel: Vec<usize> = offs.iter().map(|o| o.as_usize() - s).collect();
    let row_of = |j: usize| rel.partition_point(|&o| o <= j).saturating_sub(1);
    if let Some(j) = first_null(values.as_ref()) {
        let r = row_of(j);
        return Err(ctx.value(
            r,
            format!("null element at position {} of the list", j - rel[r]),
        ));
    }
    let base = out.values.len() as u64;
    out.values.reserve(e - s);
    out.offsets.reserve(n);
    out.offsets
        .extend(rel[1..].iter().map(|&o| base + o as u64));
    // Elements come in order, so the row containing element j is tracked with a cursor.
    let mut row = 0usize;
    each_int(ctx, values.as_ref(), &row_of, |j, x| {
        while rel[row + 1] <= j {
            row += 1;
        }
        out.values.push(f(row, x)?);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writer properties used for every file we write: zstd level 3, `row_group_rows` rows per
/// row group.
fn writer_props(row_group_rows: usize) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(3).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build())
}

/// Writes `batches` (all with `schema`) to `path` as parquet, atomically (the previous file, if
/// any, stays intact on error). zstd level 3, at most `row_group_rows` rows per row group
/// ([`ROW_GROUP_ROWS`] is a good default).
///
/// # Errors
/// [`Error::Io`] naming `path`; [`Error::Corrupt`] naming `path` if arrow/parquet refuse the
/// data (e.g. a batch whose schema differs).
pub fn write_parquet<I>(
    path: &Path,
    schema: SchemaRef,
    batches: I,
    row_group_rows: usize,
) -> Result<()>
where
    I: IntoIterator<Item = Result<RecordBatch>>,
{
    let fail =
        |e: parquet::errors::ParquetError| Error::corrupt(path, format!("writing parquet: {e}"));
    let mut buf = Vec::new();
    {
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(writer_props(row_group_rows)?))
            .map_err(fail)?;
        for b in batches {
            w.write(&b?).map_err(fail)?;
        }
        w.close().map_err(fail)?;
    }
    atomic_write_bytes(path, &buf)
}

/// Writes one record batch to `path` atomically (see [`write_parquet`]), [`ROW_GROUP_ROWS`]
/// rows per row group.
///
/// # Errors
/// As [`write_parquet`].
pub fn write_batch(path: &Path, batch: &RecordBatch) -> Result<()> {
    write_parquet(
        path,
        batch.schema(),
        std::iter::once(Ok(batch.clone())),
        ROW_GROUP_ROWS,
    )
}

/// A parquet file written batch by batch (memory: one row group), atomically: the rows go to a
/// temporary file in the target's directory, renamed over the target by [`ParquetSink::finish`].
/// Dropped without `finish` (an error on the way), it leaves the previous file untouched.
pub struct ParquetSink {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
    writer: ArrowWriter<std::io::BufWriter<File>>,
}

impl ParquetSink {
    /// Starts `path` with `schema`, the key-value `metadata` in its footer, at most
    /// `row_group_rows` rows per row group.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` when its directory is not writable.
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        metadata: &[(String, String)],
        row_group_rows: usize,
    ) -> Result<Self> {
        let tmp = crate::atomic::temp_beside(path)?;
        let file = tmp.as_file().try_clone().map_err(|e| Error::io(path, e))?;
        let kv = metadata
            .iter()
            .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
            .collect();
        let level = ZstdLevel::try_new(3).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_key_value_metadata(Some(kv))
            .build();
        let writer = ArrowWriter::try_new(std::io::BufWriter::new(file), schema, Some(props))
            .map_err(|e| Error::corrupt(path, format!("writing parquet: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            writer,
        })
    }

    /// Appends a batch.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file if parquet refuses the batch (another schema).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| Error::corrupt(&self.path, format!("writing parquet: {e}")))
    }

    /// Writes the footer, syncs, and renames the file into place.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] naming the file.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let mut w = self
            .writer
            .into_inner()
            .map_err(|e| Error::corrupt(&path, format!("writing parquet: {e}")))?;
        std::io::Write::flush(&mut w).map_err(|e| Error::io(&path, e))?;
        crate::atomic::commit(self.tmp, &path)
    }
}

/// Reads a parquet file's footer key-value metadata.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] naming the file.
pub fn parquet_key_values(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let meta = open_metadata(path)?;
    Ok(meta
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default())
}

/// The record batches of a parquet file, `batch_rows` rows at a time, in order (one batch in
/// memory at a time); a failing batch is an error naming the file.
///
/// # Errors
/// [`Error::Io`] / [`Error::Corrupt`] naming the file.
pub fn parquet_batches(
    path: &Path,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = guard(path, || {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(batch_rows.max(1)).build())
            .map_err(|e| Error::corrupt(path, format!("not a readable parquet file: {e}")))
    })?;
    let path = path.to_path_buf();
    let mut reader = reader;
    Ok(std::iter::from_fn(move || {
        match catch_unwind(AssertUnwindSafe(|| reader.next())) {
            Ok(None) => None,
            Ok(Some(r)) => Some(r.map_err(|e| Error::corrupt(&path, e))),
            Err(_) => Some(Err(Error::corrupt(
                &path,
                "the parquet reader failed on this file",
            ))),
        }
    }))
}
