#!/usr/bin/env bash
# estimate_pages_int8 (ptx/bounds_int8.cu) under compile-time variants, on a GPU host with nvcc.
# Variant bB_pP: B resident blocks per SM and P entries per team, for every group size (the runs
# that chose the defaults used the same B and P for groups of 1, 2 and 4).
set -euo pipefail
cd "$(dirname "$0")"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
V=(b2_p4 b3_p4 b4_p2 b3_p3 b4_p3 b2_p8)
b() {
    local blocks=${1%%_*} ppt=${1##*_p}
    "$NVCC" -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" -DEST8_MIN_BLOCKS=${blocks#b} \
        -DEST8_PPT=$ppt -DEST8_G4_MIN_BLOCKS=${blocks#b} -DEST8_G4_PPT=$(( (ppt + 1) / 2 )) \
        -o "/tmp/est8_$1" estimate_int8_variants.cu &
}
for v in "${V[@]}"; do b "$v"; done
wait
status=0
for v in "${V[@]}"; do "/tmp/est8_$v" || status=1; done
exit $status
