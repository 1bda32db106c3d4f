#!/usr/bin/env bash
# Builds the `cuda`-feature binaries that benches/gpu_check.sh runs on a lent GPU machine (which
# has no Rust toolchain), here, on a machine with no CUDA at all:
#   - nvcc and the CUDA headers from NVIDIA's PyPI wheels (candle's own kernels need nvcc),
#   - stub libcuda / libcublas / libcublasLt / libcurand to link against (the real ones, with the
#     same sonames, are on the GPU machine),
#   - CUDA_COMPUTE_CAP=90 (the lent card is an H200).
# First run: ~20 minutes on 2 cores (candle-kernels' build script is most of it).
# Output: target/gpu-carry/{integration,bench_kernels,bench_models,device_check}.xz (carry
# `target/gpu-carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/cuda-toolkit
if [ ! -x "$root/venv/bin/nvcc" ] && [ ! -d "$root/venv/lib" ]; then
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
fi
wheel=$(echo "$root"/venv/lib/python3*/site-packages/nvidia/cu13)
home=$root/home
mkdir -p "$home/lib/stubs"
for d in bin include nvvm; do ln -sfn "$wheel/$d" "$home/$d"; done
for f in "$wheel"/lib/*; do ln -sf "$f" "$home/lib/"; done
ln -sf "$wheel/lib/libnvrtc.so.13" "$home/lib/libnvrtc.so"
ln -sf "$wheel/lib/libcudart.so.13" "$home/lib/libcudart.so"
ln -sfn lib "$home/lib64"
# Stubs: an empty function for every entry point cudarc declares, under the real soname.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10/src | head -1)
for spec in cuda:driver:libcuda.so.1 cublas:cublas:libcublas.so.13 cublasLt:cublaslt:libcublasLt.so.13 \
            curand:curand:libcurand.so.10; do
  IFS=: read -r name dir soname <<<"$spec"
  grep -ho "pub unsafe fn [A-Za-z0-9_]*" "$cudarc/$dir/sys/mod.rs" | awk '{print "void " $4 "(void) {}"}' \
    | sort -u >"$home/lib/stubs/$name.c"
  gcc -shared -fPIC -o "$home/lib/stubs/lib$name.so" -Wl,-soname,"$soname" "$home/lib/stubs/$name.c"
  ln -sf "lib$name.so" "$home/lib/stubs/$soname"
done
export CUDA_HOME=$home PATH=$home/bin:$PATH CUDA_COMPUTE_CAP=90
export LIBRARY_PATH=$home/lib/stubs:$home/lib RUSTFLAGS="-L $home/lib/stubs -L $home/lib"
tgt=$PWD/target/cuda
cargo build --release --features cuda --example bench_kernels --example bench_models \
  --example device_check --target-dir "$tgt"
bin=$(cargo test --release --features cuda --no-run --target-dir "$tgt" --message-format json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration" and m.get("executable"):
        print(m["executable"])')
mkdir -p target/gpu-carry
cp "$bin" target/gpu-carry/integration
for e in bench_kernels bench_models device_check; do cp "$tgt/release/examples/$e" target/gpu-carry/; done
# The device tool carries 64 MiB in all: stripped and xz-compressed, each binary is ~8 MB.
bins=(integration bench_kernels bench_models device_check)
for b in "${bins[@]}"; do strip "target/gpu-carry/$b"; done
(cd target/gpu-carry && xz -T2 -6 -f "${bins[@]}")
ls -la target/gpu-carry
