// Tensor-core helpers shared by attention_mma.cuh and the GEMV in dense.cu: one warp-wide
// mma.sync m16n8k16 (f32 accumulate) per 16-bit storage type, and the hi/lo split that carries
// an f32 operand through a 16-bit one (hi = its rounding, lo = the rounding error times LO).
#pragma once
#include "common.cuh"

template <typename T> struct MmaType;
template <> struct MmaType<f16_t> {
    static constexpr float LO = 4096.f;
    __device__ static uint32_t pack(float x, float y) {
        __half2 h = __floats2half2_rn(x, y);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    __device__ static float2 unpack(uint32_t u) { return __half22float2(*reinterpret_cast<__half2*>(&u)); }
    __device__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                               uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};
template <> struct MmaType<bf16_t> {
    static constexpr float LO = 1.f;
    __device__ static uint32_t pack(float x, float y) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    __device__ static float2 unpack(uint32_t u) {
        return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
    }
    __device__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                               uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
};

// (x, y) as a T pair (x low): hi = the rounding, lo = the rounding error times LO.
template <typename T> __device__ __forceinline__ void split2(float x, float y, uint32_t& hi, uint32_t& lo) {
    hi = MmaType<T>::pack(x, y);
    float2 h = MmaType<T>::unpack(hi);
    lo = MmaType<T>::pack((x - h.x) * MmaType<T>::LO, (y - h.y) * MmaType<T>::LO);
}
