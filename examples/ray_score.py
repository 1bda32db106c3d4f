"""Batch scoring with Ray Data: one `lifelong.Scorer` per actor, requests scored in batches.

    python examples/ray_score.py --checkpoint runs/sdim --encodings encodings/sdim \
        --requests requests.parquet --out scores.parquet --workers 2

`requests.parquet` holds one row per request: `user_id` and `items` (a list of candidate item
ids). The output adds `probs` (a list of probabilities, one per candidate, in order).
"""

import argparse
import os

import pyarrow as pa

import lifelong


class ScoreBatch:
    """A Ray actor: opens the checkpoint and encodings once, then scores batch after batch."""

    def __init__(self, checkpoint, encodings):
        self.scorer = lifelong.Scorer(checkpoint, encodings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch.column("user_id").to_pylist()
        items = [pa.array(x, pa.int64()).to_numpy() for x in batch.column("items").to_pylist()]
        probs = self.scorer.score_many(users, items)
        return batch.append_column("probs", pa.array([p.tolist() for p in probs], pa.list_(pa.float32())))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--encodings", required=True)
    ap.add_argument("--requests", required=True, help="parquet: user_id, items (list of item ids)")
    ap.add_argument("--out", required=True, help="parquet file to write")
    ap.add_argument("--workers", type=int, default=2, help="actors, one Scorer each")
    args = ap.parse_args(argv)

    import ray
    import pyarrow.parquet as pq

    # One CPU per actor, and one for the tasks that read and write the blocks (with no CPU
    # left for them the actors would wait forever for their input).
    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ckpt, enc = os.path.abspath(args.checkpoint), os.path.abspath(args.encodings)
    scored = ray.data.read_parquet(os.path.abspath(args.requests)).map_batches(
        ScoreBatch,
        fn_constructor_args=(ckpt, enc),
        batch_format="pyarrow",
        batch_size=256,
        concurrency=args.workers,
        num_cpus=1,
    )
    table = pa.concat_tables([pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                              for b in scored.iter_batches(batch_format="pyarrow", batch_size=None)])
    ray.shutdown()
    pq.write_table(table, args.out)
    print(f"scored {table.num_rows} requests into {args.out}")
    return table


if __name__ == "__main__":
    main()
