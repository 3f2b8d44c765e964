// Paged attention core shared by decode_attention.cu and prefill_attention.cu (CPU reference:
// quest-kernels/src/cpu/attention.rs; layout: quest-kernels/src/layout.rs, NHD pages
// [num_pages, 2, page_size, num_kv_heads, head_dim], CSR page tables, TableRows row modes).
//
// out[q, h] = softmax(q . K^T * sm_scale) . V over the tokens of one table row, f32 throughout.
//
// Launch shape: block of 128 threads; grid (queries * head_chunks, splits).
//   - A team of head_dim / 8 lanes owns one token at a time; each lane holds 8 channels, loaded
//     as 16 bytes (f16/bf16) straight from the page, so a token's 256-byte key row is one
//     coalesced request. 128 / team teams walk the block's token range, U = 2 tokens each per
//     step with all 2U loads issued before any is used. U = 2 beats U = 4 and 8 on the H100
//     (docs/kernels.md): fewer registers, more resident blocks, more bytes in flight per SM.
//   - GQA: a block serves GB query heads of one KV head (a head chunk) when their rows are the
//     same (PerSequence, PerKvHead tables), so K/V bytes are read once for the whole group.
//     Short rows (<= 8192 tokens, e.g. Quest's selections) use GB = 1 instead: four times the
//     blocks, and the group's re-reads of a page mostly hit L2.
//     PerQoHead tables give every query head its own row: GB = 1.
//   - Online softmax in base 2 (q pre-scaled by sm_scale * log2 e): running max m, sum l and
//     unnormalised acc per head, rescaled once per step of U tokens.
//   - Split-K (flash-decoding): the row's tokens are cut into chunks of chunk_tokens; block x
//     takes chunk y. With one chunk the block writes out; otherwise it writes (o / l,
//     m + log2 l) to scratch and merge_splits combines them: out = sum_s 2^(lse_s - M) o_s /
//     sum_s 2^(lse_s - M).
//   - Prefill reuses the kernel: query token i of a sequence with n queries and L cached tokens
//     reads the first L - n + i + 1 tokens of its row (causality), which is the decode row cut
//     short. Keys are tiled by the token steps with online softmax, so no L x L matrix exists.
// Page ids and lengths are re-checked here (out-of-range pages are skipped), so a corrupt device
// table cannot make the kernel read outside the KV buffer.
#pragma once
#include "common.cuh"

#ifndef ATT_THREADS
#define ATT_THREADS 128
#endif
#ifndef ATT_U
#define ATT_U 2
#endif

struct AttnParams {
    int num_queries;     // decode: batch; prefill: total query tokens
    int batch;           // sequences
    int num_qo_heads, num_kv_heads, head_dim, page_size, page_shift, num_pages;
    int rows_mode;       // 0 PerSequence, 1 PerQoHead, 2 PerKvHead
    int group_chunks;    // head chunks per KV head (ceil(group / GB)); PerQoHead: unused
    int chunk_tokens, num_splits;
    float scale_log2;
};

template <typename T, int GB, bool PREFILL>
__device__ void attention_kernel(const float* q, const T* kv, const int* indptr, const int* indices,
                                 const int* last_len, const int* qo_indptr, float* out,
                                 float* part_o, float* part_lse, AttnParams p) {
    __shared__ float s_acc[GB * ATT_THREADS * 8];
    __shared__ float s_m[GB][ATT_THREADS];
    __shared__ float s_l[GB][ATT_THREADS];

    const int d = p.head_dim, team = d / 8, lane = threadIdx.x % team, tm = threadIdx.x / team;
    const int teams = ATT_THREADS / team;
    const int group = p.num_qo_heads / p.num_kv_heads;
    const int chunks = p.rows_mode == 1 ? p.num_qo_heads : p.num_kv_heads * p.group_chunks;
    const int qi = blockIdx.x / chunks, c = blockIdx.x % chunks;
    int g, h0, nh;
    if (p.rows_mode == 1) {
        h0 = c; g = c / group; nh = 1;
    } else {
        g = c / p.group_chunks;
        h0 = g * group + (c % p.group_chunks) * GB;
        nh = min(GB, (g + 1) * group - h0);
    }
    int b = qi;
    if (PREFILL) {  // the sequence of query token qi: the last b with qo_indptr[b] <= qi
        int lo = 0, hi = p.batch - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (qo_indptr[mid] <= qi) lo = mid; else hi = mid - 1;
        }
        b = lo;
    }
    const int row = p.rows_mode == 0 ? b : (p.rows_mode == 1 ? b * p.num_qo_heads + h0 : b * p.num_kv_heads + g);
    const int start = indptr[row], npages = indptr[row + 1] - start;
    int len = 0;
    if (npages > 0) len = (npages - 1) * p.page_size + min(max(last_len[row], 1), p.page_size);
    if (PREFILL) {
        int nq = qo_indptr[b + 1] - qo_indptr[b], i = qi - qo_indptr[b];
        len = min(len, max(len - nq + i + 1, 0));
    }
    const int t0 = blockIdx.y * p.chunk_tokens;
    const int t1 = min(t0 + p.chunk_tokens, len);

    float qv[GB][8], acc[GB][8], m[GB], l[GB];
#pragma unroll
    for (int h = 0; h < GB; ++h) {
        m[h] = -INFINITY; l[h] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] = 0.f;
        if (h < nh) {
            load8(q + ((size_t)qi * p.num_qo_heads + h0 + h) * d + lane * 8, qv[h]);
#pragma unroll
            for (int i = 0; i < 8; ++i) qv[h][i] *= p.scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) qv[h][i] = 0.f;
        }
    }
    const size_t width = (size_t)p.num_kv_heads * d;
    const T* kv_head = kv + (size_t)g * d + lane * 8;
    // Trip count uniform over the block (not per team): the shuffles below need whole warps.
    for (int base = t0; base < t1; base += teams * ATT_U) {
        Raw8<T> kr[ATT_U], vr[ATT_U];
        bool ok[ATT_U];
#pragma unroll
        for (int u = 0; u < ATT_U; ++u) {
            kr[u] = Raw8<T>{};
            vr[u] = Raw8<T>{};
            int t = base + u * teams + tm;
            ok[u] = t < t1;
            if (ok[u]) {
                int pi = p.page_shift >= 0 ? (t >> p.page_shift) : t / p.page_size;
                int slot = t - pi * p.page_size;
                int page = indices[start + pi];
                ok[u] = page >= 0 && page < p.num_pages;
                if (ok[u]) {
                    const T* kp = kv_head + ((size_t)page * 2 * p.page_size + slot) * width;
                    raw_load(kp, kr[u]);
                    raw_load(kp + (size_t)p.page_size * width, vr[u]);
                }
            }
        }
        float s[GB][ATT_U];
#pragma unroll
        for (int u = 0; u < ATT_U; ++u) {
            float k[8];
            raw_cvt(kr[u], k);
#pragma unroll
            for (int h = 0; h < GB; ++h) {
                float x = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) x = fmaf(qv[h][i], k[i], x);
                s[h][u] = x;
            }
        }
#pragma unroll
        for (int h = 0; h < GB; ++h)
#pragma unroll
            for (int u = 0; u < ATT_U; ++u)
                for (int o = team / 2; o > 0; o >>= 1) s[h][u] += __shfl_xor_sync(0xffffffffu, s[h][u], o);
        float pr[GB][ATT_U];
#pragma unroll
        for (int h = 0; h < GB; ++h) {
            float mx = m[h];
#pragma unroll
            for (int u = 0; u < ATT_U; ++u) if (ok[u]) mx = fmaxf(mx, s[h][u]);
            float alpha = mx == -INFINITY ? 1.f : exp2f(m[h] - mx);
            m[h] = mx;
            l[h] *= alpha;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[h][i] *= alpha;
#pragma unroll
            for (int u = 0; u < ATT_U; ++u) {
                pr[h][u] = ok[u] ? exp2f(s[h][u] - mx) : 0.f;
                l[h] += pr[h][u];
            }
        }
#pragma unroll
        for (int u = 0; u < ATT_U; ++u) {
            if (!ok[u]) continue;
            float v[8];
            raw_cvt(vr[u], v);
#pragma unroll
            for (int h = 0; h < GB; ++h)
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[h][i] = fmaf(pr[h][u], v[i], acc[h][i]);
        }
    }
    // Merge the teams of the block through shared memory.
#pragma unroll
    for (int h = 0; h < GB; ++h) {
        if (lane == 0) { s_m[h][tm] = m[h]; s_l[h][tm] = l[h]; }
#pragma unroll
        for (int i = 0; i < 8; ++i) s_acc[(h * teams + tm) * d + lane * 8 + i] = acc[h][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nh * d; e += ATT_THREADS) {
        int h = e / d, ch = e % d;
        float M = -INFINITY;
        for (int k = 0; k < teams; ++k) M = fmaxf(M, s_m[h][k]);
        float L = 0.f, O = 0.f;
        if (M != -INFINITY) {
            for (int k = 0; k < teams; ++k) {
                float w = exp2f(s_m[h][k] - M);
                L += s_l[h][k] * w;
                O += s_acc[(h * teams + k) * d + ch] * w;
            }
        }
        size_t qh = (size_t)qi * p.num_qo_heads + h0 + h;
        float o = L > 0.f ? O / L : 0.f;
        if (p.num_splits == 1) {
            out[qh * d + ch] = o;
        } else {
            part_o[(qh * p.num_splits + blockIdx.y) * d + ch] = o;
            if (ch == 0) part_lse[qh * p.num_splits + blockIdx.y] = L > 0.f ? M + log2f(L) : -INFINITY;
        }
    }
}

// One block per (query, head): combines the splits' partial outputs by their log-sum-exp.
__device__ void merge_splits_impl(const float* part_o, const float* part_lse, float* out, int splits, int d) {
    size_t qh = blockIdx.x;
    const float* lse = part_lse + qh * splits;
    float M = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) M = fmaxf(M, lse[s]);
    for (int ch = threadIdx.x; ch < d; ch += blockDim.x) {
        float num = 0.f, den = 0.f;
        if (M != -INFINITY) {
#pragma unroll 8
            for (int s = 0; s < splits; ++s) {
                float w = exp2f(lse[s] - M);
                den += w;
                num += w * part_o[(qh * splits + s) * d + ch];
            }
        }
        out[qh * d + ch] = den > 0.f ? num / den : 0.f;
    }
}

#define ATTN_INSTANCE(NAME, T, GB, PREFILL)                                                         \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                      \
    NAME(const float* q, const T* kv, const int* ip, const int* ix, const int* ll, const int* qo,  \
         float* out, float* po, float* pl, AttnParams p) {                                          \
        grid_dependency_sync();                                                                     \
        attention_kernel<T, GB, PREFILL>(q, kv, ip, ix, ll, qo, out, po, pl, p);                    \
    }
