//! Checkpoints: one [safetensors](https://github.com/huggingface/safetensors) file holding named
//! tensors (model parameters, embedding tables, optimizer state) and string metadata (the config
//! and trainer state as JSON), so a checkpoint is self-describing.
//!
//! File layout (plain safetensors, readable by any safetensors reader):
//!
//! ```text
//! [u64 LE: header length n] [n bytes: JSON header, space-padded to a multiple of 8] [tensor data]
//! header = { "__metadata__": { user keys…, "format_version": "1",
//!                              "crc32": "<8 hex>", "header_crc32": "<8 hex>" },
//!            "<name>": { "dtype": "F32", "shape": [..], "data_offsets": [start, end] }, … }
//! ```
//!
//! Integrity: `crc32` is the CRC-32 of the whole data region (every tensor's little-endian bytes
//! in file order), so a flipped bit in a weight is caught, not only a broken header.
//! `header_crc32` covers the user metadata and the tensor table (names, dtypes, shapes, offsets),
//! so a flipped digit in the stored config is caught too. Tensors are stored in safetensors'
//! canonical order (larger dtypes first, then by name) and metadata keys are written sorted, so
//! saving the same content twice gives byte-identical files.
//!
//! Writes are atomic ([`crate::atomic`]): a failed or interrupted [`save`] leaves the previous
//! checkpoint intact. Reads never panic on any byte content: every defect is an
//! [`Error::Checkpoint`] naming the file and what is wrong.
//!
//! | dtype          | saved | loaded |
//! |----------------|-------|--------|
//! | U8, U32, I16, I32, I64, F16, BF16, F32, F64 | yes | yes |
//! | anything else (F8, F4, F6, BOOL, U16, U64, …) | error | error |

use crate::atomic::atomic_write;
use crate::{Error, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use serde::ser::{SerializeMap, Serializer};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

/// The checkpoint format this build writes and reads (metadata key `format_version`).
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Metadata key holding [`CHECKPOINT_FORMAT`].
pub const KEY_FORMAT_VERSION: &str = "format_version";
/// Metadata key holding the CRC-32 of the data region (8 lowercase hex digits).
pub const KEY_CRC32: &str = "crc32";
/// Metadata key holding the CRC-32 of the user metadata and the tensor table.
pub const KEY_HEADER_CRC32: &str = "header_crc32";
/// Metadata keys written by [`save`] itself: callers may not use them, and [`load`] /
/// [`read_metadata`] check and remove them.
pub const RESERVED_KEYS: [&str; 3] = [KEY_FORMAT_VERSION, KEY_CRC32, KEY_HEADER_CRC32];

/// safetensors' own limit on the JSON header; readers reject longer headers.
const MAX_HEADER_LEN: u64 = 100_000_000;
/// The JSON key safetensors reserves for string metadata.
const METADATA_KEY: &str = "__metadata__";
/// Bytes converted per chunk when streaming a tensor to the file.
const CHUNK_BYTES: usize = 1 << 20;

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The tensors, by name, on the device asked for.
    pub tensors: BTreeMap<String, Tensor>,
    /// The metadata exactly as given to [`save`] (the [`RESERVED_KEYS`] removed).
    pub metadata: BTreeMap<String, String>,
}

fn ck_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The safetensors dtype of a candle dtype we save.
fn st_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I16 => Dtype::I16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        _ => return None,
    })
}

/// The candle dtype of a safetensors dtype we load.
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

/// Calls `sink` with the little-endian bytes of `xs`, in chunks of about [`CHUNK_BYTES`].
fn emit_le<T: Copy, const N: usize>(
    xs: &[T],
    to_le: fn(T) -> [u8; N],
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES.min(xs.len() * N));
    for chunk in xs.chunks((CHUNK_BYTES / N).max(1)) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|&x| to_le(x)));
        sink(&buf)?;
    }
    Ok(())
}

/// Streams the little-endian bytes of a CPU, contiguous tensor to `sink` without copying the
/// tensor (beyond one chunk at a time).
fn tensor_bytes(
    path: &Path,
    name: &str,
    t: &Tensor,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| ck_err(path, format!("tensor `{name}`: not contiguous after copy")))?;
    let Storage::Cpu(cpu) = &*storage else {
        return Err(ck_err(
            path,
            format!("tensor `{name}`: not on the CPU after copy"),
        ));
    };
    let range_err = || ck_err(path, format!("tensor `{name}`: layout outside its storage"));
    macro_rules! le {
        ($v:expr, $to_le:expr) => {
            emit_le($v.get(start..end).ok_or_else(range_err)?, $to_le, sink)
        };
    }
    match cpu {
        CpuStorage::U8(v) => sink(v.get(start..end).ok_or_else(range_err)?),
        CpuStorage::U32(v) => le!(v, u32::to_le_bytes),
        CpuStorage::I16(v) => le!(v, i16::to_le_bytes),
        CpuStorage::I32(v) => le!(v, i32::to_le_bytes),
        CpuStorage::I64(v) => le!(v, i64::to_le_bytes),
        CpuStorage::F16(v) => le!(v, half::f16::to_le_bytes),
        CpuStorage::BF16(v) => le!(v, half::bf16::to_le_bytes),
        CpuStorage::F32(v) => le!(v, f32::to_le_bytes),
        CpuStorage::F64(v) => le!(v, f64::to_le_bytes),
        _ => Err(unsupported_dtype(path, name, t.dtype())),
    }
}

fn unsupported_dtype(path: &Path, name: &str, dtype: DType) -> Error {
    ck_err(
        path,
        format!(
            "tensor `{name}` has dtype {dtype:?}, which checkpoints do not store \
             (supported: U8, U32, I16, I32, I64, F16, BF16, F32, F64)"
        ),
    )
}

/// CRC-32 of the user metadata and the tensor table, in a canonical, length-prefixed encoding
/// (independent of JSON formatting and key order).
fn header_crc<'a>(
    user: impl Iterator<Item = (&'a str, &'a str)>,
    tensors: impl Iterator<Item = (&'a str, &'a TensorInfo)>,
) -> Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in user {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    put(METADATA_KEY.as_bytes()); // separates the two lists
    for (name, info) in tensors {
        put(name.as_bytes());
        let info = serde_json::to_vec(info)
            .map_err(|e| Error::InvalidArgument(format!("tensor `{name}`: {e}")))?;
        put(&info);
    }
    Ok(h.finalize())
}

/// The JSON header in a deterministic order: sorted metadata first, then tensors by offset.
struct Header<'a> {
    metadata: &'a BTreeMap<String, String>,
    tensors: &'a [(String, TensorInfo)],
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry(METADATA_KEY, self.metadata)?;
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// Saves `tensors` and `metadata` to `path` as one safetensors file, atomically.
///
/// The metadata keys `format_version` ([`CHECKPOINT_FORMAT`]), `crc32` (data) and `header_crc32`
/// (metadata and tensor table) are added. Tensors may live on any device and have any layout:
/// each is copied to the CPU (a no-op for CPU tensors) and made contiguous (a no-op for contiguous
/// ones), then streamed into a temporary file next to `path` that is fsync'ed and renamed over
/// `path`.
///
/// Memory: no full-file buffer is built. Besides the tensors themselves, `save` holds the CPU
/// copies of non-CPU or non-contiguous tensors (all at once: the CRC in the header needs every
/// byte before the first is written) plus a 1 MiB conversion buffer.
///
/// # Errors
/// - [`Error::InvalidArgument`] when two tensors share a name, a tensor is named `__metadata__`,
///   or `metadata` uses one of the [`RESERVED_KEYS`] (checked before touching the disk);
/// - [`Error::Checkpoint`] for a tensor whose dtype is not stored (see the module docs) or a
///   header over safetensors' 100 MB limit;
/// - [`Error::Io`] when the directory is not writable or a write fails;
/// - [`Error::Candle`] when a device-to-CPU copy fails.
///
/// In every error case the previous file at `path`, if any, is untouched and no temporary file is
/// left behind.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(k) = RESERVED_KEYS.iter().find(|k| metadata.contains_key(**k)) {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {}: metadata key `{k}` is reserved",
            path.display()
        )));
    }
    let mut seen = HashSet::with_capacity(tensors.len());
    for (name, _) in tensors {
        if name == METADATA_KEY {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {}: a tensor may not be named `{METADATA_KEY}`",
                path.display()
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {}: two tensors are named `{name}`",
                path.display()
            )));
        }
    }

    // Everything below runs inside the atomic writer: the temporary file exists, and any error
    // drops (deletes) it, leaving the previous checkpoint in place.
    atomic_write(path, |w| {
        // CPU, contiguous copies, with their safetensors dtype, in safetensors' canonical order.
        let mut entries = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let dtype =
                st_dtype(t.dtype()).ok_or_else(|| unsupported_dtype(path, name, t.dtype()))?;
            let t = t.to_device(&Device::Cpu)?.contiguous()?;
            entries.push((name.as_str(), dtype, t));
        }
        entries.sort_by(|(ln, ld, _), (rn, rd, _)| rd.cmp(ld).then(ln.cmp(rn)));

        // Pass 1: the data CRC and the tensor table.
        let mut crc = crc32fast::Hasher::new();
        let mut infos = Vec::with_capacity(entries.len());
        let mut offset = 0usize;
        for (name, dtype, t) in &entries {
            let n = t.elem_count() * t.dtype().size_in_bytes();
            tensor_bytes(path, name, t, &mut |b| {
                crc.update(b);
                Ok(())
            })?;
            let info = TensorInfo {
                dtype: *dtype,
                shape: t.dims().to_vec(),
                data_offsets: (offset, offset + n),
            };
            infos.push((name.to_string(), info));
            offset += n;
        }
        let mut meta = metadata.clone();
        let hcrc = header_crc(
            metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            infos.iter().map(|(n, i)| (n.as_str(), i)),
        )?;
        meta.insert(KEY_FORMAT_VERSION.into(), CHECKPOINT_FORMAT.to_string());
        meta.insert(KEY_CRC32.into(), format!("{:08x}", crc.finalize()));
        meta.insert(KEY_HEADER_CRC32.into(), format!("{hcrc:08x}"));

        let mut header = serde_json::to_vec(&Header {
            metadata: &meta,
            tensors: &infos,
        })
        .map_err(|e| ck_err(path, format!("cannot encode the header: {e}")))?;
        header.resize(header.len().next_multiple_of(8), b' ');
        if header.len() as u64 > MAX_HEADER_LEN {
            return Err(ck_err(
                path,
                format!(
                    "header of {} bytes exceeds safetensors' limit of {MAX_HEADER_LEN} (metadata too large?)",
                    header.len()
                ),
            ));
        }

        // Pass 2: write.
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (name, _, t) in &entries {
            tensor_bytes(path, name, t, &mut |b| w.write_all(b).map_err(io))?;
        }
        Ok(())
    })
}

/// A parsed, validated header.
struct Parsed {
    /// Length of the JSON header (after the 8-byte length).
    header_len: usize,
    /// safetensors' view of the header (offsets validated).
    st: Metadata,
    /// The user metadata (reserved keys removed).
    user: BTreeMap<String, String>,
    /// The stored data CRC.
    crc32: u32,
}

fn parse_hex_crc(path: &Path, meta: &BTreeMap<String, String>, key: &str) -> Result<u32> {
    let s = meta
        .get(key)
        .ok_or_else(|| ck_err(path, format!("no `{key}` in the metadata")))?;
    if s.len() != 8 {
        return Err(ck_err(
            path,
            format!("malformed `{key}` `{s}` (want 8 hex digits)"),
        ));
    }
    u32::from_str_radix(s, 16)
        .map_err(|_| ck_err(path, format!("malformed `{key}` `{s}` (want 8 hex digits)")))
}

/// Reads the 8-byte header length from the start of `head` and checks it against the file size.
fn header_len(path: &Path, head: &[u8], file_len: u64) -> Result<usize> {
    let Some(len_bytes) = head.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Err(ck_err(
            path,
            format!("truncated or not a checkpoint: {file_len} bytes, shorter than the 8-byte header length"),
        ));
    };
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(ck_err(
            path,
            format!(
                "not a safetensors checkpoint: header length {n} exceeds {MAX_HEADER_LEN} bytes"
            ),
        ));
    }
    let after_len = file_len.saturating_sub(8);
    if n > after_len {
        return Err(ck_err(
            path,
            format!("truncated inside the header: it needs {n} bytes, the file has {after_len} after the length"),
        ));
    }
    // n <= MAX_HEADER_LEN, so this fits in usize on every platform candle supports.
    usize::try_from(n)
        .map_err(|_| ck_err(path, format!("header length {n} does not fit in memory")))
}

/// Parses and checks the header: JSON structure and offsets (safetensors), data size against the
/// file size, format version, header CRC.
fn parse_header(path: &Path, header: &[u8], file_len: u64) -> Result<Parsed> {
    let header_len = header.len();
    let st: Metadata =
        serde_json::from_slice(header).map_err(|e| ck_err(path, format!("broken header: {e}")))?;
    let expected = 8u64 + header_len as u64 + st.data_len() as u64;
    if expected != file_len {
        let what = if file_len < expected {
            "truncated data"
        } else {
            "trailing bytes after the data"
        };
        return Err(ck_err(
            path,
            format!("{what}: the header describes a {expected}-byte file, it has {file_len} bytes"),
        ));
    }
    let mut meta: BTreeMap<String, String> = st
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match meta.get(KEY_FORMAT_VERSION) {
        None => {
            return Err(ck_err(
                path,
                format!("no format version in the metadata (not a lifelong checkpoint?), this build reads {CHECKPOINT_FORMAT}"),
            ))
        }
        Some(v) if v.parse::<u32>().ok() != Some(CHECKPOINT_FORMAT) => {
            return Err(ck_err(path, format!("format version {v}, this build reads {CHECKPOINT_FORMAT}")))
        }
        Some(_) => {}
    }
    let stored_hcrc = parse_hex_crc(path, &meta, KEY_HEADER_CRC32)?;
    let crc32 = parse_hex_crc(path, &meta, KEY_CRC32)?;
    for k in RESERVED_KEYS {
        meta.remove(k);
    }
    let names = st.offset_keys();
    let mut infos = Vec::with_capacity(names.len());
    for name in &names {
        let info = st
            .info(name)
            .ok_or_else(|| ck_err(path, format!("tensor `{name}` missing from the header")))?;
        infos.push((name.as_str(), info));
    }
    let hcrc = header_crc(
        meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        infos.into_iter(),
    )?;
    if hcrc != stored_hcrc {
        return Err(ck_err(
            path,
            format!("header corrupted: header_crc32 mismatch (stored {stored_hcrc:08x}, computed {hcrc:08x})"),
        ));
    }
    Ok(Parsed {
        header_len,
        st,
        user: meta,
        crc32,
    })
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        ck_err(path, "not found")
    } else {
        Error::io(path, e)
    }
}

/// Loads a checkpoint written by [`save`], putting every tensor on `device`.
///
/// Everything is verified before a tensor is built: the safetensors structure, the file size, the
/// format version, `header_crc32` and the `crc32` of the data region.
///
/// Memory: the whole file is read into memory once (tensors are then copied out of it), so the
/// peak is about the file size plus the tensors.
///
/// # Errors
/// [`Error::Checkpoint`] naming `path` when the file does not exist ("not found"), is not a
/// safetensors file, is truncated, has a broken header, has another format version ("format
/// version X, this build reads 1"), fails a CRC ("data corrupted: crc32 mismatch", "header
/// corrupted: header_crc32 mismatch") or holds a dtype this build does not read; [`Error::Io`] for
/// other read failures. Never panics on any file content.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| open_error(path, e))?;
    let file_len = bytes.len() as u64;
    let n = header_len(path, &bytes, file_len)?;
    let header = bytes
        .get(8..8 + n)
        .ok_or_else(|| ck_err(path, "truncated inside the header"))?;
    let parsed = parse_header(path, header, file_len)?;
    let data = bytes
        .get(8 + parsed.header_len..)
        .ok_or_else(|| ck_err(path, "truncated data"))?;
    let crc = crc32fast::hash(data);
    if crc != parsed.crc32 {
        return Err(ck_err(
            path,
            format!(
                "data corrupted: crc32 mismatch (stored {:08x}, computed {crc:08x})",
                parsed.crc32
            ),
        ));
    }
    let mut tensors = BTreeMap::new();
    for name in parsed.st.offset_keys() {
        let info = parsed
            .st
            .info(&name)
            .ok_or_else(|| ck_err(path, format!("tensor `{name}` missing from the header")))?;
        let dtype = candle_dtype(info.dtype).ok_or_else(|| {
            ck_err(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}, which this build does not read",
                    info.dtype
                ),
            )
        })?;
        let (s, e) = info.data_offsets;
        let raw = data.get(s..e).ok_or_else(|| {
            ck_err(
                path,
                format!("tensor `{name}`: data offsets {s}..{e} outside the file"),
            )
        })?;
        let t = Tensor::from_raw_buffer(raw, dtype, &info.shape, device)
            .map_err(|e| ck_err(path, format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok(Loaded {
        tensors,
        metadata: parsed.user,
    })
}

/// Reads only the metadata of a checkpoint (the reserved keys removed), without its tensors.
///
/// Cheap: reads the header alone. It checks the structure, the file size, the format version and
/// `header_crc32`, but not the data CRC (use [`load`] for that).
///
/// # Errors
/// As [`load`], except that data corruption is not detected.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut f = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = Vec::with_capacity(8);
    (&mut f)
        .take(8)
        .read_to_end(&mut len_bytes)
        .map_err(|e| Error::io(path, e))?;
    let n = header_len(path, &len_bytes, file_len)?;
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ck_err(path, "truncated inside the header")
        } else {
            Error::io(path, e)
        }
    })?;
    Ok(parse_header(path, &header, file_len)?.user)
}
