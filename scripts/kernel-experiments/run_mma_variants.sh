#!/usr/bin/env bash
# Tensor-core GQA decode (ptx/attention_mma.cuh), 32/8 heads dense, under compile-time variants,
# on a GPU host with nvcc (mma_variants.cu says what each macro does). Usage: [variant...].
# The idx_prefetch variants of docs/results/2026-11-23d/mma-variants.log need
# docs/results/2026-11-23d/mma-index-prefetch-attempt.patch; its merge variants ran before the
# in-kernel merge was committed (see that directory's README).
set -euo pipefail
cd "$(dirname "$0")"
b() { nvcc -O3 -std=c++17 -arch=sm_90 -I../../ptx -DVARIANT="\"$1\"" "${@:2}" -o "/tmp/mma_$1" mma_variants.cu & }
b base
b base_nopdl -DPDL=false
b min_chunk256 -DMMA_MIN_CHUNK=256
b min_chunk128 -DMMA_MIN_CHUNK=128
b split_half -DMMA_SPLIT_DIV=2
b waves2 -DMMA_WAVES=2
wait
vs=("$@"); [ ${#vs[@]} -gt 0 ] || vs=(base base_nopdl min_chunk256 min_chunk128 split_half waves2)
for v in "${vs[@]}" "${vs[0]}"; do "/tmp/mma_$v"; done
