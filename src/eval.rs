//! Evaluation: a model's logits on a split, its metrics, and predictions written to parquet.

use crate::data::{Batcher, BatcherConfig, Histories, Impressions};
use crate::metrics::{self, Metrics};
use crate::model::CtrModel;
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Logits of every row of `imp`, in order (evaluation mode: Dice uses running statistics).
///
/// # Errors
/// A failed batch (the producer's failure included) is returned, never a shorter output.
pub fn predict(
    model: &CtrModel,
    hist: &Arc<Histories>,
    imp: &Arc<Impressions>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let batcher = Batcher::new(
        hist.clone(),
        imp.clone(),
        BatcherConfig {
            batch_size,
            max_len: model.max_len(),
            shuffle: false,
            seed: 0,
            prefetch: 2,
            full_ids: model.needs_full_ids(),
        },
    );
    let mut out = Vec::with_capacity(imp.len());
    for batch in batcher.iter(0, 0) {
        out.extend(model.predict(&batch?)?);
    }
    if out.len() != imp.len() {
        return Err(Error::InvalidArgument(format!(
            "scored {} of {} rows",
            out.len(),
            imp.len()
        )));
    }
    Ok(out)
}

/// Metrics (AUC, GAUC by user, logloss, ...) and logits of `imp`.
pub fn evaluate(
    model: &CtrModel,
    hist: &Arc<Histories>,
    imp: &Arc<Impressions>,
    batch_size: usize,
) -> Result<(Metrics, Vec<f32>)> {
    let logits = predict(model, hist, imp, batch_size)?;
    let m = metrics::evaluate(&imp.user, &imp.label, &logits)?;
    Ok((m, logits))
}

/// Writes predictions of `imp` to a parquet file atomically: `row` (int64, the split's row),
/// `user`, `item` (int32 indices), `label` (int8), `logit`, `prob` (float32).
///
/// # Errors
/// [`Error::InvalidArgument`] when the logits do not match the rows; I/O errors naming the file.
pub fn write_predictions(path: &Path, imp: &Impressions, logits: &[f32]) -> Result<()> {
    use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    if logits.len() != imp.len() {
        return Err(Error::InvalidArgument(format!(
            "{} logits for {} rows",
            logits.len(),
            imp.len()
        )));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int64, false),
        Field::new("user", DataType::Int32, false),
        Field::new("item", DataType::Int32, false),
        Field::new("label", DataType::Int8, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..imp.len() as i64)),
        Arc::new(Int32Array::from_iter_values(
            imp.user.iter().map(|&u| u as i32),
        )),
        Arc::new(Int32Array::from_iter_values(
            imp.item.iter().map(|&u| u as i32),
        )),
        Arc::new(Int8Array::from_iter_values(
            imp.label.iter().map(|&l| (l > 0.5) as i8),
        )),
        Arc::new(Float32Array::from(logits.to_vec())),
        Arc::new(Float32Array::from_iter_values(
            logits.iter().map(|&x| metrics::sigmoid(x)),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::corrupt(path, e))?;
    crate::data::io::write_parquet(path, schema, [Ok(batch)], 1 << 20)
}
