"""Encode every user of an event log with Ray Data into an encodings directory that
`lifelong serve` and `lifelong.Scorer` open.

    python examples/ray_encode.py --checkpoint runs/sdim --vocab data/prepared/sample \
        --events data/sample/events.parquet --out encodings/sdim --parts 4 --workers 2

The same plan as examples/spark_encode.py: each event gets its user's shard (CRC-32 of the raw
user id modulo --parts), Ray groups the events by shard, and each group sorts its events by
user and time, encodes them and writes `part-I-of-N.parquet` atomically. --workers caps the
CPUs Ray uses on this machine (on a cluster, connect with --address and drop it).
"""

import argparse
import os
import time

import pyarrow as pa

import lifelong


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    ap.add_argument("--vocab", required=True, help="the prepared dataset (or encodings directory) holding vocab/")
    ap.add_argument("--events", required=True, help="event log: parquet file or directory")
    ap.add_argument("--out", required=True, help="encodings directory to write")
    ap.add_argument("--parts", type=int, default=4, help="part files (shards) to write")
    ap.add_argument("--workers", type=int, default=2, help="CPUs for Ray on this machine")
    ap.add_argument("--address", default=None, help="a running Ray cluster")
    ap.add_argument("--user-col", default="user_id")
    ap.add_argument("--ts-col", default="ts")
    ap.add_argument("--order-col", default=None,
                    help="a column ordering events of equal timestamps (the log's row number, an event id): "
                         "engines do not keep the log's order, so give one to reproduce `lifelong encode` exactly")
    args = ap.parse_args(argv)

    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ckpt, vocab, out = (os.path.abspath(p) for p in (args.checkpoint, args.vocab, args.out))
    n, user, ts = args.parts, args.user_col, args.ts_col
    order = [args.order_col] if args.order_col else []
    t0 = time.time()

    def encode_part(table: pa.Table) -> pa.Table:
        r = lifelong.write_shard(out, ckpt, vocab, table, n, order_cols=order, user_col=user, ts_col=ts)
        return pa.table({"shard": [r["shard"]], "users": [r["users"]], "file": [r["file"]]})

    events = ray.data.read_parquet(os.path.abspath(args.events))
    rows = (
        events.map_batches(lambda b: lifelong.add_shard(b, n, user_col=user), batch_format="pyarrow")
        .groupby("shard")
        .map_groups(encode_part, batch_format="pyarrow")
        .take_all()
    )
    lifelong.complete_encodings(out, ckpt, vocab, n, [r["shard"] for r in rows])  # shards without users
    users = sum(r["users"] for r in rows)
    secs = time.time() - t0
    ray.shutdown()
    print(f"ray encoded {users} users into {n} parts of {out} in {secs:.1f} s ({users / secs:.0f} users/s)")
    return users


if __name__ == "__main__":
    main()
