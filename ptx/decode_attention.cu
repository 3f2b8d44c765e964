// Paged decode attention: one query token per sequence, dense (PerSequence) or per-head sparse
// (PerQoHead / PerKvHead) page lists, GQA, split-K with a merge pass. The kernel, its math, launch
// shape and layout are described in attention.cuh (CPU reference:
// quest-kernels/src/cpu/attention.rs; layout: quest-kernels/src/layout.rs).
// Instances: decode_{f16,bf16,f32}_g{1,2,4,8}: GB query heads per block.
#include "attention.cuh"

#define DECODE_ALL(T, S)                            \
    ATTN_INSTANCE(decode_##S##_g1, T, 1, false)     \
    ATTN_INSTANCE(decode_##S##_g2, T, 2, false)     \
    ATTN_INSTANCE(decode_##S##_g4, T, 4, false)     \
    ATTN_INSTANCE(decode_##S##_g8, T, 8, false)
DECODE_ALL(f16_t, f16)
DECODE_ALL(bf16_t, bf16)
DECODE_ALL(float, f32)

extern "C" __global__ void merge_splits(const float* po, const float* pl, float* out, int splits, int d) {
    grid_dependency_sync();
    merge_splits_impl(po, pl, out, splits, d);
}
