"""The engine recipes run for real: examples/spark_encode.py in Spark local[2] and
examples/ray_encode.py with 2 Ray workers write encodings equal to `lifelong encode`'s (ids and
codes exactly, sums to 1e-5) that the Scorer opens and scores as it scores the CLI's;
examples/ray_score.py equals the Scorer; examples/quickstart.py runs end to end."""

import glob
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lifelong
from conftest import USERS, run_example


def read_encodings(d):
    files = sorted(glob.glob(os.path.join(d, "part-*.parquet")))
    assert files, d
    t = pa.concat_tables([pq.read_table(f) for f in files])
    rows = {}
    for r in t.to_pylist():
        assert r["user_id"] not in rows, f"user {r['user_id']} twice in {d}"
        rows[r["user_id"]] = r
    return rows


def assert_same_encodings(got_dir, want_dir):
    got, want = read_encodings(got_dir), read_encodings(want_dir)
    assert set(got) == set(want) and len(got) == USERS
    for u, w in want.items():
        g = got[u]
        for k in ("user", "last_ts", "items", "cates", "codes"):
            assert g.get(k) == w.get(k), (u, k)
        for k in (k for k in w if k.startswith("buckets_")):
            np.testing.assert_allclose(np.array(g[k]), np.array(w[k]), rtol=0, atol=1e-5, err_msg=f"user {u} {k}")


def assert_scores_equal(world, kind, other_dir):
    a = lifelong.Scorer(world.run(kind), world.enc(kind))
    b = lifelong.Scorer(world.run(kind), other_dir)
    assert a.num_users == b.num_users == USERS
    items = np.arange(1_000, 1_100, dtype=np.int64)
    for u in list(read_encodings(other_dir))[:10]:
        np.testing.assert_array_equal(a.score(u, items), b.score(u, items))


@pytest.mark.parametrize("kind", ["sdim", "eta"])
def test_spark_local2_encode_equals_lifelong_encode(world, tmp_path, kind):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17 on PATH or JAVA_HOME")
    out = tmp_path / "spark"
    r = run_example("spark_encode.py", "--checkpoint", world.run(kind), "--vocab", world.data,
                    "--events", world.events, "--out", out, "--parts", 3, "--master", "local[2]", "--order-col", "seq")
    assert f"spark encoded {USERS} users into 3 parts" in r.stdout, r.stdout
    assert sorted(os.listdir(out)) == ["part-00000-of-00003.parquet", "part-00001-of-00003.parquet",
                                       "part-00002-of-00003.parquet", "vocab"]
    assert_same_encodings(out, world.enc(kind))
    assert_scores_equal(world, kind, out)


@pytest.mark.parametrize("kind", ["sdim", "eta"])
def test_ray_two_workers_encode_equals_lifelong_encode(world, tmp_path, kind):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    r = run_example("ray_encode.py", "--checkpoint", world.run(kind), "--vocab", world.data,
                    "--events", world.events, "--out", out, "--parts", 3, "--workers", 2, "--order-col", "seq")
    assert f"ray encoded {USERS} users into 3 parts" in r.stdout, r.stdout
    assert_same_encodings(out, world.enc(kind))
    assert_scores_equal(world, kind, out)


def test_ray_score_equals_the_scorer(world, tmp_path):
    pytest.importorskip("ray")
    users = list(read_encodings(world.enc("sdim")))[:30]
    rng = np.random.default_rng(1)
    items = [rng.integers(1_000, 1_300, size=int(rng.integers(1, 50))).tolist() for _ in users]
    req = tmp_path / "requests.parquet"
    pq.write_table(pa.table({"user_id": pa.array(users, pa.int64()), "items": pa.array(items, pa.list_(pa.int64()))}), req)
    out = tmp_path / "scores.parquet"
    run_example("ray_score.py", "--checkpoint", world.run("sdim"), "--encodings", world.enc("sdim"),
                "--requests", req, "--out", out, "--workers", 2)
    got = {r["user_id"]: r for r in pq.read_table(out).to_pylist()}
    scorer = lifelong.Scorer(world.run("sdim"), world.enc("sdim"))
    assert len(got) == len(users)
    for u, it in zip(users, items):
        assert got[u]["items"] == it
        np.testing.assert_array_equal(np.array(got[u]["probs"], np.float32), scorer.score(u, np.array(it)))


def test_quickstart_runs_end_to_end(world, tmp_path):
    r = run_example("quickstart.py", "--events", world.events, "--workdir", tmp_path / "qs", "--steps", 30)
    assert "test AUC" in r.stdout and f"encoded {USERS} users" in r.stdout, r.stdout
