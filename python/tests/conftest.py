"""Fixtures of the Python tests: one synthetic log, prepared; SDIM and ETA trained briefly and
encoded by the `lifelong` binary (the references the bindings are compared with)."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
USERS = 150


def lifelong_bin() -> str:
    """The CLI built by `cargo test` (or LIFELONG_BIN)."""
    b = os.environ.get("LIFELONG_BIN") or str(ROOT / "target" / "debug" / "lifelong")
    if not Path(b).is_file():
        pytest.exit(f"{b} is missing: build it with `cargo build` (or set LIFELONG_BIN)", returncode=2)
    return b


def cli(*args: str) -> str:
    r = subprocess.run([lifelong_bin(), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"lifelong {args} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


class World:
    def __init__(self, root: Path):
        self.root = root
        self.events_dir = root / "events"
        cli("synth", "--out", self.events_dir, "--users", USERS, "--items", 300, "--len", 60)
        self.events = self.events_dir / "events.parquet"
        # The log's row number as a column: events of equal timestamps are ordered by it on the
        # engines (which do not keep the log's order), as `prepare` orders them by the log.
        t = pq.read_table(self.events)
        pq.write_table(t.append_column("seq", pa.array(range(t.num_rows), pa.int64())), self.events)
        self.data = root / "prepared"
        cli("prepare", "--events", self.events, "--out", self.data)
        for kind in ("sdim", "eta"):
            search = "" if kind == "sdim" else "[model.search]\nk = 5\n"
            cfg = root / f"{kind}.toml"
            cfg.write_text(
                f'[data]\ndir = "unused"\nmax_len = 30\n[model]\nkind = "{kind}"\n'
                f"[model.embedding]\nitem_dim = 8\ncate_dim = 8\n{search}"
                "[train]\nepochs = 1\nbatch_size = 128\nmax_steps = 12\nseed = 3\n"
            )
            cli("train", "--config", cfg, "--data", self.data, "--out", self.run(kind))
            cli("encode", "--checkpoint", self.run(kind), "--data", self.data, "--out", self.enc(kind))

    def run(self, kind: str) -> Path:
        return self.root / f"run_{kind}"

    def enc(self, kind: str) -> Path:
        return self.root / f"enc_{kind}"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


def run_example(name: str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=400,
    )
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr[-6000:]}"
    return r
