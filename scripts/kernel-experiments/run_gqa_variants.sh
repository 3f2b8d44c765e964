#!/usr/bin/env bash
# GQA paged decode attention (32 query / 8 KV heads, f16, head_dim 128, page 16): the committed
# kernel (ptx/decode_attention.cu) against the new variants of gqa_variants.cu (design in its
# header). On a GPU host with nvcc (sm_90); exits non-zero if the build fails or any variant's
# output is off.   scripts/kernel-experiments/run_gqa_variants.sh   (from anywhere; ~15 s: build ~10 s, run ~1 s)
set -euo pipefail
cd "$(dirname "$0")"
command -v nvcc > /dev/null || export PATH="/usr/local/cuda/bin:$PATH"
bin="${TMPDIR:-/tmp}/gqa_variants"
log="$bin.ptxas.log"
rm -f "$bin"
nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o "$bin" gqa_variants.cu > "$log" 2>&1 || { cat "$log"; exit 1; }
# registers and spills of the kernels compared here
grep -A3 -E "Compiling entry function '(_Z[0-9]+gqa_|decode_f16_g[14]'|merge_splits')" "$log" \
    | grep -E "entry|registers|spill" | sed -e 's/ptxas info *: //' || true
"$bin"
