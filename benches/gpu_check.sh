#!/usr/bin/env bash
# The one script to run on a lent GPU machine (it has no Rust toolchain; the binaries are built
# here by benches/gpu_build.sh and carried). In order, each step's output in $OUT/<step>.log and
# the whole run in $OUT/gpu_check.log:
#   1. kernels: every kernel against its CPU twin (the integration tests' `kernels::gpu`);
#   2. train:   every preset 50 steps on cuda against the same steps on the CPU's default
#               (fused) path (device_check; its tolerance rule is in its docs);
#   3. speed:   samples/s of every preset at L = 1,000 and 10,000 on cuda (bench_models);
#   4. kbench:  bench_kernels against the card's copy bandwidth, and torch.topk on its inputs;
#   5. peer:    PyTorch's own DIN step at the same sizes (benches/torch_din_step.py).
# Exits non-zero when any step fails or any expected figure is missing; prints a summary last.
# The steps' time limits add up to 530 s, under the device tool's 600 s per call.
#   here:  bash benches/gpu_build.sh
#   there: bash benches/gpu_check.sh target/gpu-carry   (device tool: carry target/gpu-carry)
set -uo pipefail
carry=${1:-target/gpu-carry}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
failed=()
fail() { failed+=("$1"); echo "!! FAILED: $1"; }
# Runs a step with a time limit, its output to $out/<name>.log and the terminal; the step's own
# exit status is kept (PIPESTATUS), not tee's.
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || fail "$name (exit $rc)"
  return 0
}

bin=$(mktemp -d)
for f in integration bench_kernels bench_models device_check; do  # python's lzma: no xz binary needed
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    "$carry/$f.xz" "$bin/$f" && chmod +x "$bin/$f" || fail "unpack $f"
done

# Libraries: the toolkit's, the driver's, and the CUDA 13 libraries PyTorch's wheels carry
# (candle links libcublas/Lt 13 and libcurand 10; NVRTC 13 compiles our kernels).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
torch_libs=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null)
for d in $torch_libs $(python3 -c "import nvidia,glob,os; print(' '.join(glob.glob(os.path.join(list(nvidia.__path__)[0], '*', 'lib'))))" 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"
done
for f in integration bench_models; do
  if ldd "$bin/$f" | grep "not found"; then fail "libraries of $f"; fi
done
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
nvcc --version 2>/dev/null | tail -2
python3 -c "import ctypes; ctypes.CDLL('libnvrtc.so.13'); ctypes.CDLL('libcuda.so.1'); print('libnvrtc.so.13 and libcuda.so.1 load')" \
  || fail "libnvrtc.so.13 or libcuda.so.1 does not load"
if [ ${#failed[@]} -gt 0 ]; then echo "libraries missing: ${failed[*]}"; exit 1; fi

# 1. The kernels against their twins (first failure named with its index and both values).
step kernels 100 "$bin/integration" kernels::gpu --test-threads 1
grep -Eq "test result: ok\. [1-9][0-9]* passed" "$out/kernels.log" || fail "kernels: no passing test result"

# 2. 50 steps per preset, cuda against the CPU, both on the generic path.
step train 110 "$bin/device_check" --device cuda --against cpu --against-ops fused --steps 50 --len 200 --batch 512 \
  --work "$out/work"
grep -q "all curves within the tolerances" "$out/train.log" || fail "train: no verdict"

# 3. samples/s on the GPU at L = 1,000 and 10,000 (one process per size).
step speed_1k 80 "$bin/bench_models" --device cuda --len 1000 --users 4000 --rows 40960 \
  --model din --model sdim --model eta --model sim --model twin --model dare --out "$out/bm"
step speed_10k 90 "$bin/bench_models" --device cuda --len 10000 --users 1000 --rows 8192 \
  --model din --model sdim --model eta --model sim --model twin --model dare --out "$out/bm"
for l in 1000 10000; do
  n=$(cat "$out"/speed_*.log | grep -Ec "^\| [a-z]+ \| $l \| cuda:0 \| generic \| [0-9]+ ")
  [ "$n" -eq 6 ] || fail "speed: $n of 6 presets measured at L=$l"
done

# 4. The kernels' throughput against the card's copy bandwidth, then torch.topk on the same inputs.
step kbench 60 "$bin/bench_kernels" --device cuda --long --dump "$out/inputs"
grep -q "copy" "$out/kbench.log" || fail "kbench: no copy bandwidth"
step torch_topk 30 python3 benches/torch_topk.py "$out/inputs"
grep -q "torch.topk" "$out/torch_topk.log" || fail "torch_topk: no figure"
rm -rf "$out/inputs" "$out/bm" "$out/work"

# 5. The peer: PyTorch's DIN step.
step peer 60 python3 benches/torch_din_step.py --len 1000 --len 10000
[ "$(grep -c '^| torch DIN' "$out/peer.log")" -eq 2 ] || fail "peer: figures missing"

echo
echo "== summary"
grep -h "^| " "$out/train.log" "$out"/speed_*.log "$out/peer.log" 2>/dev/null | grep -v "^|---"
grep -h "copy\|topk" "$out/kbench.log" "$out/torch_topk.log" 2>/dev/null | head -30
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "every step passed"
