// Shared device helpers for the quest-kernels PTX: storage-type conversion, 16-byte vector loads,
// warp/block reductions and scans. Included by every ptx/*.cu file; compiled into each PTX module.
//
// Storage types: `__half` (f16), `__nv_bfloat16` (bf16) and `float` (f32, for tests and references).
// All arithmetic happens in f32 after conversion, as in the CPU reference (quest-kernels/src/cpu).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

// Programmatic dependent launch (sm_90+): every kernel calls this first. `griddepcontrol.wait`
// returns once the grid launched before this one in the stream has completed and its writes are
// visible, so nothing is read or written early; `launch_dependents` then lets the next kernel's
// blocks be placed while this grid runs its tail (crates/quest-kernels/src/cuda/launch.rs). The
// sm_80 build compiles to nothing: its launches carry no PDL attribute.
__device__ __forceinline__ void grid_dependency_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

typedef __half f16_t;
typedef __nv_bfloat16 bf16_t;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16_t x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(bf16_t x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
// Round-to-nearest-even, as half::f16::from_f32 / bf16::from_f32 do on the CPU.
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) { return __float2bfloat16_rn(x); }

// Loads 8 consecutive elements starting at `p` (16-byte aligned for 16-bit types, 32-byte for f32)
// as f32: one 16-byte load for f16/bf16, two for f32. `ld.global.nc` is not used: K/V may be
// written by append_kv earlier in the same stream, which is fine for the read-only path too, but
// plain loads keep the compiler free to choose.
__device__ __forceinline__ void load8(const float* p, float (&o)[8]) {
    float4 a = *reinterpret_cast<const float4*>(p);
    float4 b = *reinterpret_cast<const float4*>(p + 4);
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
    o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
__device__ __forceinline__ void load8(const f16_t* p, float (&o)[8]) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __half22float2(h[i]);
        o[2 * i] = f.x; o[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void load8(const bf16_t* p, float (&o)[8]) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __bfloat1622float2(h[i]);
        o[2 * i] = f.x; o[2 * i + 1] = f.y;
    }
}

// Raw 16-byte chunks, so a loop can issue several loads before converting any of them.
template <typename T> struct Raw8 { uint4 a, b; };
__device__ __forceinline__ void raw_load(const float* p, Raw8<float>& r) {
    r.a = *reinterpret_cast<const uint4*>(p);
    r.b = *reinterpret_cast<const uint4*>(p + 4);
}
__device__ __forceinline__ void raw_load(const f16_t* p, Raw8<f16_t>& r) { r.a = *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void raw_load(const bf16_t* p, Raw8<bf16_t>& r) { r.a = *reinterpret_cast<const uint4*>(p); }
// Streaming variant for data read exactly once per kernel (weights): the read-only path without
// allocating in L1, so L1 keeps what is reused (the activations).
__device__ __forceinline__ uint4 ld_stream16(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ void raw_load_stream(const float* p, Raw8<float>& r) { r.a = ld_stream16(p); r.b = ld_stream16(p + 4); }
__device__ __forceinline__ void raw_load_stream(const f16_t* p, Raw8<f16_t>& r) { r.a = ld_stream16(p); }
__device__ __forceinline__ void raw_load_stream(const bf16_t* p, Raw8<bf16_t>& r) { r.a = ld_stream16(p); }
__device__ __forceinline__ void raw_cvt(const Raw8<float>& r, float (&o)[8]) {
    o[0] = __uint_as_float(r.a.x); o[1] = __uint_as_float(r.a.y);
    o[2] = __uint_as_float(r.a.z); o[3] = __uint_as_float(r.a.w);
    o[4] = __uint_as_float(r.b.x); o[5] = __uint_as_float(r.b.y);
    o[6] = __uint_as_float(r.b.z); o[7] = __uint_as_float(r.b.w);
}
__device__ __forceinline__ void raw_cvt(const Raw8<f16_t>& r, float (&o)[8]) {
    const __half2* h = reinterpret_cast<const __half2*>(&r.a);
#pragma unroll
    for (int i = 0; i < 4; ++i) { float2 f = __half22float2(h[i]); o[2 * i] = f.x; o[2 * i + 1] = f.y; }
}
__device__ __forceinline__ void raw_cvt(const Raw8<bf16_t>& r, float (&o)[8]) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&r.a);
#pragma unroll
    for (int i = 0; i < 4; ++i) { float2 f = __bfloat1622float2(h[i]); o[2 * i] = f.x; o[2 * i + 1] = f.y; }
}

// x / d and x % d for a divisor fixed for a whole kernel (x >= 0): a shift and a mask when d is a
// power of two (the usual head counts), a 32-bit division otherwise. A 64-bit division costs ~70
// instructions; the estimate kernels paid two per team and pass, most of their instructions.
struct DivMod {
    int d, shift;  // shift < 0: d is not a power of two
    __device__ explicit DivMod(int d_) : d(d_), shift(pow2_shift(d_)) {}
    // log2(d) when d is a power of two, else -1 (a function, not the initializer: nvcc's host pass
    // keeps member initializers of device constructors, where __popc does not exist).
    __device__ static int pow2_shift(int d) { return __popc(d) == 1 ? __ffs(d) - 1 : -1; }
    __device__ __forceinline__ int div(int x) const { return shift >= 0 ? x >> shift : x / d; }
    __device__ __forceinline__ int mod(int x) const { return shift >= 0 ? x & (d - 1) : x % d; }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over all threads of the block; every thread gets the result. `red` needs 32 floats.
// Ends with a barrier, so `red` may be reused right after.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

// Exclusive prefix sum of `v` over the block in thread order; `*total` gets the block total.
// `sh` needs 33 ints. Ends with a barrier.
__device__ __forceinline__ int block_exclusive_scan(int v, int* sh, int* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int w = lane < nw ? sh[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        if (lane < nw) sh[lane] = w;  // inclusive per-warp totals
        if (lane == 31) sh[32] = w;
    }
    __syncthreads();
    int before = (warp > 0 ? sh[warp - 1] : 0) + x - v;
    *total = sh[32];
    __syncthreads();
    return before;
}
