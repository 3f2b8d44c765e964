// Paged decode attention for grouped query heads on tensor cores (mma.sync m16n8k16, sm_80+).
// Included by decode_attention.cu; the CUDA-core kernel (attention.cuh) keeps every case this one
// does not cover (dispatch: crates/quest-kernels/src/cuda/attention.rs, `use_mma_decode`).
// CPU reference: quest-kernels/src/cpu/attention.rs; layout: quest-kernels/src/layout.rs.
//
// Math: for the G = num_qo_heads / num_kv_heads query heads h of KV head g (2 <= G <= 8) and the
// tokens of one table row (PerSequence or PerKvHead rows, so the G heads share the row):
//   out[h] = softmax(q[h] . K^T * sm_scale) . V,
// base-2 online softmax (q pre-scaled by sm_scale * log2 e), f32 accumulation, split-K as
// attention.cuh (block y takes tokens [y * chunk_tokens, ...), writes (o / l, m + log2 l) to
// scratch when there are several splits), except that the splits are merged here, by the last
// block of each (query, KV head) to finish (merge_splits_if_last in attention.cuh), not by a
// merge_splits launch: that launch cost ~5 us per decode under PDL, the in-kernel merge ~3.
//
// Layout assumed: NHD pages [num_pages, 2, 16, num_kv_heads, 128] of f16 or bf16, page_size 16,
// head_dim 128; q and out f32 [batch, num_qo_heads, 128]; chunk_tokens a multiple of 16.
//
// Launch shape: grid (batch * num_kv_heads, splits), block MMA_WARPS = 8 warps. Each warp takes
// one page (16 tokens) of the block's chunk at a time, warp w pages w, w + 8, ...; at the end
// the 8 warps' (m, l, O) are merged through shared memory (32 KB). Lane = (r = lane / 4,
// c = lane % 4), the mma fragment coordinates.
//   S = Q K^T, per page two n-tiles of 8 tokens, K = 128 channels in 8 k-steps:
//     A (16 x 16): row r = head(r) of Q rounded to T ("hi"), row r + 8 = the same head's
//       rounding error ("lo"), so a lane's C fragment holds S_hi (c0, c1) and S_lo (c2, c3) of
//       one head: s = S_hi + S_lo / LO, no shuffles. K is exact in T, so the scores carry q to
//       ~22 bits (f16) / ~16 bits (bf16) instead of T's 11 / 8: near-f32 scores.
//     B (16 x 8): token r of the tile. The k index is a permutation of the channels chosen so
//       that lane (r, c) feeds token r with four 16-byte loads (channels i*32 + c*8 .. +7):
//       every warp load instruction reads 8 rows x 64 contiguous bytes.
//   O^T += V^T P^T: A = V^T (16 channels x 16 tokens, 8 m-tiles: row r -> channel r*8 + t,
//     row r + 8 -> 64 + r*8 + t); the lane loads tokens 2c, 2c+1, 2c+8, 2c+9 of channels
//     r*8..+7 and 64+r*8..+7 (16-byte loads) and pairs halves of two tokens with prmt.
//     B = P^T (16 tokens x 8 columns): the score C fragment (head(r), tokens 2c, 2c+1 and
//     2c+8, 2c+9) is exactly the B fragment of column r, so P needs no shuffles either.
//     P is split like q: G <= 4 (NT = 1 n-tile): column n < 4 holds P_hi of head(n), n >= 4
//     P_lo * LO of head(n), head(n) = (n & 3) % G; G > 4 (NT = 2): tile 0 P_hi, tile 1 P_lo * LO,
//     head(n) = n % G. Rows / columns beyond the group repeat a head and are ignored.
//   Rescale of O when a running max moved: alpha of column n lives in lane 4n (2 shuffles).
// Precision trick: hi/lo splitting of both tensor-core operands that are not stored values
// (q and P); LO = 2^12 for f16 (keeps the lo part normal), 1 for bf16 (f32's exponent range).
// The f16 hi part needs |q * sm_scale * log2 e| < 65504.
// Page ids outside [0, num_pages) contribute no tokens (their loads are never issued) and a row's
// length is clamped to its pages, as in attention.cuh: a corrupt table cannot read outside K/V.
#pragma once
#include "attention.cuh"
#include "mma.cuh"

#define MMA_WARPS 8
#define MMA_HD 128
#define MMA_PS 16

__device__ __forceinline__ uint32_t u4_word(const uint4& v, int k) {
    return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}
__device__ __forceinline__ uint4 ld16_or0(const void* p, bool ok) {
    return ok ? *reinterpret_cast<const uint4*>(p) : make_uint4(0, 0, 0, 0);
}

template <typename T, int NT>
__device__ void attention_mma_kernel(const float* q, const T* kv, const int* indptr, const int* indices,
                                     const int* last_len, float* out, float* part_o, float* part_lse, AttnParams p) {
    constexpr unsigned FULL = 0xffffffffu;
    constexpr float INV_LO = 1.f / MmaType<T>::LO;
    __shared__ float s_o[MMA_WARPS][8][MMA_HD];
    __shared__ float s_m[MMA_WARPS][8], s_l[MMA_WARPS][8];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, r = lane >> 2, c = lane & 3;
    const int G = p.num_qo_heads / p.num_kv_heads;
    const int head = NT == 1 ? (r & 3) % G : r % G;  // the head of fragment row r (and column r)
    const int qi = blockIdx.x / p.num_kv_heads, kvh = blockIdx.x % p.num_kv_heads;
    const int row = p.rows_mode == 0 ? qi : qi * p.num_kv_heads + kvh;
    const int start = indptr[row], npages = indptr[row + 1] - start;
    int len = 0;
    if (npages > 0) len = (npages - 1) * MMA_PS + min(max(last_len[row], 1), MMA_PS);
    const int t0 = blockIdx.y * p.chunk_tokens, t1 = min(t0 + p.chunk_tokens, len);

    // A fragments of Q, k-step s = 2i + j: channels i*32 + c*8 + 4j + {0,1} (a0/a1) and
    // + {2,3} (a2/a3); hi in rows r (a0, a2), lo in rows r + 8 (a1, a3).
    uint32_t qa_hi[8], qa_lo[8], qb_hi[8], qb_lo[8];
    {
        const float* qrow = q + ((size_t)qi * p.num_qo_heads + kvh * G + head) * MMA_HD;
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            float4 x = *reinterpret_cast<const float4*>(qrow + (s >> 1) * 32 + c * 8 + (s & 1) * 4);
            split2<T>(x.x * p.scale_log2, x.y * p.scale_log2, qa_hi[s], qa_lo[s]);
            split2<T>(x.z * p.scale_log2, x.w * p.scale_log2, qb_hi[s], qb_lo[s]);
        }
    }
    float m = -INFINITY, l = 0.f;  // of head(r); the 4 lanes of a quad agree on m
    float acc[NT][8][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int t = 0; t < 8; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][t][e] = 0.f;
    const size_t width = (size_t)p.num_kv_heads * MMA_HD;
    const T* kv_head = kv + (size_t)kvh * MMA_HD;
    const int pg0 = t0 / MMA_PS, pg1 = (t1 + MMA_PS - 1) / MMA_PS;  // t0 is page-aligned
    // Warp-uniform trip count: mma.sync and the shuffles need the whole warp.
    for (int pi = pg0 + w; pi < pg1; pi += MMA_WARPS) {
        int page = indices[start + pi], n = 0;
        if (page >= 0 && page < p.num_pages) n = min(MMA_PS, t1 - pi * MMA_PS);
        else page = 0;
        const T* pk = kv_head + (size_t)page * 2 * MMA_PS * width;
        const T* pv = pk + (size_t)MMA_PS * width;
        uint4 kr[2][4], va[4], vb[4];
#pragma unroll
        for (int tau = 0; tau < 2; ++tau)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int tok = tau * 8 + r;
                kr[tau][i] = ld16_or0(pk + tok * width + i * 32 + c * 8, tok < n);
            }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int tok = (k >> 1) * 8 + 2 * c + (k & 1);
            va[k] = ld16_or0(pv + tok * width + r * 8, tok < n);
            vb[k] = ld16_or0(pv + tok * width + 64 + r * 8, tok < n);
        }
        // Scores of head(r) for tokens 2c, 2c+1 (tile 0) and 8+2c, 8+2c+1 (tile 1).
        float sv[2][2], mx = -INFINITY;
#pragma unroll
        for (int tau = 0; tau < 2; ++tau) {
            float c0[4] = {0.f, 0.f, 0.f, 0.f}, c1[4] = {0.f, 0.f, 0.f, 0.f};  // two chains
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const uint4 k4 = kr[tau][i];
                MmaType<T>::mma(c0, qa_hi[2 * i], qa_lo[2 * i], qb_hi[2 * i], qb_lo[2 * i], k4.x, k4.y);
                MmaType<T>::mma(c1, qa_hi[2 * i + 1], qa_lo[2 * i + 1], qb_hi[2 * i + 1], qb_lo[2 * i + 1],
                                k4.z, k4.w);
            }
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float s = fmaf(c0[2 + e] + c1[2 + e], INV_LO, c0[e] + c1[e]);
                sv[tau][e] = tau * 8 + 2 * c + e < n ? s : -INFINITY;
                mx = fmaxf(mx, sv[tau][e]);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 2));
        const float mn = fmaxf(m, mx);
        const float alpha = mn == -INFINITY ? 1.f : exp2f(m - mn);
        m = mn;
        float pr[2][2];
#pragma unroll
        for (int tau = 0; tau < 2; ++tau)
#pragma unroll
            for (int e = 0; e < 2; ++e) pr[tau][e] = tau * 8 + 2 * c + e < n ? exp2f(sv[tau][e] - mn) : 0.f;
        l = l * alpha + ((pr[0][0] + pr[0][1]) + (pr[1][0] + pr[1][1]));
        if (__any_sync(FULL, alpha != 1.f)) {
            const float a0 = __shfl_sync(FULL, alpha, 8 * c), a1 = __shfl_sync(FULL, alpha, 8 * c + 4);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    acc[nt][t][0] *= a0; acc[nt][t][1] *= a1; acc[nt][t][2] *= a0; acc[nt][t][3] *= a1;
                }
        }
        // B fragments of P^T (k = tokens 2c, 2c+1 and 8+2c, 8+2c+1; column r).
        uint32_t pb[NT][2];
#pragma unroll
        for (int tau = 0; tau < 2; ++tau) {
            uint32_t hi, lo;
            split2<T>(pr[tau][0], pr[tau][1], hi, lo);
            if (NT == 1) {
                pb[0][tau] = r >= 4 ? lo : hi;
            } else {
                pb[0][tau] = hi;
                pb[NT - 1][tau] = lo;
            }
        }
        // O^T += V^T P^T, m-tile t: rows r -> channel r*8 + t, r+8 -> 64 + r*8 + t.
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const unsigned sel = (t & 1) ? 0x7632u : 0x5410u;
            const int k = t >> 1;
            const uint32_t a0 = __byte_perm(u4_word(va[0], k), u4_word(va[1], k), sel);
            const uint32_t a1 = __byte_perm(u4_word(vb[0], k), u4_word(vb[1], k), sel);
            const uint32_t a2 = __byte_perm(u4_word(va[2], k), u4_word(va[3], k), sel);
            const uint32_t a3 = __byte_perm(u4_word(vb[2], k), u4_word(vb[3], k), sel);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) MmaType<T>::mma(acc[nt][t], a0, a1, a2, a3, pb[nt][0], pb[nt][1]);
        }
    }
    // Warp partials to shared memory: l summed over the quad; O^T columns 2c, 2c+1 (NT = 2: hi
    // and lo of the same column combined here; NT = 1: columns 0..3 hi, 4..7 lo, combined below).
    l += __shfl_xor_sync(FULL, l, 1);
    l += __shfl_xor_sync(FULL, l, 2);
    if (c == 0) { s_m[w][r] = m; s_l[w][r] = l; }
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int ch0 = r * 8 + t, ch1 = 64 + r * 8 + t;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float v = NT == 2 ? fmaf(acc[NT - 1][t][e], INV_LO, acc[0][t][e]) : acc[0][t][e];
            s_o[w][2 * c + (e & 1)][e < 2 ? ch0 : ch1] = v;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * MMA_HD; e += blockDim.x) {
        const int h = e / MMA_HD, ch = e % MMA_HD;
        float M = -INFINITY;
#pragma unroll
        for (int k = 0; k < MMA_WARPS; ++k) M = fmaxf(M, s_m[k][h]);
        float L = 0.f, O = 0.f;
        if (M != -INFINITY) {
#pragma unroll
            for (int k = 0; k < MMA_WARPS; ++k) {
                const float wt = exp2f(s_m[k][h] - M);
                L += s_l[k][h] * wt;
                const float o = NT == 1 ? fmaf(s_o[k][h + 4][ch], INV_LO, s_o[k][h][ch]) : s_o[k][h][ch];
                O += o * wt;
            }
        }
        const size_t qh = (size_t)qi * p.num_qo_heads + kvh * G + h;
        const float o = L > 0.f ? O / L : 0.f;
        if (p.num_splits == 1) {
            out[qh * MMA_HD + ch] = o;
        } else {
            part_o[(qh * p.num_splits + blockIdx.y) * MMA_HD + ch] = o;
            if (ch == 0) part_lse[qh * p.num_splits + blockIdx.y] = L > 0.f ? M + log2f(L) : -INFINITY;
        }
    }
    if (p.num_splits > 1)  // decode only: the host always passes tickets when there are splits
        merge_splits_if_last<MMA_WARPS * 32, 8>(part_o, part_lse, out, p.tickets, qi * p.num_qo_heads + kvh * G, G,
                                             p.num_splits, MMA_HD, &s_o[0][0][0]);
}

// Same parameter list as ATTN_INSTANCE (qo unused), so the host launches both the same way.
#define ATTN_MMA_INSTANCE(NAME, T, NT)                                                               \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, 3 - NT)  /* n1: 2 blocks an SM */  \
    NAME(const float* q, const T* kv, const int* ip, const int* ix, const int* ll, const int* qo,  \
         float* out, float* po, float* pl, AttnParams p) {                                          \
        grid_dependency_sync();                                                                     \
        attention_mma_kernel<T, NT>(q, kv, ip, ix, ll, out, po, pl, p);                             \
    }
