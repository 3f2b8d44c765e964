#!/usr/bin/env bash
# y2: where the top-k's time goes: ncu stall reasons and per-SASS-line samples (Quest-like, 2048
# and 8192 pages, 32 rows), and the event-timed floor of an empty 32 x 1024 launch.
set -u
cd "$(dirname "$0")/../.."
export PATH=/usr/local/cuda/bin:$PATH
nvcc -O3 -arch=sm_90 -o /tmp/empty .dev/y2/empty.cu && /tmp/empty > $OUT/empty.txt 2>&1
cd scripts/kernel-experiments
nvcc -O3 -std=c++17 -arch=sm_90 -lineinfo -DVARIANT='"base_ql"' -DQUEST_LIKE -o /tmp/topk_ql topk_variants.cu 2>/dev/null
for s in 10:2048 178:8192; do
  timeout 200 ncu -k select_top_pages --launch-skip ${s%%:*} --launch-count 1 --set full --import-source yes -o /tmp/rep_${s##*:} /tmp/topk_ql > /dev/null 2>&1
  ncu -i /tmp/rep_${s##*:}.ncu-rep --page details > $OUT/details_${s##*:}.txt 2>&1
  ncu -i /tmp/rep_${s##*:}.ncu-rep --page source --print-source sass --csv 2>&1 | xz > $OUT/sass_${s##*:}.csv.xz
done
ls -la $OUT
