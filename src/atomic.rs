//! Atomic file writes: a temporary file in the *same directory* (so the final rename stays on one
//! file system and is atomic), written, flushed, fsync'ed, then renamed over the target. A crash or
//! an error at any point leaves the previous file intact.

use crate::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically with whatever `write` puts into the writer it is given.
///
/// # Errors
/// [`Error::Io`] naming `path` when the directory is not writable or a write fails; `write`'s own
/// error is passed through. In every error case the previous content of `path` is untouched.
pub fn atomic_write<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let tmp = temp_beside(path)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w)?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    commit(tmp, path)
}

/// A temporary file (mode 0644, name `.tmp-…`) in `path`'s directory, deleted when dropped
/// unless [`commit`]ted.
///
/// # Errors
/// [`Error::Io`] naming `path` when the directory is not writable.
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    // Temp files are created 0600; outputs are meant to be read by other tools and users.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(path, e))
}

/// Syncs a written temporary file and renames it over `path` (then syncs the directory).
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub(crate) fn commit(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    // Make the rename itself durable.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}
