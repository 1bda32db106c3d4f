"""lifelong from Python, end to end on the bundled sample: prepare -> train -> evaluate ->
encode -> score. Run from the checkout after `pip install ./python`:

    python examples/quickstart.py [--workdir runs/quickstart]
"""

import argparse
import os

import pyarrow.parquet as pq

import lifelong


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default="data/sample/events.parquet")
    ap.add_argument("--workdir", default="runs/quickstart")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    work = args.workdir
    data, run, enc = (os.path.join(work, x) for x in ("prepared", "run", "encodings"))

    meta = lifelong.prepare(args.events, data)
    print(f"prepared: {meta['n_users'] - 2} users, {meta['n_train']} training rows")

    # A config is a TOML path or a dict of the same shape; keys override as `--set` does.
    run = lifelong.train({"model": {"kind": "sdim"}, "data": {"max_len": 100}},
                         data=data, out=run, train__max_steps=args.steps, train__eval_every=100)
    print("trained:", lifelong.train.last_summary)

    metrics = lifelong.evaluate(run, data, split="test")
    print(f"test AUC {metrics['auc']:.4f}  GAUC {metrics['gauc']:.4f}  logloss {metrics['logloss']:.4f}")

    # Every user's encoding, from the event log, as one part (a Spark or Ray job writes many).
    events = pq.read_table(args.events).sort_by([("user_id", "ascending"), ("ts", "ascending")])
    written = lifelong.write_encodings(enc, run, data, events)
    print(f"encoded {written['users']} users into {written['file']}")

    scorer = lifelong.Scorer(run, enc)
    preds = lifelong.predict(run, data, split="test")
    user = preds.column("user_id")[0].as_py()
    items = preds.column("item_id").to_numpy()[:10]
    print(f"user {user}:", dict(zip(items.tolist(), scorer.score(user, items).round(4).tolist())))
    return metrics


if __name__ == "__main__":
    main()
