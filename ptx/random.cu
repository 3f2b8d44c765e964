// Deterministic synthetic data (CPU reference: quest-kernels/src/cpu/random.rs).
//
// fill_random_{S}(out, n, seed, scale): out[i] = W(scale * u(i)), where
//   z    = splitmix64 finaliser of (seed + (i + 1) * 0x9e3779b97f4a7c15)   (u64, wrapping)
//   k    = z >> 41                                                          (23 bits)
//   u(i) = (2k + 1) * 2^-23 - 1                                             (exact in f32)
// so u is odd multiples of 2^-23 in (-1, 1): never zero, symmetric, and computed without rounding;
// the only roundings are `scale * u` (one IEEE f32 multiply, as on the CPU) and the conversion to
// W (round to nearest even). The CPU and GPU therefore produce bit-identical buffers.
// Launch: grid-stride, block 256.
#include "common.cuh"

__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    unsigned int k = (unsigned int)(z >> 41);
    // (2k + 1) < 2^24 is exact in f32; the scaling by 2^-23 and the subtraction are exact too.
    return __fsub_rn(__fmul_rn((float)(2u * k + 1u), 1.1920928955078125e-7f), 1.0f);
}

template <typename T>
__device__ void fill_random(T* out, long long n, unsigned long long seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = from_f32<T>(__fmul_rn(scale, hash_uniform(seed, (unsigned long long)i)));
    }
}

#define RANDOM_INSTANCES(T, S)                                                                    \
    extern "C" __global__ void fill_random_##S(T* o, long long n, unsigned long long seed,         \
                                               float scale) {                                     \
        grid_dependency_sync();                                                                   \
        fill_random<T>(o, n, seed, scale);                                                        \
    }
RANDOM_INSTANCES(f16_t, f16)
RANDOM_INSTANCES(bf16_t, bf16)
RANDOM_INSTANCES(float, f32)
