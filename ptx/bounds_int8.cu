// 8-bit page bounds: writing them and Quest's estimate reading them.
// (CPU reference: quest-kernels/src/cpu/paged.rs update_bounds_int8 and cpu/select.rs
// estimate_pages_int8; the encoder and why it bounds: quest-kernels/src/quant.rs; layout:
// quest-kernels/src/layout.rs: codes u8 [num_pages, 2 (max, min), num_kv_heads, head_dim], params
// f32 [num_pages, num_kv_heads, 4] = (max_base, max_step, min_base, min_step); a code c stands for
// fma(c, step, base), one rounding.)
//
// update_bounds_int8: for each listed page p (its first len keys) and KV head g, M_i = max and
//   m_i = min of the keys per channel; the max codes are encode_up(M) and the min codes
//   encode_down(m) = encode_up(-m) with base and step negated: with a = min w, b = max w of the
//   clamped values w = max(v, -FLT_MAX) + 0 (-0 becomes +0), step = (b/2 - a/2) / 127.5 raised
//   one ulp at a time until fma(255, step, a) >= b, base = a, code_i = the smallest c with
//   fma(c, step, a) >= w_i (so the dequantized max codes are >= M_i and the min codes <= m_i,
//   exactly in f32); a +inf or NaN in the vector gives base +inf (max) / -inf (min) and step 0.
//   Every operation is an IEEE-rounded intrinsic (no contraction into FMAs the CPU does not do),
//   so codes and params are bit-identical to the CPU's.
//   grid (n pages, ceil(num_kv_heads / 8)), block 256 = 8 warps: one KV head a warp;
//   lane l channels l, l + 32, ... (head_dim <= 256: at most 8 a lane, kept in registers); min and
//   max by warp shuffles.
// estimate_pages_int8: scores[h, j] = sum_i max(q[b, h, i] * H_i, q[b, h, i] * L_i) with H_i, L_i
//   the dequantized max and min codes of page indices[j] of sequence row b, KV head g = h / group.
//   A team of head_dim / 16 lanes owns PPT consecutive table entries, one KV head and a slice of G
//   query heads of its group. Each lane loads its 16 max and 16 min codes of every entry with one
//   16-byte load each, plus the entry's params (16 bytes, one address for the whole team), all PPT
//   entries' loads issued before any is used; the slice's G query vectors (16 channels a lane)
//   stay in registers across the entries, reloaded only when an entry starts a new sequence.
//   Teams are numbered KV head fastest (a warp's loads of one entry are adjacent: the KV heads of
//   a page are contiguous), then head slice, then entry chunk. G = 1, 2 or 4 at compile time
//   (groups of 3 or more use G = 4 and ceil(group / 4) slices); PPT = 2 for G = 1, 4 for G = 2 and 4.
//   The sum over a lane's channels runs in channel order, then a shuffle tree over the team.
//   Blocks of 256 threads loop over the teams grid-stride; grid = min(blocks needed, SMs x the
//   resident blocks of the instance: 4 for G = 1, 2 for G = 2 and 4).
// Pages and lengths are validated on the host; the kernels still skip anything out of range.
#include "common.cuh"

#define F32_MAX __int_as_float(0x7f7fffff)  // FLT_MAX, the largest finite float

// encode_up's step (quant.rs step_for); false when 64 one-ulp raises do not reach b.
__device__ __forceinline__ bool step_for(float a, float b, float* out) {
    float s = __fdiv_rn(__fsub_rn(__fmul_rn(b, 0.5f), __fmul_rn(a, 0.5f)), 127.5f);
    for (int it = 0; it < 64; ++it) {
        if (fmaf(255.f, s, a) >= b) {
            *out = s;
            return true;
        }
        s = __uint_as_float(__float_as_uint(s) + 1u);  // s >= 0: the next larger float
    }
    return false;
}

// The smallest code c with fma(c, s, a) >= w (quant.rs code_up), for a <= w <= b.
__device__ __forceinline__ unsigned code_up(float w, float a, float s) {
    if (s == 0.f) return 0u;
    float guess = fminf(fmaxf(ceilf(__fdiv_rn(__fsub_rn(w, a), s)), 0.f), 255.f);
    unsigned c = (unsigned)guess;
    while (c < 255u && fmaf((float)c, s, a) < w) ++c;
    while (c > 0u && fmaf((float)(c - 1u), s, a) >= w) --c;
    return c;
}

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#define MAX_PER_LANE 8  // head_dim <= 256

template <typename T>
__device__ void update_bounds_int8(const T* kv, uint8_t* codes, float* params, const int* pages,
                                   const int* lens, int page_size, int num_kv_heads, int head_dim,
                                   int num_pages) {
    const int p = pages[blockIdx.x], len = lens[blockIdx.x];
    if (p < 0 || p >= num_pages || len < 1 || len > page_size) return;  // uniform over the block
    const int width = num_kv_heads * head_dim;
    const T* keys = kv + (size_t)p * 2 * page_size * width;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    // Blocks along y split the KV heads, so a decode step's single page spreads over SMs.
    for (int g = blockIdx.y * nwarps + warp; g < num_kv_heads; g += nwarps * gridDim.y) {  // uniform over the warp
        // Upward vectors: u = M (the max keys), d = -m (the negated min keys), clamped.
        float u[MAX_PER_LANE], d[MAX_PER_LANE];
        float ua = INFINITY, ub = -INFINITY, da = INFINITY, db = -INFINITY;
        bool u_inf = false, d_inf = false;
#pragma unroll
        for (int k = 0; k < MAX_PER_LANE; ++k) {
            const int i = lane + 32 * k;
            u[k] = 0.f;
            d[k] = 0.f;
            if (i < head_dim) {
                float hi = -INFINITY, lo = INFINITY;
#pragma unroll 4
                for (int s = 0; s < len; ++s) {
                    float x = to_f32(keys[(size_t)s * width + g * head_dim + i]);
                    hi = fmaxf(hi, x);
                    lo = fminf(lo, x);
                }
                const float nlo = -lo;
                u_inf |= isnan(hi) || hi == INFINITY;
                d_inf |= isnan(nlo) || nlo == INFINITY;
                u[k] = __fadd_rn(fmaxf(hi, -F32_MAX), 0.f);  // quant.rs clamp: -0 becomes +0
                d[k] = __fadd_rn(fmaxf(nlo, -F32_MAX), 0.f);
                ua = fminf(ua, u[k]);
                ub = fmaxf(ub, u[k]);
                da = fminf(da, d[k]);
                db = fmaxf(db, d[k]);
            }
        }
        ua = warp_min(ua);
        ub = warp_max(ub);
        da = warp_min(da);
        db = warp_max(db);
        u_inf = __any_sync(0xffffffffu, u_inf);
        d_inf = __any_sync(0xffffffffu, d_inf);
        float us = 0.f, ds = 0.f;
        const bool u_ok = !u_inf && step_for(ua, ub, &us);
        const bool d_ok = !d_inf && step_for(da, db, &ds);
        uint8_t* cmax = codes + (((size_t)p * 2 + 0) * num_kv_heads + g) * head_dim;
        uint8_t* cmin = codes + (((size_t)p * 2 + 1) * num_kv_heads + g) * head_dim;
#pragma unroll
        for (int k = 0; k < MAX_PER_LANE; ++k) {
            const int i = lane + 32 * k;
            if (i < head_dim) {
                cmax[i] = (uint8_t)(u_ok ? code_up(u[k], ua, us) : 0u);
                cmin[i] = (uint8_t)(d_ok ? code_up(d[k], da, ds) : 0u);
            }
        }
        if (lane == 0) {
            float4 pr;
            pr.x = u_ok ? ua : INFINITY;
            pr.y = u_ok ? us : 0.f;
            pr.z = d_ok ? -da : -INFINITY;
            pr.w = d_ok ? -ds : -0.f;
            *reinterpret_cast<float4*>(params + ((size_t)p * num_kv_heads + g) * 4) = pr;
        }
    }
}

#define UPDATE_INT8_INSTANCE(T, S)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                               \
    update_bounds_int8_##S(const T* kv, uint8_t* c, float* pr, const int* p, const int* l, int ps,  \
                           int kvh, int hd, int np) {                                               \
        grid_dependency_sync();                                                                     \
        update_bounds_int8<T>(kv, c, pr, p, l, ps, kvh, hd, np);                                    \
    }
UPDATE_INT8_INSTANCE(f16_t, f16)
UPDATE_INT8_INSTANCE(bf16_t, bf16)
UPDATE_INT8_INSTANCE(float, f32)

struct Int8EstimateParams {
    int batch, num_qo_heads, num_kv_heads, head_dim, nnz, num_pages, slices;
};

// Byte k (0..3) of w as a float, exactly: the bits 0x4B0000kk are 2^23 + kk.
__device__ __forceinline__ float code_at(uint32_t w, int k) {
    return __fsub_rn(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | (unsigned)k)), 8388608.f);
}

// The slice's query vectors, 16 channels of this lane; zeros for heads past the slice or a dead team.
template <int G>
__device__ __forceinline__ void load_q(const float* q, const Int8EstimateParams& p, int b, int h0,
                                       int nh, int lane, bool live, float (&qv)[G][16]) {
#pragma unroll
    for (int i = 0; i < G; ++i) {
        if (live && i < nh) {
            const float4* src = reinterpret_cast<const float4*>(
                q + ((size_t)b * p.num_qo_heads + h0 + i) * p.head_dim + lane * 16);
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                float4 x = src[v];
                qv[i][4 * v] = x.x;
                qv[i][4 * v + 1] = x.y;
                qv[i][4 * v + 2] = x.z;
                qv[i][4 * v + 3] = x.w;
            }
        } else {
#pragma unroll
            for (int k = 0; k < 16; ++k) qv[i][k] = 0.f;
        }
    }
}

template <int G, int PPT>
__device__ void estimate_pages_int8(const float* __restrict__ q, const uint8_t* __restrict__ codes,
                                    const float* __restrict__ params, const int* __restrict__ indptr,
                                    const int* __restrict__ indices, float* __restrict__ scores,
                                    Int8EstimateParams p) {
    const int team = p.head_dim >> 4;  // power of two <= 16, checked on the host
    const int lane = threadIdx.x & (team - 1), tm = threadIdx.x / team;
    const int block_teams = blockDim.x / team;
    // Team indices fit in int, with a grid's worth of slack (checked on the host).
    const int teams = ((p.nnz + PPT - 1) / PPT) * p.slices * p.num_kv_heads;
    const DivMod heads(p.num_kv_heads), slices(p.slices);
    // Grid-stride over whole blocks of teams (block-uniform trip count for the shuffles); the
    // grid holds only resident blocks, so there is no partial last wave.
    for (int t_block = blockIdx.x * block_teams; t_block < teams; t_block += gridDim.x * block_teams) {
        const int t = t_block + tm;
        const int g = heads.mod(t);
        const int r = heads.div(t);
        const int slice = slices.mod(r);
        const int j0 = slices.div(r) * PPT;
        const int group = p.num_qo_heads / p.num_kv_heads;
        const int h0 = g * group + slice * G;
        const int nh = min(G, group - slice * G);
        const bool team_live = j0 < p.nnz;

        // Every entry's loads first.
        uint4 hi[PPT], lo[PPT];
        float4 pr[PPT];
        bool live[PPT];
#pragma unroll
        for (int u = 0; u < PPT; ++u) {
            const int j = j0 + u;
            const int page = (team_live && j < p.nnz) ? indices[j] : -1;
            live[u] = page >= 0 && page < p.num_pages;
            hi[u] = make_uint4(0u, 0u, 0u, 0u);
            lo[u] = make_uint4(0u, 0u, 0u, 0u);
            pr[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (live[u]) {
                const uint8_t* c =
                    codes + (((size_t)page * 2) * p.num_kv_heads + g) * p.head_dim + lane * 16;
                hi[u] = *reinterpret_cast<const uint4*>(c);
                lo[u] = *reinterpret_cast<const uint4*>(c + (size_t)p.num_kv_heads * p.head_dim);
                pr[u] = *reinterpret_cast<const float4*>(params + ((size_t)page * p.num_kv_heads + g) * 4);
            }
        }
        // The sequence of entry j0 (the last row b with indptr[b] <= j0) and its query vectors.
        int b = 0, row_end = 0;
        if (team_live) {
            int lo_b = 0, hi_b = p.batch - 1;
            while (lo_b < hi_b) {
                const int mid = (lo_b + hi_b + 1) >> 1;
                if (indptr[mid] <= j0) lo_b = mid; else hi_b = mid - 1;
            }
            b = lo_b;
            row_end = indptr[b + 1];
        }
        float qv[G][16];
        load_q<G>(q, p, b, h0, nh, lane, team_live, qv);

#pragma unroll
        for (int u = 0; u < PPT; ++u) {
            const int j = j0 + u;
            if (live[u] && j >= row_end) {  // a new sequence starts inside the chunk
                do {
                    ++b;
                    row_end = indptr[b + 1];
                } while (j >= row_end);
                load_q<G>(q, p, b, h0, nh, lane, true, qv);
            }
            const uint32_t hw[4] = {hi[u].x, hi[u].y, hi[u].z, hi[u].w};
            const uint32_t lw[4] = {lo[u].x, lo[u].y, lo[u].z, lo[u].w};
            float s[G];
#pragma unroll
            for (int i = 0; i < G; ++i) s[i] = 0.f;
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float hv = fmaf(code_at(hw[k >> 2], k & 3), pr[u].y, pr[u].x);
                const float lv = fmaf(code_at(lw[k >> 2], k & 3), pr[u].w, pr[u].z);
#pragma unroll
                for (int i = 0; i < G; ++i) s[i] += fmaxf(qv[i][k] * hv, qv[i][k] * lv);
            }
            for (int o = team >> 1; o > 0; o >>= 1) {  // every lane of the warp takes part
#pragma unroll
                for (int i = 0; i < G; ++i) s[i] += __shfl_xor_sync(0xffffffffu, s[i], o);
            }
            if (live[u] && lane == 0) {
#pragma unroll
                for (int i = 0; i < G; ++i)
                    if (i < nh) scores[(size_t)(h0 + i) * p.nnz + j] = s[i];
            }
        }
    }
}

// Launch variants, from the H100 runs of scripts/kernel-experiments/estimate_int8_variants.cu
// (docs/kernels.md); the host (cuda/bounds_int8.rs) mirrors them. G = 1: 4 resident blocks a SM
// with 2 entries a team (32 KV heads, 32K: 13.9 -> 12.2 us against 2 blocks x 4 entries);
// G = 4: 2 blocks, 4 entries (8 KV heads, 128K: 22.6 -> 19.2 us).
#ifndef EST8_MIN_BLOCKS
#define EST8_MIN_BLOCKS 4  // resident 256-thread blocks per SM (__launch_bounds__), G = 1
#endif
#ifndef EST8_PPT
#define EST8_PPT 2  // entries per team, G = 1
#endif
#ifndef EST8_G4_MIN_BLOCKS
#define EST8_G4_MIN_BLOCKS 2
#endif
#ifndef EST8_G4_PPT
#define EST8_G4_PPT 4
#endif
#define ESTIMATE_INT8_INSTANCE(G, PPT, MIN_BLOCKS)                                                  \
    extern "C" __global__ void __launch_bounds__(256, MIN_BLOCKS)                                   \
    estimate_pages_int8_g##G(const float* q, const uint8_t* c, const float* pr, const int* ip,      \
                             const int* ix, float* sc, Int8EstimateParams p) {                      \
        grid_dependency_sync();                                                                     \
        estimate_pages_int8<G, PPT>(q, c, pr, ip, ix, sc, p);                                       \
    }
ESTIMATE_INT8_INSTANCE(1, EST8_PPT, EST8_MIN_BLOCKS)
ESTIMATE_INT8_INSTANCE(2, 4, 2)  // unmeasured shape (no group of 2 in the benchmarks): as before
ESTIMATE_INT8_INSTANCE(4, EST8_G4_PPT, EST8_G4_MIN_BLOCKS)
