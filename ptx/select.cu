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
//   first, NaN below everything, the earlier page on ties (-0.0 ties +0.0). Each thread owns a
//   contiguous run of candidates; their scores map to order-preserving u32 keys read once into
//   registers (rows up to TOPK_REG x 1024 candidates) or into dynamic shared memory (longer rows,
//   up to p.key_cap, what the launch's size holds); rows longer still re-read them from global
//   memory on every pass. A radix select of up to 4 passes (8-bit digits, double-buffered
//   shared-memory histograms, one warp finds each digit with a suffix-sum shuffle; it stops early
//   once every key of the chosen digit wins) finds the threshold key, compared on the bits fixed
//   so far.
//   Pages above it win, and of the pages equal to it the earliest ones: one block scan of each
//   thread's (above, equal) counts gives every winner's slot,
//   above_before + min(equal_before, still_needed).
//   Winners are written in table order, the last page after them. One block of 1024 threads per
//   output row; rows with at most budget pages are copied. grid (batch * heads).
// select_top_pages_mass (the adaptive budget, `SelectOptions::mass = p < 1`): the same top-k
//   (rows within the budget: every candidate wins, no radix passes), then of the winners only the
//   forced ones (key of +inf) and the shortest best-first prefix of the others whose estimated
//   softmax mass reaches p of the row's:
//     m_j = exp(scale * (s_j - s_max)), scale = sm_scale / group (summed rows: per-head scale),
//     s_max = the largest finite candidate score (a block max of u32 keys, which order like the
//     scores), total = the sum of m_j over every finite non-forced candidate (block_sum; NaN and
//     -inf have no mass), and a non-forced winner is kept iff the mass of the non-forced winners
//     before it (best first) is < p * total.
//   The winners (at most MASS_CAP = 1024, checked on the host: one per thread) go to shared
//   memory as 64-bit sort keys (key << 32 | ~slot, slot = the winner's rank in table order) and
//   their page ids by slot; a bitonic sort (descending, next power of two of the winner count:
//   log2(n)(log2(n)+1)/2 barrier steps) puts the best first, ties to the earlier page; one float
//   block scan in that order gives every winner the mass before it, a flag per slot records the
//   verdict, and one int block scan in slot order places the kept pages first (table order), the
//   rest of the slots -1 (EMPTY_PAGE), the last page last. f32 sums in block order, not the CPU's
//   sequential order: a page within rounding of the cut may go either way (the tests allow it).
//   `kept` (null or one u64): both kernels add the pages they wrote (tid 0, one atomic a row).
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
    const int lane = threadIdx.x & (team - 1), tm = threadIdx.x / team;
    const int block_teams = blockDim.x / team;
    // Team indices fit in int, with a grid's worth of slack (checked on the host).
    const int teams = ((p.nnz + EST_PPT - 1) / EST_PPT) * p.num_kv_heads;
    const DivMod heads(p.num_kv_heads);
    // Grid-stride over whole blocks of teams (a block-uniform trip count, so every warp's
    // shuffles see all lanes): the grid is sized to the resident blocks, with no partial wave.
    for (int t_block = blockIdx.x * block_teams; t_block < teams; t_block += gridDim.x * block_teams) {
        const int t = t_block + tm;
        const int g = heads.mod(t);
        const int j0 = heads.div(t) * EST_PPT;
        const bool team_live = t < teams;
        // Every page's max and min first (EST_PPT x 2 x 16 bytes in flight per lane).
        Raw8<T> mx[EST_PPT], mn[EST_PPT];
        bool live[EST_PPT];
#pragma unroll
        for (int u = 0; u < EST_PPT; ++u) {
            const int j = j0 + u;
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
    float mass;   // adaptive budget threshold p < 1 (select_top_pages_mass only)
    float scale;  // sm_scale / group: a page's mass is exp(scale * (s - s_max))
    int key_cap;  // candidates a row may hold in dynamic shared memory (the launch's size)
};

// Order-preserving key: larger score -> larger key; NaN -> 0 (below -inf); -0.0 == +0.0.
__device__ __forceinline__ uint32_t score_key(float s) {
    if (isnan(s)) return 0u;
    if (s == 0.f) s = 0.f;
    uint32_t u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The score of a key (the inverse of score_key for every key but 0, which is NaN).
__device__ __forceinline__ float key_score(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
#define KEY_POS_INF 0xff800000u  // score_key(+inf): a page forced by force_pages
#define KEY_NEG_INF 0x007fffffu  // score_key(-inf); finite scores lie strictly between the two

// A shared-memory key's word: one word of padding every 32 (the host's key_words counts them).
__device__ __forceinline__ int key_skew(int j) { return j + (j >> 5); }

__device__ __forceinline__ uint32_t page_key(const float* scores, int start, int j, SelectParams p,
                                             int head) {
    float s = -0.f;  // Rust's f32 Sum starts at -0.0; -0.0 + x == x exactly
    for (int hh = 0; hh < p.group; ++hh) s += scores[(size_t)(head * p.group + hh) * p.nnz + start + j];
    return score_key(s);
}

#ifndef TOPK_THREADS  // variants: scripts/kernel-experiments/topk_variants.cu
#define TOPK_THREADS 1024
#endif
// From the H100 runs of scripts/kernel-experiments/topk_variants.cu (32 rows, L2-resident
// scores): the early stop, 2047 candidates 13.4 -> 11.0 us; keys in registers instead of shared
// memory, 8191 candidates 17.8 -> 13.3 us in `quest bench kernels` (docs/kernels.md).
#ifndef TOPK_EARLY  // 1: stop the radix passes once every key of the chosen digit wins
#define TOPK_EARLY 1
#endif
#define TOPK_REG 8  // candidate keys a thread holds in registers (8192 a row at 1024 threads)
#define MASS_CAP 1024  // winners the adaptive kernel sorts in shared memory (checked on the host)

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

// Exclusive prefix sum of a float over the block in thread order (a fixed order, so the result
// is the same on every run). `sh` needs 32 floats. Ends with a barrier.
__device__ __forceinline__ float block_exclusive_scan_f(float v, float* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    float x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? sh[lane] : 0.f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            float y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        if (lane < nw) sh[lane] = w;  // inclusive per-warp totals
    }
    __syncthreads();
    // Exclusive within the warp by shifting the inclusive sums (x - v would round differently).
    float ex = __shfl_up_sync(0xffffffffu, x, 1);
    if (lane == 0) ex = 0.f;
    float before = (warp > 0 ? sh[warp - 1] : 0.f) + ex;
    __syncthreads();
    return before;
}

// The top-k's static shared memory: 2.3 KB, + 13.3 KB with MASS (the adaptive budget's winners
// as (key << 32 | ~slot) sort keys, their pages by slot (table order), which of them are kept,
// the largest finite key, scan and reduction space).
template <bool MASS>
struct TopkShared {
    int hist[2][256];
    int scan_sh[66];
    uint32_t prefix;
    int remaining;
    int done;
    uint32_t kmax;
    unsigned long long sort[MASS ? MASS_CAP : 1];
    int wpage[MASS ? MASS_CAP : 1];
    unsigned char flag[MASS ? MASS_CAP : 1];
    float red[MASS ? 32 : 1];
};

// MASS = false: select_top_pages, the plain top-k. MASS = true: select_top_pages_mass, the
// adaptive budget (see the header comment). Where the row's candidate keys live: NREG > 0, NREG
// a thread in registers; NREG = 0, in the launch's dynamic shared memory (key_skew: one word of
// padding every 32, so a warp's contiguous runs fall in different banks); NREG = -1 (rows over
// p.key_cap), nowhere: every pass re-reads (and re-sums) them from global memory.
// The row's sequence b has table entries [start, end) (read once by select_top_pages_row),
// `sh` is the block's (one for all three NREG instances).
template <bool MASS, int NREG>
__device__ __forceinline__ void select_top_pages_impl(
        const float* __restrict__ scores, const int* in_indices, const int* in_last,
        const int* out_indptr, int* out_indices, int* out_last, unsigned long long* kept,
        SelectParams p, int b, int start, int end, TopkShared<MASS>& sh) {
    auto& hist = sh.hist;
    auto& scan_sh = sh.scan_sh;
    auto& s_prefix = sh.prefix;
    auto& s_remaining = sh.remaining;
    auto& s_done = sh.done;
    auto& s_sort = sh.sort;
    auto& s_wpage = sh.wpage;
    auto& s_flag = sh.flag;
    auto& s_red = sh.red;
    auto& s_kmax = sh.kmax;
    const int nt = blockDim.x, tid = threadIdx.x;
    const int row = blockIdx.x, head = row % p.heads, n = end - start;
    const int dst = out_indptr[row];
    if (tid == 0) out_last[row] = in_last[b];
    const int slots = min(n, p.budget);
    if (n <= p.budget && (!MASS || n <= 1)) {
        for (int i = tid; i < n; i += nt) out_indices[dst + i] = in_indices[start + i];
        if (kept != nullptr && tid == 0) atomicAdd(kept, (unsigned long long)n);
        return;
    }
    if (tid == 0) out_indices[dst + slots - 1] = in_indices[end - 1];
    const int cand = n - 1, want = slots - 1;
    if (!MASS && kept != nullptr && tid == 0) atomicAdd(kept, (unsigned long long)slots);
    if (want == 0) {  // only the last page: uniform
        if (MASS && kept != nullptr && tid == 0) atomicAdd(kept, 1ull);
        return;
    }
    // Each thread owns a contiguous run of candidates [j_lo, j_lo + mine), in table order.
    const int per = (cand + nt - 1) / nt;
    const int j_lo = min(tid * per, cand), mine = min(j_lo + per, cand) - j_lo;
    constexpr bool REG = NREG > 0, SMEM = NREG == 0;
    uint32_t kr[REG ? NREG : 1];
    extern __shared__ uint32_t s_keys[];  // NREG = 0: key j at skew(j)
    if constexpr (REG) {
        // Keys once into registers, all loads in flight (group sums in ascending head order, the
        // CPU's order, so the sums are bit-identical).
        float acc[NREG];
#pragma unroll
        for (int u = 0; u < NREG; ++u) acc[u] = -0.f;
        for (int hh = 0; hh < p.group; ++hh) {
            const float* sp = scores + (size_t)(head * p.group + hh) * p.nnz + start + j_lo;
#pragma unroll
            for (int u = 0; u < NREG; ++u)
                if (u < mine) acc[u] += sp[u];
        }
#pragma unroll
        for (int u = 0; u < NREG; ++u) kr[u] = score_key(acc[u]);
    } else if constexpr (SMEM) {
        for (int j = tid; j < cand; j += nt) s_keys[key_skew(j)] = page_key(scores, start, j, p, head);
    }
    // The key of this thread's u-th candidate.
    auto key = [&](int u) -> uint32_t {
        if constexpr (REG) return kr[u];
        else if constexpr (SMEM) return s_keys[key_skew(j_lo + u)];
        else return page_key(scores, start, j_lo + u, p, head);
    };
    // Loops over this thread's candidates: unrolled over registers, or a plain loop.
#define FOR_MINE(u) _Pragma("unroll") for (int u = 0; u < (REG ? NREG : mine); ++u) if (!REG || u < mine)
    // Every candidate wins when the row is within the budget (adaptive rows only): threshold 0,
    // no bit fixed, so every key compares equal to it.
    if (tid == 0) { s_prefix = 0; s_remaining = MASS && want == cand ? cand : want; s_done = 0; }
    for (int i = tid; i < 256; i += nt) hist[0][i] = 0;
    __syncthreads();
    uint32_t fixed = 0;  // the bits of the threshold key known so far
    // Radix select of the want-th largest key, one 8-bit digit per pass from the top. Pass p
    // counts into hist[p & 1] and clears the other one, which the previous pass's digit search
    // finished reading before the barrier that ended it.
    const int lane = tid & 31;
    for (int pass = 0; pass < 4 && (!MASS || want < cand); ++pass) {
        const int shift = 24 - 8 * pass;
        const uint32_t mask_hi = pass == 0 ? 0u : (0xffffffffu << (shift + 8));
        int* const h = hist[pass & 1];
        for (int i = tid; i < 256; i += nt) hist[(pass + 1) & 1][i] = 0;
        const uint32_t prefix = s_prefix;
        FOR_MINE(u) {
            const uint32_t k = key(u);
            if ((k & mask_hi) == prefix) atomicAdd(&h[(k >> shift) & 255u], 1);
        }
        __syncthreads();
        if (tid < 32) {
            // Lane L owns digits 8L..8L+7; suffix sums from the top digit down find the digit
            // holding the rem-th largest key.
            int c[8], tot = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) { c[i] = h[8 * lane + i]; tot += c[i]; }
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
    // Compaction in page order: one scan of each thread's (above, equal) counts.
    int n_above = 0, n_eq = 0;
    FOR_MINE(u) {
        const uint32_t k = key(u) & fixed;
        n_above += k > thresh;
        n_eq += k == thresh;
    }
    int t_above, t_eq;
    int2 before = block_exclusive_scan2(n_above, n_eq, scan_sh, &t_above, &t_eq);
    int above = before.x, eq = before.y;
    FOR_MINE(u) {
        const uint32_t full = key(u);  // the adaptive sort needs the whole key
        const uint32_t k = full & fixed;
        int slot = -1;
        if (k > thresh) {
            slot = above + min(eq, need_eq);
            ++above;
        } else if (k == thresh) {
            if (eq < need_eq) slot = above + eq;
            ++eq;
        }
        if (slot >= 0) {
            const int page = in_indices[start + j_lo + u];
            if constexpr (MASS) {
                s_sort[slot] = ((unsigned long long)full << 32) | (uint32_t)~slot;
                s_wpage[slot] = page;
            } else {
                out_indices[dst + slot] = page;
            }
        }
    }
    if constexpr (!MASS) return;

    // ---- adaptive budget ----
    // s_max: the largest finite key of all candidates; total: their non-forced mass.
    if (tid == 0) s_kmax = 0u;
    __syncthreads();
    uint32_t kmax = 0u;
    FOR_MINE(u) {
        const uint32_t k = key(u);
        if (k > KEY_NEG_INF && k < KEY_POS_INF) kmax = max(kmax, k);
    }
    kmax = __reduce_max_sync(0xffffffffu, kmax);
    if (lane == 0 && kmax != 0u) atomicMax(&s_kmax, kmax);
    // Sort padding: below every winner (a winner's low word ~slot is never 0).
    int sort_n = 1;
    while (sort_n < want) sort_n <<= 1;
    for (int i = want + tid; i < sort_n; i += nt) s_sort[i] = 0ull;
    __syncthreads();
    const bool any_finite = s_kmax != 0u;
    const float s_max = any_finite ? key_score(s_kmax) : 0.f;
    float part = 0.f;
    if (any_finite) {
        FOR_MINE(u) {
            const uint32_t k = key(u);
            if (k > KEY_NEG_INF && k < KEY_POS_INF) part += expf(p.scale * (key_score(k) - s_max));
        }
    }
#undef FOR_MINE
    const float total = block_sum(part, s_red);
    // Bitonic sort of the winners, descending: best key first, earlier slot (page) on ties.
    for (int k2 = 2; k2 <= sort_n; k2 <<= 1) {
        for (int jj = k2 >> 1; jj > 0; jj >>= 1) {
            for (int i = tid; i < sort_n; i += nt) {
                int ixj = i ^ jj;
                if (ixj > i) {
                    unsigned long long x = s_sort[i], y = s_sort[ixj];
                    bool desc = (i & k2) == 0;
                    if (desc ? x < y : x > y) { s_sort[i] = y; s_sort[ixj] = x; }
                }
            }
            __syncthreads();
        }
    }
    // Thread i holds the i-th best winner; its non-forced mass before it decides its fate.
    bool keep = false;
    float m = 0.f;
    int wslot = 0;
    bool forced = false;
    if (tid < want) {
        unsigned long long e = s_sort[tid];
        uint32_t k = (uint32_t)(e >> 32);
        wslot = (int)~(uint32_t)e;
        forced = k == KEY_POS_INF;
        if (any_finite && k > KEY_NEG_INF && k < KEY_POS_INF) m = expf(p.scale * (key_score(k) - s_max));
    }
    const float mass_before = block_exclusive_scan_f(m, s_red);
    if (tid < want) {
        keep = forced || mass_before < p.mass * total;
        s_flag[wslot] = keep ? 1 : 0;
    }
    __syncthreads();
    // Kept pages in table order, then empty slots, then (already written) the last page.
    int flag = tid < want ? s_flag[tid] : 0, count;
    int pos = block_exclusive_scan(flag, scan_sh, &count);
    if (tid < want) {
        if (flag) out_indices[dst + pos] = s_wpage[tid];
        else out_indices[dst + count + (tid - pos)] = -1;
    }
    if (kept != nullptr && tid == 0) atomicAdd(kept, (unsigned long long)count + 1ull);
}

// Rows of up to TOPK_REG x blockDim.x candidates keep their keys in registers, rows of up to
// p.key_cap in shared memory (the host sizes the launch for its longest row, up to the device's
// limit), longer ones nowhere (see select_top_pages_impl).
template <bool MASS>
__device__ __forceinline__ void select_top_pages_row(
        const float* scores, const int* in_indptr, const int* in_indices, const int* in_last,
        const int* out_indptr, int* out_indices, int* out_last, unsigned long long* kept,
        SelectParams p) {
    const int b = (int)blockIdx.x / p.heads;
    const int start = in_indptr[b], end = in_indptr[b + 1];
    __shared__ TopkShared<MASS> sh;
    const int cand = end - start - 1;
    if (cand <= TOPK_REG * (int)blockDim.x)
        select_top_pages_impl<MASS, TOPK_REG>(scores, in_indices, in_last, out_indptr, out_indices,
                                              out_last, kept, p, b, start, end, sh);
    else if (cand <= p.key_cap)
        select_top_pages_impl<MASS, 0>(scores, in_indices, in_last, out_indptr, out_indices,
                                       out_last, kept, p, b, start, end, sh);
    else
        select_top_pages_impl<MASS, -1>(scores, in_indices, in_last, out_indptr, out_indices,
                                        out_last, kept, p, b, start, end, sh);
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
select_top_pages(const float* __restrict__ scores, const int* in_indptr, const int* in_indices,
                 const int* in_last, const int* out_indptr, int* out_indices, int* out_last,
                 unsigned long long* kept, SelectParams p) {
    grid_dependency_sync();
    select_top_pages_row<false>(scores, in_indptr, in_indices, in_last, out_indptr, out_indices,
                                out_last, kept, p);
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
select_top_pages_mass(const float* __restrict__ scores, const int* in_indptr, const int* in_indices,
                      const int* in_last, const int* out_indptr, int* out_indices, int* out_last,
                      unsigned long long* kept, SelectParams p) {
    grid_dependency_sync();
    select_top_pages_row<true>(scores, in_indptr, in_indices, in_last, out_indptr, out_indices,
                               out_last, kept, p);
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
