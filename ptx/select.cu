// Quest page selection (CPU reference: quest-kernels/src/cpu/select.rs; layout:
// quest-kernels/src/layout.rs, bounds [num_pages, 2 (max, min), num_kv_heads, head_dim]).
//
// estimate_pages: scores[h, j] = sum_i max(q[b, h, i] * max[p, g, i], q[b, h, i] * min[p, g, i])
//   for page p = indices[j] of sequence row b (found by binary search in indptr) and KV head
//   g = h / group: an upper bound of q.k over the page's keys. A team of head_dim / 8 lanes owns
//   one (page, KV head) pair, loads its max and min vectors once with 16-byte loads and scores all
//   the query heads of the GQA group against them, reducing over the team with shuffles.
//   grid (ceil(nnz * num_kv_heads / teams per block)), block 256.
// select_top_pages: per (sequence b, head row), keys key_j = score of page j (PerQoHead) or the sum
//   over the group's query heads in ascending order (PerKvHead, the CPU's order, so the sums are
//   bit-identical), for every page but the row's last. The budget - 1 best pages win: best score
//   first, NaN below everything, the earlier page on ties (-0.0 ties +0.0). Scores map to
//   order-preserving u32 keys; a 4-pass radix select (8-bit digits, shared-memory histograms)
//   finds the threshold key; pages above it win, and of the pages equal to it the earliest ones,
//   counted with a block scan in page order. Winners are written in table order, the last page
//   after them. One block of 1024 threads per output row; rows with at most budget pages are
//   copied. grid (batch * heads).
#include "common.cuh"

struct EstimateParams {
    int batch, num_qo_heads, num_kv_heads, head_dim, nnz, num_pages;
};

template <typename T>
__device__ void estimate_pages(const float* q, const T* bounds, const int* indptr, const int* indices,
                               float* scores, EstimateParams p) {
    int team = p.head_dim / 8;  // power of two <= 32, checked on the host
    int lane = threadIdx.x % team;
    long long pair = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / team;
    long long pairs = (long long)p.nnz * p.num_kv_heads;
    bool live = pair < pairs;
    int j = live ? (int)(pair / p.num_kv_heads) : 0;
    int g = live ? (int)(pair % p.num_kv_heads) : 0;
    int page = live ? indices[j] : 0;
    if (page < 0 || page >= p.num_pages) live = false;
    // Sequence of entry j: the last b with indptr[b] <= j.
    int lo = 0, hi = p.batch - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (indptr[mid] <= j) lo = mid; else hi = mid - 1;
    }
    int b = lo;
    int group = p.num_qo_heads / p.num_kv_heads;
    float mx[8], mn[8];
    if (live) {
        load8(bounds + (((size_t)page * 2 + 0) * p.num_kv_heads + g) * p.head_dim + lane * 8, mx);
        load8(bounds + (((size_t)page * 2 + 1) * p.num_kv_heads + g) * p.head_dim + lane * 8, mn);
    }
    for (int hh = 0; hh < group; ++hh) {
        int h = g * group + hh;
        float s = 0.f;
        if (live) {
            float qv[8];
            load8(q + ((size_t)b * p.num_qo_heads + h) * p.head_dim + lane * 8, qv);
#pragma unroll
            for (int i = 0; i < 8; ++i) s += fmaxf(qv[i] * mx[i], qv[i] * mn[i]);
        }
        for (int o = team / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (live && lane == 0) scores[(size_t)h * p.nnz + j] = s;
    }
}

#define SELECT_INSTANCES(T, S)                                                                      \
    extern "C" __global__ void estimate_pages_##S(const float* q, const T* b, const int* ip,        \
                                                  const int* ix, float* sc, EstimateParams p) {     \
        estimate_pages<T>(q, b, ip, ix, sc, p);                                                     \
    }
SELECT_INSTANCES(f16_t, f16)
SELECT_INSTANCES(bf16_t, bf16)
SELECT_INSTANCES(float, f32)

struct SelectParams {
    int num_qo_heads, heads, group, nnz, budget;
};

// Order-preserving key: larger score -> larger key; NaN -> 0 (below -inf); -0.0 == +0.0.
__device__ __forceinline__ uint32_t score_key(float s) {
    if (isnan(s)) return 0u;
    if (s == 0.f) s = 0.f;
    uint32_t u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint32_t page_key(const float* scores, int start, int j, SelectParams p,
                                             int head) {
    float s = -0.f;  // Rust's f32 Sum starts at -0.0; -0.0 + x == x exactly
    for (int hh = 0; hh < p.group; ++hh) s += scores[(size_t)(head * p.group + hh) * p.nnz + start + j];
    return score_key(s);
}

extern "C" __global__ void __launch_bounds__(1024)
select_top_pages(const float* scores, const int* in_indptr, const int* in_indices, const int* in_last,
                 const int* out_indptr, int* out_indices, int* out_last, SelectParams p) {
    __shared__ int hist[256];
    __shared__ int scan_sh[33];
    __shared__ uint32_t s_prefix;
    __shared__ int s_remaining;
    int row = blockIdx.x, b = row / p.heads, head = row % p.heads;
    int start = in_indptr[b], end = in_indptr[b + 1], n = end - start;
    int dst = out_indptr[row];
    if (threadIdx.x == 0) out_last[row] = in_last[b];
    if (n <= p.budget) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) out_indices[dst + i] = in_indices[start + i];
        return;
    }
    int cand = n - 1, want = p.budget - 1;
    // Radix select: find the want-th largest key, one 8-bit digit per pass from the top.
    if (threadIdx.x == 0) { s_prefix = 0; s_remaining = want; }
    __syncthreads();
    for (int pass = 0; pass < 4 && want > 0; ++pass) {
        int shift = 24 - 8 * pass;
        uint32_t mask_hi = pass == 0 ? 0u : (0xffffffffu << (shift + 8));
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix;
        for (int j = threadIdx.x; j < cand; j += blockDim.x) {
            uint32_t k = page_key(scores, start, j, p, head);
            if ((k & mask_hi) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int rem = s_remaining, d = 255;
            for (; d > 0; --d) {
                if (hist[d] >= rem) break;
                rem -= hist[d];
            }
            s_prefix = prefix | ((uint32_t)d << shift);
            s_remaining = rem;
        }
        __syncthreads();
    }
    uint32_t thresh = s_prefix;
    int need_eq = s_remaining;  // how many keys equal to thresh still win
    // Compaction in page order: above thresh always, equal to thresh the first need_eq.
    int written = 0, eq_seen = 0;
    for (int base = 0; base < cand && want > 0; base += blockDim.x) {
        int j = base + threadIdx.x;
        uint32_t k = j < cand ? page_key(scores, start, j, p, head) : 0u;
        int is_eq = (j < cand && k == thresh) ? 1 : 0;
        int eq_total;
        int eq_before = eq_seen + block_exclusive_scan(is_eq, scan_sh, &eq_total);
        int win = (j < cand && (k > thresh || (is_eq && eq_before < need_eq))) ? 1 : 0;
        int win_total;
        int pos = written + block_exclusive_scan(win, scan_sh, &win_total);
        if (win) out_indices[dst + pos] = in_indices[start + j];
        written += win_total;
        eq_seen += eq_total;
    }
    if (threadIdx.x == 0) out_indices[dst + p.budget - 1] = in_indices[end - 1];
}
