#!/usr/bin/env bash
# y1: top-k with warp-aggregated histogram adds (TOPK_MATCH) vs the product; ncu of both.
set -u
cd "$(dirname "$0")/../.."
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
cd scripts/kernel-experiments
b() { nvcc -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/topk_$1" topk_variants.cu 2>/dev/null & }
b base; b match -DTOPK_MATCH=1; b base_ql -DQUEST_LIKE; b match_ql -DQUEST_LIKE -DTOPK_MATCH=1
wait
for r in 1 2 3; do for v in base match base_ql match_ql; do /tmp/topk_$v; done; done > $OUT/ab.log 2>&1
cat $OUT/ab.log
for v in base_ql match_ql; do
  timeout 120 ncu -k select_top_pages --launch-skip 10 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats --section InstructionStats /tmp/topk_$v > $OUT/ncu_${v}_2048.txt 2>&1
  timeout 120 ncu -k select_top_pages --launch-skip 178 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats /tmp/topk_$v > $OUT/ncu_${v}_8192.txt 2>&1
done
ls -la $OUT
