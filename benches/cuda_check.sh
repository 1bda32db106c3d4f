#!/usr/bin/env bash
# Type-checks the `cuda`-feature build (every target: the library, the tests' GPU module, the
# examples) on a machine with no CUDA at all, in a few minutes: a stand-in `nvcc` answers the
# kernels' build scripts (candle-kernels compiles its .cu files to PTX and a static library)
# with empty outputs, and `cargo check` never links. It catches a Rust-level break of the CUDA
# paths (types, signatures, cfg'd code); it says nothing about the CUDA C++, which NVRTC
# compiles in the test command and benches/gpu_build.sh builds for real.
# Part of the test command (README): 4 min 12 s cold on this 2-core machine in a directory of its
# own; after `cargo test` in the same target directory, less.
#   bash benches/cuda_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
fake=$PWD/target/fake-cuda
mkdir -p "$fake/bin" "$fake/include" "$fake/lib64"
cat >"$fake/bin/nvcc" <<'NVCC'
#!/usr/bin/env bash
# A stand-in for nvcc: the version, or empty outputs (`-o FILE`, or with `--ptx` and
# `--output-directory DIR` one DIR/<source>.ptx per .cu source).
if [ "${1:-}" = "--version" ]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; fi
dir=. ptx=0 sources=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) : >"$2"; shift 2 ;;
    --output-directory|-odir) dir=$2; mkdir -p "$dir"; shift 2 ;;
    --ptx) ptx=1; shift ;;
    *.cu) sources+=("$1"); shift ;;
    *) shift ;;
  esac
done
if [ "$ptx" = 1 ]; then
  for s in "${sources[@]}"; do b=$(basename "$s" .cu); : >"$dir/$b.ptx"; done
fi
NVCC
chmod +x "$fake/bin/nvcc"
export CUDA_HOME=$fake CUDA_PATH=$fake NVCC=$fake/bin/nvcc PATH=$fake/bin:$PATH CUDA_COMPUTE_CAP=90
# The default target directory: the build scripts and proc macros `cargo test` built are reused.
cargo check --locked --features cuda,testing --all-targets
