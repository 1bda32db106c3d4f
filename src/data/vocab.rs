//! Vocabularies: raw id → index, 0 = padding, 1 = unknown.
//!
//! Real ids get indices 2.. ordered by frequency (descending), ties broken by first appearance
//! in file order, so a vocabulary is a deterministic function of the event log. On disk a
//! vocabulary is `vocab/<field>.parquet` with one row per real id: `index` (int32, 2..),
//! `raw` (int64 or utf8, following the event log's type) and, for the item vocabulary, `cate`
//! (int32, the item's category index).

use crate::data::io::{self, ColumnSpec, Kind, RawIds};
use crate::{Error, Result};
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

/// Index of padding.
pub const PAD: u32 = 0;
/// Index of an id unseen at prepare time.
pub const UNKNOWN: u32 = 1;

pub use crate::data::raw_id::RawId;

/// A fast, deterministic hasher (FxHash-style multiply-rotate with a final avalanche, so keys
/// that are multiples of a power of two do not collide in the low bits).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxBuild;

#[derive(Default)]
pub(crate) struct FxHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(a) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(FX_K);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // splitmix64 finaliser.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher::default()
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, FxBuild>;

#[derive(Debug, Clone)]
enum Ids {
    Int {
        raw: Vec<i64>,
        map: FxMap<i64, u32>,
    },
    Str {
        raw: Vec<String>,
        map: FxMap<String, u32>,
    },
}

/// A vocabulary: the raw ids of indices 2.. in order, and the reverse map.
#[derive(Debug, Clone)]
pub struct Vocab {
    ids: Ids,
}

impl Default for Vocab {
    fn default() -> Self {
        Vocab {
            ids: Ids::Int {
                raw: Vec::new(),
                map: FxMap::default(),
            },
        }
    }
}

impl PartialEq for Vocab {
    fn eq(&self, other: &Self) -> bool {
        match (&self.ids, &other.ids) {
            (Ids::Int { raw: a, .. }, Ids::Int { raw: b, .. }) => a == b,
            (Ids::Str { raw: a, .. }, Ids::Str { raw: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// Builds a vocabulary over a stream of id chunks: every distinct id gets a *code* (its
/// first-appearance number, 0..), its rows are counted, and [`VocabBuilder::finish`] turns codes
/// into indices (frequency descending, ties by first appearance). Memory: one entry per distinct
/// id, whatever the number of rows.
#[derive(Debug, Default)]
pub struct VocabBuilder {
    keys: Keys,
    counts: Vec<u64>,
}

#[derive(Debug, Default)]
enum Keys {
    #[default]
    Unset,
    Int(FxMap<i64, u32>, Vec<i64>),
    Str(FxMap<String, u32>, Vec<String>),
}

fn code_of<K: Hash + Eq + Clone>(
    map: &mut FxMap<K, u32>,
    first: &mut Vec<K>,
    counts: &mut Vec<u64>,
    k: &K,
) -> u32 {
    let next = first.len() as u32;
    let c = *map.entry(k.clone()).or_insert(next);
    if c == next {
        first.push(k.clone());
        counts.push(0);
    }
    counts[c as usize] += 1;
    c
}

impl VocabBuilder {
    /// Codes `ids` (appended to `codes`, one per row), counting every row.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `ids` are strings and earlier chunks were integers (or
    /// the reverse), or when there are more distinct ids than an int32 index holds.
    pub fn add(&mut self, ids: &RawIds, codes: &mut Vec<u32>) -> Result<()> {
        if matches!(self.keys, Keys::Unset) {
            self.keys = match ids {
                RawIds::Int(_) => Keys::Int(FxMap::default(), Vec::new()),
                RawIds::Str(_) => Keys::Str(FxMap::default(), Vec::new()),
            };
        }
        codes.reserve(ids.len());
        let counts = &mut self.counts;
        match (&mut self.keys, ids) {
            (Keys::Int(map, first), RawIds::Int(v)) => {
                codes.extend(v.iter().map(|k| code_of(map, first, counts, k)));
            }
            (Keys::Str(map, first), RawIds::Str(v)) => {
                for k in v.iter() {
                    // Look up by &str first: a String is allocated only for a new id.
                    let c = match map.get(k) {
                        Some(&c) => {
                            counts[c as usize] += 1;
                            c
                        }
                        None => code_of(map, first, counts, &k.to_string()),
                    };
                    codes.push(c);
                }
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "the ids are integers in some rows and strings in others".into(),
                ))
            }
        }
        if self.counts.len() > i32::MAX as usize - 2 {
            return Err(Error::InvalidArgument(format!(
                "{} distinct ids do not fit in an int32 vocabulary index",
                self.counts.len()
            )));
        }
        Ok(())
    }

    /// Number of distinct ids so far.
    pub fn num_ids(&self) -> usize {
        self.counts.len()
    }

    /// Rows counted per code.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Approximate heap bytes held (for memory budgets).
    pub fn heap_bytes(&self) -> usize {
        let n = self.counts.len();
        let per_key = match &self.keys {
            Keys::Unset => 0,
            Keys::Int(..) => 8 + 8 + 12 + 8,
            Keys::Str(_, first) => {
                let avg = first.iter().take(1000).map(String::len).sum::<usize>()
                    / first.len().clamp(1, 1000);
                2 * (24 + avg) + 12 + 8
            }
        };
        n * per_key * 3 / 2
    }

    /// The vocabulary, and the index (2..) of every code.
    pub fn finish(self) -> (Vocab, Vec<u32>) {
        let (order, rank) = ranks(&self.counts);
        let index: Vec<u32> = rank.into_iter().map(|r| r + 2).collect();
        let vocab = match self.keys {
            Keys::Unset => Vocab::default(),
            Keys::Int(_, first) => {
                Vocab::from_ints(order.iter().map(|&a| first[a as usize]).collect())
            }
            Keys::Str(_, mut first) => Vocab::from_strings(
                order
                    .iter()
                    .map(|&a| std::mem::take(&mut first[a as usize]))
                    .collect(),
            ),
        };
        (vocab, index)
    }
}

/// The rank of every first-appearance number: frequency descending, ties by first appearance.
fn ranks(counts: &[u64]) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..counts.len() as u32).collect();
    order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    let mut rank = vec![0u32; counts.len()];
    for (r, &a) in order.iter().enumerate() {
        rank[a as usize] = r as u32;
    }
    (order, rank)
}

impl Vocab {
    /// Builds the vocabulary of `ids` (frequency descending, ties by first appearance) and
    /// returns it with every row's index (2..).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there are more distinct ids than fit in an int32 index.
    pub fn encode(ids: &RawIds) -> Result<(Vocab, Vec<u32>)> {
        let mut b = VocabBuilder::default();
        let mut codes = Vec::new();
        b.add(ids, &mut codes)?;
        let (vocab, index) = b.finish();
        codes.par_iter_mut().for_each(|c| *c = index[*c as usize]);
        Ok((vocab, codes))
    }

    /// A vocabulary whose indices 2.. are `raw` in order (duplicates keep their first index).
    pub fn from_ints(raw: Vec<i64>) -> Vocab {
        let mut map = FxMap::with_capacity_and_hasher(raw.len(), FxBuild);
        for (i, &r) in raw.iter().enumerate() {
            map.entry(r).or_insert(i as u32 + 2);
        }
        Vocab {
            ids: Ids::Int { raw, map },
        }
    }

    /// A vocabulary whose indices 2.. are `raw` in order (duplicates keep their first index).
    pub fn from_strings(raw: Vec<String>) -> Vocab {
        let mut map = FxMap::with_capacity_and_hasher(raw.len(), FxBuild);
        for (i, r) in raw.iter().enumerate() {
            map.entry(r.clone()).or_insert(i as u32 + 2);
        }
        Vocab {
            ids: Ids::Str { raw, map },
        }
    }

    /// Number of entries, padding and unknown included (so at least 2).
    pub fn len(&self) -> usize {
        self.num_ids() + 2
    }

    /// Number of real ids (`len() - 2`).
    pub fn num_ids(&self) -> usize {
        match &self.ids {
            Ids::Int { raw, .. } => raw.len(),
            Ids::Str { raw, .. } => raw.len(),
        }
    }

    /// True when the vocabulary holds no real id (only padding and unknown).
    pub fn is_empty(&self) -> bool {
        self.num_ids() == 0
    }

    /// Whether the raw ids are strings.
    pub fn is_string(&self) -> bool {
        matches!(self.ids, Ids::Str { .. })
    }

    /// The index of `raw`, or [`UNKNOWN`] if it was not seen (or has the other id type).
    pub fn lookup(&self, raw: &RawId) -> u32 {
        match raw {
            RawId::Int(x) => self.lookup_int(*x),
            RawId::Str(s) => self.lookup_str(s),
        }
    }

    /// The index of the integer id `raw`, or [`UNKNOWN`].
    pub fn lookup_int(&self, raw: i64) -> u32 {
        match &self.ids {
            Ids::Int { map, .. } => map.get(&raw).copied().unwrap_or(UNKNOWN),
            Ids::Str { .. } => UNKNOWN,
        }
    }

    /// The index of the string id `raw`, or [`UNKNOWN`].
    pub fn lookup_str(&self, raw: &str) -> u32 {
        match &self.ids {
            Ids::Str { map, .. } => map.get(raw).copied().unwrap_or(UNKNOWN),
            Ids::Int { .. } => UNKNOWN,
        }
    }

    /// The raw id of `index` (`None` for padding, unknown, or an index out of range).
    pub fn raw(&self, index: u32) -> Option<RawId> {
        let i = (index as usize).checked_sub(2)?;
        match &self.ids {
            Ids::Int { raw, .. } => raw.get(i).map(|&x| RawId::Int(x)),
            Ids::Str { raw, .. } => raw.get(i).map(|s| RawId::Str(s.clone())),
        }
    }

    /// The integer raw ids of indices 2.. (`None` for a string vocabulary).
    pub fn int_ids(&self) -> Option<&[i64]> {
        match &self.ids {
            Ids::Int { raw, .. } => Some(raw),
            Ids::Str { .. } => None,
        }
    }

    /// The string raw ids of indices 2.. (`None` for an integer vocabulary).
    pub fn str_ids(&self) -> Option<&[String]> {
        match &self.ids {
            Ids::Str { raw, .. } => Some(raw),
            Ids::Int { .. } => None,
        }
    }

    /// The vocabulary as a record batch: `index` (int32, 2..), `raw` (int64 or utf8) and, if
    /// given, `cate` (int32; `cates[index]` for every index, so `cates.len() == self.len()`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `cates` has the wrong length or an index does not fit int32.
    pub fn to_record_batch(&self, cates: Option<&[u32]>) -> Result<RecordBatch> {
        let n = self.num_ids();
        let to_i32 = |x: usize| {
            i32::try_from(x)
                .map_err(|_| Error::InvalidArgument(format!("index {x} does not fit int32")))
        };
        to_i32(n + 1)?;
        let index: ArrayRef = Arc::new(Int32Array::from_iter_values((0..n).map(|i| i as i32 + 2)));
        let (raw, raw_type): (ArrayRef, DataType) = match &self.ids {
            Ids::Int { raw, .. } => (Arc::new(Int64Array::from(raw.clone())), DataType::Int64),
            Ids::Str { raw, .. } => (
                Arc::new(StringArray::from_iter_values(raw.iter())),
                DataType::Utf8,
            ),
        };
        let mut fields = vec![
            Field::new("index", DataType::Int32, false),
            Field::new("raw", raw_type, false),
        ];
        let mut cols = vec![index, raw];
        if let Some(c) = cates {
            if c.len() != self.len() {
                return Err(Error::InvalidArgument(format!(
                    "item→cate table has {} entries, the vocabulary {}",
                    c.len(),
                    self.len()
                )));
            }
            let mut v = Vec::with_capacity(n);
            for &x in &c[2..] {
                v.push(to_i32(x as usize)?);
            }
            fields.push(Field::new("cate", DataType::Int32, false));
            cols.push(Arc::new(Int32Array::from(v)));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::InvalidArgument(format!("vocabulary batch: {e}")))
    }

    /// Writes the vocabulary to `path` atomically (see [`Vocab::to_record_batch`]).
    ///
    /// # Errors
    /// [`Error::Io`] naming `path`, or as [`Vocab::to_record_batch`].
    pub fn write(&self, path: &Path, cates: Option<&[u32]>) -> Result<()> {
        let batch = self.to_record_batch(cates)?;
        io::write_batch(path, &batch)
    }

    /// Reads a vocabulary written by [`Vocab::write`].
    ///
    /// # Errors
    /// Named errors for a missing/corrupt file, missing columns, nulls, an `index` column that is
    /// not 2, 3, 4, … ([`Error::Value`]) and duplicate raw ids ([`Error::Value`]).
    pub fn read(path: &Path) -> Result<Vocab> {
        Ok(Self::read_inner(path, None)?.0)
    }

    /// Reads the item vocabulary's item → category table: entry `i` is the category index of item
    /// index `i`; entry 0 (padding) is [`PAD`] and entry 1 (unknown) is [`UNKNOWN`]. Every
    /// category index must be `< n_cates`.
    ///
    /// # Errors
    /// As [`Vocab::read`], plus [`Error::Schema`] if there is no `cate` column and
    /// [`Error::IdOutOfRange`] for a category index `>= n_cates`.
    pub fn read_item_cates(path: &Path, n_cates: usize) -> Result<Vec<u32>> {
        let (_, cates) = Self::read_inner(path, Some(n_cates))?;
        let cates = cates.unwrap_or_default();
        let mut out = Vec::with_capacity(cates.len() + 2);
        out.push(PAD);
        out.push(UNKNOWN);
        out.extend(cates);
        Ok(out)
    }

    /// Reads a vocabulary with both its ids and its item → category table (see
    /// [`Vocab::read_item_cates`]).
    ///
    /// # Errors
    /// As [`Vocab::read_item_cates`].
    pub fn read_with_cates(path: &Path, n_cates: usize) -> Result<(Vocab, Vec<u32>)> {
        let (vocab, cates) = Self::read_inner(path, Some(n_cates))?;
        let mut out = vec![PAD, UNKNOWN];
        out.extend(cates.unwrap_or_default());
        Ok((vocab, out))
    }

    fn read_inner(path: &Path, cates: Option<usize>) -> Result<(Vocab, Option<Vec<u32>>)> {
        let mut specs = vec![
            ColumnSpec::new("index", Kind::Count),
            ColumnSpec::new("raw", Kind::RawId),
        ];
        if let Some(n) = cates {
            specs.push(ColumnSpec::new("cate", Kind::index("cate", n)));
        }
        let mut t = io::read_table(path, &specs)?;
        let index = t.take(0).and_then(|c| c.into_u32()).unwrap_or_default();
        let raw = t
            .take(1)
            .and_then(|c| c.into_raw_ids())
            .unwrap_or(RawIds::Int(Vec::new()));
        let cates = t.take(2).and_then(|c| c.into_u32());
        for (r, &ix) in index.iter().enumerate() {
            if ix as usize != r + 2 {
                let (file, row) = t.locate(r);
                return Err(Error::value(
                    file,
                    row,
                    "index",
                    format!(
                        "index {ix} where {} was expected (indices are 2, 3, 4, … in order)",
                        r + 2
                    ),
                ));
            }
        }
        let vocab = match raw {
            RawIds::Int(v) => Vocab::from_ints(v),
            RawIds::Str(s) => Vocab::from_strings(s.iter().map(str::to_string).collect()),
        };
        if vocab.map_len() != vocab.num_ids() {
            let dup = vocab.first_duplicate().unwrap_or(0);
            let (file, row) = t.locate(dup);
            return Err(Error::value(
                file,
                row,
                "raw",
                "duplicate raw id in the vocabulary",
            ));
        }
        Ok((vocab, cates))
    }

    fn map_len(&self) -> usize {
        match &self.ids {
            Ids::Int { map, .. } => map.len(),
            Ids::Str { map, .. } => map.len(),
        }
    }

    fn first_duplicate(&self) -> Option<usize> {
        (0..self.num_ids()).find(|&i| match &self.ids {
            Ids::Int { raw, map } => map.get(&raw[i]).copied() != Some(i as u32 + 2),
            Ids::Str { raw, map } => map.get(&raw[i]).copied() != Some(i as u32 + 2),
        })
    }
}
