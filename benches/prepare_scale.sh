#!/usr/bin/env bash
# prepare at scale: synthetic logs of 10^6, 10^7 and 10^8 events (about 75 per user), prepared
# with the default 2 GiB budget; prints wall time, rows/s and peak RSS (GNU time).
#   cargo build --release && benches/prepare_scale.sh [SCRATCH_DIR] ["1e6 1e7 1e8"]
# Needs about 5 GB of disk at 10^8 (log, spill, output). Run it on an idle machine.
set -euo pipefail
B=${LIFELONG:-$(dirname "$0")/../target/release/lifelong}
R=${1:-/tmp/lifelong-prepare-scale}
SIZES=${2:-"1e6 1e7 1e8"}
mkdir -p "$R"
printf '%-8s %10s %12s %14s\n' events wall_s rows_per_s peak_rss_MB
for n in $SIZES; do
  users=$(python3 -c "print(int(float('$n') / 75))")
  d=$R/$n
  [ -f "$d/events.parquet" ] || "$B" synth --out "$d" --users "$users" --items 200000 --cates 2000 --len 100 --seed 7 > /dev/null 2>&1
  rm -rf "$d/prep"
  /usr/bin/time -f "%e %M" -o "$d/time.txt" "$B" prepare --events "$d/events.parquet" --out "$d/prep" > "$d/prepare.txt" 2> "$d/log.txt"
  events=$(python3 -c "import json; print(json.load(open('$d/prep/meta.json'))['prepare']['counts']['events'])")
  read -r wall kb < "$d/time.txt"
  python3 -c "print('%-8s %10.2f %12.0f %14.0f' % ('$n', $wall, $events / $wall, $kb / 1024))"
  rm -rf "$d/prep"
done
