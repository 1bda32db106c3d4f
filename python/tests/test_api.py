"""The Python API against the CLI it wraps: metrics and predictions equal `lifelong eval`'s,
scores equal `lifelong serve`'s, one Scorer shared by 8 threads equals one thread, and bad input
raises our exceptions (never a crash)."""

import json
import socket
import subprocess
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import pytest

import lifelong
from conftest import cli, lifelong_bin


def test_evaluate_and_predict_equal_lifelong_eval(world, tmp_path):
    for kind in ("sdim", "eta"):
        out = cli("eval", "--checkpoint", world.run(kind), "--data", world.data, "--split", "test",
                  "--json", "--predictions", tmp_path / f"{kind}.parquet")
        want = json.loads(out.strip().splitlines()[-1])
        got = lifelong.evaluate(world.run(kind), world.data, split="test")
        assert got["n"] == want["n"] > 0
        for k in ("auc", "gauc", "logloss", "ne", "calibration"):
            assert got[k] == want[k], (kind, k)
        table = lifelong.predict(world.run(kind), world.data, split="test")
        ref = pq.read_table(tmp_path / f"{kind}.parquet")
        assert table.column_names == ref.column_names
        for c in ref.column_names:
            assert table.column(c).to_pylist() == ref.column(c).to_pylist(), (kind, c)


def _serve(run, enc):
    proc = subprocess.Popen([lifelong_bin(), "serve", "--checkpoint", run, "--encodings", enc,
                             "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    addr = line.split()[-1]
    for _ in range(200):  # until ready
        try:
            with urllib.request.urlopen(f"http://{addr}/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except Exception:
            threading.Event().wait(0.05)
    return proc, addr


def test_scorer_equals_lifelong_serve(world):
    preds = lifelong.predict(world.run("eta"), world.data)
    users = sorted(set(preds.column("user_id").to_pylist()))[:5]
    items = np.array(sorted(set(preds.column("item_id").to_pylist()))[:40], dtype=np.int64)
    scorer = lifelong.Scorer(world.run("eta"), world.enc("eta"))
    assert scorer.num_users == len(set(pq.read_table(world.events).column("user_id").to_pylist()))
    proc, addr = _serve(world.run("eta"), world.enc("eta"))
    try:
        for u in users:
            body = json.dumps({"user": u, "candidates": items.tolist()}).encode()
            req = urllib.request.Request(f"http://{addr}/score", data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                want = np.array(json.loads(r.read())["scores"], dtype=np.float32)
            got = scorer.score(u, items)
            assert got.dtype == np.float32 and got.shape == (len(items),)
            np.testing.assert_array_equal(got, want)
            # The same request as a list, a pyarrow array, and through score_many.
            np.testing.assert_array_equal(scorer.score(u, items.tolist()), want)
            np.testing.assert_array_equal(scorer.score(u, pa.array(items)), want)
            np.testing.assert_array_equal(scorer.score_many([u], [items])[0], want)
    finally:
        proc.terminate()
        proc.wait(10)


def test_scorer_shared_by_8_threads_equals_one(world):
    scorer = lifelong.Scorer(world.run("sdim"), world.enc("sdim"))
    users = pq.read_table(world.events).column("user_id").unique().to_pylist()[:40]
    rng = np.random.default_rng(0)
    reqs = [(u, rng.integers(1_000, 1_300, size=200).astype(np.int64)) for u in users]
    one = [scorer.score(u, c) for u, c in reqs]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            many = list(pool.map(lambda r: scorer.score(*r), reqs))
            for a, b in zip(one, many):
                np.testing.assert_array_equal(a, b)
    batched = scorer.score_many([u for u, _ in reqs], [c for _, c in reqs])
    for a, b in zip(one, batched):
        np.testing.assert_array_equal(a, b)
    # Reload under the threads' feet: scores stay the same (same encodings).
    with ThreadPoolExecutor(8) as pool:
        fut = [pool.submit(lambda r: scorer.score(*r), r) for r in reqs]
        assert scorer.reload(str(world.enc("sdim"))) == scorer.num_users
        for a, f in zip(one, fut):
            np.testing.assert_array_equal(a, f.result())


def test_bad_input_raises_our_exceptions(world, tmp_path):
    enc = world.enc("sdim")
    # A checkpoint of another model than the encodings'.
    with pytest.raises(lifelong.CorruptError, match="other weights|layout"):
        lifelong.Scorer(world.run("eta"), enc)
    with pytest.raises(lifelong.LifelongError, match="nope"):
        lifelong.Scorer(tmp_path / "nope", enc)
    scorer = lifelong.Scorer(world.run("sdim"), enc)
    with pytest.raises(lifelong.InvalidArgumentError, match="unknown user|no encoding"):
        scorer.score(-5, [1, 2])
    with pytest.raises(lifelong.InvalidArgumentError, match="no candidates"):
        scorer.score(pq.read_table(world.events).column("user_id")[0].as_py(), [])
    with pytest.raises(lifelong.InvalidArgumentError, match="int or a str"):
        scorer.score(1.5, [1])
    # Events of the wrong schema, with nulls, with string ids against integer ones.
    good = pq.read_table(world.events).slice(0, 50)
    with pytest.raises(lifelong.SchemaError, match="`ts`"):
        list(lifelong.encode_batches(world.run("sdim"), world.data, good.drop(["ts"])))
    nulls = good.set_column(1, "item_id", pa.array([None] + good.column("item_id").to_pylist()[1:], pa.int64()))
    with pytest.raises(lifelong.DataError, match="row 0.*`item_id`.*null"):
        list(lifelong.encode_batches(world.run("sdim"), world.data, nulls))
    strs = good.set_column(0, "user_id", pa.array([str(x) for x in good.column("user_id").to_pylist()]))
    with pytest.raises(lifelong.SchemaError, match="string user ids"):
        list(lifelong.encode_batches(world.run("sdim"), world.data, strs))
    # Encodings of another model into a writer; a user of another shard; nothing left behind.
    eta_rows = next(lifelong.encode_batches(world.run("eta"), world.data, good))
    out = tmp_path / "enc"
    with pytest.raises(lifelong.SchemaError, match="codes"):
        with lifelong.EncodingsWriter(out, world.run("sdim"), world.data, shard=(0, 1)) as w:
            w.write(eta_rows)
    assert not (out / "part-00000-of-00001.parquet").exists()
    rows = next(lifelong.encode_batches(world.run("sdim"), world.data, good))
    shards = lifelong.shard_of(rows.column(0), 2)
    other = 1 - int(shards[0])
    with pytest.raises(lifelong.InvalidArgumentError, match="belongs to shard"):
        with lifelong.EncodingsWriter(out, world.run("sdim"), world.data, shard=(other, 2)) as w:
            w.write(rows.slice(0, 1))
    # A config with a misspelt key; a dataset that is not one.
    with pytest.raises(lifelong.ConfigError, match="k2"):
        lifelong.train({"model": {"kind": "eta", "search": {"k2": 5}}}, data=world.data, out=tmp_path / "r")
    with pytest.raises(lifelong.IoError):
        lifelong.evaluate(world.run("sdim"), tmp_path / "missing")
    with pytest.raises(lifelong.InvalidArgumentError, match="split"):
        lifelong.evaluate(world.run("sdim"), world.data, split="bogus")
    # A corrupt checkpoint file.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(lifelong.CheckpointError):
        lifelong.Scorer(bad, enc)
    assert issubclass(lifelong.CheckpointError, lifelong.LifelongError)
    # A device the build cannot use, or one that does not exist, is refused by name.
    with pytest.raises(lifelong.ConfigError, match="cuda:0.*--features cuda"):
        lifelong.Scorer(world.run("sdim"), enc, device="cuda")
    with pytest.raises(lifelong.ConfigError, match="`tpu`"):
        lifelong.Scorer(world.run("sdim"), enc, device="tpu")
    with pytest.raises(lifelong.ConfigError, match="cuda:0.*--features cuda"):
        lifelong.train({"model": {"kind": "din"}, "train": {"device": "cuda"}}, data=world.data, out=tmp_path / "r")


def test_shard_of_matches_lifelong_encode_shards(world, tmp_path):
    out = tmp_path / "two"
    for s in ("0/2", "1/2"):
        cli("encode", "--checkpoint", world.run("sdim"), "--data", world.data, "--out", out, "--shard", s)
    for i in range(2):
        ids = pq.read_table(out / f"part-0000{i}-of-00002.parquet").column("user_id")
        assert len(ids) > 0
        assert set(lifelong.shard_of(ids, 2).tolist()) == {i}
        assert set(lifelong.shard_of(ids.to_pylist(), 2).tolist()) == {i}


def test_train_from_a_dict_with_overrides(world, tmp_path):
    cfg = {"model": {"kind": "din", "embedding": {"item_dim": 8, "cate_dim": 8}}, "data": {"max_len": 20}}
    run = lifelong.train(cfg, data=world.data, out=tmp_path / "din", train__max_steps=6,
                         train__batch_size=64, train__eval_every=3, overrides={"train.seed": 7})
    assert lifelong.train.last_summary["steps"] == 6
    assert lifelong.train.last_summary["best_auc"] is not None
    assert (tmp_path / "din" / "best.safetensors").exists()
    m = lifelong.evaluate(run, world.data, split="valid")
    assert 0.0 <= m["auc"] <= 1.0 and m["n"] > 0
    # The same run from the CLI with the same keys reaches the same weights: equal metrics.
    toml = tmp_path / "din.toml"
    toml.write_text('[data]\ndir = "unused"\nmax_len = 20\n[model]\nkind = "din"\n[model.embedding]\nitem_dim = 8\ncate_dim = 8\n')
    cli("train", "--config", toml, "--data", world.data, "--out", tmp_path / "din_cli",
        "--set", "train.max_steps=6", "--set", "train.batch_size=64", "--set", "train.eval_every=3",
        "--set", "train.seed=7")
    assert lifelong.evaluate(tmp_path / "din_cli", world.data, split="valid") == m


def test_write_shard_and_complete_encodings_make_a_directory_the_scorer_opens(world, tmp_path):
    # Three users' events only, into 8 parts: most shards get no user and an empty part.
    events = pq.read_table(world.events)
    users = events.column("user_id").unique().to_pylist()[:3]
    mask = pa.compute.is_in(events.column("user_id"), value_set=pa.array(users))
    table = lifelong.add_shard(events.filter(mask), 8)
    out = tmp_path / "enc"
    written = []
    for s in sorted(set(table.column("shard").to_pylist())):
        group = table.filter(pa.compute.equal(table.column("shard"), s))
        # Newest first: write_shard orders each user's events by time (then the log's order).
        r = lifelong.write_shard(out, world.run("sdim"), world.data, group.take(list(range(group.num_rows))[::-1]),
                                 8, order_cols=["seq"])
        assert r["shard"] == s
        written.append(s)
    empty = lifelong.complete_encodings(out, world.run("sdim"), world.data, 8, written)
    assert sorted(empty + written) == list(range(8)) and len(written) <= 3
    scorer = lifelong.Scorer(world.run("sdim"), out)
    ref = lifelong.Scorer(world.run("sdim"), world.enc("sdim"))
    assert scorer.num_users == 3
    items = np.arange(1_000, 1_050, dtype=np.int64)
    for u in users:
        np.testing.assert_array_equal(scorer.score(u, items), ref.score(u, items))


def test_history_tables_encode_as_their_events(world, tmp_path):
    # One row per user, the history as three lists (what groupBy(user).agg(collect_list) writes).
    events = pq.read_table(world.events).sort_by([("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
    hist = events.group_by("user_id", use_threads=False).aggregate(
        [("item_id", "list"), ("cate_id", "list"), ("ts", "list")]
    ).rename_columns(["user_id", "item_id", "cate_id", "ts"])
    out = tmp_path / "enc"
    with lifelong.EncodingsWriter(out, world.run("eta"), world.data) as w:
        for b in lifelong.encode_batches(world.run("eta"), world.data, hist.to_batches(max_chunksize=7)):
            w.write(b)
    assert w.users == hist.num_rows
    got = {r["user_id"]: r for r in pq.read_table(out / "part-00000-of-00001.parquet").to_pylist()}
    want = {r["user_id"]: r for r in pq.read_table(world.enc("eta") / "part-00000-of-00001.parquet").to_pylist()}
    assert got == want
    # A history whose lists differ in length names the user's row.
    bad = hist.set_column(2, "cate_id", pa.array([c[:-1] if i == 4 else c for i, c in enumerate(hist.column("cate_id").to_pylist())]))
    with pytest.raises(lifelong.DataError, match="row 4"):
        list(lifelong.encode_batches(world.run("eta"), world.data, bad))
