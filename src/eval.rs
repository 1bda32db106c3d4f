//! Evaluation: a model's logits on a split, its metrics, and predictions written to parquet.

use crate::checkpoint::ModelFile;
use crate::data::{Batcher, BatcherConfig, Dataset, Histories, Impressions, Split, Vocab};
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
    model.check_times(imp)?;
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
            time: model.time_buckets().cloned(),
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

/// The predictions of `imp` (a split of `data`) as one record batch, a row per impression in
/// the split's order:
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
pub fn predictions_batch(
    data: &Dataset,
    imp: &Impressions,
    logits: &[f32],
) -> Result<arrow_array::RecordBatch> {
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
    RecordBatch::try_new(schema, cols)
        .map_err(|e| Error::InvalidArgument(format!("predictions: {e}")))
}

/// Writes [`predictions_batch`] to a parquet file atomically.
///
/// # Errors
/// As [`predictions_batch`]; I/O errors naming the file.
pub fn write_predictions(
    path: &Path,
    data: &Dataset,
    imp: &Impressions,
    logits: &[f32],
) -> Result<()> {
    let batch = predictions_batch(data, imp, logits)?;
    crate::data::io::write_parquet(path, batch.schema(), [Ok(batch)], 1 << 20)
}

/// A checkpoint scored on one split of a prepared dataset ([`evaluate_checkpoint`]).
#[derive(Debug)]
pub struct Evaluation {
    /// The checkpoint's model.
    pub model: ModelFile,
    /// The dataset.
    pub data: Dataset,
    /// The split scored.
    pub split: Split,
    /// Its rows.
    pub impressions: Arc<Impressions>,
    /// AUC, GAUC, logloss, ...
    pub metrics: Metrics,
    /// One logit per row, in the split's order.
    pub logits: Vec<f32>,
}

impl Evaluation {
    /// The predictions as a record batch ([`predictions_batch`]).
    ///
    /// # Errors
    /// As [`predictions_batch`].
    pub fn predictions(&self) -> Result<arrow_array::RecordBatch> {
        predictions_batch(&self.data, &self.impressions, &self.logits)
    }
}

/// Scores `split` of the prepared dataset `data` with a run directory (its best checkpoint) or
/// checkpoint file: what `lifelong eval` runs.
///
/// # Errors
/// Named errors for a bad checkpoint or dataset, a dataset the checkpoint was not trained on,
/// and an empty split.
pub fn evaluate_checkpoint(checkpoint: &Path, data: &Path, split: Split) -> Result<Evaluation> {
    evaluate_checkpoint_on(checkpoint, data, split, &candle_core::Device::Cpu)
}

/// [`evaluate_checkpoint`] with the model on `device`.
///
/// # Errors
/// As [`evaluate_checkpoint`].
pub fn evaluate_checkpoint_on(
    checkpoint: &Path,
    data: &Path,
    split: Split,
    device: &candle_core::Device,
) -> Result<Evaluation> {
    let model = ModelFile::open(checkpoint, device)?;
    let ds = Dataset::open(data)?;
    model.check_dataset(&ds)?;
    let imp = Arc::new(ds.load_split(split)?);
    if imp.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: the {} split has no rows",
            ds.dir.display(),
            split.name()
        )));
    }
    let hist = ds.histories.clone();
    let (metrics, logits) = evaluate(
        &model.model,
        &hist,
        &imp,
        model.config.train.eval_batch_size,
    )?;
    Ok(Evaluation {
        model,
        data: ds,
        split,
        impressions: imp,
        metrics,
        logits,
    })
}
