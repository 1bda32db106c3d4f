#!/usr/bin/env bash
# Whether a change moved the default (fused, CPU) path: the `lifelong` binary of revision REV
# (built in a worktree, target/rev-REV) and of the working tree each train every preset for 40
# steps on one synthetic dataset, then write `eval --predictions`; the predictions are compared
# to the bit.
#   bash benches/compare_revisions.sh 778088b
set -euo pipefail
rev=${1:?usage: compare_revisions.sh REV}
cd "$(dirname "$0")/.."
root=$PWD work=$PWD/target/compare-$rev
mkdir -p "$work"
[ -d "$work/tree" ] || git worktree add -f "$work/tree" "$rev" -q
(cd "$work/tree" && CARGO_TARGET_DIR=$work/target cargo build --release --bin lifelong -q)
cargo build --release --bin lifelong -q
old=$work/target/release/lifelong new=$root/target/release/lifelong
[ -f "$work/data/meta.json" ] || {
  $new synth --out "$work/events" --users 1500 --len 200 >/dev/null
  $new prepare --events "$work/events/events.parquet" --out "$work/data" >/dev/null 2>&1
}
py=python3; [ -x "$root/target/pyenv/bin/python" ] && py=$root/target/pyenv/bin/python
status=0
for m in din sdim sim eta twin dare; do
  for v in old new; do
    b=$old; [ $v = new ] && b=$new
    $b train --config "examples/$m.toml" --data "$work/data" --out "$work/$m-$v" --set train.max_steps=40 \
      --set train.eval_every=20 --set data.max_len=200 >/dev/null 2>&1
    $b eval --checkpoint "$work/$m-$v" --data "$work/data" --predictions "$work/$m-$v.parquet" >/dev/null 2>&1
  done
  $py - "$work/$m-old.parquet" "$work/$m-new.parquet" "$m" <<'PY' || status=1
import sys, pyarrow.parquet as pq
a, b = pq.read_table(sys.argv[1]), pq.read_table(sys.argv[2])
same = a.equals(b)
print(f"{sys.argv[3]}: {a.num_rows} predictions {'bit-identical' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PY
done
exit $status
