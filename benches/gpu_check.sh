#!/usr/bin/env bash
# The one script to run on a lent GPU machine (it has no Rust toolchain): every kernel against
# its CPU twin, then the kernel table against the card's copy bandwidth and torch.topk.
#   here:  bash benches/gpu_build.sh            (builds target/gpu-carry/{integration,bench_kernels}.xz)
#   there: bash benches/gpu_check.sh target/gpu-carry   (through the device tool, carry target/gpu-carry)
set -uo pipefail
carry=${1:-target/gpu-carry}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
bin=$(mktemp -d)
for f in integration bench_kernels; do  # python's lzma: no reliance on an xz binary there
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
    "$carry/$f.xz" "$bin/$f" && chmod +x "$bin/$f"
done
# libnvrtc and libcuda from the machine's toolkit and driver.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
echo "== kernels against their CPU twins"
timeout 300 "$bin/integration" kernels::gpu --test-threads 1 2>&1 | tail -25
echo "== throughput (device events)"
timeout 200 "$bin/bench_kernels" --device cuda --long --dump "$out/inputs" 2>&1 | tee "$out/ours.md"
echo "== torch.topk on the same inputs"
timeout 100 python3 benches/torch_topk.py "$out/inputs" 2>&1 | tee "$out/torch.md"
rm -rf "$out/inputs"
