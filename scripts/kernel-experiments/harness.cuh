// Shared by the variant harnesses here: an error check, an L2 flush that leaves L2 full of clean
// lines (a read, as a decode step's weight stream does) so the timed kernel reads from DRAM, host
// random inputs, uploads and rotated page tables, PDL launches and the median timer.
#pragma once
#include <cuda_fp16.h>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e = (x);                                                               \
        if (e != cudaSuccess) {                                                            \
            printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

__global__ void flush_read(const float4* p, size_t n, float* out) {
    float s = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float4 v = p[i];
        s += v.x + v.w;
    }
    if (s == 12345.678f) out[0] = s;
}

// Pseudo-random f16 in [-1, 1).
__global__ void fillh(__half* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995; h ^= h >> 15;
        p[i] = __float2half(((h & 0xffff) / 65536.f) * 2.f - 1.f);
    }
}

// Host pseudo-random numbers for the harnesses: a 32-bit LCG and a uniform float in [-1, 1).
inline unsigned nxt(unsigned& s) { return s = s * 1664525u + 1013904223u; }
inline float frand(unsigned& s) { return ((nxt(s) >> 8) & 0xffff) / 65536.f * 2.f - 1.f; }

// Random 8-bit bounds (codes, and params whose max base lies in [-1, 1), min base near -1,
// steps about 0.01) and queries in [-1, 1), the inputs of the 8-bit estimate harnesses.
inline void random_int8_bounds(unsigned seed, std::vector<uint8_t>& codes, std::vector<float>& params,
                               std::vector<float>& q) {
    for (auto& c : codes) c = (uint8_t)(nxt(seed) >> 24);
    for (size_t i = 0; i + 3 < params.size(); i += 4) {
        params[i] = frand(seed);                       // max base
        params[i + 1] = 0.01f * (frand(seed) + 1.1f);  // max step
        params[i + 2] = -1.f + 0.1f * frand(seed);     // min base (negated encode: any values)
        params[i + 3] = 0.01f * (frand(seed) + 1.1f);
    }
    for (auto& x : q) x = frand(seed);
}

// A device copy of `h` (freed by the caller with cudaFree).
template <class T>
T* upload(const std::vector<T>& h) {
    T* d;
    CK(cudaMalloc(&d, h.size() * sizeof(T)));
    CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

// `copies` page tables of one sequence of n pages, table c holding pages c * n .. c * n + n - 1
// (rotated between runs so every run reads its bounds from DRAM), and the row bounds {0, n}.
inline void rotated_tables(int n, int copies, int** tables, int** indptr) {
    for (int c = 0; c < copies; ++c) {
        std::vector<int> ix(n);
        for (int j = 0; j < n; ++j) ix[j] = c * n + j;
        tables[c] = upload(ix);
    }
    *indptr = upload(std::vector<int>{0, n});
}

// Launches kernel `k` as the product does on sm_90: with programmatic dependent launch (the
// next kernel's blocks may be placed while this one runs; every ptx/ kernel waits for its
// predecessor with griddepcontrol.wait), unless `pdl` is false.
template <typename... P, typename... A>
void launch_k(bool pdl, void (*k)(P...), dim3 grid, dim3 block, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, static_cast<P>(args)...));
}

// Median time in microseconds of `run(i)` over `runs` timed repetitions after `warm` untimed ones
// (i counts them all: rotate input copies with it), each preceded by flush_read over `n4` float4s
// of `flush` with `blocks` blocks; every time is divided by `per` (ops queued by one run).
template <class Run>
double median_us(Run run, int warm, int runs, const float4* flush, size_t n4, float* out, int blocks,
                 double per = 1.0) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int i = 0; i < warm + runs; ++i) {
        flush_read<<<blocks, 256>>>(flush, n4, out);
        CK(cudaEventRecord(a));
        run(i);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (i >= warm) t.push_back((float)(ms * 1000.0 / per));
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
