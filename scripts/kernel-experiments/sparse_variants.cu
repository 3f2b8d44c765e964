// Sparse decode harness: how fast can Quest's selected pages be read, and how fast does the
// committed decode kernel (ptx/decode_attention.cu, variants via -D and -I) read them?
//
// 1. gather: DRAM read rate of 33.5 MB (32 heads x 2048 tokens of K and V, f16, head_dim 128)
//    fetched as random chunks of 256 B (one token of one head: the NHD page layout), 4 KB (one
//    head's 16 keys of a page: an HND layout) and sequentially, 4 x 16 B per thread in flight.
// 2. decode: PerQoHead rows of `budget` tokens on random distinct pages of a `ctx`-token cache,
//    32 query heads = 32 KV heads, as Quest's step launches them (split-K sized to one wave, the
//    splits merged in the kernel; -DSEPARATE_MERGE / -DOLD_MERGE: a merge_splits /
//    merge_splits_serial (merge_serial.cuh) launch instead; -DNO_MERGE: none, timing only).
// Build: nvcc -O3 -std=c++17 -arch=sm_90 -I<ptx dir> -DVARIANT='"name"' sparse_variants.cu
#include "decode_attention.cu"
#include "harness.cuh"
#include "merge_serial.cuh"

#ifndef PDL
#define PDL true  // -DPDL=false: plain launches
#endif

#ifndef MIN_CHUNK
#define MIN_CHUNK 128
#endif


// Thread t reads 16-byte units t, t + T, t + 2T, t + 3T (T = all threads) of the gathered stream;
// unit u lies in chunk u / per_chunk, at chunk id ids[...] of the source (ids null: unit u).
__global__ void gather(const uint4* src, const int* ids, size_t units, int per_chunk, float* out) {
    const size_t T = (size_t)gridDim.x * blockDim.x;
    float s = 0.f;
    for (size_t u0 = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u0 < units; u0 += 4 * T) {
        uint4 v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            size_t u = u0 + k * T;
            v[k] = make_uint4(0, 0, 0, 0);
            if (u < units) v[k] = ids ? src[(size_t)ids[u / per_chunk] * per_chunk + u % per_chunk] : src[u];
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) s += __uint_as_float(v[k].x ^ v[k].w);
    }
    if (s == 1.2345f) out[0] = s;
}

static void gather_bench(float4* flush, size_t n4, float* fo) {
    const size_t src_bytes = (size_t)1536 << 20, sparse = (size_t)32 * 2048 * 128 * 2 * 2;
    uint4* src; CK(cudaMalloc(&src, src_bytes)); CK(cudaMemset(src, 1, src_bytes));
    int* ids; CK(cudaMalloc(&ids, src_bytes / 256 * 4));
    // Random 256 B / 4 KB chunks of the 33.5 MB sparse read; then a plain read of each byte count
    // a Quest step moves (f16 / 8-bit bounds + sparse K/V at 32K/2048 and 128K/4096), one launch.
    struct Case { int chunk; size_t bytes; const char* what; };
    const Case cases[] = {{256, sparse, "sparse K/V 32K/2048, 256 B chunks"},
                          {4096, sparse, "sparse K/V 32K/2048, 4 KB chunks"},
                          {0, sparse, "sparse K/V 32K/2048, sequential"},
                          {0, (size_t)17825792, "8-bit bounds 32K"},
                          {0, (size_t)51380224, "step 32K/2048, 8-bit bounds"},
                          {0, sparse * 2, "step 32K/2048, f16 bounds"},
                          {0, (size_t)201326592, "step 128K/4096, f16 bounds"},
                          {0, (size_t)138412032, "step 128K/4096, 8-bit bounds"},
                          {0, (size_t)1 << 30, "1 GiB"}};
    for (const Case& k : cases) {
        const int per = k.chunk ? k.chunk / 16 : 1;
        const int* use = nullptr;
        if (k.chunk) {
            size_t nchunks = k.bytes / k.chunk, avail = src_bytes / k.chunk;
            std::vector<int> h(nchunks);
            unsigned x = 12345;
            for (size_t i = 0; i < nchunks; ++i) {
                x = x * 1664525u + 1013904223u;
                h[i] = (int)((x >> 4) % avail);
            }
            CK(cudaMemcpy(ids, h.data(), nchunks * 4, cudaMemcpyHostToDevice));
            use = ids;
        }
        const uint4* from = src;
        double us = median_us([&](int) { gather<<<132 * 8, 256>>>(from, use, k.bytes / 16, per, fo); }, 5, 25,
                              (const float4*)flush, n4, fo, 1056);
        printf("gather %-36s %9.1f MB: %7.1f us %6.0f GB/s\n", k.what, k.bytes / 1e6, us, k.bytes / us / 1e3);
    }
    double empty = median_us([&](int) { gather<<<132 * 8, 256>>>(src, nullptr, 0, 1, fo); }, 5, 25, (const float4*)flush, n4, fo, 1056);
    printf("empty launch: %.1f us\n", empty);
    cudaFree(ids);
    cudaFree(src);
}

int main() {
    float* flush; CK(cudaMalloc(&flush, 512 << 20)); CK(cudaMemset(flush, 0, 512 << 20));
    float* fo; CK(cudaMalloc(&fo, 4096));
    const size_t n4 = (512u << 20) / 16;
    if (getenv("GATHER")) gather_bench((float4*)flush, n4, fo);
    const int H = 32, C = 3;
    int* tickets; CK(cudaMalloc(&tickets, 4096)); CK(cudaMemset(tickets, 0, 4096));
    for (int ctx : {32768, 131072}) {
        int budget = ctx == 32768 ? 2048 : 4096, pages_per = ctx / 16, num_pages = C * pages_per, npg = budget / 16;
        size_t kvn = (size_t)num_pages * 2 * 16 * H * 128;
        __half* kv; CK(cudaMalloc(&kv, kvn * 2)); fillh<<<4096, 256>>>(kv, kvn, 7);
        std::vector<float> hq(H * 128);
        for (size_t i = 0; i < hq.size(); ++i) hq[i] = (float)((i * 37) % 101) / 50.f - 1.f;
        float *q, *out, *po, *pl;
        CK(cudaMalloc(&q, hq.size() * 4)); CK(cudaMemcpy(q, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&out, H * 128 * 4)); CK(cudaMalloc(&po, 64 << 20)); CK(cudaMalloc(&pl, 4 << 20));
        int *ip[C], *ix[C], *ll;
        std::vector<int> hll(H, 16); CK(cudaMalloc(&ll, H * 4)); CK(cudaMemcpy(ll, hll.data(), H * 4, cudaMemcpyHostToDevice));
        unsigned x = 99;
        for (int c = 0; c < C; ++c) {
            std::vector<int> hip(H + 1), hix((size_t)H * npg);
            for (int r = 0; r <= H; ++r) hip[r] = r * npg;
            for (int r = 0; r < H; ++r) {  // npg distinct random pages in table order, the last page last
                std::vector<char> used(pages_per, 0);
                used[pages_per - 1] = 1;
                std::vector<int> sel;
                while ((int)sel.size() < npg - 1) {
                    x = x * 1664525u + 1013904223u;
                    int pg = (int)((x >> 4) % pages_per);
                    if (!used[pg]) { used[pg] = 1; sel.push_back(pg); }
                }
                std::sort(sel.begin(), sel.end());
                sel.push_back(pages_per - 1);
                for (int i = 0; i < npg; ++i) hix[(size_t)r * npg + i] = c * pages_per + sel[i];
            }
            CK(cudaMalloc(&ip[c], hip.size() * 4)); CK(cudaMalloc(&ix[c], hix.size() * 4));
            CK(cudaMemcpy(ip[c], hip.data(), hip.size() * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(ix[c], hix.data(), hix.size() * 4, cudaMemcpyHostToDevice));
        }
        int resident = 0; CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, decode_f16_g1, ATT_THREADS, 0));
        int step = (ATT_THREADS / 16) * ATT_U, want = std::max(1, (132 * resident + H - 1) / H);
        int chunk = std::max((budget + want - 1) / want, MIN_CHUNK);
        chunk = (chunk + step - 1) / step * step;
        int splits = (budget + chunk - 1) / chunk;
        AttnParams p{1, 1, H, H, 128, 16, 4, num_pages, 1, 1, chunk, splits, 0.0883883f * 1.442695f, tickets};
#if defined(SEPARATE_MERGE) || defined(OLD_MERGE) || defined(NO_MERGE)
        p.tickets = nullptr;  // the kernel leaves its partials to a merge launch (or none)
#endif
        auto run = [&](int i) {
            int c = i % C;
            launch_k(PDL, decode_f16_g1, dim3(H, splits), dim3(ATT_THREADS), q, kv, ip[c], ix[c], ll, nullptr, out, po, pl, p);
            if (splits == 1 || p.tickets) return;  // merged in the kernel, as the product does
#if defined(OLD_MERGE)
            launch_k(PDL, merge_splits_serial, dim3(H), dim3(128), po, pl, out, splits, 128);
#elif !defined(NO_MERGE)
            launch_k(PDL, merge_splits, dim3(H), dim3(MERGE_THREADS), po, pl, out, splits, 128);
#endif
        };
        double us = median_us(run, 5, 31, (const float4*)flush, n4, fo, 1056);
        std::vector<float> ho(H * 128);
        CK(cudaMemcpy(ho.data(), out, ho.size() * 4, cudaMemcpyDeviceToHost));
        double cs = 0; for (float v : ho) cs += v;
        double bytes = (double)budget * H * 128 * 2 * 2;
        printf("%-16s ctx=%6d budget=%4d resident=%d chunk=%4d splits=%2d %7.1f us %6.0f GB/s checksum %.6f\n",
               VARIANT, ctx, budget, resident, chunk, splits, us, bytes / us / 1e3, cs);
        for (int c = 0; c < C; ++c) { cudaFree(ip[c]); cudaFree(ix[c]); }
        cudaFree(ll); cudaFree(kv); cudaFree(q); cudaFree(out); cudaFree(po); cudaFree(pl);
    }
}
