// Causal paged prefill attention: the last n tokens of each sequence attend to the cached tokens
// up to and including their own position (qo_indptr semantics of the CPU reference,
// quest-kernels/src/cpu/attention.rs; layout: quest-kernels/src/layout.rs). The kernel is the
// decode kernel of attention.cuh with every query token's row cut at its causal position: keys
// are streamed in tiles with online softmax, never an L x L matrix, and the query heads of a GQA
// group share K/V loads. Query tokens are not tiled together (no tensor cores): this is the
// simple, exact version; prefill speed is not on the decode path Quest accelerates.
// Instances: prefill_{f16,bf16,f32}_g{1,2,4,8}.
#include "attention.cuh"

#define PREFILL_ALL(T, S)                           \
    ATTN_INSTANCE(prefill_##S##_g1, T, 1, true)     \
    ATTN_INSTANCE(prefill_##S##_g2, T, 2, true)     \
    ATTN_INSTANCE(prefill_##S##_g4, T, 4, true)     \
    ATTN_INSTANCE(prefill_##S##_g8, T, 8, true)
PREFILL_ALL(f16_t, f16)
PREFILL_ALL(bf16_t, bf16)
PREFILL_ALL(float, f32)

extern "C" __global__ void __launch_bounds__(MERGE_THREADS) merge_splits(const float* po, const float* pl, float* out, int splits, int d) {
    grid_dependency_sync();
    merge_splits_impl(po, pl, out, splits, d);
}
