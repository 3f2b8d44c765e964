#!/usr/bin/env bash
# select_top_pages (ptx/select.cu) under compile-time variants, on a GPU host with nvcc.
set -euo pipefail
cd "$(dirname "$0")"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
b() { "$NVCC" -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/topk_$1" topk_variants.cu & }
b t1024_agg
b t1024_atomic -DTOPK_AGG=0
b t1024_agg_early -DTOPK_EARLY=1
b t1024_atomic_early -DTOPK_AGG=0 -DTOPK_EARLY=1
b t512_atomic_early -DTOPK_THREADS=512 -DTOPK_AGG=0 -DTOPK_EARLY=1
b t256_atomic_early -DTOPK_THREADS=256 -DTOPK_AGG=0 -DTOPK_EARLY=1
b t512_agg_early -DTOPK_THREADS=512 -DTOPK_EARLY=1
wait
status=0
for v in t1024_agg t1024_atomic t1024_agg_early t1024_atomic_early t512_atomic_early t256_atomic_early t512_agg_early; do
    "/tmp/topk_$v" || status=1
done
exit $status
