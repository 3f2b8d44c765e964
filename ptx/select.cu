// Quest page selection (CPU reference: quest-kernels/src/cpu/select.rs; layout:
// quest-kernels/src/layout.rs, bounds [num_pages, 2 (max, min), num_kv_heads, head_dim]).
//
// estimate_pages: scores[h, j] = sum_i max(q[b, h, i] * max[p, g, i], q[b, h, i] * min[p, g, i])
//   for page p = indices[j] of sequence row b (found by binary search in indptr) and KV head
//   g = h / group: an upper bound of q.k over the page's keys. A team of head_dim / 8 lanes owns
//   one (page, KV head) pair, loads its max and min vectors once with 16-byte loads and scores all
//   the query heads of the GQA group against them, reducing over the team with shuffles. A team
//   takes EST_PPT consecutive entries and issues all their loads before any arithmetic. Blocks of
//   256 threads loop over the teams grid-stride, grid = min(blocks needed, SMs x EST_MIN_BLOCKS),
//   so the DRAM stream never waits on a partial last wave (variants and their H100 times:
//   scripts/kernel-experiments/estimate_variants.cu).
// select_top_pages: per (sequence b, head row), keys key_j = score of page j (PerQoHead) or the sum
//   over the group's query heads in ascending order (PerKvHead, the CPU's order, so the sums are
//   bit-identical), for every page but the row's last. The budget - 1 best pages win: best score
//   first, NaN below everything, the earlier page on ties (-0.0 ties +0.0). Scores map to
//   order-preserving u32 keys, read once into shared memory (rows up to TOPK_CAP candidates;
//   longer rows re-read them from global memory); a radix select of up to 4 passes (8-bit digits,
//   shared-memory histograms, one warp finds each digit with a suffix-sum shuffle; it stops early
//   once every key of the chosen digit wins) finds the threshold key, compared on the bits fixed
//   so far. Pages above it win, and of the pages equal to it the
//   earliest ones: each thread takes a contiguous run of pages, one block scan of its (above,
//   equal) counts gives every winner's slot, above_before + min(equal_before, still_needed).
//   Winners are written in table order, the last page after them. One block of 1024 threads per
//   output row; rows with at most budget pages are copied. grid (batch * heads).
#include "common.cuh"

struct EstimateParams {
    int batch, num_qo_heads, num_kv_heads, head_dim, nnz, num_pages;
};

#ifndef EST_PPT  // variants: scripts/kernel-experiments/estimate_variants.cu
#define EST_PPT 2  // pages per team: their loads are all issued before any arithmetic
#endif
#ifndef EST_MIN_BLOCKS
#define EST_MIN_BLOCKS 4  // resident 256-thread blocks per SM (__launch_bounds__); the host matches it
#endif

template <typename T>
__device__ void estimate_pages(const float* __restrict__ q, const T* __restrict__ bounds,
                               const int* __restrict__ indptr, const int* __restrict__ indices,
                               float* __restrict__ scores, EstimateParams p) {
    const int team = p.head_dim / 8;  // power of two <= 32, checked on the host
    const int lane = threadIdx.x % team;
    const int block_teams = blockDim.x / team;
    const long long teams = (long long)((p.nnz + EST_PPT - 1) / EST_PPT) * p.num_kv_heads;
    // Grid-stride over whole blocks of teams (a block-uniform trip count, so every warp's
    // shuffles see all lanes): the grid is sized to the resident blocks, with no partial wave.
    for (long long t_block = (long long)blockIdx.x * block_teams; t_block < teams;
         t_block += (long long)gridDim.x * block_teams) {
        const long long t = t_block + threadIdx.x / team;
        const int g = (int)(t % p.num_kv_heads);
        const long long j0 = (t / p.num_kv_heads) * EST_PPT;
        const bool team_live = t < teams;
        // Every page's max and min first (EST_PPT x 2 x 16 bytes in flight per lane).
        Raw8<T> mx[EST_PPT], mn[EST_PPT];
        bool live[EST_PPT];
#pragma unroll
        for (int u = 0; u < EST_PPT; ++u) {
            const long long j = j0 + u;
            const int page = (team_live && j < p.nnz) ? indices[j] : -1;
            live[u] = page >= 0 && page < p.num_pages;
            mx[u] = Raw8<T>{};
            mn[u] = Raw8<T>{};
            if (live[u]) {
                const T* bp = bounds + (((size_t)page * 2) * p.num_kv_heads + g) * p.head_dim + lane * 8;
                raw_load(bp, mx[u]);
                raw_load(bp + (size_t)p.num_kv_heads * p.head_dim, mn[u]);
            }
        }
        // The sequence of each entry: the last b with indptr[b] <= j (a chunk may cross rows).
        int seq[EST_PPT];
        {
            int b = 0;
            if (team_live) {
                int lo = 0, hi = p.batch - 1;
                while (lo < hi) {
                    const int mid = (lo + hi + 1) / 2;
                    if (indptr[mid] <= j0) lo = mid; else hi = mid - 1;
                }
                b = lo;
            }
#pragma unroll
            for (int u = 0; u < EST_PPT; ++u) {
                if (live[u]) while (j0 + u >= indptr[b + 1]) ++b;
                seq[u] = b;
            }
        }
        // Page by page (the bounds converted once), each query head of the group against them;
        // the q rows are re-read from L1, not held per head (registers decide the occupancy).
        const int group = p.num_qo_heads / p.num_kv_heads;
#pragma unroll
        for (int u = 0; u < EST_PPT; ++u) {
            float a[8], c[8];
            raw_cvt(mx[u], a);
            raw_cvt(mn[u], c);
            for (int hh = 0; hh < group; ++hh) {
                const int h = g * group + hh;
                float s = 0.f;
                if (live[u]) {
                    float qv[8];
                    load8(q + ((size_t)seq[u] * p.num_qo_heads + h) * p.head_dim + lane * 8, qv);
#pragma unroll
                    for (int i = 0; i < 8; ++i) s += fmaxf(qv[i] * a[i], qv[i] * c[i]);
                }
                // Uniform trip counts: every lane of the warp takes part in the shuffles.
                for (int o = team / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (live[u] && lane == 0) scores[(size_t)h * p.nnz + j0 + u] = s;
            }
        }
    }
}

#define SELECT_INSTANCES(T, S)                                                                      \
    extern "C" __global__ void __launch_bounds__(256, EST_MIN_BLOCKS)                              \
    estimate_pages_##S(const float* q, const T* b, const int* ip, const int* ix, float* sc,        \
                       EstimateParams p) {                                                          \
        grid_dependency_sync();                                                                     \
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

#ifndef TOPK_THREADS  // variants: scripts/kernel-experiments/topk_variants.cu
#define TOPK_THREADS 1024
#endif
// Defaults from the H100 runs of scripts/kernel-experiments/topk_variants.cu (32 rows of 2047
// candidates, L2-resident scores): one shared atomic per key + early stop 11.0 us, against 13.4 us
// with warp-aggregated increments and four full passes; 8191 candidates 16.4 against 22.1 us.
#ifndef TOPK_AGG  // 1: warp-aggregated histogram increments (__match_any_sync); 0: one atomic each
#define TOPK_AGG 0
#endif
#ifndef TOPK_EARLY  // 1: stop the radix passes once every key of the chosen digit wins
#define TOPK_EARLY 1
#endif
#define TOPK_CAP 8192  // candidate keys cached in shared memory (32 KB); longer rows re-read

// Exclusive prefix sums of (a, b) over the block in thread order, totals in *ta, *tb.
// `sh` needs 66 ints. Ends with a barrier.
__device__ __forceinline__ int2 block_exclusive_scan2(int a, int b, int* sh, int* ta, int* tb) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    int x = a, y = b;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, x, o), v = __shfl_up_sync(0xffffffffu, y, o);
        if (lane >= o) { x += u; y += v; }
    }
    if (lane == 31) { sh[warp] = x; sh[33 + warp] = y; }
    __syncthreads();
    if (warp == 0) {
        int u = lane < nw ? sh[lane] : 0, v = lane < nw ? sh[33 + lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int uu = __shfl_up_sync(0xffffffffu, u, o), vv = __shfl_up_sync(0xffffffffu, v, o);
            if (lane >= o) { u += uu; v += vv; }
        }
        if (lane < nw) { sh[lane] = u; sh[33 + lane] = v; }
        if (lane == 31) { sh[32] = u; sh[65] = v; }
    }
    __syncthreads();
    int2 r = make_int2((warp > 0 ? sh[warp - 1] : 0) + x - a, (warp > 0 ? sh[33 + warp - 1] : 0) + y - b);
    *ta = sh[32];
    *tb = sh[65];
    __syncthreads();
    return r;
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
select_top_pages(const float* __restrict__ scores, const int* in_indptr, const int* in_indices,
                 const int* in_last, const int* out_indptr, int* out_indices, int* out_last,
                 SelectParams p) {
    grid_dependency_sync();
    __shared__ uint32_t s_keys[TOPK_CAP];
    __shared__ int hist[256];
    __shared__ int scan_sh[66];
    __shared__ uint32_t s_prefix;
    __shared__ int s_remaining;
    __shared__ int s_done;
    const int nt = blockDim.x, tid = threadIdx.x;
    int row = blockIdx.x, b = row / p.heads, head = row % p.heads;
    int start = in_indptr[b], end = in_indptr[b + 1], n = end - start;
    int dst = out_indptr[row];
    if (tid == 0) out_last[row] = in_last[b];
    if (n <= p.budget) {
        for (int i = tid; i < n; i += nt) out_indices[dst + i] = in_indices[start + i];
        return;
    }
    if (tid == 0) out_indices[dst + p.budget - 1] = in_indices[end - 1];
    const int cand = n - 1, want = p.budget - 1;
    if (want == 0) return;  // only the last page: uniform
    const bool cached = cand <= TOPK_CAP;
    if (cached) {
        // Keys once into shared memory, 8 loads in flight per thread (group sums in ascending
        // head order, the CPU's order, so the sums are bit-identical).
        for (int j0 = 0; j0 < cand; j0 += nt * 8) {
            float acc[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[u] = -0.f;
            for (int hh = 0; hh < p.group; ++hh) {
                const float* sp = scores + (size_t)(head * p.group + hh) * p.nnz + start;
#pragma unroll
                for (int u = 0; u < 8; ++u) {
                    int j = j0 + u * nt + tid;
                    if (j < cand) acc[u] += sp[j];
                }
            }
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                int j = j0 + u * nt + tid;
                if (j < cand) s_keys[j] = score_key(acc[u]);
            }
        }
    }
    auto key = [&](int j) -> uint32_t { return cached ? s_keys[j] : page_key(scores, start, j, p, head); };
    if (tid == 0) { s_prefix = 0; s_remaining = want; s_done = 0; }
    __syncthreads();
    uint32_t fixed = 0;  // the bits of the threshold key known so far
    // Radix select of the want-th largest key, one 8-bit digit per pass from the top.
    const int lane = tid & 31;
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        const uint32_t mask_hi = pass == 0 ? 0u : (0xffffffffu << (shift + 8));
        for (int i = tid; i < 256; i += nt) hist[i] = 0;
        __syncthreads();
        const uint32_t prefix = s_prefix;
        for (int j0 = 0; j0 < cand; j0 += nt) {  // uniform trip count: __match_any_sync below
            int j = j0 + tid;
            bool in = false;
            uint32_t dg = 0;
            if (j < cand) {
                uint32_t k = key(j);
                in = (k & mask_hi) == prefix;
                dg = (k >> shift) & 255u;
            }
            // Warp-aggregated increments: one atomic per distinct digit in the warp.
#if TOPK_AGG
            unsigned active = __ballot_sync(0xffffffffu, in);
            if (in) {
                unsigned same = __match_any_sync(active, dg);
                if (lane == __ffs(same) - 1) atomicAdd(&hist[dg], __popc(same));
            }
#else
            if (in) atomicAdd(&hist[dg], 1);
#endif
        }
        __syncthreads();
        if (tid < 32) {
            // Lane L owns digits 8L..8L+7; suffix sums from the top digit down find the digit
            // holding the rem-th largest key.
            int c[8], tot = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) { c[i] = hist[8 * lane + i]; tot += c[i]; }
            int suf = tot;  // keys in lanes >= lane
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                int y = __shfl_down_sync(0xffffffffu, suf, o);
                if (lane + o < 32) suf += y;
            }
            int rem = s_remaining, above = suf - tot;
            __syncwarp();  // every lane has read s_remaining before one lane rewrites it
            if (above < rem && rem <= suf) {
                int r = rem - above, dsel = 8 * lane, in_digit = 0;
#pragma unroll
                for (int i = 7; i >= 0; --i) {
                    if (r <= c[i]) { dsel = 8 * lane + i; in_digit = c[i]; break; }
                    r -= c[i];
                }
                s_prefix = prefix | ((uint32_t)dsel << shift);
                s_remaining = r;
                if (TOPK_EARLY && r == in_digit) s_done = 1;  // all of this digit's keys win
            }
        }
        __syncthreads();
        fixed = 0xffffffffu << shift;
        if (TOPK_EARLY && s_done) break;  // uniform: read after the barrier
    }
    // Keys compare on their fixed bits only: after an early stop, every key whose fixed bits
    // equal the threshold's wins (need_eq of them).
    const uint32_t thresh = s_prefix;
    const int need_eq = s_remaining;  // how many keys equal to thresh still win
    // Compaction in page order: each thread a contiguous run; one scan of (above, equal) counts.
    const int per = (cand + nt - 1) / nt;
    const int j_lo = min(tid * per, cand), j_hi = min(j_lo + per, cand);
    int n_above = 0, n_eq = 0;
    for (int j = j_lo; j < j_hi; ++j) {
        uint32_t k = key(j) & fixed;
        n_above += k > thresh;
        n_eq += k == thresh;
    }
    int t_above, t_eq;
    int2 before = block_exclusive_scan2(n_above, n_eq, scan_sh, &t_above, &t_eq);
    int above = before.x, eq = before.y;
    for (int j = j_lo; j < j_hi; ++j) {
        uint32_t k = key(j) & fixed;
        if (k > thresh) {
            out_indices[dst + above + min(eq, need_eq)] = in_indices[start + j];
            ++above;
        } else if (k == thresh) {
            if (eq < need_eq) out_indices[dst + above + eq] = in_indices[start + j];
            ++eq;
        }
    }
}

// force_pages: sets scores[h, j] = +inf for every query head h and, in each sequence row b of n
//   pages, the first `first` pages and the `recent` pages before the last one (the last page is
//   always kept by select_top_pages anyway), so top-k keeps them ahead of any scored page (ties
//   among them go to the earlier page, like every tie). Quest's sink page and recent window.
//   grid (batch), block 256: threads stride over (head, forced page) pairs.
extern "C" __global__ void force_pages(float* scores, const int* indptr, int nnz, int num_qo_heads,
                                       int first, int recent) {
    grid_dependency_sync();
    const int b = blockIdx.x;
    const int start = indptr[b], n = indptr[b + 1] - start;
    const int last = n - 1;  // never forced: always kept
    const int nf = min(first, max(last, 0));
    const int r0 = max(nf, last - recent);  // recent window [r0, last)
    const int per_head = nf + max(last - r0, 0);
    for (int e = threadIdx.x; e < num_qo_heads * per_head; e += blockDim.x) {
        const int h = e / per_head, k = e % per_head;
        const int j = k < nf ? k : r0 + (k - nf);
        scores[(size_t)h * nnz + start + j] = __int_as_float(0x7f800000);
    }
}
