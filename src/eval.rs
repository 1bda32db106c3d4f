//! Evaluation: a model's logits on a split, its metrics, and predictions written to parquet.

use crate::data::{Batcher, BatcherConfig, Dataset, Histories, Impressions, Vocab};
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
    let m = metrics::compute(&imp.user, &imp.label, &logits)?;
    Ok((m, logits))
}

/// A raw-id column for an index column: the ids of a vocabulary, typed as the log's (int64 or
/// utf8), null for padding and unknown.
fn raw_id_column(vocab: &Vocab, index: &[u32]) -> arrow_array::ArrayRef {
    use arrow_array::{Int64Array, StringArray};
    let at = |i: u32| (i as usize).checked_sub(2);
    match (vocab.int_ids(), vocab.str_ids()) {
        (Some(raw), _) => Arc::new(Int64Array::from_iter(
            index
                .iter()
                .map(|&i| at(i).and_then(|j| raw.get(j).copied())),
        )),
        (None, Some(raw)) => Arc::new(StringArray::from_iter(
            index.iter().map(|&i| at(i).and_then(|j| raw.get(j))),
        )),
        (None, None) => Arc::new(Int64Array::from(vec![None::<i64>; index.len()])),
    }
}

/// Writes predictions of `imp` (a split of `data`) to a parquet file atomically, one row per
/// impression in the split's order:
///
/// | column | type | meaning |
/// |---|---|---|
/// | `row` | int64 | the row in the split file |
/// | `user_id`, `item_id` | int64 or utf8 (as in the event log), nullable | the raw ids (null for an id unknown at prepare time) |
/// | `user`, `item` | int32 | the prepared indices |
/// | `label` | int8 | 0/1 |
/// | `logit`, `prob` | float32 | the model's score and `sigmoid(logit)` |
///
/// # Errors
/// [`Error::InvalidArgument`] when the logits do not match the rows; named errors for the
/// vocabulary files; I/O errors naming the file.
pub fn write_predictions(
    path: &Path,
    data: &Dataset,
    imp: &Impressions,
    logits: &[f32],
) -> Result<()> {
    use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, Int8Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    if logits.len() != imp.len() {
        return Err(Error::InvalidArgument(format!(
            "{} logits for {} rows",
            logits.len(),
            imp.len()
        )));
    }
    let vocab = |f: &str| Vocab::read(&data.dir.join("vocab").join(format!("{f}.parquet")));
    let (users, items) = (vocab("user")?, vocab("item")?);
    let user_id = raw_id_column(&users, &imp.user);
    let item_id = raw_id_column(&items, &imp.item);
    let schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int64, false),
        Field::new("user_id", user_id.data_type().clone(), true),
        Field::new("item_id", item_id.data_type().clone(), true),
        Field::new("user", DataType::Int32, false),
        Field::new("item", DataType::Int32, false),
        Field::new("label", DataType::Int8, false),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(0..imp.len() as i64)),
        user_id,
        item_id,
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
