#!/usr/bin/env bash
# Sparse decode (ptx/attention.cuh) on Quest-shaped rows under compile-time variants, plus the
# DRAM read rate of one launch by chunk size and byte count (sparse_variants.cu), on a GPU host
# with nvcc. The hnd_* variants time the same kernel with its K/V address rewritten for an HND
# page layout ([num_pages, 2, num_kv_heads, page_size, head_dim]) in a scratch copy of ptx/;
# the splits are merged in the kernel (as committed) except in u2_no_merge (no merge at all,
# timing only), u2_separate_merge (a merge_splits launch) and u2_old_merge (the serial merge
# kernel of merge_serial.cuh, the committed one before 2026-11-23). The clN variants (the N splits of a
# row as one thread-block cluster, merged through distributed shared memory) need the kernel
# change in docs/results/2026-11-23d/cluster-merge-attempt.patch.
# Usage: run_sparse_variants.sh [variant...]   (default: all, and the read-rate table first)
set -euo pipefail
cd "$(dirname "$0")"
hnd=/tmp/ptx_hnd
rm -rf "$hnd" && cp -r ../../ptx "$hnd"
sed -i 's|const T\* kp = kv_head + ((size_t)page \* 2 \* p.page_size + slot) \* width;|const T* kp = kv + (((size_t)page * 2 * p.num_kv_heads + g) * p.page_size + slot) * d + lane * 8;|; s|raw_load(kp + (size_t)p.page_size \* width, vr\[u\]);|raw_load(kp + (size_t)p.num_kv_heads * p.page_size * d, vr[u]);|' "$hnd/attention.cuh"
grep -q 'num_kv_heads + g) \* p.page_size' "$hnd/attention.cuh"
declare -A flags=(
  [u2]="-I../../ptx" [u4]="-I../../ptx -DATT_U=4" [u8]="-I../../ptx -DATT_U=8"
  [u2_mc64]="-I../../ptx -DMIN_CHUNK=64" [u4_mc64]="-I../../ptx -DATT_U=4 -DMIN_CHUNK=64"
  [hnd_u2]="-I$hnd" [hnd_u4]="-I$hnd -DATT_U=4" [u2_no_merge]="-I../../ptx -DNO_MERGE"
  [u2_old_merge]="-I../../ptx -DOLD_MERGE" [u2_separate_merge]="-I../../ptx -DSEPARATE_MERGE"
  [u2_nopdl]="-I../../ptx -DPDL=false"
)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(u2 u4 u8 u2_mc64 u4_mc64 hnd_u2 hnd_u4 u2_no_merge u2_old_merge u2_separate_merge u2_nopdl)
for v in "${variants[@]}"; do
  # shellcheck disable=SC2086
  nvcc -O3 -std=c++17 -arch=sm_90 -DVARIANT="\"$v\"" ${flags[$v]} -o "/tmp/sparse_$v" sparse_variants.cu &
done
wait
[ $# -gt 0 ] || GATHER=1 /tmp/sparse_u2
for v in "${variants[@]}" "${variants[0]}"; do "/tmp/sparse_$v"; done
