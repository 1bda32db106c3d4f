"""lifelong: lifelong user-behavior sequence models for CTR prediction, from Python.

The Rust crate does the work; this package converts arguments. Every call releases the GIL
while it computes. Data crosses as Arrow (pyarrow, or anything with ``__arrow_c_array__``);
scores come back as numpy arrays. Errors are :class:`LifelongError` subclasses carrying the
crate's message (the file, row and column named).

Pipeline::

    import lifelong
    lifelong.prepare("events.parquet", "prepared")
    run = lifelong.train("examples/din.toml", data="prepared", out="runs/din")
    lifelong.evaluate(run, "prepared")                 # {'auc': ..., 'gauc': ..., ...}
    scorer = lifelong.Scorer(run, "encodings")          # after encoding
    scorer.score(user_id, [item_1, item_2, ...])       # numpy float32 probabilities

Encoding on an engine (Spark, Ray): :func:`encode_batches` turns batches of events into
batches of encodings rows, :class:`EncodingsWriter` lays them out as one part file of an
encodings directory; see ``examples/spark_encode.py`` and ``examples/ray_encode.py``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from ._native import (
    CheckpointError,
    ComputeError,
    ConfigError,
    CorruptError,
    DataError,
    Encoder,
    InvalidArgumentError,
    IoError,
    LifelongError,
    Scorer,
    SchemaError,
    TrainingError,
)
from . import _native

__all__ = [
    "prepare",
    "train",
    "evaluate",
    "predict",
    "Scorer",
    "Encoder",
    "encode_batches",
    "EncodingsWriter",
    "write_encodings",
    "shard_of",
    "add_shard",
    "write_shard",
    "complete_encodings",
    "LifelongError",
    "IoError",
    "CorruptError",
    "SchemaError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "TrainingError",
    "InvalidArgumentError",
    "ComputeError",
]

PathLike = "str | os.PathLike[str]"


def _path(p) -> str:
    return os.fspath(p)


def prepare(events, out, **options) -> dict:
    """Turns an event log (parquet or CSV, a file or a directory) into a prepared dataset.

    Options (as ``lifelong prepare``'s flags): ``user_col``, ``item_col``, ``cate_col``,
    ``ts_col``, ``label_col``, ``negatives``, ``seed``, ``min_history``, ``stride``,
    ``keep`` (a dict column -> value), ``memory_budget`` (bytes). Returns ``meta.json`` as a dict.
    """
    if "keep" in options and isinstance(options["keep"], Mapping):
        options["keep"] = [[k, str(v)] for k, v in options["keep"].items()]
    return json.loads(_native.prepare(_path(events), _path(out), json.dumps(options)))


def _toml_value(v: Any) -> str:
    """A Python value as a TOML value (for ``--set``-style overrides)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as a config value")


def train(config, *, data=None, out=None, resume: bool = False, overrides: Mapping[str, Any] | None = None, **kw) -> str:
    """Trains a model; returns the run directory (checkpoints, ``metrics.jsonl``).

    ``config`` is a TOML file's path or a dict of the same shape (``{"model": {"kind": "din"}}``).
    Overrides are config keys, as ``lifelong train --set``: ``overrides={"train.seed": 3}``, or
    as keywords with ``__`` for the dots (``train__seed=3``). ``data`` and ``out`` override
    ``data.dir`` and ``train.out``. Progress is logged on stderr as the CLI logs it; the summary
    of the run is in ``train.last_summary``.
    """
    sets = dict(overrides or {})
    for k, v in kw.items():
        sets[k.replace("__", ".")] = v
    # As keys too, so a config without them is complete (the CLI's --data and --out likewise).
    if data is not None:
        sets["data.dir"] = _path(data)
    if out is not None:
        sets["train.out"] = _path(out)
    sets_list = [f"{k}={_toml_value(v)}" for k, v in sets.items()]
    if isinstance(config, Mapping):
        path, body = None, json.dumps(config)
    else:
        path, body = _path(config), None
    run, summary = _native.train(
        path, body, sets_list,
        None if data is None else _path(data),
        None if out is None else _path(out),
        resume,
    )
    train.last_summary = json.loads(summary)
    return run


train.last_summary = None


def evaluate(checkpoint, data, split: str = "test") -> dict:
    """AUC, GAUC, logloss, normalized entropy, calibration and row count of a split, as
    ``lifelong eval`` computes them."""
    return json.loads(_native.evaluate(_path(checkpoint), _path(data), split))


def predict(checkpoint, data, split: str = "test") -> pa.Table:
    """Per-row predictions of a split: ``row, user_id, item_id, user, item, label, logit, prob``."""
    batch = _native.predict(_path(checkpoint), _path(data), split)
    return pa.Table.from_batches([batch])


def shard_of(user_ids, count: int) -> np.ndarray:
    """The encodings shard of each raw user id (CRC-32 modulo ``count``, the rule of
    ``lifelong encode --shard`` and ``lifelong serve --shard``), as an int32 array."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    return _native.shard_of(user_ids, count)


@functools.lru_cache(maxsize=8)
def _encoder(checkpoint: str, vocab_dir: str, columns: tuple) -> Encoder:
    # One per process and checkpoint: engines call the encoding function once per batch or
    # group, and the checkpoint is read once.
    return Encoder(checkpoint, vocab_dir, *columns)


_COLUMNS = ("user_col", "item_col", "cate_col", "ts_col", "label_col")
_DEFAULTS = ("user_id", "item_id", "cate_id", "ts", "label")


def encoder(checkpoint, vocab_dir, **columns) -> Encoder:
    """The (cached) :class:`Encoder` of a checkpoint and the directory holding its ``vocab/``
    (the prepared dataset, or an encodings directory)."""
    unknown = set(columns) - set(_COLUMNS)
    if unknown:
        raise TypeError(f"unknown column options {sorted(unknown)}; known: {list(_COLUMNS)}")
    cols = tuple(columns.get(k, d) for k, d in zip(_COLUMNS, _DEFAULTS))
    return _encoder(_path(checkpoint), _path(vocab_dir), cols)


def _batches(data) -> Iterator[pa.RecordBatch]:
    """Record batches of a table, a batch, a reader, or an iterable of them."""
    if isinstance(data, pa.RecordBatch):
        yield data
    elif isinstance(data, pa.Table):
        yield from data.to_batches()
    elif isinstance(data, pa.RecordBatchReader):
        yield from data
    elif hasattr(data, "__arrow_c_stream__") and not isinstance(data, (list, tuple)):
        yield from pa.RecordBatchReader.from_stream(data)
    else:
        for d in data:
            yield from _batches(d)


def encode_batches(checkpoint, vocab_dir, batches, **columns) -> Iterator[pa.RecordBatch]:
    """Encodes batches of events into batches of encodings rows (one row per user).

    ``batches``: a pyarrow Table, RecordBatch, reader, or an iterable of them, holding events
    (``user_id, item_id, cate_id, ts`` and an optional ``label``; names as ``prepare``'s options
    ``user_col``... say). Each user's events must be contiguous in the stream (grouped or sorted
    by user: what ``groupBy(user).applyInArrow`` and a partition sorted by user give): the last
    user of a batch waits for the next batch. Within a user, events are ordered by timestamp.

    This one function serves Spark's ``mapInArrow`` and ``applyInArrow`` and Ray Data's
    ``map_batches`` / ``map_groups``. ``checkpoint`` may also be an :class:`Encoder`.
    """
    enc = checkpoint if isinstance(checkpoint, Encoder) else encoder(checkpoint, vocab_dir, **columns)
    stream = enc.stream()
    for b in _batches(batches):
        out = stream.push(b)
        if out is not None:
            yield out
    out = stream.finish()
    if out is not None:
        yield out


def _shard(shard) -> str:
    if isinstance(shard, str):
        return shard
    i, n = shard
    return f"{int(i)}/{int(n)}"


class EncodingsWriter:
    """Writes one part file (``part-I-of-N.parquet``) of an encodings directory, atomically,
    with the vocabularies beside it: the layout ``lifelong encode --shard I/N`` writes and
    :class:`Scorer` opens once all ``N`` parts are there.

    Every row is checked: encodings of this model, users of shard ``I`` only, none twice.
    Use as a context manager; leaving it on an exception abandons the part (no file is left).
    """

    def __init__(self, out_dir, checkpoint, vocab_dir, shard=(0, 1), **columns):
        enc = checkpoint if isinstance(checkpoint, Encoder) else encoder(checkpoint, vocab_dir, **columns)
        self._w = _native.PartWriter(_path(out_dir), enc, _shard(shard))
        self.file = None

    def write(self, batches) -> None:
        """Appends encodings rows (a RecordBatch, a Table, or an iterable of them)."""
        for b in _batches(batches):
            self._w.write(b)

    @property
    def users(self) -> int:
        return self._w.users

    def close(self) -> dict:
        """Commits the part file; returns ``{"file": ..., "users": ...}``."""
        self.file = self._w.finish()
        return {"file": self.file, "users": self._w.users}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            del self._w  # dropped unfinished: the temporary file goes
        return False


def write_encodings(out_dir, checkpoint, vocab_dir, events, shard=(0, 1), **columns) -> dict:
    """Encodes ``events`` (as :func:`encode_batches` takes them; users of ``shard`` only) and
    writes them as part ``shard`` of the encodings directory ``out_dir``.
    Returns ``{"file": ..., "users": ...}``."""
    enc = checkpoint if isinstance(checkpoint, Encoder) else encoder(checkpoint, vocab_dir, **columns)
    with EncodingsWriter(out_dir, enc, vocab_dir, shard) as w:
        for b in encode_batches(enc, vocab_dir, events):
            w.write(b)
    return {"file": w.file, "users": w.users}


def add_shard(batch, count: int, user_col: str = "user_id", name: str = "shard"):
    """``batch`` (a RecordBatch or Table of events) with a column ``name``: each row's user's
    shard among ``count`` (:func:`shard_of`). The first step of an engine's encode: the engine
    then groups the events by this column."""
    return batch.append_column(name, pa.array(shard_of(batch.column(user_col), count), pa.int32()))


def write_shard(out_dir, checkpoint, vocab_dir, events: pa.Table, count: int, *, shard_col: str = "shard",
                order_cols=(), **columns) -> dict:
    """Encodes every event of one shard (a group of an engine's group-by on the shard column of
    :func:`add_shard`) and writes its part of ``out_dir``. The events are sorted by user, then
    time, then ``order_cols`` (a column that orders events of equal timestamps, such as the log's
    row number: engines do not keep the log's order). Returns ``{"shard", "users", "file"}``."""
    shard = events.column(shard_col)[0].as_py()
    user, ts = columns.get("user_col", "user_id"), columns.get("ts_col", "ts")
    keys = [(user, "ascending"), (ts, "ascending")] + [(c, "ascending") for c in order_cols]
    r = write_encodings(out_dir, checkpoint, vocab_dir, events.sort_by(keys), shard=(shard, count), **columns)
    return {"shard": shard, **r}


def complete_encodings(out_dir, checkpoint, vocab_dir, count: int, written) -> list:
    """Writes an empty part for every shard of ``range(count)`` not in ``written`` (the shards an
    engine's job wrote: a shard no event hashed to has no user), so the directory holds parts
    ``0..count`` as the readers require. Returns the shards it wrote."""
    missing = sorted(set(range(count)) - {int(s) for s in written})
    for s in missing:
        EncodingsWriter(out_dir, checkpoint, vocab_dir, shard=(s, count)).close()
    return missing
