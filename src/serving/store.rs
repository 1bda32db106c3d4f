//! Encodings beyond RAM: one flat file per served shard and precision, built from an encodings
//! directory's parquet parts and read in place through a memory map. Resident memory is the
//! index (about 70 bytes a user) plus the file pages of the users actually requested: clean
//! pages of a file, which the kernel drops under memory pressure and reads back on demand, so
//! a machine serves more users than its RAM holds.
//!
//! Why a flat file and not an embedded key-value store: between reloads the encodings are
//! read-only and every record is written once, in one pass, so a store's write path (B-tree
//! pages, a log, compaction) buys nothing; a lookup here is one hash probe in memory and one
//! contiguous read of the record, as in the in-memory store, which it is measured against
//! (`examples/bench_store.rs`).
//!
//! The file is a cache of the parquet parts: its header names them (file name, size, modified
//! time), the model fingerprint, the layout, the shard and the precision; a file whose header
//! does not match is rebuilt, atomically, beside the old one (`store-I-of-N-PREC-HASH.bin`).
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `LLSTORE1` |
//! | 8 | header length H (u64) |
//! | H | the header (JSON) |
//! | … | records, each at an 8-byte boundary: `user`, `n` (behaviors), `words` (code words in all), `t` (timestamps: `n` with a time field, else 0) (u32 each); `items`, `cates` (`n` u32 each); from an 8-byte boundary the times (`t` i64), then codes (`words` u64); each bucket table of the layout (f32 or f16 values) |
//! | … | the index: per user a kind byte (0: int64 id, 1: string id), the id (i64, or u32 length and UTF-8 bytes), the record's offset (u64) |
//! | 16 | trailer: the index's offset and the number of users (u64 each) |
//!
//! All numbers are little-endian.

use super::format::Shard;
use super::reader::for_each_in_shard;
use crate::data::RawId;
use crate::model::{CtrModel, EncodingLayout, UserEncoding};
use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The precision SDIM's bucket sums are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// As encoded.
    #[default]
    F32,
    /// IEEE half precision: half the bytes (SDIM's 32 KB per user at its preset become 16 KB);
    /// widened to f32 for each request.
    F16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(Error::InvalidArgument(format!(
                "precision `{s}`: expected f32 or f16"
            ))),
        }
    }
}

const MAGIC: &[u8; 8] = b"LLSTORE1";

/// What a store file was built from; a file is reused only when this matches exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Header {
    fingerprint: String,
    layout: EncodingLayout,
    shard: (usize, usize),
    f16: bool,
    /// The parquet parts: name, size in bytes, modification time (ns since the epoch).
    source: Vec<(String, u64, u128)>,
}

/// A memory-mapped store of one shard's encodings.
#[derive(Debug)]
pub struct MappedStore {
    path: PathBuf,
    map: memmap2::Mmap,
    index: HashMap<RawId, u64>,
    layout: EncodingLayout,
    f16: bool,
}

impl MappedStore {
    /// The store of `encodings` for `model`, shard `shard` and bucket `precision`, in `dir`:
    /// opened if a matching file is there, else built from the parquet parts first.
    ///
    /// # Errors
    /// As [`for_each_in_shard`] while building; [`Error::Io`] naming the file when `dir` is
    /// not writable or the file cannot be mapped; [`Error::Corrupt`] for a user encoded twice.
    pub fn open_or_build(
        dir: &Path,
        encodings: &Path,
        model: &CtrModel,
        shard: Shard,
        precision: Precision,
    ) -> Result<Self> {
        let header = Header {
            fingerprint: crate::checkpoint::model_fingerprint(model)?,
            layout: model.encoding_layout(),
            shard: (shard.index, shard.count),
            f16: precision == Precision::F16,
            source: sources(encodings)?,
        };
        let json = serde_json::to_vec(&header).map_err(|e| Error::Config(e.to_string()))?;
        let prec = if header.f16 { "f16" } else { "f32" };
        let stem = format!("store-{}-of-{}-{prec}", shard.index, shard.count);
        let path = dir.join(format!("{stem}-{:08x}.bin", crc32fast::hash(&json)));
        let store = match Self::open(&path, Some(&header)) {
            Ok(s) => s,
            Err(_) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                build(&path, &json, &header.layout, header.f16, |f| {
                    for_each_in_shard(encodings, model, shard, f)
                })?;
                Self::open(&path, Some(&header))?
            }
        };
        // Stores of this shard and precision built from other encodings are stale; a store
        // still mapped by a scorer that is being replaced stays readable until unmapped.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{stem}-")) && e.path() != path {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(store)
    }

    /// Writes a store of `users` for `model` at `path` (atomically), whatever their source (a
    /// benchmark's, a pipeline's own): what [`MappedStore::open_file`] opens.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path`; [`Error::InvalidArgument`] for an encoding that does not
    /// fit the model; [`Error::Corrupt`] for a user given twice; the iterator's own errors.
    pub fn write(
        path: &Path,
        model: &CtrModel,
        precision: Precision,
        users: impl IntoIterator<Item = Result<(RawId, UserEncoding)>>,
    ) -> Result<()> {
        let header = Header {
            fingerprint: crate::checkpoint::model_fingerprint(model)?,
            layout: model.encoding_layout(),
            shard: (0, 1),
            f16: precision == Precision::F16,
            source: Vec::new(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| Error::Config(e.to_string()))?;
        build(path, &json, &header.layout, header.f16, |f| {
            for u in users {
                let (id, enc) = u?;
                model.check_encoding(&enc, false)?;
                f(path, id, enc)?;
            }
            Ok(())
        })
    }

    /// Maps any store file (its header unchecked against a model: the caller's to know).
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Corrupt`] naming the file.
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open(path, None)
    }

    /// Maps `path` and reads its index, if its header is `want` (any header for `None`).
    fn open(path: &Path, want: Option<&Header>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only ever written under a temporary name and renamed into place,
        // never modified once there, so the mapped bytes do not change while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |why: &str| Error::corrupt(path, why.to_string());
        let mut r = Cursor::new(&map[..], path);
        if r.bytes(8)? != MAGIC {
            return Err(bad("not a lifelong store (magic)"));
        }
        let h = r.u64()? as usize;
        let header: Header = serde_json::from_slice(r.bytes(h)?)
            .map_err(|e| Error::corrupt(path, format!("header: {e}")))?;
        if want.is_some_and(|w| *w != header) {
            return Err(bad("built from other encodings"));
        }
        if map.len() < 16 {
            return Err(bad("no trailer"));
        }
        let mut t = Cursor::at(&map[..], path, map.len() - 16);
        let (at, n) = (t.u64()? as usize, t.u64()? as usize);
        let mut r = Cursor::at(&map[..], path, at);
        let mut index = HashMap::with_capacity(n.min(map.len() / 16));
        for _ in 0..n {
            let id = match r.bytes(1)?[0] {
                0 => RawId::Int(r.u64()? as i64),
                1 => {
                    let len = r.u32()? as usize;
                    let s = std::str::from_utf8(r.bytes(len)?).map_err(|_| bad("a user id"))?;
                    RawId::Str(s.to_string())
                }
                _ => return Err(bad("an index entry")),
            };
            index.insert(id, r.u64()?);
        }
        if r.pos != map.len() - 16 {
            return Err(bad("index and trailer disagree"));
        }
        map.advise(memmap2::Advice::Random).ok();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            index,
            layout: header.layout,
            f16: header.f16,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Users in the store.
    pub fn len(&self) -> usize {
        self.index.len()
    }
    /// Whether the store has no user.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    /// Whether the user is in the store.
    pub fn contains(&self, id: &RawId) -> bool {
        self.index.contains_key(id)
    }

    /// The encoding of `id`, read from the file (f16 sums widened to f32).
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the file for a record that does not fit the layout.
    pub fn get(&self, id: &RawId) -> Result<Option<UserEncoding>> {
        let Some(&at) = self.index.get(id) else {
            return Ok(None);
        };
        let mut r = Cursor::at(&self.map[..], &self.path, at as usize);
        let (user, n, words) = (r.u32()?, r.u32()? as usize, r.u32()? as usize);
        let times = r.u32()? as usize;
        if n > self.layout.serving_window.max(self.layout.max_len)
            || words != n * self.layout.code_words
            || times != if self.layout.time { n } else { 0 }
        {
            return Err(Error::corrupt(
                &self.path,
                format!("record of user {id}: {n} behaviors, {words} code words, {times} times"),
            ));
        }
        let items = r.u32s(n)?;
        let cates = r.u32s(n)?;
        r.align8();
        let ts = (0..times)
            .map(|_| r.u64().map(|x| x as i64))
            .collect::<Result<Vec<_>>>()?;
        let codes = (0..words).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
        let mut buckets = Vec::with_capacity(self.layout.buckets.len());
        for &len in &self.layout.buckets {
            buckets.push(if self.f16 {
                r.bytes(2 * len)?
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()
            } else {
                r.bytes(4 * len)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            });
        }
        Ok(Some(UserEncoding {
            user,
            items,
            cates,
            ts,
            codes,
            buckets,
        }))
    }
}

/// The parquet parts of `encodings` with their sizes and modification times.
fn sources(encodings: &Path) -> Result<Vec<(String, u64, u128)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(encodings).map_err(|e| Error::io(encodings, e))? {
        let e = e.map_err(|e| Error::io(encodings, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(".parquet") {
            let md = e.metadata().map_err(|err| Error::io(e.path(), err))?;
            let t = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push((name, md.len(), t));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the store file at `path` (atomically) with the users `feed` hands to its callback.
fn build(
    path: &Path,
    header: &[u8],
    layout: &EncodingLayout,
    f16: bool,
    feed: impl FnOnce(&mut dyn FnMut(&Path, RawId, UserEncoding) -> Result<()>) -> Result<()>,
) -> Result<()> {
    crate::atomic::atomic_write(path, |w| {
        let mut out = Out { w, pos: 0, path };
        out.put(MAGIC)?;
        out.put(&(header.len() as u64).to_le_bytes())?;
        out.put(header)?;
        // The index, which also refuses a user given twice.
        let mut index: HashMap<RawId, u64> = HashMap::new();
        feed(&mut |file: &Path, id: RawId, enc: UserEncoding| {
            for (b, &len) in enc.buckets.iter().zip(&layout.buckets) {
                if b.len() != len {
                    return Err(Error::corrupt(
                        file,
                        format!(
                            "user {id}: {} bucket values, the layout says {len}",
                            b.len()
                        ),
                    ));
                }
            }
            out.align8()?;
            match index.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    return Err(Error::corrupt(
                        file,
                        format!("user {} is encoded twice", e.key()),
                    ));
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(out.pos);
                }
            }
            let words = enc.codes.len();
            for x in [
                enc.user,
                enc.items.len() as u32,
                words as u32,
                enc.ts.len() as u32,
            ] {
                out.put(&x.to_le_bytes())?;
            }
            for &x in enc.items.iter().chain(&enc.cates) {
                out.put(&x.to_le_bytes())?;
            }
            out.align8()?;
            for &t in &enc.ts {
                out.put(&t.to_le_bytes())?;
            }
            for &c in &enc.codes {
                out.put(&c.to_le_bytes())?;
            }
            for (b, &len) in enc.buckets.iter().zip(&layout.buckets) {
                let mut bytes = Vec::with_capacity(4 * len);
                for &v in b {
                    if f16 {
                        bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
                    } else {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
                out.put(&bytes)?;
            }
            Ok(())
        })?;
        out.align8()?;
        let at = out.pos;
        // In record order, so that the same parts give the same bytes.
        let mut index: Vec<(RawId, u64)> = index.into_iter().collect();
        index.sort_unstable_by_key(|&(_, off)| off);
        for (id, off) in &index {
            match id {
                RawId::Int(x) => {
                    out.put(&[0])?;
                    out.put(&x.to_le_bytes())?;
                }
                RawId::Str(s) => {
                    out.put(&[1])?;
                    out.put(&(s.len() as u32).to_le_bytes())?;
                    out.put(s.as_bytes())?;
                }
            }
            out.put(&off.to_le_bytes())?;
        }
        out.put(&at.to_le_bytes())?;
        out.put(&(index.len() as u64).to_le_bytes())
    })
}

/// A writer that counts its bytes.
struct Out<'a> {
    w: &'a mut dyn Write,
    pos: u64,
    path: &'a Path,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| Error::io(self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn align8(&mut self) -> Result<()> {
        let pad = (8 - self.pos % 8) % 8;
        self.put(&[0u8; 8][..pad as usize])
    }
}

/// A bounds-checked reader over the mapped bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8], path: &'a Path) -> Self {
        Self::at(b, path, 0)
    }
    fn at(b: &'a [u8], path: &'a Path, pos: usize) -> Self {
        Self { b, pos, path }
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| {
            Error::corrupt(
                self.path,
                format!("truncated: {n} bytes at {} of {}", self.pos, self.b.len()),
            )
        })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>> {
        Ok(self
            .bytes(4 * n)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
    fn align8(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }
}
