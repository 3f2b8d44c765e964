#!/usr/bin/env bash
# Regenerates ptx/*.ptx from ptx/*.cu with the pinned CUDA 13.0 compiler from PyPI.
#
#   ptx/build.sh [OUT_DIR]      (default: ptx/, next to the sources)
#
# The compiler is installed once into $QUEST_NVCC_DIR (default: .dev/nvcc, git-ignored) with pip
# --target; nothing else on the machine is touched. One PTX target, compute_80 (PTX ISA 9.0,
# which the CUDA 13.0 driver accepts): the driver JIT-compiles it for sm_80 and sm_90 alike, and
# none of the kernels needs an sm_90-only instruction (they are memory-bound streaming loops).
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
    "$nvcc" -ptx -arch=compute_80 -std=c++17 -O3 -o "$out/${src%.cu}.ptx" "$src"
done
echo "built $(ls "$out"/*.ptx | wc -l) PTX files into $out"
