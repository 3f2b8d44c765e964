#!/usr/bin/env bash
# Paged decode attention (ptx/attention.cuh) under compile-time variants, on a GPU host with nvcc:
# tokens per team step (ATT_U), query heads per block for GQA (GQA_GB), smallest split (MIN_CHUNK).
# Results of the H100 runs that chose the committed defaults: docs/results/decode-variants-h100.log
# (taken when the kernel also had an ATT_KV_STREAM switch for L1-bypassing loads: no gain, removed).
set -euo pipefail
cd "$(dirname "$0")"
b() { nvcc -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/decode_$1" decode_variants.cu & }
b u4 -DATT_U=4
b u2 -DATT_U=2
b u8 -DATT_U=8
b u2_gb1 -DATT_U=2 -DGQA_GB=1
b u2_gb2 -DATT_U=2 -DGQA_GB=2
b u2_mc64 -DATT_U=2 -DMIN_CHUNK=64
wait
for v in u4 u2 u8 u2_gb1 u2_gb2 u2_mc64; do "/tmp/decode_$v"; done
