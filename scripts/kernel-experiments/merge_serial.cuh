// Included after ptx/decode_attention.cu (grid_dependency_sync, ptx/common.cuh).
#pragma once

// The split-K merge before 2026-11-23 (one thread per channel walks every split twice, 8 loads
// in flight), kept for A/B against merge_splits in ptx/attention.cuh: launch <<<rows, 128>>>.
__global__ void merge_splits_serial(const float* part_o, const float* part_lse, float* out, int splits, int d) {
    grid_dependency_sync();
    size_t qh = blockIdx.x;
    const float* lse = part_lse + qh * splits;
    float M = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) M = fmaxf(M, lse[s]);
    for (int ch = threadIdx.x; ch < d; ch += blockDim.x) {
        float num = 0.f, den = 0.f;
        if (M != -INFINITY) {
#pragma unroll 8
            for (int s = 0; s < splits; ++s) {
                float w = exp2f(lse[s] - M);
                den += w;
                num += w * part_o[(qh * splits + s) * d + ch];
            }
        }
        out[qh * d + ch] = den > 0.f ? num / den : 0.f;
    }
}
