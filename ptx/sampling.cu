// Token choice from logits (CPU reference: quest-kernels/src/cpu/dense.rs, argmax and sample).
//
// argmax: per row of logits[n, vocab], the index of the largest value; NaN never wins, ties go to
//   the lowest index, a row of NaNs gives 0. One block of 1024 threads per row: strided scan, then
//   a shared-memory tree over (value, index) pairs.
// sample: per row, p_i = exp((l_i - max) / T) (NaN -> 0); the tokens sorted by (p desc, index asc)
//   form a list; keep its shortest prefix whose mass reaches top_p * total, and return the element
//   where the running mass of that prefix first exceeds u * mass (the last kept one if rounding
//   never lets it). Instead of sorting, each token gets the unique 64-bit key
//   (bits(p) << 32) | (0xffffffff - i), whose descending order IS the list order, and the two
//   cut points are found bit by bit (a radix select over keys, 63 block-wide sums): the prefix up
//   to key K has mass sum(p_i : key_i >= K). One block of 1024 threads per row; T == 0 is argmax.
//   Sums are block reductions, not the CPU's sequential order, so a uniform within rounding of a
//   boundary may pick the neighbouring token.
#include "common.cuh"

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    if (isnan(v)) return false;
    if (bi < 0 || isnan(bv)) return true;
    return v > bv || (v == bv && i < bi);
}

// Returns the argmax index of `row` to every thread (-1 if all NaN). `sv`, `si`: blockDim entries.
__device__ int block_argmax(const float* row, int vocab, float* sv, int* si) {
    float bv = 0.f;
    int bi = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = sv[threadIdx.x + s];
            int i = si[threadIdx.x + s];
            if (i >= 0 && better(v, i, sv[threadIdx.x], si[threadIdx.x])) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    int r = si[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* logits, int vocab, uint32_t* out) {
    grid_dependency_sync();
    __shared__ float sv[1024];
    __shared__ int si[1024];
    int best = block_argmax(logits + (size_t)blockIdx.x * vocab, vocab, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = best < 0 ? 0u : (uint32_t)best;
}

__device__ __forceinline__ float prob(float l, float max, float inv_t) {
    float p = expf((l - max) * inv_t);
    return isnan(p) ? 0.f : p;
}

__device__ __forceinline__ unsigned long long key_of(float p, int i) {
    return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned long long)(0xffffffffu - (uint32_t)i);
}

// Largest key K (over the 63 low bits; p >= 0 keeps bit 63 clear) with
// sum(p_i : key_i >= K and key_i >= floor) > want (strict) or >= want (!strict).
// Returns 0 when no key qualifies.
__device__ unsigned long long search_key(const float* row, int vocab, float max, float inv_t,
                                         unsigned long long floor, float want, bool strict, float* red) {
    unsigned long long k = 0;
    for (int bit = 62; bit >= 0; --bit) {
        unsigned long long cand = k | (1ull << bit);
        float s = 0.f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float p = prob(row[i], max, inv_t);
            unsigned long long key = key_of(p, i);
            if (key >= cand && key >= floor) s += p;
        }
        s = block_sum(s, red);
        if (strict ? (s > want) : (s >= want)) k = cand;
    }
    return k;
}

extern "C" __global__ void __launch_bounds__(1024) sample_rows(const float* logits, int vocab, float temperature,
                                                 float top_p, const float* uniforms, uint32_t* out) {
    grid_dependency_sync();
    __shared__ float sv[1024];
    __shared__ int si[1024];
    __shared__ float red[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    int best = block_argmax(row, vocab, sv, si);
    if (temperature == 0.f || best < 0) {
        if (threadIdx.x == 0) out[blockIdx.x] = best < 0 ? 0u : (uint32_t)best;
        return;
    }
    float max = row[best], inv_t = 1.f / temperature;
    float total = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) total += prob(row[i], max, inv_t);
    total = block_sum(total, red);
    // The smallest key, so a cut that no key reaches still names a real token.
    __shared__ unsigned long long kmin;
    if (threadIdx.x == 0) kmin = ~0ull;
    __syncthreads();
    unsigned long long mine = ~0ull;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        unsigned long long k = key_of(prob(row[i], max, inv_t), i);
        mine = k < mine ? k : mine;
    }
    atomicMin(&kmin, mine);
    __syncthreads();
    // Kept prefix: all keys >= kcut, kcut the largest key whose prefix mass reaches top_p * total.
    unsigned long long kcut = search_key(row, vocab, max, inv_t, 0ull, top_p * total, false, red);
    if (kcut < kmin) kcut = kmin;  // rounding kept the mass under the target: keep every token
    float mass = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float p = prob(row[i], max, inv_t);
        if (key_of(p, i) >= kcut) mass += p;
    }
    mass = block_sum(mass, red);
    float u = fminf(fmaxf(uniforms[blockIdx.x], 0.f), 1.f);
    // The chosen element: the largest key whose prefix mass exceeds u * mass.
    unsigned long long kpick = search_key(row, vocab, max, inv_t, kcut, u * mass, true, red);
    if (kpick < kcut) kpick = kcut;  // rounding left no prefix above the target: last kept token
    if (threadIdx.x == 0) out[blockIdx.x] = 0xffffffffu - (uint32_t)(kpick & 0xffffffffull);
}
