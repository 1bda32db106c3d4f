//! Writing encodings files: a parquet sink on its own thread, the vocabularies beside them,
//! a progress bar.

use crate::data::io::ParquetSink;
use crate::{Error, Result};
use arrow_array::RecordBatch;
use std::path::Path;

pub(crate) fn copy_vocab(from: &Path, to: &Path) -> Result<()> {
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

pub(crate) fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
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
pub(crate) struct Writer {
    tx: Option<std::sync::mpsc::SyncSender<Option<RecordBatch>>>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writer {
    pub(crate) fn new(mut sink: ParquetSink) -> Self {
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

    pub(crate) fn write(&mut self, b: RecordBatch) -> Result<()> {
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
    pub(crate) fn finish(&mut self) -> Result<()> {
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
