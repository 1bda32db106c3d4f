"""Encode every user of an event log with PySpark into an encodings directory that
`lifelong serve` and `lifelong.Scorer` open.

    python examples/spark_encode.py --checkpoint runs/sdim --vocab data/prepared/sample \
        --events data/sample/events.parquet --out encodings/sdim --parts 4 --master 'local[2]'

One shuffle: each event gets its user's shard (CRC-32 of the raw user id modulo --parts, the
rule `lifelong encode --shard` and `lifelong serve --shard` use), the events are grouped by
shard, and each group (one task) sorts its events by user and time, encodes them and writes
`part-I-of-N.parquet` atomically. Memory per task is one shard's events: pick --parts so that
events / parts fits a Python worker (10^11 events of 10^8 users: 10^4 parts, ~0.3 GB each).
On a cluster, --out must be a shared filesystem path every executor can write (or write
locally and copy the parts: each part is complete on its own).
"""

import argparse
import os
import sys
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
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g", help="the driver JVM's heap (in local mode it runs the tasks)")
    ap.add_argument("--user-col", default="user_id")
    ap.add_argument("--ts-col", default="ts")
    ap.add_argument("--order-col", default=None,
                    help="a column ordering events of equal timestamps (the log's row number, an event id): "
                         "engines do not keep the log's order, so give one to reproduce `lifelong encode` exactly")
    args = ap.parse_args(argv)

    from pyspark.sql import SparkSession
    from pyspark.sql.types import IntegerType, StructField, StructType

    # Workers run this interpreter, so they import the same lifelong.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(args.master)
        .appName("lifelong-encode")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536")
        .config("spark.sql.shuffle.partitions", str(args.parts))
        .getOrCreate()
    )
    ckpt, vocab, out = (os.path.abspath(p) for p in (args.checkpoint, args.vocab, args.out))
    n, user, ts = args.parts, args.user_col, args.ts_col
    order = [args.order_col] if args.order_col else []
    t0 = time.time()

    events = spark.read.parquet(os.path.abspath(args.events))

    def add_shard(batches):
        for b in batches:
            yield lifelong.add_shard(b, n, user_col=user)

    schema = StructType(events.schema.fields + [StructField("shard", IntegerType(), False)])
    with_shard = events.mapInArrow(add_shard, schema)

    def encode_part(table: pa.Table) -> pa.Table:
        r = lifelong.write_shard(out, ckpt, vocab, table, n, order_cols=order, user_col=user, ts_col=ts)
        return pa.table({
            "shard": pa.array([r["shard"]], pa.int32()),
            "users": pa.array([r["users"]], pa.int64()),
            "file": pa.array([r["file"]]),
        })

    rows = with_shard.groupBy("shard").applyInArrow(encode_part, "shard int, users long, file string").collect()
    # A shard that no event hashes to has no user: its part is written empty, so the directory
    # is complete (the Scorer refuses a directory with a part missing).
    lifelong.complete_encodings(out, ckpt, vocab, n, [r["shard"] for r in rows])
    users = sum(r["users"] for r in rows)
    secs = time.time() - t0
    spark.stop()
    print(f"spark encoded {users} users into {n} parts of {out} in {secs:.1f} s ({users / secs:.0f} users/s)")
    return users


if __name__ == "__main__":
    main()
