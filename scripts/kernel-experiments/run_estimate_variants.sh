#!/usr/bin/env bash
# estimate_pages (ptx/select.cu) under compile-time variants, on a GPU host with nvcc.
set -euo pipefail
cd "$(dirname "$0")"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
b() { "$NVCC" -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/est_$1" estimate_variants.cu & }
b p4_b3
b p4_b3_all -DGRID_PER_SM=0
b p2_b4 -DEST_PPT=2 -DEST_MIN_BLOCKS=4
b p2_b6 -DEST_PPT=2 -DEST_MIN_BLOCKS=6
b p1_b8 -DEST_PPT=1 -DEST_MIN_BLOCKS=8
b p1_b8_all -DEST_PPT=1 -DEST_MIN_BLOCKS=8 -DGRID_PER_SM=0
b p8_b2 -DEST_PPT=8 -DEST_MIN_BLOCKS=2
b p4_b3_g6 -DGRID_PER_SM=6
wait
status=0
for v in p4_b3 p4_b3_all p2_b4 p2_b6 p1_b8 p1_b8_all p8_b2 p4_b3_g6; do "/tmp/est_$v" || status=1; done
exit $status
