"""Figures of the Python package, printed as tables (run after `pip install ./python` and a
release build of the CLI, on an idle machine):

1. Encode of USERS users x ~LEN behaviors (SDIM and ETA presets, max_len 1,000) through Ray
   (--workers) and Spark (local[--workers]) against `lifelong encode` on the same machine:
   users/s, peak RSS of the whole process tree (JVM, Ray's daemons and workers included), and
   the engine's time as a ratio to the CLI's encode of the same event log.
2. `Scorer.score` from Python against the same call made from Rust inside the extension
   (`_time_rust`): the binding's per-request overhead at 1,000 candidates and L = 10^4.

    python examples/bench_python.py --bin target/release/lifelong --work /tmp/bench_py
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def tree_rss(pid):
    """Resident bytes of `pid` and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
    return total


def measure(cmd, **kw):
    """(seconds, peak tree RSS in bytes, stdout) of a command."""
    t0 = time.time()
    p = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    peak = [0]
    def sample():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss(p.pid))
            time.sleep(0.2)
    th = threading.Thread(target=sample)
    th.start()
    out, err = p.communicate()
    th.join()
    secs = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd} failed:\n{out}\n{err[-4000:]}")
    return secs, peak[0], out


def run(bin, *args):
    r = subprocess.run([bin, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lifelong {args} failed:\n{r.stderr}")
    return r.stdout


def config(path, kind, max_len, batch=256):
    search = "" if kind in ("sdim", "din") else "[model.search]\nk = 50\n"
    path.write_text(f'[data]\ndir = "unused"\nmax_len = {max_len}\n[model]\nkind = "{kind}"\n{search}'
                    f"[train]\nepochs = 1\nbatch_size = {batch}\nmax_steps = 3\nseed = 1\n")
    return path


def encode_figures(a):
    work = Path(a.work)
    events = work / "events" / "events.parquet"
    data = work / "prepared"
    if not events.exists():
        run(a.bin, "synth", "--out", work / "events", "--users", a.users, "--len", a.len, "--items", 200000, "--cates", 500)
    if not (data / "meta.json").exists():
        run(a.bin, "prepare", "--events", events, "--out", data)
    import pyarrow.parquet as pq
    n_events = pq.ParquetFile(events).metadata.num_rows
    print(f"\nEncode: {a.users} users, {n_events} events ({n_events / a.users:.0f} per user), max_len 1000, "
          f"{a.workers} workers, {a.parts} parts, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}\n")
    print("| preset | path | seconds | users/s | peak RSS | time / CLI from the log |")
    print("|---|---|---|---|---|---|")
    for kind in a.kinds.split(","):
        run_dir = work / f"run_{kind}"
        if not (run_dir / "best.safetensors").exists() and not (run_dir / "last.safetensors").exists():
            run(a.bin, "train", "--config", config(work / f"{kind}.toml", kind, 1000), "--data", data, "--out", run_dir)
        rows = []
        s, rss, _ = measure([a.bin, "encode", "--checkpoint", run_dir, "--data", data, "--out", work / f"enc_{kind}_cli"])
        rows.append(("`lifelong encode --data` (prepared histories)", s, rss))
        s, rss, _ = measure([a.bin, "encode", "--checkpoint", run_dir, "--data", data, "--events", events,
                             "--out", work / f"enc_{kind}_cli_log"])
        rows.append(("`lifelong encode --events` (the log)", s, rss))
        base = s
        common = ["--checkpoint", run_dir, "--vocab", data, "--events", events, "--parts", a.parts]
        if "ray" in a.engines:
            s, rss, _ = measure([sys.executable, HERE / "ray_encode.py", *common, "--out", work / f"enc_{kind}_ray",
                                 "--workers", a.workers])
            rows.append((f"Ray, {a.workers} workers", s, rss))
        if "spark" in a.engines:
            s, rss, _ = measure([sys.executable, HERE / "spark_encode.py", *common, "--out", work / f"enc_{kind}_spark",
                                 "--master", f"local[{a.workers}]"])
            rows.append((f"Spark local[{a.workers}]", s, rss))
        for name, s, rss in rows:
            print(f"| {kind} | {name} | {s:.1f} | {a.users / s:,.0f} | {rss / 2**30:.2f} GiB | {s / base:.2f} |", flush=True)


def scorer_figures(a):
    import lifelong
    work = Path(a.work) / "long"
    events = work / "events" / "events.parquet"
    data = work / "prepared"
    L = 10_000
    if not events.exists():
        run(a.bin, "synth", "--out", work / "events", "--users", 120, "--len", 2 * L, "--items", 50000, "--cates", 500)
    if not (data / "meta.json").exists():
        run(a.bin, "prepare", "--events", events, "--out", data)
    print(f"\nScorer.score from Python against the Rust call (1,000 candidates, L = {L}, {a.repeats} requests, "
          f"one thread, load {os.getloadavg()[0]:.2f})\n")
    print("| preset | Rust p50 ms | Python p50 ms | overhead |")
    print("|---|---|---|---|")
    import pyarrow.parquet as pq
    for kind in a.score_kinds.split(","):
        run_dir, enc = work / f"run_{kind}", work / f"enc_{kind}"
        if not (run_dir / "best.safetensors").exists() and not (run_dir / "last.safetensors").exists():
            run(a.bin, "train", "--config", config(work / f"{kind}.toml", kind, L, batch=16), "--data", data, "--out", run_dir)
        if not enc.exists():
            run(a.bin, "encode", "--checkpoint", run_dir, "--data", data, "--out", enc)
        scorer = lifelong.Scorer(run_dir, enc)
        user = pq.read_table(events, columns=["user_id"]).column(0)[0].as_py()
        cands = np.random.default_rng(0).integers(1, 50_000, size=1000).astype(np.int64) + 100_000
        for _ in range(5):
            scorer.score(user, cands)
        py, rs = [], []
        for _ in range(a.repeats):  # interleaved, so drift hits both alike
            t = time.perf_counter()
            scorer.score(user, cands)
            py.append(time.perf_counter() - t)
            rs.extend(scorer._time_rust(user, cands, 1))
        p, r = statistics.median(py), statistics.median(rs)
        print(f"| {kind} | {r * 1e3:.3f} | {p * 1e3:.3f} | {100 * (p / r - 1):+.1f}% |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/lifelong")
    ap.add_argument("--work", default="/tmp/bench_py")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--len", type=int, default=1333, help="synth --len: lengths uniform in [len/2, len]")
    ap.add_argument("--kinds", default="sdim,eta")
    ap.add_argument("--engines", default="ray,spark")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", type=int, default=64)
    ap.add_argument("--score-kinds", default="sdim,eta,twin,dare")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-score", action="store_true")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    if not a.skip_score:
        scorer_figures(a)
    if not a.skip_encode:
        encode_figures(a)


if __name__ == "__main__":
    main()
