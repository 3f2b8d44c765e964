// Paged decode attention: one query token per sequence, dense (PerSequence) or per-head sparse
// (PerQoHead / PerKvHead) page lists, GQA, split-K with a merge pass. The kernel, its math, launch
// shape and layout are described in attention.cuh (CPU reference:
// quest-kernels/src/cpu/attention.rs; layout: quest-kernels/src/layout.rs).
// Instances: decode_{f16,bf16,f32}_g{1,2,4,8}: GB query heads per block (CUDA cores), and
// decode_mma_{f16,bf16}_n{1,2}: tensor cores for GQA groups of 2..4 (n1) and 5..8 (n2) query heads
// per KV head, head_dim 128, page size 16 (attention_mma.cuh).
#include "attention_mma.cuh"

#define DECODE_ALL(T, S)                            \
    ATTN_INSTANCE(decode_##S##_g1, T, 1, false)     \
    ATTN_INSTANCE(decode_##S##_g2, T, 2, false)     \
    ATTN_INSTANCE(decode_##S##_g4, T, 4, false)     \
    ATTN_INSTANCE(decode_##S##_g8, T, 8, false)
DECODE_ALL(f16_t, f16)
DECODE_ALL(bf16_t, bf16)
DECODE_ALL(float, f32)
ATTN_MMA_INSTANCE(decode_mma_f16_n1, f16_t, 1)
ATTN_MMA_INSTANCE(decode_mma_f16_n2, f16_t, 2)
ATTN_MMA_INSTANCE(decode_mma_bf16_n1, bf16_t, 1)
ATTN_MMA_INSTANCE(decode_mma_bf16_n2, bf16_t, 2)

extern "C" __global__ void __launch_bounds__(MERGE_THREADS) merge_splits(const float* po, const float* pl, float* out, int splits, int d) {
    grid_dependency_sync();
    merge_splits_impl(po, pl, out, splits, d);
}
