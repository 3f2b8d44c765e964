// Standalone decode-attention harness over ptx/decode_attention.cu (variants via -D).
#include "../../ptx/decode_attention.cu"  // this file lives in scripts/kernel-experiments/
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1);} } while (0)
#ifndef GQA_GB
#define GQA_GB 4
#endif
#ifndef MIN_CHUNK
#define MIN_CHUNK 128
#endif
__global__ void fillk(__half* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed; h ^= h >> 13; h *= 0x5bd1e995; h ^= h >> 15;
        p[i] = __float2half(((h & 0xffff) / 65536.f) * 2.f - 1.f);
    }
}
__global__ void flush_read(const float4* p, size_t n, float* out) {
    float s = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) { float4 v = p[i]; s += v.x + v.w; }
    if (s == 12345.678f) out[0] = s;
}
template <int GB> void launch(const float* q, const __half* kv, const int* ip, const int* ix, const int* ll, float* out, float* po, float* pl, int hq, int hkv, int rows_mode, int maxlen, int num_pages) {
    auto k = (GB == 1) ? decode_f16_g1 : (GB == 2) ? decode_f16_g2 : (GB == 4) ? decode_f16_g4 : decode_f16_g8;
    int resident = 0; CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, k, ATT_THREADS, 0));
    int group = hq / hkv; int gb = rows_mode == 1 ? 1 : GB; int gchunks = (group + gb - 1) / gb;
    int chunks = rows_mode == 1 ? hq : hkv * gchunks;
    int units = chunks;
    int step = (ATT_THREADS / 16) * ATT_U;
    int want = std::max(1, (132 * resident + units - 1) / units);
    int chunk = std::max((maxlen + want - 1) / want, MIN_CHUNK); chunk = (chunk + step - 1) / step * step;
    int splits = (maxlen + chunk - 1) / chunk;
    AttnParams p{1, 1, hq, hkv, 128, 16, 4, num_pages, rows_mode, gchunks, chunk, splits, 0.0883883f * 1.442695f};
    k<<<dim3(units, splits), ATT_THREADS>>>(q, kv, ip, ix, ll, nullptr, out, po, pl, p);
    if (splits > 1) merge_splits<<<hq, 128>>>(po, pl, out, splits, 128);
}
int main() {
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    float* flush; CK(cudaMalloc(&flush, 512 << 20)); CK(cudaMemset(flush, 0, 512 << 20));
    float* fl_out; CK(cudaMalloc(&fl_out, 4096 * 4));
    const int maxctx = 131072, C = 3;
    for (int hkv : {32, 8}) {
        int pages_per = maxctx / 16, num_pages = C * pages_per;
        size_t kvn = (size_t)num_pages * 2 * 16 * hkv * 128;
        __half* kv; CK(cudaMalloc(&kv, kvn * 2)); fillk<<<4096, 256>>>(kv, kvn, 7);
        float *q, *out, *po, *pl; CK(cudaMalloc(&q, 32 * 128 * 4)); CK(cudaMemset(q, 0, 32 * 128 * 4));
        CK(cudaMalloc(&out, 32 * 128 * 4)); CK(cudaMalloc(&po, 64 << 20)); CK(cudaMalloc(&pl, 4 << 20));
        for (int ctx : {32768, 131072}) for (int budget : {0, 256, 2048, 4096}) {
            if (budget && ctx == 131072 && budget != 4096) continue;
            int rows_mode = budget ? 2 : 0;
            int rows = budget ? hkv : 1, npg = budget ? budget / 16 : ctx / 16;
            // tables: copy c uses pages c*pages_per + (spread selection for sparse)
            int *ip[C], *ix[C], *ll;
            std::vector<int> hll(rows, 16); CK(cudaMalloc(&ll, rows * 4)); CK(cudaMemcpy(ll, hll.data(), rows * 4, cudaMemcpyHostToDevice));
            for (int c = 0; c < C; ++c) {
                std::vector<int> hip(rows + 1), hix((size_t)rows * npg);
                for (int r = 0; r <= rows; ++r) hip[r] = r * npg;
                for (int r = 0; r < rows; ++r) for (int i = 0; i < npg; ++i) {
                    int page = budget ? (int)(((long long)i * (ctx / 16) / npg + r * 7) % (ctx / 16)) : i;
                    hix[(size_t)r * npg + i] = c * pages_per + page;
                }
                CK(cudaMalloc(&ip[c], hip.size() * 4)); CK(cudaMalloc(&ix[c], hix.size() * 4));
                CK(cudaMemcpy(ip[c], hip.data(), hip.size() * 4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(ix[c], hix.data(), hix.size() * 4, cudaMemcpyHostToDevice));
            }
            std::vector<float> t;
            for (int i = 0; i < 30; ++i) {
                flush_read<<<1056, 256>>>(reinterpret_cast<const float4*>(flush), (512u << 20) / 16, fl_out);
                CK(cudaEventRecord(e0));
                int c = i % C;
                int tokens = budget ? budget : ctx;
                if (hkv == 32) launch<1>(q, kv, ip[c], ix[c], ll, out, po, pl, 32, hkv, rows_mode, tokens, num_pages);
                else launch<GQA_GB>(q, kv, ip[c], ix[c], ll, out, po, pl, 32, hkv, rows_mode, tokens, num_pages);
                CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
                float ms; cudaEventElapsedTime(&ms, e0, e1); if (i >= 5) t.push_back(ms * 1000);
            }
            CK(cudaGetLastError());
            std::sort(t.begin(), t.end()); double us = t[t.size() / 2];
            double bytes = (double)(budget ? budget : ctx) * hkv * 128 * 2 * 2;
            printf("%-28s hkv=%2d ctx=%6d budget=%4d %8.1f us %6.0f GB/s\n", VARIANT, hkv, ctx, budget, us, bytes / us / 1e3);
            for (int c = 0; c < C; ++c) { cudaFree(ip[c]); cudaFree(ix[c]); } cudaFree(ll);
        }
        cudaFree(kv); cudaFree(q); cudaFree(out); cudaFree(po); cudaFree(pl);
    }
}
