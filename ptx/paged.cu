// Writing the paged KV cache and keeping its per-page key bounds
// (CPU reference: quest-kernels/src/cpu/paged.rs; layout: quest-kernels/src/layout.rs, NHD pages
// [num_pages, 2, page_size, num_kv_heads, head_dim], bounds [num_pages, 2, num_kv_heads, head_dim]).
//
// append_kv:     kv[page, 0|1, off, :, :] = round(k|v[t, :, :]) for slot = page * page_size + off.
//                grid (n tokens, ceil(width / 256)), one thread per channel of the token width
//                (num_kv_heads * head_dim): a decode step's single token still spreads over
//                many SMs instead of one block looping over the width.
// update_bounds: bounds[p, 0, :, :] = max over the first page_lens[i] keys of page p, [p, 1] the
//                min, per channel; exact (the max of stored values is a stored value).
//                grid (n pages, ceil(width / 256)), one thread per channel, the page's keys
//                loaded with the loop unrolled so the loads are in flight together.
// Slots, pages and lengths are validated on the host before launch; the kernels still skip
// anything out of range so a bad index can never touch memory outside the buffers.
#include "common.cuh"

template <typename T>
__device__ void append_kv(T* kv, const float* k, const float* v, const int* slots, int page_size,
                          int width, long long capacity) {
    int t = blockIdx.x;
    long long slot = slots[t];
    if (slot < 0 || slot >= capacity) return;
    long long page = slot / page_size, off = slot % page_size;
    T* kdst = kv + ((page * 2 + 0) * page_size + off) * width;
    T* vdst = kv + ((page * 2 + 1) * page_size + off) * width;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < width; c += gridDim.y * blockDim.x) {
        kdst[c] = from_f32<T>(k[(size_t)t * width + c]);
        vdst[c] = from_f32<T>(v[(size_t)t * width + c]);
    }
}

template <typename T>
__device__ void update_bounds(const T* kv, T* bounds, const int* pages, const int* lens,
                              int page_size, int width, int num_pages) {
    int p = pages[blockIdx.x], len = lens[blockIdx.x];
    if (p < 0 || p >= num_pages || len < 1 || len > page_size) return;
    const T* keys = kv + (size_t)p * 2 * page_size * width;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < width; c += gridDim.y * blockDim.x) {
        float hi = -INFINITY, lo = INFINITY;
#pragma unroll 8
        for (int s = 0; s < len; ++s) {
            float x = to_f32(keys[(size_t)s * width + c]);
            hi = fmaxf(hi, x);
            lo = fminf(lo, x);
        }
        bounds[((size_t)p * 2 + 0) * width + c] = from_f32<T>(hi);
        bounds[((size_t)p * 2 + 1) * width + c] = from_f32<T>(lo);
    }
}

#define PAGED_INSTANCES(T, S)                                                                       \
    extern "C" __global__ void append_kv_##S(T* kv, const float* k, const float* v, const int* s,   \
                                             int ps, int w, long long cap) {                        \
        grid_dependency_sync();                                                                     \
        append_kv<T>(kv, k, v, s, ps, w, cap);                                                      \
    }                                                                                               \
    extern "C" __global__ void update_bounds_##S(const T* kv, T* b, const int* p, const int* l,     \
                                                 int ps, int w, int np) {                           \
        grid_dependency_sync();                                                                     \
        update_bounds<T>(kv, b, p, l, ps, w, np);                                                   \
    }
PAGED_INSTANCES(f16_t, f16)
PAGED_INSTANCES(bf16_t, bf16)
PAGED_INSTANCES(float, f32)
