//! Encoding from Arrow record batches in memory, for engines that hand a function one batch at
//! a time (Spark's `mapInArrow` and `groupBy(user).applyInArrow`, Ray Data's `map_batches` and
//! `map_groups`), and a writer that lays the encoded batches out as one part file of an
//! encodings directory that [`super::Scorer`] opens.
//!
//! - [`BatchEncoder::encode`] turns a batch of events (the columns `prepare` reads: user, item,
//!   category, timestamp, optional label; label-0 rows are impressions, not behaviors) into one
//!   encodings row per user of the batch, every behavior of a user in the batch, ordered by
//!   timestamp (a stable sort: ties keep the batch's order). A per-user history table (the item,
//!   category and timestamp columns as lists, or a list of structs, one row per user) is
//!   exploded into its events first, as `prepare` reads one ([`crate::data::history_table`]).
//! - [`StreamEncoder`] does the same over a stream whose users are contiguous but may straddle
//!   batch boundaries (a partition sorted by user): the last user of each batch waits for the
//!   next.
//! - [`PartWriter`] writes `part-I-of-N.parquet` of an encodings directory atomically, checking
//!   every row against the model's layout, that each user belongs to the part's shard
//!   ([`super::shard_of`]) and that no user is written twice.
//!
//! The encoding of a user equals `lifelong encode`'s for the same behaviors in the same order
//! (the same [`crate::model::CtrModel::encode_user`]).

use super::format::*;
use super::writer::copy_vocab;
use crate::checkpoint::{self, ModelFile};
use crate::data::history_table;
use crate::data::io::{self, Column, Kind, RawIds};
use crate::data::vocab::{RawId, Vocab};
use crate::data::ColumnNames;
use crate::model::EncodingLayout;
use crate::{Error, Result};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What errors name as the file of an in-memory batch.
const SOURCE: &str = "<record batch>";

/// A checkpoint and its vocabularies, encoding batches of events (see the module docs).
#[derive(Debug)]
pub struct BatchEncoder {
    mf: ModelFile,
    vocab_dir: PathBuf,
    users: Vocab,
    items: Vocab,
    cates: Vocab,
    columns: ColumnNames,
    fingerprint: String,
    layout: EncodingLayout,
    schema: SchemaRef,
}

impl BatchEncoder {
    /// Opens a run directory (its best checkpoint) or checkpoint file with the vocabularies of
    /// `vocab_dir` (a prepared dataset or an encodings directory: the directory holding
    /// `vocab/`), whose fingerprint must be the checkpoint's.
    ///
    /// # Errors
    /// Named errors for a bad checkpoint, a missing or foreign `vocab/`.
    pub fn open(checkpoint: &Path, vocab_dir: &Path, columns: ColumnNames) -> Result<Self> {
        let mf = ModelFile::open(checkpoint, &candle_core::Device::Cpu)?;
        mf.check_vocab_dir(vocab_dir)?;
        let vocab = |f: &str| Vocab::read(&vocab_dir.join("vocab").join(format!("{f}.parquet")));
        let (users, items, cates) = (vocab("user")?, vocab("item")?, vocab("cate")?);
        let layout = mf.model.encoding_layout();
        let fingerprint = checkpoint::model_fingerprint(&mf.model)?;
        let schema = schema(&layout, users.is_string());
        Ok(Self {
            mf,
            vocab_dir: vocab_dir.to_path_buf(),
            users,
            items,
            cates,
            columns,
            fingerprint,
            layout,
            schema,
        })
    }

    /// The schema of the encodings batches it returns (an encodings file's columns).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The model (its checkpoint, config and weights).
    pub fn model_file(&self) -> &ModelFile {
        &self.mf
    }

    /// One encodings row per user of `events`, in order of each user's first row.
    ///
    /// # Errors
    /// [`Error::Schema`] for a missing or mistyped column or user ids of another type than the
    /// vocabulary's; [`Error::Value`] for a null or a label other than 0/1 (the row named).
    pub fn encode(&self, events: &RecordBatch) -> Result<RecordBatch> {
        let (events, source) = self.explode(events)?;
        let ev = self
            .read(&events)
            .map_err(|e| history_table::locate(e, 0, &source))?;
        let encoded = self.encode_users(&ev, &group(&ev.users))?;
        to_batch(&self.schema, &self.layout, &encoded)
    }

    /// A history table's events (each with the row it comes from); events as they are.
    fn explode(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<u32>)> {
        let c = &self.columns;
        let wanted = [&c.user, &c.item, &c.cate, &c.ts, &c.label].map(|s| s.to_string());
        history_table::explode(Path::new(SOURCE), 0, batch, &wanted)
    }

    /// The columns of `events`, checked as `prepare` checks a log's.
    fn read(&self, events: &RecordBatch) -> Result<Events> {
        let c = &self.columns;
        let source = Path::new(SOURCE);
        let schema = events.schema();
        let column = |name: &str, kind: Kind, required: bool| -> Result<Option<Column>> {
            match schema.index_of(name) {
                Ok(i) => column_of(events.column(i), name, &kind).map(Some),
                Err(_) if required => Err(io::missing_column(source, name, &schema)),
                Err(_) => Ok(None),
            }
        };
        let raw = |name: &str| -> Result<RawIds> {
            Ok(column(name, Kind::RawId, true)?
                .and_then(Column::into_raw_ids)
                .unwrap_or(RawIds::Int(Vec::new())))
        };
        let users = raw(&c.user)?;
        if matches!(users, RawIds::Str(_)) != self.users.is_string() && !users.is_empty() {
            let (got, want) = match self.users.is_string() {
                true => ("integer", "strings"),
                false => ("string", "integers"),
            };
            return Err(Error::schema(
                source,
                &c.user,
                format!("{got} user ids, but the vocabulary's user ids are {want}"),
            ));
        }
        let (items, cates) = (raw(&c.item)?, raw(&c.cate)?);
        let ts = column(&c.ts, Kind::Timestamp, true)?
            .and_then(Column::into_i64)
            .unwrap_or_default();
        let label = match c.label.is_empty() {
            true => None,
            false => column(&c.label, Kind::Label, false)?.and_then(Column::into_u8),
        };
        Ok(Events {
            users,
            items,
            cates,
            ts,
            label,
        })
    }

    /// The encodings of `groups` (rows of `ev` per user).
    fn encode_users(
        &self,
        ev: &Events,
        groups: &[(RawId, Vec<usize>)],
    ) -> Result<Vec<EncodedUser>> {
        let model = &self.mf.model;
        groups
            .par_iter()
            .map(|(id, rows)| {
                let mut rows: Vec<usize> = rows
                    .iter()
                    .copied()
                    .filter(|&r| ev.label.as_ref().is_none_or(|l| l[r] == 1))
                    .collect();
                rows.sort_by_key(|&r| ev.ts[r]); // stable: ties keep the batch's order
                let items = lookup(&self.items, &ev.items, &rows);
                let cates = lookup(&self.cates, &ev.cates, &rows);
                let ts: Vec<i64> = rows.iter().map(|&r| ev.ts[r]).collect();
                let enc = model
                    .encode_user_at(self.users.lookup(id), &items, &cates, Some(&ts))
                    .map_err(|e| Error::InvalidArgument(format!("{SOURCE}: user {id}: {e}")))?;
                Ok(EncodedUser {
                    id: id.clone(),
                    last_ts: rows.last().map(|&r| ev.ts[r]),
                    enc,
                })
            })
            .collect()
    }
}

/// The vocabulary indices of `rows` of `ids` (no per-id allocation for string ids).
fn lookup(vocab: &Vocab, ids: &RawIds, rows: &[usize]) -> Vec<u32> {
    match ids {
        RawIds::Int(v) => rows.iter().map(|&r| vocab.lookup_int(v[r])).collect(),
        RawIds::Str(s) => rows.iter().map(|&r| vocab.lookup_str(s.get(r))).collect(),
    }
}

/// An array read as `kind` with the checks and named errors of the parquet reader.
fn column_of(arr: &arrow_array::ArrayRef, name: &str, kind: &Kind) -> Result<Column> {
    if !kind.accepts(arr.data_type()) {
        return Err(Error::schema(
            SOURCE,
            name,
            format!("expected {}, got {}", kind.expected(), arr.data_type()),
        ));
    }
    let mut out = Column::empty(kind, arr.data_type());
    io::append_array(Path::new(SOURCE), name, 0, kind, arr, &mut out)?;
    Ok(out)
}

/// A batch's event columns.
struct Events {
    users: RawIds,
    items: RawIds,
    cates: RawIds,
    ts: Vec<i64>,
    label: Option<Vec<u8>>,
}

/// Rows per user, users in order of their first row.
fn group(users: &RawIds) -> Vec<(RawId, Vec<usize>)> {
    let mut at: HashMap<RawId, usize> = HashMap::new();
    let mut out: Vec<(RawId, Vec<usize>)> = Vec::new();
    for r in 0..users.len() {
        let id = users.get(r);
        match at.get(&id) {
            Some(&g) => out[g].1.push(r),
            None => {
                at.insert(id.clone(), out.len());
                out.push((id, vec![r]));
            }
        }
    }
    out
}

/// [`BatchEncoder::encode`] over a stream of event batches in which each user's rows are
/// contiguous (a partition sorted by user, or one group per batch): the rows of the last user
/// of a batch are held until the next batch shows whether more of them follow.
#[derive(Debug)]
pub struct StreamEncoder {
    encoder: Arc<BatchEncoder>,
    held: Option<RecordBatch>,
}

impl StreamEncoder {
    /// A stream over `encoder`.
    pub fn new(encoder: Arc<BatchEncoder>) -> Self {
        Self {
            encoder,
            held: None,
        }
    }

    /// Encodes every user of `events` (and of the rows held from before) but the last one,
    /// which is held; `None` when nothing is complete yet.
    ///
    /// # Errors
    /// As [`BatchEncoder::encode`] (rows counted from the first held row); a batch of another
    /// schema than the held rows'.
    pub fn push(&mut self, events: &RecordBatch) -> Result<Option<RecordBatch>> {
        let (events, _) = self.encoder.explode(events)?;
        let all = match self.held.take() {
            Some(h) => {
                arrow_select::concat::concat_batches(&h.schema(), [&h, &events]).map_err(|e| {
                    Error::schema(SOURCE, "*", format!("batches of different schemas: {e}"))
                })?
            }
            None => events,
        };
        if all.num_rows() == 0 {
            return Ok(None);
        }
        let ev = self.encoder.read(&all)?;
        // The last user's rows are the trailing run of its id.
        let last = ev.users.get(all.num_rows() - 1);
        let mut start = all.num_rows() - 1;
        while start > 0 && ev.users.get(start - 1) == last {
            start -= 1;
        }
        self.held = Some(all.slice(start, all.num_rows() - start));
        if start == 0 {
            return Ok(None);
        }
        let groups = group_prefix(&ev.users, start);
        let encoded = self.encoder.encode_users(&ev, &groups)?;
        to_batch(&self.encoder.schema, &self.encoder.layout, &encoded).map(Some)
    }

    /// Encodes the held rows: the end of the stream.
    ///
    /// # Errors
    /// As [`BatchEncoder::encode`].
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        match self.held.take() {
            Some(h) if h.num_rows() > 0 => self.encoder.encode(&h).map(Some),
            _ => Ok(None),
        }
    }
}

/// [`group`] of the first `n` rows.
fn group_prefix(users: &RawIds, n: usize) -> Vec<(RawId, Vec<usize>)> {
    let mut g = group(users);
    for (_, rows) in &mut g {
        rows.retain(|&r| r < n);
    }
    g.retain(|(_, rows)| !rows.is_empty());
    g
}

/// One part file of an encodings directory, written batch by batch (see the module docs).
pub struct PartWriter {
    sink: Option<io::ParquetSink>,
    file: PathBuf,
    shard: Shard,
    layout: EncodingLayout,
    schema: SchemaRef,
    seen: HashSet<RawId>,
    rows: usize,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter")
            .field("file", &self.file)
            .field("shard", &self.shard)
            .field("users", &self.seen.len())
            .finish()
    }
}

impl PartWriter {
    /// Starts `dir/part-I-of-N.parquet` for `encoder`'s model and copies its vocabularies into
    /// `dir/vocab` (several writers of one directory may do so at once: each copy is atomic).
    ///
    /// # Errors
    /// [`Error::Io`] naming what could not be created.
    pub fn create(dir: &Path, encoder: &BatchEncoder, shard: Shard) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        copy_vocab(&encoder.vocab_dir, dir)?;
        let file = dir.join(shard.file_name());
        let sink = io::ParquetSink::create(
            &file,
            encoder.schema.clone(),
            &footer(&encoder.fingerprint, &encoder.layout, shard)?,
            USERS_PER_BATCH,
        )?;
        Ok(Self {
            sink: Some(sink),
            file,
            shard,
            layout: encoder.layout.clone(),
            schema: encoder.schema.clone(),
            seen: HashSet::new(),
            rows: 0,
        })
    }

    /// The part's shard.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Appends a batch of encodings (as [`BatchEncoder::encode`] returns).
    ///
    /// # Errors
    /// [`Error::Schema`] / [`Error::Value`] for a batch that is not encodings of this model;
    /// [`Error::InvalidArgument`] for a user of another shard or one written before (a user
    /// whose events were split between batches).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Err(Error::InvalidArgument(format!(
                "{}: the writer is closed",
                self.file.display()
            )));
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let fields = |s: &SchemaRef| -> Vec<(String, arrow_schema::DataType)> {
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        let (want, got) = (fields(&self.schema), fields(&batch.schema()));
        if want.iter().map(|f| &f.0).ne(got.iter().map(|f| &f.0)) {
            return Err(Error::schema(
                SOURCE,
                "*",
                format!(
                    "columns {:?}, but this model's encodings have {:?}",
                    got.iter().map(|f| &f.0).collect::<Vec<_>>(),
                    want.iter().map(|f| &f.0).collect::<Vec<_>>()
                ),
            ));
        }
        let rows = from_batch(Path::new(SOURCE), self.rows, &self.layout, batch)?;
        for r in &rows {
            if !self.shard.owns(&r.id) {
                return Err(Error::InvalidArgument(format!(
                    "{}: user {} belongs to shard {} of {}, not {}",
                    self.file.display(),
                    r.id,
                    shard_of(&r.id, self.shard.count),
                    self.shard.count,
                    self.shard.index
                )));
            }
            if !self.seen.insert(r.id.clone()) {
                return Err(Error::InvalidArgument(format!(
                    "{}: user {} is written twice (were its events split between batches? group them by user)",
                    self.file.display(),
                    r.id
                )));
            }
        }
        self.rows += batch.num_rows();
        // The batch is cast to the file's schema (the same columns and types; list fields'
        // names and nullability may differ after a trip through an engine).
        let cast = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .or_else(|_| to_batch(&self.schema, &self.layout, &rows))?;
        sink.write(&cast)
    }

    /// Users written so far.
    pub fn users(&self) -> usize {
        self.seen.len()
    }

    /// Closes the file (renamed into place); returns its path.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Corrupt`] naming the file.
    pub fn finish(&mut self) -> Result<PathBuf> {
        match self.sink.take() {
            Some(s) => s.finish().map(|()| self.file.clone()),
            None => Err(Error::InvalidArgument(format!(
                "{}: the writer is closed",
                self.file.display()
            ))),
        }
    }
}

/// The shard of every id of a raw id array (any integer or string type; [`shard_of`]).
///
/// # Errors
/// [`Error::Schema`] for another type, [`Error::Value`] for a null.
pub fn shards_of(ids: &dyn Array, count: usize) -> Result<Vec<u32>> {
    if count == 0 {
        return Err(Error::InvalidArgument("a shard count of 0".into()));
    }
    let arr = arrow_array::make_array(ids.to_data());
    let out = column_of(&arr, "user_id", &Kind::RawId)?;
    let ids = out.into_raw_ids().unwrap_or(RawIds::Int(Vec::new()));
    Ok((0..ids.len())
        .map(|r| shard_of(&ids.get(r), count) as u32)
        .collect())
}
