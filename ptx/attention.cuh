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
//     m + log2 l) to scratch, and the splits are combined as out = sum_s 2^(lse_s - M) o_s /
//     sum_s 2^(lse_s - M): in decode by the row's last block to finish (merge_splits_if_last,
//     p.tickets set), in prefill by a merge_splits launch.
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
    // Split-K merged in the kernel (merge_splits_if_last): one counter per grid row, zero before
    // the launch and left zero after it. Null: the host launches merge_splits (CUDA-core kernel
    // only; the tensor-core kernel always merges in the kernel).
    int* tickets;
};

// The online log-sum-exp merge of both split merges: folds U partials (base-2 lse ls[u], output
// o[u], a float or a float4 of channels) into a running max m, denominator den and numerator num.
// Partials with lse -inf weigh 0; the rescale factor is 0 while m is -inf (num and den are 0 then).
__device__ __forceinline__ void scale_in_place(float& v, float a) { v *= a; }
__device__ __forceinline__ void scale_in_place(float4& v, float a) {
    v.x *= a; v.y *= a; v.z *= a; v.w *= a;
}
__device__ __forceinline__ void add_weighted(float& acc, float w, float o) { acc = fmaf(w, o, acc); }
__device__ __forceinline__ void add_weighted(float4& acc, float w, float4 o) {
    acc.x = fmaf(w, o.x, acc.x); acc.y = fmaf(w, o.y, acc.y);
    acc.z = fmaf(w, o.z, acc.z); acc.w = fmaf(w, o.w, acc.w);
}
template <int U, typename V>
__device__ __forceinline__ void lse_fold(float& m, float& den, V& num, const float (&ls)[U], const V (&o)[U]) {
    float mx = m;
#pragma unroll
    for (int u = 0; u < U; ++u) mx = fmaxf(mx, ls[u]);
    if (mx == -INFINITY) return;
    const float a = exp2f(m - mx);
    den *= a;
    scale_in_place(num, a);
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const float w = exp2f(ls[u] - mx);
        den += w;
        add_weighted(num, w, o[u]);
    }
    m = mx;
}

// In-kernel split merge (decode with p.tickets set): the last split block of a grid row to
// finish merges the row's splits, so no merge_splits launch follows (that launch cost ~5 us a
// decode under PDL: grid drain, release, a short kernel's ramp and tail). Every block fences its
// partials and takes a ticket; the one that draws splits - 1 reads all partials of out rows
// [row0, row0 + nrows) from L2, writes them, and resets the ticket for the next launch.
// Merge: the rows' outputs are cols = nrows * d / 4 float4 columns; thread t owns column
// col = t % n of a batch of n <= THREADS columns and splits part, part + tpc, ... (part = t / n,
// tpc = THREADS / n threads a column), U splits a round with all loads in flight, merged online;
// the tpc parts of a column combine through `red` (shared memory, 6 floats a thread).
template <int THREADS, int U>
__device__ void merge_splits_if_last(const float* part_o, const float* part_lse, float* out, int* tickets,
                                     int row0, int nrows, int splits, int d, float* red) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&tickets[blockIdx.x], 1) == splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const int t = threadIdx.x, c4s = d / 4, cols = nrows * c4s;
    for (int base = 0; base < cols; base += THREADS) {
        const int n = min(THREADS, cols - base), tpc = THREADS / n, part = t / n, col = base + t % n;
        const int h = col / c4s, c4 = col % c4s;
        float m = -INFINITY, den = 0.f;
        float4 num = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s0 = part; part < tpc && s0 < splits; s0 += tpc * U) {
            float ls[U];
            float4 o[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int sp = s0 + u * tpc;
                const size_t r = (size_t)(row0 + h) * splits + sp;
                ls[u] = sp < splits ? __ldcg(part_lse + r) : -INFINITY;
                o[u] = sp < splits ? __ldcg(reinterpret_cast<const float4*>(part_o + r * d) + c4)
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
            }
            lse_fold<U>(m, den, num, ls, o);
        }
        float* mine = red + t * 6;
        mine[0] = m; mine[1] = den; mine[2] = num.x; mine[3] = num.y; mine[4] = num.z; mine[5] = num.w;
        __syncthreads();
        if (part == 0) {
            float M = -INFINITY;
            for (int k = 0; k < tpc; ++k) M = fmaxf(M, red[(k * n + t % n) * 6]);
            float D = 0.f, v[4] = {0.f, 0.f, 0.f, 0.f};
            if (M != -INFINITY) {
                for (int k = 0; k < tpc; ++k) {
                    const float* r = red + (k * n + t % n) * 6;
                    const float w = exp2f(r[0] - M);
                    D = fmaf(w, r[1], D);
#pragma unroll
                    for (int i = 0; i < 4; ++i) v[i] = fmaf(w, r[2 + i], v[i]);
                }
            }
            const float inv = D > 0.f ? 1.f / D : 0.f;
            reinterpret_cast<float4*>(out + (size_t)(row0 + h) * d)[c4] =
                make_float4(v[0] * inv, v[1] * inv, v[2] * inv, v[3] * inv);
        }
        __syncthreads();  // red is reused by the next batch of columns
    }
    if (threadIdx.x == 0) tickets[blockIdx.x] = 0;
}

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
    if (p.num_splits > 1 && p.tickets != nullptr)  // uniform over the block
        merge_splits_if_last<ATT_THREADS, 4>(part_o, part_lse, out, p.tickets, qi * p.num_qo_heads + h0, nh,
                                             p.num_splits, d, s_acc);  // U = 4: no spills at 64 registers
}

// One block of MERGE_THREADS per (query, head): combines the splits' partials,
//   out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M),  M = max_s lse_s.
// Thread (group g, channel ch), G = MERGE_THREADS / d groups, takes splits g, g + G, ... of
// channel ch, MERGE_U at a time with all their loads issued before any use, and merges them
// online with its own running max; the G groups then combine through shared memory. So S splits
// cost about S / (G * MERGE_U) memory round trips, not the 2 S / 8 of one thread per channel
// walking every split twice (max, then sum) — on the critical path after every split-K decode.
// d <= MERGE_THREADS (the host checks); empty splits have lse -inf and weigh 0.
#ifndef MERGE_THREADS
#define MERGE_THREADS 256
#endif
#ifndef MERGE_U
#define MERGE_U 8
#endif
__device__ void merge_splits_impl(const float* part_o, const float* part_lse, float* out, int splits, int d) {
    __shared__ float s_m[MERGE_THREADS], s_num[MERGE_THREADS], s_den[MERGE_THREADS];
    const size_t qh = blockIdx.x;
    const int groups = MERGE_THREADS / d, g = threadIdx.x / d, ch = threadIdx.x % d;
    float m = -INFINITY, num = 0.f, den = 0.f;
    if (g < groups) {
        for (int s0 = g; s0 < splits; s0 += groups * MERGE_U) {
            float ls[MERGE_U], o[MERGE_U];
#pragma unroll
            for (int u = 0; u < MERGE_U; ++u) {
                const int s = s0 + u * groups;
                ls[u] = s < splits ? part_lse[qh * splits + s] : -INFINITY;
                o[u] = s < splits ? part_o[(qh * splits + s) * d + ch] : 0.f;
            }
            lse_fold<MERGE_U>(m, den, num, ls, o);
        }
    }
    s_m[threadIdx.x] = m;
    s_num[threadIdx.x] = num;
    s_den[threadIdx.x] = den;
    __syncthreads();
    if (threadIdx.x < d) {
        float M = -INFINITY;
        for (int k = 0; k < groups; ++k) M = fmaxf(M, s_m[k * d + ch]);
        float n = 0.f, dn = 0.f;
        if (M != -INFINITY) {
            for (int k = 0; k < groups; ++k) {
                const float w = exp2f(s_m[k * d + ch] - M);
                n = fmaf(w, s_num[k * d + ch], n);
                dn = fmaf(w, s_den[k * d + ch], dn);
            }
        }
        out[qh * d + ch] = dn > 0.f ? n / dn : 0.f;
    }
}

// One-head decode blocks keep <= 64 registers (8 resident blocks an SM, as before the in-kernel
// merge added its epilogue): the bytes in flight of long dense rows depend on it.
#define ATT_MIN_BLOCKS(GB, PREFILL) (((GB) == 1 && !(PREFILL)) ? 8 : 1)
#define ATTN_INSTANCE(NAME, T, GB, PREFILL)                                                         \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, ATT_MIN_BLOCKS(GB, PREFILL))         \
    NAME(const float* q, const T* kv, const int* ip, const int* ix, const int* ll, const int* qo,  \
         float* out, float* po, float* pl, AttnParams p) {                                          \
        grid_dependency_sync();                                                                     \
        attention_kernel<T, GB, PREFILL>(q, kv, ip, ix, ll, qo, out, po, pl, p);                    \
    }
