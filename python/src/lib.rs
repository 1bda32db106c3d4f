//! `lifelong._native`: the Python bindings of the `lifelong` crate (pyo3). The pure-Python
//! package `lifelong` (python/lifelong/) wraps these into the documented API; nothing here has
//! logic of its own beyond converting arguments and results.
//!
//! - Data crosses as Arrow through the C data interface (pyarrow or anything with
//!   `__arrow_c_array__`); scores come back as numpy arrays that own the Rust vector (no copy).
//! - The GIL is released during every computation (`py.detach`), so Python threads score,
//!   encode and train side by side.
//! - Errors are Python exceptions of the `LifelongError` hierarchy, one class per kind of the
//!   crate's `Error`, carrying its message (file, row and column named).

use arrow_array::{Array, RecordBatch};
use arrow_pyarrow::{FromPyArrow, PyArrowType, ToPyArrow};
use lifelong::data::{ColumnNames, PrepareConfig, RawId, Split};
use lifelong::serving::{self, BatchEncoder, Candidate, Shard, StoreOptions, User};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

create_exception!(
    lifelong,
    LifelongError,
    PyException,
    "Every error lifelong raises."
);
create_exception!(
    lifelong,
    IoError,
    LifelongError,
    "A file or directory could not be read or written (named in the message)."
);
create_exception!(lifelong, CorruptError, LifelongError, "A file is not what it claims to be: truncated or corrupt, encodings of other weights, a missing shard.");
create_exception!(
    lifelong,
    SchemaError,
    LifelongError,
    "A column is missing or has a type lifelong cannot read."
);
create_exception!(lifelong, DataError, LifelongError, "A value is invalid (a null, a label not 0/1, an index outside its vocabulary); the row and column are named.");
create_exception!(
    lifelong,
    CheckpointError,
    LifelongError,
    "A checkpoint is missing, corrupt or of another model or dataset."
);
create_exception!(
    lifelong,
    ConfigError,
    LifelongError,
    "A configuration key or value is invalid."
);
create_exception!(
    lifelong,
    TrainingError,
    LifelongError,
    "Training diverged (a NaN or infinite loss)."
);
create_exception!(
    lifelong,
    InvalidArgumentError,
    LifelongError,
    "An argument is invalid (an unknown user, no candidates, a user of another shard, ...)."
);
create_exception!(
    lifelong,
    ComputeError,
    LifelongError,
    "The tensor library failed."
);

/// The crate's error as the Python exception of its kind.
fn py_err(e: lifelong::Error) -> PyErr {
    use lifelong::Error as E;
    let msg = e.to_string();
    match e {
        E::Io { .. } => IoError::new_err(msg),
        E::Corrupt { .. } => CorruptError::new_err(msg),
        E::Schema { .. } => SchemaError::new_err(msg),
        E::Value { .. } | E::IdOutOfRange { .. } => DataError::new_err(msg),
        E::Checkpoint { .. } => CheckpointError::new_err(msg),
        E::Config(_) => ConfigError::new_err(msg),
        E::NonFiniteLoss { .. } => TrainingError::new_err(msg),
        E::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        E::Candle(_) => ComputeError::new_err(msg),
        // A kind added later still reaches Python as a LifelongError.
        #[allow(unreachable_patterns)]
        _ => LifelongError::new_err(msg),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for lifelong::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(msg.into())
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| invalid(e.to_string()))
}

/// Logs of the crate (training progress, warnings) on stderr, as the CLI prints them; once.
fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn shard(s: Option<&str>) -> PyResult<Shard> {
    s.map_or(Ok(Shard::ALL), |s| Shard::parse(s).py())
}

/// A raw id from a Python int or str.
fn raw_id(obj: &Bound<'_, PyAny>) -> PyResult<RawId> {
    if let Ok(i) = obj.extract::<i64>() {
        return Ok(RawId::Int(i));
    }
    if let Ok(s) = obj.extract::<String>() {
        return Ok(RawId::Str(s));
    }
    Err(invalid(format!(
        "an id must be an int or a str, got {}",
        obj.get_type().name()?
    )))
}

/// Raw ids from a numpy integer array, a pyarrow array (integers or strings), or a sequence of
/// ints or strs.
fn raw_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<RawId>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
        return Ok(a.as_slice()?.iter().map(|&x| RawId::Int(x)).collect());
    }
    if obj.hasattr("__arrow_c_array__")? {
        let data = arrow_array::make_array(arrow_data::ArrayData::from_pyarrow_bound(obj)?);
        use arrow_array::cast::AsArray;
        use arrow_schema::DataType as D;
        let dt = data.data_type().clone();
        let cast = |d: &dyn Array| -> Option<Vec<RawId>> {
            match d.data_type() {
                D::Int64 => Some(
                    d.as_primitive::<arrow_array::types::Int64Type>()
                        .iter()
                        .map(|v| v.map(RawId::Int))
                        .collect::<Option<_>>()?,
                ),
                D::Int32 => Some(
                    d.as_primitive::<arrow_array::types::Int32Type>()
                        .iter()
                        .map(|v| v.map(|x| RawId::Int(x.into())))
                        .collect::<Option<_>>()?,
                ),
                D::Utf8 => Some(
                    d.as_string::<i32>()
                        .iter()
                        .map(|v| v.map(|s| RawId::Str(s.to_string())))
                        .collect::<Option<_>>()?,
                ),
                D::LargeUtf8 => Some(
                    d.as_string::<i64>()
                        .iter()
                        .map(|v| v.map(|s| RawId::Str(s.to_string())))
                        .collect::<Option<_>>()?,
                ),
                _ => None,
            }
        };
        return cast(data.as_ref()).ok_or_else(|| {
            invalid(format!(
                "ids: an int32, int64 or string array without nulls, got {dt}{}",
                if data.null_count() > 0 {
                    " with nulls"
                } else {
                    ""
                }
            ))
        });
    }
    let mut out = Vec::new();
    for item in obj.try_iter()? {
        out.push(raw_id(&item?)?);
    }
    Ok(out)
}

/// `prepare(events, out, options_json)`: the summary as JSON.
#[pyfunction]
fn prepare(py: Python<'_>, events: PathBuf, out: PathBuf, options: &str) -> PyResult<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        user_col: Option<String>,
        item_col: Option<String>,
        cate_col: Option<String>,
        ts_col: Option<String>,
        label_col: Option<String>,
        negatives: Option<usize>,
        seed: Option<u64>,
        min_history: Option<usize>,
        stride: Option<usize>,
        keep: Option<Vec<(String, String)>>,
        memory_budget: Option<u64>,
    }
    let o: Options = serde_json::from_str(options)
        .map_err(|e| InvalidArgumentError::new_err(format!("prepare: {e}")))?;
    let d = PrepareConfig::default();
    let c = d.columns.clone();
    let cfg = PrepareConfig {
        columns: ColumnNames {
            user: o.user_col.unwrap_or(c.user),
            item: o.item_col.unwrap_or(c.item),
            cate: o.cate_col.unwrap_or(c.cate),
            ts: o.ts_col.unwrap_or(c.ts),
            label: o.label_col.unwrap_or(c.label),
        },
        negatives: o.negatives.or(d.negatives),
        seed: o.seed.unwrap_or(d.seed),
        min_history: o.min_history.unwrap_or(d.min_history),
        stride: o.stride.unwrap_or(d.stride),
        keep: o.keep.unwrap_or_default(),
        memory_budget: o.memory_budget.unwrap_or(d.memory_budget),
        ..d
    };
    let s = py
        .detach(|| lifelong::data::prepare(&events, &out, &cfg))
        .py()?;
    json(&s.meta)
}

/// `train(config_path, config_json, overrides, data, out, resume)`: the run directory.
#[pyfunction]
#[pyo3(signature = (config_path, config_json, overrides, data=None, out=None, resume=false))]
fn train(
    py: Python<'_>,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    overrides: Vec<String>,
    data: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: bool,
) -> PyResult<(String, String)> {
    use lifelong::config::Config;
    init_logging();
    let mut cfg = match (config_path, config_json) {
        (Some(p), None) => Config::load_with(&p, &overrides),
        (None, Some(j)) => Config::from_json_with(&j, &overrides),
        _ => return Err(invalid("train: a config path or a config dict")),
    }
    .py()?;
    if let Some(d) = data {
        cfg.data.dir = d;
    }
    if let Some(o) = out {
        cfg.train.out = o;
    }
    let run_dir = cfg.train.out.clone();
    let s = py
        .detach(|| {
            let device = cfg.train.device.open()?;
            lifelong::train::run(cfg, resume, &device)
        })
        .py()?;
    let summary = serde_json::json!({
        "steps": s.state.step,
        "samples": s.samples,
        "train_secs": s.train_secs,
        "samples_per_sec": s.samples_per_sec(),
        "best_auc": s.state.best_auc,
        "best_step": s.state.best_step,
    });
    Ok((run_dir.display().to_string(), summary.to_string()))
}

fn split(s: &str) -> PyResult<Split> {
    match s {
        "train" => Ok(Split::Train),
        "valid" => Ok(Split::Valid),
        "test" => Ok(Split::Test),
        _ => Err(invalid(format!("split `{s}`: train, valid or test"))),
    }
}

/// `evaluate(checkpoint, data, split)`: the metrics as JSON.
#[pyfunction]
fn evaluate(
    py: Python<'_>,
    checkpoint: PathBuf,
    data: PathBuf,
    split_name: &str,
) -> PyResult<String> {
    let sp = split(split_name)?;
    let ev = py
        .detach(|| lifelong::eval::evaluate_checkpoint(&checkpoint, &data, sp))
        .py()?;
    let m = &ev.metrics;
    Ok(serde_json::json!({"auc": m.auc, "gauc": m.gauc, "logloss": m.logloss, "n": m.n, "ne": m.ne, "calibration": m.calibration}).to_string())
}

/// `predict(checkpoint, data, split)`: one record batch of predictions.
#[pyfunction]
fn predict(
    py: Python<'_>,
    checkpoint: PathBuf,
    data: PathBuf,
    split_name: &str,
) -> PyResult<Py<PyAny>> {
    let sp = split(split_name)?;
    let batch = py
        .detach(|| {
            lifelong::eval::evaluate_checkpoint(&checkpoint, &data, sp)
                .and_then(|ev| ev.predictions())
        })
        .py()?;
    Ok(batch.to_pyarrow(py)?.unbind())
}

/// The shard (CRC-32 of the raw id modulo `count`) of every id: an int32 numpy array.
#[pyfunction]
fn shard_of<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
    count: usize,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let out: Vec<i32> = if ids.hasattr("__arrow_c_array__")? {
        let arr = arrow_array::make_array(arrow_data::ArrayData::from_pyarrow_bound(ids)?);
        py.detach(|| serving::shards_of(arr.as_ref(), count))
            .py()?
            .into_iter()
            .map(|s| s as i32)
            .collect()
    } else {
        if count == 0 {
            return Err(invalid("a shard count of 0"));
        }
        raw_ids(ids)?
            .iter()
            .map(|id| serving::shard_of(id, count) as i32)
            .collect()
    };
    Ok(PyArray1::from_vec(py, out))
}

/// A checkpoint and its encodings, scoring candidates for users from any thread.
#[pyclass(frozen, module = "lifelong._native")]
struct Scorer {
    inner: serving::Scorer,
}

impl Scorer {
    fn request(
        user: &Bound<'_, PyAny>,
        candidates: &Bound<'_, PyAny>,
        cates: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(User, Vec<Candidate>)> {
        let user = User::Id(raw_id(user)?);
        let items = raw_ids(candidates)?;
        let cands = match cates {
            None => items.into_iter().map(Candidate::item).collect(),
            Some(c) => {
                let c = raw_ids(c)?;
                if c.len() != items.len() {
                    return Err(invalid(format!(
                        "{} candidates but {} categories",
                        items.len(),
                        c.len()
                    )));
                }
                items
                    .into_iter()
                    .zip(c)
                    .map(|(item, cate)| Candidate {
                        item,
                        cate: Some(cate),
                    })
                    .collect()
            }
        };
        Ok((user, cands))
    }
}

#[pymethods]
impl Scorer {
    #[new]
    #[pyo3(signature = (checkpoint, encodings, shard=None, bucket_precision="f32", store=None, device="cpu"))]
    fn new(
        py: Python<'_>,
        checkpoint: PathBuf,
        encodings: PathBuf,
        shard: Option<&str>,
        bucket_precision: &str,
        store: Option<PathBuf>,
        device: &str,
    ) -> PyResult<Self> {
        let options = StoreOptions {
            shard: self::shard(shard)?,
            buckets: bucket_precision.parse().py()?,
            mapped: store,
            device: device.parse().py()?,
        };
        let inner = py
            .detach(|| serving::Scorer::open_with(&checkpoint, &encodings, options))
            .py()?;
        Ok(Self { inner })
    }

    /// Click probabilities of `candidates` (item ids) for `user` (a raw id), in order; `time`
    /// scores at that time (a model with a time field; default: the user's newest behavior's).
    #[pyo3(signature = (user, candidates, cates=None, time=None))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        user: &Bound<'py, PyAny>,
        candidates: &Bound<'py, PyAny>,
        cates: Option<&Bound<'py, PyAny>>,
        time: Option<i64>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (user, cands) = Self::request(user, candidates, cates)?;
        let p = py
            .detach(|| self.inner.score_at(&user, &cands, time))
            .py()?;
        Ok(PyArray1::from_vec(py, p))
    }

    /// `score` of many requests, scored in parallel: one array per user.
    fn score_many<'py>(
        &self,
        py: Python<'py>,
        users: &Bound<'py, PyAny>,
        candidates: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyArray1<f32>>>> {
        let users: Vec<Bound<'py, PyAny>> = users.try_iter()?.collect::<PyResult<_>>()?;
        let cands: Vec<Bound<'py, PyAny>> = candidates.try_iter()?.collect::<PyResult<_>>()?;
        if users.len() != cands.len() {
            return Err(invalid(format!(
                "{} users but {} candidate lists",
                users.len(),
                cands.len()
            )));
        }
        let reqs: Vec<(User, Vec<Candidate>)> = users
            .iter()
            .zip(&cands)
            .map(|(u, c)| Self::request(u, c, None))
            .collect::<PyResult<_>>()?;
        let out = py
            .detach(|| {
                use rayon::prelude::*;
                reqs.par_iter()
                    .map(|(u, c)| self.inner.score(u, c))
                    .collect::<lifelong::Result<Vec<_>>>()
            })
            .py()?;
        Ok(out.into_iter().map(|p| PyArray1::from_vec(py, p)).collect())
    }

    /// Swaps in the encodings of `dir` (scoring goes on meanwhile); the number of users.
    fn reload(&self, py: Python<'_>, dir: PathBuf) -> PyResult<usize> {
        py.detach(|| self.inner.reload(&dir)).py()
    }

    /// Users with an encoding.
    #[getter]
    fn num_users(&self) -> usize {
        self.inner.num_users()
    }

    /// The model fingerprint the encodings were checked against.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint().to_string()
    }

    /// The checkpoint file.
    #[getter]
    fn checkpoint(&self) -> String {
        self.inner.checkpoint().display().to_string()
    }

    /// Seconds of each of `repeats` direct Rust calls of `score` on one request (the binding's
    /// overhead is `score`'s time from Python against these).
    fn _time_rust(
        &self,
        py: Python<'_>,
        user: &Bound<'_, PyAny>,
        candidates: &Bound<'_, PyAny>,
        repeats: usize,
    ) -> PyResult<Vec<f64>> {
        let (user, cands) = Self::request(user, candidates, None)?;
        py.detach(|| {
            (0..repeats)
                .map(|_| {
                    let t = std::time::Instant::now();
                    self.inner.score(&user, &cands).map(|p| {
                        std::hint::black_box(p);
                        t.elapsed().as_secs_f64()
                    })
                })
                .collect::<lifelong::Result<Vec<_>>>()
        })
        .py()
    }
}

/// A checkpoint with its vocabularies, encoding batches of events into encodings rows.
#[pyclass(frozen, module = "lifelong._native")]
struct Encoder {
    inner: Arc<BatchEncoder>,
}

#[pymethods]
impl Encoder {
    #[new]
    #[allow(clippy::too_many_arguments)] // the Python signature's keyword arguments
    #[pyo3(signature = (checkpoint, vocab_dir, user_col="user_id", item_col="item_id", cate_col="cate_id", ts_col="ts", label_col="label"))]
    fn new(
        py: Python<'_>,
        checkpoint: PathBuf,
        vocab_dir: PathBuf,
        user_col: &str,
        item_col: &str,
        cate_col: &str,
        ts_col: &str,
        label_col: &str,
    ) -> PyResult<Self> {
        let cols = ColumnNames {
            user: user_col.into(),
            item: item_col.into(),
            cate: cate_col.into(),
            ts: ts_col.into(),
            label: label_col.into(),
        };
        let inner = py
            .detach(|| BatchEncoder::open(&checkpoint, &vocab_dir, cols))
            .py()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The encodings schema (pyarrow).
    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.inner.schema().as_ref().to_pyarrow(py)?.unbind())
    }

    /// One encodings row per user of the batch (each user's every event in it).
    fn encode(&self, py: Python<'_>, batch: PyArrowType<RecordBatch>) -> PyResult<Py<PyAny>> {
        let out = py.detach(|| self.inner.encode(&batch.0)).py()?;
        Ok(out.to_pyarrow(py)?.unbind())
    }

    /// A stream over batches whose users are contiguous (see `encode_batches`).
    fn stream(&self) -> EncodeStream {
        EncodeStream {
            inner: Mutex::new(serving::StreamEncoder::new(self.inner.clone())),
        }
    }

    /// The checkpoint file.
    #[getter]
    fn checkpoint(&self) -> String {
        self.inner.model_file().file.display().to_string()
    }
}

/// A [`lifelong::serving::StreamEncoder`] across calls.
#[pyclass(frozen, module = "lifelong._native")]
struct EncodeStream {
    inner: Mutex<serving::StreamEncoder>,
}

impl EncodeStream {
    fn step(&self, py: Python<'_>, batch: Option<RecordBatch>) -> PyResult<Option<Py<PyAny>>> {
        let out = py.detach(|| {
            let mut s = self
                .inner
                .lock()
                .map_err(|_| lifelong::Error::InvalidArgument("the stream failed before".into()))?;
            match &batch {
                Some(b) => s.push(b),
                None => s.finish(),
            }
        });
        let out = out.py()?;
        out.map(|b| Ok(b.to_pyarrow(py)?.unbind())).transpose()
    }
}

#[pymethods]
impl EncodeStream {
    /// Encodes the complete users of `batch` (the last one waits); None when none is complete.
    fn push(&self, py: Python<'_>, batch: PyArrowType<RecordBatch>) -> PyResult<Option<Py<PyAny>>> {
        self.step(py, Some(batch.0))
    }

    /// Encodes the users still held: the end of the stream.
    fn finish(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.step(py, None)
    }
}

/// One part file of an encodings directory.
#[pyclass(frozen, module = "lifelong._native")]
struct PartWriter {
    inner: Mutex<serving::PartWriter>,
}

impl PartWriter {
    fn locked(&self) -> lifelong::Result<std::sync::MutexGuard<'_, serving::PartWriter>> {
        self.inner
            .lock()
            .map_err(|_| lifelong::Error::InvalidArgument("the writer failed before".into()))
    }
}

#[pymethods]
impl PartWriter {
    #[new]
    fn new(py: Python<'_>, out_dir: PathBuf, encoder: &Encoder, shard: &str) -> PyResult<Self> {
        let shard = Shard::parse(shard).py()?;
        let enc = encoder.inner.clone();
        let inner = py
            .detach(|| serving::PartWriter::create(&out_dir, &enc, shard))
            .py()?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// Appends a batch of encodings rows.
    fn write(&self, py: Python<'_>, batch: PyArrowType<RecordBatch>) -> PyResult<()> {
        py.detach(|| self.locked()?.write(&batch.0)).py()
    }

    /// Closes the part file (renamed into place); its path.
    fn finish(&self, py: Python<'_>) -> PyResult<String> {
        let path = py.detach(|| self.locked()?.finish()).py()?;
        Ok(path.display().to_string())
    }

    /// Users written.
    #[getter]
    fn users(&self) -> PyResult<usize> {
        Ok(self.locked().py()?.users())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Candle's thread count and the allocator settings, before any pool exists.
    lifelong::tune_runtime();
    let py = m.py();
    for (name, ty) in [
        ("LifelongError", py.get_type::<LifelongError>()),
        ("IoError", py.get_type::<IoError>()),
        ("CorruptError", py.get_type::<CorruptError>()),
        ("SchemaError", py.get_type::<SchemaError>()),
        ("DataError", py.get_type::<DataError>()),
        ("CheckpointError", py.get_type::<CheckpointError>()),
        ("ConfigError", py.get_type::<ConfigError>()),
        ("TrainingError", py.get_type::<TrainingError>()),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
        ),
        ("ComputeError", py.get_type::<ComputeError>()),
    ] {
        m.add(name, ty)?;
    }
    m.add_function(wrap_pyfunction!(prepare, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(shard_of, m)?)?;
    m.add_class::<Scorer>()?;
    m.add_class::<Encoder>()?;
    m.add_class::<EncodeStream>()?;
    m.add_class::<PartWriter>()?;
    Ok(())
}
