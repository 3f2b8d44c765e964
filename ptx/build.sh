#!/usr/bin/env bash
# Regenerates ptx/NAME.sm80.ptx and ptx/NAME.sm90.ptx from ptx/NAME.cu with the pinned CUDA 13.0
# compiler from PyPI.
#
#   ptx/build.sh [OUT_DIR]      (default: ptx/, next to the sources)
#
# The compiler is installed once into $QUEST_NVCC_DIR (default: .dev/nvcc, git-ignored) with pip
# --target; nothing else on the machine is touched. Two PTX targets per source (PTX ISA 9.0, which
# the CUDA 13.0 driver accepts): compute_80, which the driver JIT-compiles for Ampere and newer,
# and compute_90, the same kernels plus `griddepcontrol` (programmatic dependent launch, see
# grid_dependency_sync in common.cuh), loaded on Hopper and newer.
# Output is deterministic: same sources + same compiler = same bytes (no paths or dates in PTX).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-$here}"
nvdir="${QUEST_NVCC_DIR:-$root/.dev/nvcc}"
nvcc="$nvdir/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ]; then
    python3 -m pip install --quiet --no-deps --target "$nvdir" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 \
        nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
fi
"$nvcc" --version | grep -q "V13.0.88" || { echo "expected nvcc 13.0.88 at $nvcc" >&2; exit 1; }
mkdir -p "$out"
cd "$here"
for src in *.cu; do
    # -lineinfo off, no -G: no file paths end up in the PTX. No fast-math: the CPU reference uses
    # IEEE expf/cosf/sinf and division.
    for arch in 80 90; do
        "$nvcc" -ptx -arch=compute_$arch -std=c++17 -O3 -o "$out/${src%.cu}.sm$arch.ptx" "$src"
    done
done
echo "built $(ls "$out"/*.ptx | wc -l) PTX files into $out"
