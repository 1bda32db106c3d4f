//! Coded event records in memory and on disk, for `prepare`'s bounded-memory path.
//!
//! An [`Events`] holds rows as five flat columns (user, item, category, timestamp, label). When
//! the rows do not fit the memory budget they are spilled to a scratch file as fixed-size
//! little-endian records ([`REC_BYTES`] bytes each, in row order), and later routed into one file
//! per partition (a contiguous range of user indices), each read back whole when its turn comes.
//! Row order is kept everywhere, so ties by file order survive the trip.

use crate::{Error, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes per record on disk: user, item, cate (u32), ts (i64), label (u8).
pub const REC_BYTES: usize = 4 + 4 + 4 + 8 + 1;

/// Rows of an event log, coded (first-appearance codes or vocabulary indices).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Events {
    /// User code or index.
    pub user: Vec<u32>,
    /// Item code or index.
    pub item: Vec<u32>,
    /// Category code or index.
    pub cate: Vec<u32>,
    /// Timestamps.
    pub ts: Vec<i64>,
    /// Labels (1 when the log has no label column).
    pub label: Vec<u8>,
}

impl Events {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.user.len()
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }
    /// Drops every row (keeps the allocations).
    pub fn clear(&mut self) {
        self.user.clear();
        self.item.clear();
        self.cate.clear();
        self.ts.clear();
        self.label.clear();
    }
    fn push(&mut self, rec: &[u8]) {
        let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        self.user.push(u32_at(0));
        self.item.push(u32_at(4));
        self.cate.push(u32_at(8));
        let mut t = [0u8; 8];
        t.copy_from_slice(&rec[12..20]);
        self.ts.push(i64::from_le_bytes(t));
        self.label.push(rec[20]);
    }
    fn record(&self, r: usize) -> [u8; REC_BYTES] {
        let mut b = [0u8; REC_BYTES];
        b[0..4].copy_from_slice(&self.user[r].to_le_bytes());
        b[4..8].copy_from_slice(&self.item[r].to_le_bytes());
        b[8..12].copy_from_slice(&self.cate[r].to_le_bytes());
        b[12..20].copy_from_slice(&self.ts[r].to_le_bytes());
        b[20] = self.label[r];
        b
    }
}

/// An append-only file of records.
pub struct RecordFile {
    path: PathBuf,
    out: BufWriter<File>,
    rows: u64,
}

impl RecordFile {
    /// Creates (truncates) `path`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, f),
            rows: 0,
        })
    }
    /// Appends row `r` of `ev`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file (a full disk, say).
    pub fn push(&mut self, ev: &Events, r: usize) -> Result<()> {
        self.out
            .write_all(&ev.record(r))
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows += 1;
        Ok(())
    }
    /// Appends every row of `ev`.
    ///
    /// # Errors
    /// As [`RecordFile::push`].
    pub fn extend(&mut self, ev: &Events) -> Result<()> {
        (0..ev.len()).try_for_each(|r| self.push(ev, r))
    }
    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Flushes and closes the file, returning its path and row count.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok((self.path, self.rows))
    }
}

/// Reads the records of `path` (written by [`RecordFile`], `rows` of them) in blocks of at most
/// `block` rows, handing each to `f`.
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::Corrupt`] if it holds another number of rows.
pub fn read_records(
    path: &Path,
    rows: u64,
    block: usize,
    mut f: impl FnMut(Events) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != rows * REC_BYTES as u64 {
        return Err(Error::corrupt(
            path,
            format!("scratch file holds {len} bytes, expected {rows} records of {REC_BYTES} bytes"),
        ));
    }
    let mut rd = BufReader::with_capacity(1 << 20, file);
    let block = block.max(1);
    let mut buf = vec![0u8; block * REC_BYTES];
    let mut left = rows as usize;
    while left > 0 {
        let n = left.min(block);
        let bytes = &mut buf[..n * REC_BYTES];
        rd.read_exact(bytes).map_err(|e| Error::io(path, e))?;
        let mut ev = Events::default();
        reserve(&mut ev, n);
        bytes.chunks_exact(REC_BYTES).for_each(|rec| ev.push(rec));
        f(ev)?;
        left -= n;
    }
    Ok(())
}

fn reserve(ev: &mut Events, n: usize) {
    ev.user.reserve(n);
    ev.item.reserve(n);
    ev.cate.reserve(n);
    ev.ts.reserve(n);
    ev.label.reserve(n);
}

/// Reads a whole record file into memory.
///
/// # Errors
/// As [`read_records`].
pub fn read_all(path: &Path, rows: u64) -> Result<Events> {
    let mut all = Events::default();
    reserve(&mut all, rows as usize);
    read_records(path, rows, 1 << 16, |ev| {
        all.user.extend(ev.user);
        all.item.extend(ev.item);
        all.cate.extend(ev.cate);
        all.ts.extend(ev.ts);
        all.label.extend(ev.label);
        Ok(())
    })?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_order() {
        let ev = Events {
            user: vec![3, 0, u32::MAX],
            item: vec![7, 1, 2],
            cate: vec![9, 9, 0],
            ts: vec![-5, i64::MAX, 0],
            label: vec![1, 0, 1],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        let mut f = RecordFile::create(&path).unwrap();
        f.extend(&ev).unwrap();
        f.push(&ev, 0).unwrap();
        let (p, rows) = f.finish().unwrap();
        assert_eq!(rows, 4);
        let back = read_all(&p, rows).unwrap();
        assert_eq!(back.user, vec![3, 0, u32::MAX, 3]);
        assert_eq!(back.ts, vec![-5, i64::MAX, 0, -5]);
        assert_eq!(back.label, vec![1, 0, 1, 1]);
        // Blocks of 3 rows: two calls, in order.
        let mut seen = Vec::new();
        read_records(&p, rows, 3, |e| {
            seen.push(e.item);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![vec![7, 1, 2], vec![7]]);
        // A short file is named.
        let e = read_all(&p, 5).unwrap_err().to_string();
        assert!(
            e.contains("r.bin") && e.contains("expected 5 records"),
            "{e}"
        );
    }
}
