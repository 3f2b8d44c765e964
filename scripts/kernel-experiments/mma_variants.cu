// Dense GQA decode on tensor cores (ptx/attention_mma.cuh via ptx/decode_attention.cu) for
// 32 query / 8 KV heads, f16, page 16, head_dim 128, batch 1 (the kernel merges its own splits),
// under variants of the split-K sizing here (MMA_WAVES resident waves of blocks or
// 1 / MMA_SPLIT_DIV of a wave, MMA_MIN_CHUNK tokens at least) and -DPDL=false. The merge A/B of
// docs/results/2026-11-23d/ (separate merge launches, OLD_MERGE, MERGE_THREADS) ran on this
// harness before the in-kernel merge was committed.
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -I../../ptx -DVARIANT='"name"' mma_variants.cu
#include "decode_attention.cu"
#include "harness.cuh"
#include "merge_serial.cuh"

#ifndef PDL
#define PDL true  // -DPDL=false: plain launches
#endif

#ifndef MMA_WAVES
#define MMA_WAVES 1
#endif
#ifndef MMA_SPLIT_DIV  // splits for 1 / MMA_SPLIT_DIV of the resident blocks
#define MMA_SPLIT_DIV 1
#endif
#ifndef MMA_MIN_CHUNK
#define MMA_MIN_CHUNK 512  // as the host (crates/quest-kernels/src/cuda/attention.rs)
#endif

int main() {
    float* flush; CK(cudaMalloc(&flush, 512 << 20)); CK(cudaMemset(flush, 0, 512 << 20));
    float* fo; CK(cudaMalloc(&fo, 4096));
    const size_t n4 = (512u << 20) / 16;
    const int HQ = 32, HKV = 8, C = 3;
    int* tickets; CK(cudaMalloc(&tickets, 4096)); CK(cudaMemset(tickets, 0, 4096));
    for (int ctx : {8192, 16384, 32768, 131072}) {
        const int npg = ctx / 16, num_pages = C * npg;
        size_t kvn = (size_t)num_pages * 2 * 16 * HKV * 128;
        __half* kv; CK(cudaMalloc(&kv, kvn * 2)); fillh<<<4096, 256>>>(kv, kvn, 7);
        std::vector<float> hq(HQ * 128);
        for (size_t i = 0; i < hq.size(); ++i) hq[i] = (float)((i * 37) % 101) / 50.f - 1.f;
        float *q, *out, *po, *pl;
        CK(cudaMalloc(&q, hq.size() * 4)); CK(cudaMemcpy(q, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&out, HQ * 128 * 4)); CK(cudaMalloc(&po, 64 << 20)); CK(cudaMalloc(&pl, 4 << 20));
        int *ip[C], *ix[C], *ll;
        int one = 16; CK(cudaMalloc(&ll, 4)); CK(cudaMemcpy(ll, &one, 4, cudaMemcpyHostToDevice));
        for (int c = 0; c < C; ++c) {
            std::vector<int> hip = {0, npg}, hix(npg);
            for (int i = 0; i < npg; ++i) hix[i] = c * npg + i;
            CK(cudaMalloc(&ip[c], 8)); CK(cudaMalloc(&ix[c], npg * 4));
            CK(cudaMemcpy(ip[c], hip.data(), 8, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(ix[c], hix.data(), npg * 4, cudaMemcpyHostToDevice));
        }
        int resident = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, decode_mma_f16_n1, MMA_WARPS * 32, 0));
        const int step = MMA_WARPS * 16, want = std::max(1, (132 * resident * MMA_WAVES / MMA_SPLIT_DIV + HKV - 1) / HKV);
        int chunk = std::max((ctx + want - 1) / want, MMA_MIN_CHUNK);
        chunk = (chunk + step - 1) / step * step;
        const int splits = (ctx + chunk - 1) / chunk;
        AttnParams p{1, 1, HQ, HKV, 128, 16, 4, num_pages, 0, 1, chunk, splits, 0.0883883f * 1.442695f, tickets};
        auto run = [&](int i) {
            int c = i % C;
            launch_k(PDL, decode_mma_f16_n1, dim3(HKV, splits), dim3(MMA_WARPS * 32), q, kv, ip[c], ix[c], ll, nullptr, out, po, pl, p);
        };
        double us = median_us(run, 5, 31, (const float4*)flush, n4, fo, 1056);
        std::vector<float> ho(HQ * 128);
        CK(cudaMemcpy(ho.data(), out, ho.size() * 4, cudaMemcpyDeviceToHost));
        double cs = 0; for (float v : ho) cs += v;
        double bytes = (double)ctx * HKV * 128 * 2 * 2;
        printf("%-20s ctx=%6d resident=%d chunk=%5d splits=%3d %7.1f us %6.0f GB/s checksum %.6f\n", VARIANT, ctx,
               resident, chunk, splits, us, bytes / us / 1e3, cs);
        for (int c = 0; c < C; ++c) { cudaFree(ip[c]); cudaFree(ix[c]); }
        cudaFree(ll); cudaFree(kv); cudaFree(q); cudaFree(out); cudaFree(po); cudaFree(pl);
    }
}
