#!/usr/bin/env bash
# select_top_pages (ptx/select.cu) under compile-time variants, on a GPU host with nvcc.
set -euo pipefail
cd "$(dirname "$0")"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
b() { "$NVCC" -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/topk_$1" topk_variants.cu & }
b t1024
b t1024_no_early -DTOPK_EARLY=0
b t1024_quest_like -DQUEST_LIKE
wait
status=0
for v in t1024 t1024_no_early t1024_quest_like; do
    "/tmp/topk_$v" || status=1
done
exit $status
