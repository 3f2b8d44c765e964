// Dense ops of a Llama layer (CPU reference: quest-kernels/src/cpu/dense.rs).
//
// Math, per kernel (activations f32 row-major; weights/embeddings in storage type W = f16, bf16
// or f32, converted to f32 before any arithmetic):
//   embedding:  out[i, :] = table[tokens[i], :]                  grid (n), block 256
//   rms_norm:   out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w   grid (rows), block 1024
//   add_rms_norm: x += y, then rms_norm(x) into out (the residual add ending one sub-layer and the
//               norm starting the next, one launch)                  grid (rows), block 1024
//   rope:       rotate-half pairs (c, c + d/2) of every head by positions[t] * inv_freq[c], the
//               angle in f32 and cosf/sinf (full-precision, not the fast intrinsics), as the CPU
//               does; queries and keys in one launch.            grid-stride over (t, head, c)
//   silu_mul:   out = gate / (1 + exp(-gate)) * up              grid-stride
//   add_assign: x += y                                          grid-stride
//   matmul:     out[n, m] = x[n, k] . w[m, k]^T  (PyTorch linear layout)
//     - gemv (n <= 8, decode; k % 8 == 0): a block of 32 * KS threads owns R consecutive
//       weight rows; its KS warps split k, each lane taking chunks of 8 weights (16 bytes of
//       f16/bf16) and issuing the loads of U chunks x R rows before any arithmetic, so enough
//       bytes are in flight to stream the weights at copy bandwidth (the loads bypass L1, which
//       keeps x there). Each x chunk is loaded once and reused over the R rows; warp sums, then
//       the KS partials meet in shared memory. Variants by the rows of x (N = 1, 2, 4, 8):
//       (R, U, KS) = (2, 4, 8), (2, 4, 8), (4, 2, 4), (8, 1, 4), tuned on the H100
//       (docs/kernels.md). Several matrices that share x (q/k/v, gate/up) go in one launch: the
//       grid is the concatenation of their row blocks (GemvBatch).   grid (sum ceil(m_i / R)), block 32 KS
//       What the decode step does around its projections is folded in (quest-kernels fused.rs):
//       gemv<N>n normalises x on the fly (RMSNorm: sum x^2 over the k the block streams anyway,
//       x * norm_w at load, 1/rms on the R sums); per matrix, the block's sums are stored, added
//       to out (the residual), or paired: rows (c, c + hd/2) of a head rotated by RoPE, or a
//       gate row with the same up row into silu(gate) * up. No normalised x, un-rotated q/k or
//       gate/up activations are written, and no norm, rope, silu or add kernels run when decoding.
//     - gemvtc (n = 2 or 5..8, f16 weights, k % 32 == 0): the same blocks and folding on the
//       tensor cores, mma.sync m16n8k16 with x^T as the 8-column B operand (see gemv_tc).
//                                                          grid (sum of 16-row blocks), block 256
//     - gemv_any (n <= 8, any k): one warp per weight row, scalar tail.   grid (ceil(m / 8)), block 256
//     - gemm (n > 8, prefill): 64x64 output tiles, k in steps of 16 staged in shared memory as
//       f32, each thread 4x4 outputs.                           grid (ceil(m/64), ceil(n/64)), block 256
// Layout: no paged data here; see quest-kernels/src/layout.rs for the cache.
#include "common.cuh"
#include "mma.cuh"

template <typename W>
__device__ void embedding(const W* table, const uint32_t* tokens, float* out, int hidden) {
    const W* src = table + (size_t)tokens[blockIdx.x] * hidden;
    float* dst = out + (size_t)blockIdx.x * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = to_f32(src[c]);
}

template <typename W>
__device__ void rms_norm(const float* x, const W* w, float* out, int dim, float eps) {
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    float inv = 1.f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) orow[c] = xr[c] * inv * to_f32(w[c]);
}

// x[i, :] += y[i, :], then out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w (one row a block).
template <typename W>
__device__ void add_rms_norm(float* x, const float* y, const W* w, float* out, int dim, float eps) {
    __shared__ float red[32];
    float* xr = x + (size_t)blockIdx.x * dim;
    const float* yr = y + (size_t)blockIdx.x * dim;
    float* orow = out + (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float v = xr[c] + yr[c];
        xr[c] = v;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float inv = 1.f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) orow[c] = xr[c] * inv * to_f32(w[c]);
}

// n <= 8 rows of x, any k. Warp per weight row; lanes stride k by 8 elements.
template <typename W>
__device__ void gemv_any(const float* x, const W* w, float* out, int n, int k, int m) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= m) return;
    const W* wr = w + (size_t)warp * k;
    float acc[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) acc[r] = 0.f;
    int kv = (k % 8 == 0) ? k : 0;  // vector part needs 16-byte aligned rows
#pragma unroll 4
    for (int c = lane * 8; c < kv; c += 32 * 8) {
        float wf[8];
        load8(wr + c, wf);
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            if (r < n) {
                const float* xr = x + (size_t)r * k + c;
                float xs[8];
                load8(xr, xs);
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[r] = fmaf(xs[i], wf[i], acc[r]);
            }
        }
    }
    for (int c = kv + lane; c < k; c += 32) {
        float wf = to_f32(wr[c]);
#pragma unroll
        for (int r = 0; r < 8; ++r)
            if (r < n) acc[r] = fmaf(x[(size_t)r * k + c], wf, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        float s = warp_sum(acc[r]);
        if (r < n && lane == 0) out[(size_t)r * m + warp] = s;
    }
}

// Up to 4 matrices sharing x, launched as one grid: matrix i owns blocks [first[i], first[i+1]).
#define GEMV_MAX_MATS 4
// What a matrix's block does with its R row sums s (modes of GemvBatch::mode):
#define GEMV_STORE 0   // out[a, row] = s
#define GEMV_ADD 1     // out[a, row] += s (the residual add that ends a sub-layer)
#define GEMV_ROPE 2    // rows (c, c + hd/2) of a head paired, rotated by positions[a] * inv_freq[c]
#define GEMV_SWIGLU 3  // rows paired with the same rows of w2: out[a, row] = silu(s) * s2
struct GemvBatch {
    unsigned long long w[GEMV_MAX_MATS];    // const W*, rows of k
    unsigned long long w2[GEMV_MAX_MATS];   // const W*, the up projection of GEMV_SWIGLU
    unsigned long long out[GEMV_MAX_MATS];  // float*, [n, m_i]
    int m[GEMV_MAX_MATS];                   // rows of w (of each of w and w2 for GEMV_SWIGLU)
    int mode[GEMV_MAX_MATS];
    int first[GEMV_MAX_MATS + 1];           // first block of each matrix; first[count] = grid
    int count, n, k;
    int head_dim;                           // GEMV_ROPE: rows of one head
    unsigned long long norm;                // NORM: const W* [k], the RMSNorm weight
    unsigned long long positions;           // GEMV_ROPE: const int* [n]
    unsigned long long inv_freq;            // GEMV_ROPE: const float* [head_dim / 2]
    float eps;                              // NORM
};

// The R weight rows of block `blk` of a matrix of mode `mode`, and where its sums go: plain
// modes take R consecutive rows; paired modes take P = R/2 pairs (row, partner row).
__device__ __forceinline__ void gemv_pair(int mode, int blk, int j, int P, int hd, int& row,
                                          int& partner) {
    const int p = blk * P + j;
    if (mode == GEMV_ROPE) {
        const int half = hd >> 1;
        row = (p / half) * hd + p % half;
        partner = row + half;
    } else {  // GEMV_SWIGLU: the same row of the second matrix
        row = p;
        partner = p;
    }
}

// The block's matrix, found with static indices only (a dynamic index into the parameter struct
// would copy it to local memory), and the block's index within it.
struct GemvBlock {
    unsigned long long w, w2, out;
    int m, mode, blk;
};
__device__ __forceinline__ GemvBlock gemv_block(const GemvBatch& p) {
    GemvBlock b{p.w[0], p.w2[0], p.out[0], p.m[0], p.mode[0], (int)blockIdx.x - p.first[0]};
#pragma unroll
    for (int i = 1; i < GEMV_MAX_MATS; ++i)
        if (i < p.count && (int)blockIdx.x >= p.first[i])
            b = GemvBlock{p.w[i], p.w2[i], p.out[i], p.m[i], p.mode[i],
                          (int)blockIdx.x - p.first[i]};
    return b;
}

// The weight row behind sum (slot) r of a block of R rows (unclamped; `second`: a row of w2).
__device__ __forceinline__ int gemv_slot_row(int mode, int blk, int r, int R, int hd,
                                             bool& second) {
    second = false;
    if (mode != GEMV_ROPE && mode != GEMV_SWIGLU) return blk * R + r;
    const int P = R / 2;
    int row, partner;
    gemv_pair(mode, blk, r % P, P, hd, row, partner);
    second = mode == GEMV_SWIGLU && r >= P;
    return r < P ? row : partner;
}

// The end of a GEMV block: the KS warps' partial sums red[q][a * R + r] (and, with NORM, the
// partial sums of x^2 per row of x) are added up into tot, scaled by 1/rms, and written per the
// matrix's mode: slot r is weight row row0 + r (plain modes) or, in paired modes, slots j and
// P + j are the pair (row, partner) of gemv_pair(j). Every thread of the block calls it.
template <int N, int R, int KS, bool NORM>
__device__ __forceinline__ void gemv_finish(const GemvBatch& p, int mode, int blk, int m,
                                            float* out, int row0, const float (*red)[N * R],
                                            const float (*red_ss)[N], float* tot) {
    constexpr int P = R / 2;
    const int k = p.k, n = p.n;
    for (int e = threadIdx.x; e < N * R; e += 32 * KS) {
        const int a = e / R;
        float s = 0.f;
#pragma unroll
        for (int q = 0; q < KS; ++q) s += red[q][e];
        if (NORM) {
            float sq = 0.f;
#pragma unroll
            for (int q = 0; q < KS; ++q) sq += red_ss[q][a];
            s *= 1.f / sqrtf(sq / (float)k + p.eps);
        }
        tot[e] = s;
    }
    __syncthreads();
    if (mode != GEMV_ROPE && mode != GEMV_SWIGLU) {
        for (int e = threadIdx.x; e < N * R; e += 32 * KS) {
            const int a = e / R, r = e % R;
            if (a >= n || row0 + r >= m) continue;
            float* o = out + (size_t)a * m + row0 + r;
            if (mode == GEMV_ADD) *o += tot[e];
            else *o = tot[e];
        }
        return;
    }
    for (int e = threadIdx.x; e < N * P; e += 32 * KS) {
        const int a = e / P, j = e % P;
        int row, partner;
        gemv_pair(mode, blk, j, P, p.head_dim, row, partner);
        if (a >= n || row >= m) continue;
        const float s0 = tot[a * R + j], s1 = tot[a * R + P + j];
        float* o = out + (size_t)a * m;
        if (mode == GEMV_SWIGLU) {
            o[row] = s0 / (1.f + expf(-s0)) * s1;
        } else {  // GEMV_ROPE, the math of the rope kernel below
            const int c = row % p.head_dim;
            const float angle = (float)reinterpret_cast<const int*>(p.positions)[a] *
                                reinterpret_cast<const float*>(p.inv_freq)[c];
            const float cs = cosf(angle), sn = sinf(angle);
            o[row] = s0 * cs - s1 * sn;
            o[partner] = s1 * cs + s0 * sn;
        }
    }
}

// NORM: x is RMS-normalised on the fly, out = (x / rms(x) * norm) . w: each block sums x^2 over
// the k it streams anyway (every block covers all of k), multiplies x by the norm weight as it
// loads it, and scales its R sums by 1/rms at the end, so no normalised copy of x is written.
template <typename W, int N, int R, int U, int KS, bool NORM>
__device__ void gemv(const float* x, const GemvBatch& p) {
    __shared__ float red[KS][N * R];
    __shared__ float red_ss[KS][N];
    __shared__ float tot[N * R];
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    const GemvBlock b = gemv_block(p);
    const int k = p.k, n = p.n, m = b.m, mode = b.mode, blk = b.blk;
    float* out = reinterpret_cast<float*>(b.out);
    // The weight row behind each sum r (clamped in range; sums of clamped rows are dropped).
    const W* wrow[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        bool second;
        const int row = gemv_slot_row(mode, blk, r, R, p.head_dim, second);
        wrow[r] = reinterpret_cast<const W*>(second ? b.w2 : b.w) + (size_t)min(row, m - 1) * k;
    }
    const W* nw = reinterpret_cast<const W*>(p.norm);
    float acc[N][R], ss[N];
#pragma unroll
    for (int a = 0; a < N; ++a) {
        ss[a] = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[a][r] = 0.f;
    }
    const int chunks = k >> 3, stride = 32 * KS;
    for (int base = wp * 32 + lane; base < chunks; base += stride * U) {
        Raw8<W> wr[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int ch = base + u * stride;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (ch < chunks) raw_load_stream(wrow[r] + (size_t)ch * 8, wr[u][r]);
                else wr[u][r] = Raw8<W>{};
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int ch = base + u * stride;
            if (ch >= chunks) break;
            float xs[N][8];
#pragma unroll
            for (int a = 0; a < N; ++a)
                if (a < n) load8(x + (size_t)a * k + (size_t)ch * 8, xs[a]);
            if (NORM) {
                float g[8];
                load8(nw + (size_t)ch * 8, g);
#pragma unroll
                for (int a = 0; a < N; ++a)
                    if (a < n)
#pragma unroll
                        for (int i = 0; i < 8; ++i) {
                            ss[a] = fmaf(xs[a][i], xs[a][i], ss[a]);
                            xs[a][i] *= g[i];
                        }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float wf[8];
                raw_cvt(wr[u][r], wf);
#pragma unroll
                for (int a = 0; a < N; ++a)
                    if (a < n)
#pragma unroll
                        for (int i = 0; i < 8; ++i) acc[a][r] = fmaf(xs[a][i], wf[i], acc[a][r]);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < N; ++a) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float s = warp_sum(acc[a][r]);
            if (lane == 0) red[wp][a * R + r] = s;
        }
        if (NORM) {
            float s = warp_sum(ss[a]);
            if (lane == 0) red_ss[wp][a] = s;
        }
    }
    __syncthreads();
    gemv_finish<N, R, KS, NORM>(p, mode, blk, m, out, blk * R, red, red_ss, tot);
}

// Tensor-core GEMV for 2..8 rows of x and f16 weights (gemvtc[n]): a block owns 16 weight
// rows (slots 0..15, mapped by gemv_slot_row like the CUDA-core kernel's), its KS warps split k
// in chunks of 32 and each warp runs mma.sync m16n8k16 with A = the 16 rows, B = x^T (8 columns:
// the rows of x, zero past n). The k order inside a chunk is permuted so that lane (g, t) (g =
// lane / 4, t = lane % 4) feeds A from one 16-byte load of row slot g and one of slot g + 8 (k
// 8t..8t+7 of the chunk) and B from 8 consecutive x values of row g: the m16n8k16 fragment takes
// k {2t, 2t+1, 2t+8, 2t+9}, which the first MMA of the chunk maps to 8t+0..3 and the second to
// 8t+4..7. x goes in (scaled by 2^-8) as f16 hi + f16 lo * 4096 (two MMAs, about 22 bits of x),
// and every MMA starts from zero and is added to f32 accumulators, so sums are rounded like the
// CUDA-core kernel's rather than inside the tensor core. The KS partials and the epilogue are
// gemv_finish.
// Why: with 8 rows of x the CUDA-core kernel reads 2-3 bytes of x from L1 per weight byte and
// runs at 36-47% of copy; this one at 54-89% (docs/kernels.md). (KS, U) = (8, 2) beat (8, 4) and
// (4, 4) on the H100 (docs/results/2026-11-23b/gemv-tc-variants.log).
//                                                  grid (16-row blocks), block 32 KS
#define GEMV_TC_KS 8
#define GEMV_TC_U 2
// x is scaled by 2^-8 before its f16 split (and the sums back): the lo part is up to 2|x| (the
// rounding error times 4096), so unscaled it would overflow f16 for |x| > 32K, a value a
// residual stream times its norm weight can reach. Scaled, |x| up to 8M fits; small values lose
// nothing that matters (hi turns subnormal below |x| = 2^-6; lo, still normal, carries the rest).
#define GEMV_TC_X_SCALE 0.00390625f
template <bool NORM>
__device__ void gemv_tc(const float* x, const GemvBatch& p) {
    constexpr int R = 16, N = 8, KS = GEMV_TC_KS, U = GEMV_TC_U;
    __shared__ float red[KS][N * R];
    __shared__ float red_ss[KS][N];
    __shared__ float tot[N * R];
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const GemvBlock b = gemv_block(p);
    const int k = p.k, n = p.n, m = b.m, mode = b.mode, blk = b.blk;
    float* out = reinterpret_cast<float*>(b.out);
    bool second;
    int row = gemv_slot_row(mode, blk, g, R, p.head_dim, second);
    const f16_t* wa = reinterpret_cast<const f16_t*>(second ? b.w2 : b.w) + (size_t)min(row, m - 1) * k;
    row = gemv_slot_row(mode, blk, g + 8, R, p.head_dim, second);
    const f16_t* wb = reinterpret_cast<const f16_t*>(second ? b.w2 : b.w) + (size_t)min(row, m - 1) * k;
    const bool has_x = g < n;
    const float* xr = x + (size_t)min(g, n - 1) * k;
    const f16_t* nw = reinterpret_cast<const f16_t*>(p.norm);
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, ss = 0.f;
    const int chunks = k >> 5;
    for (int base = wp; base < chunks; base += KS * U) {
        uint4 ra[U], rb[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int ch = base + u * KS;
            if (ch < chunks) {
                ra[u] = ld_stream16(wa + (size_t)ch * 32 + t * 8);
                rb[u] = ld_stream16(wb + (size_t)ch * 32 + t * 8);
            } else {
                ra[u] = make_uint4(0u, 0u, 0u, 0u);
                rb[u] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int ch = base + u * KS;
            if (ch >= chunks) break;  // uniform over the warp: mma.sync needs every lane
            float xs[8];
            if (has_x) {
                load8(xr + (size_t)ch * 32 + t * 8, xs);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) xs[i] = 0.f;
            }
            if (NORM) {
                float gw[8];
                load8(nw + (size_t)ch * 32 + t * 8, gw);
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    ss = fmaf(xs[i], xs[i], ss);
                    xs[i] *= gw[i];
                }
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) xs[i] *= GEMV_TC_X_SCALE;  // exact: a power of two
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // the chunk's two MMAs: k 8t + 4h .. + 3
                uint32_t b0h, b0l, b1h, b1l;
                split2<f16_t>(xs[4 * h], xs[4 * h + 1], b0h, b0l);
                split2<f16_t>(xs[4 * h + 2], xs[4 * h + 3], b1h, b1l);
                const uint32_t a0 = h ? ra[u].z : ra[u].x, a1 = h ? rb[u].z : rb[u].x;
                const uint32_t a2 = h ? ra[u].w : ra[u].y, a3 = h ? rb[u].w : rb[u].y;
                float chi[4] = {0.f, 0.f, 0.f, 0.f}, clo[4] = {0.f, 0.f, 0.f, 0.f};
                MmaType<f16_t>::mma(chi, a0, a1, a2, a3, b0h, b1h);
                MmaType<f16_t>::mma(clo, a0, a1, a2, a3, b0l, b1l);
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[i] += chi[i] + clo[i] * (1.f / MmaType<f16_t>::LO);
            }
        }
    }
    // C fragment: acc[0, 1] = (slot g, x rows 2t, 2t + 1), acc[2, 3] = (slot g + 8, the same).
    constexpr float unscale = 1.f / GEMV_TC_X_SCALE;
    red[wp][(2 * t) * R + g] = acc[0] * unscale;
    red[wp][(2 * t + 1) * R + g] = acc[1] * unscale;
    red[wp][(2 * t) * R + g + 8] = acc[2] * unscale;
    red[wp][(2 * t + 1) * R + g + 8] = acc[3] * unscale;
    if (NORM) {  // lane (g, t) summed x row g over its k: add up the four t
        ss += __shfl_xor_sync(0xffffffffu, ss, 1);
        ss += __shfl_xor_sync(0xffffffffu, ss, 2);
        if (t == 0) red_ss[wp][g] = ss;
    }
    __syncthreads();
    gemv_finish<N, R, KS, NORM>(p, mode, blk, m, out, blk * R, red, red_ss, tot);
}

template <typename W>
__device__ void gemm(const float* x, const W* w, float* out, int n, int k, int m) {
    __shared__ float xs[16][64 + 1];
    __shared__ float ws[16][64 + 1];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int col0 = blockIdx.x * 64, row0 = blockIdx.y * 64;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < k; k0 += 16) {
        for (int e = threadIdx.x; e < 64 * 16; e += blockDim.x) {
            int r = e / 16, kk = e % 16;
            int gr = row0 + r, gc = col0 + r, gk = k0 + kk;
            xs[kk][r] = (gr < n && gk < k) ? x[(size_t)gr * k + gk] : 0.f;
            ws[kk][r] = (gc < m && gk < k) ? to_f32(w[(size_t)gc * k + gk]) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
            if (r < n && c < m) out[(size_t)r * m + c] = acc[i][j];
        }
}

#define DENSE_INSTANCES(W, S)                                                                     \
    extern "C" __global__ void embedding_##S(const W* t, const uint32_t* tok, float* o, int h) {  \
        grid_dependency_sync();                                                                   \
        embedding<W>(t, tok, o, h);                                                               \
    }                                                                                             \
    extern "C" __global__ void rms_norm_##S(const float* x, const W* w, float* o, int d, float e) { \
        grid_dependency_sync();                                                                   \
        rms_norm<W>(x, w, o, d, e);                                                               \
    }                                                                                             \
    extern "C" __global__ void add_rms_norm_##S(float* x, const float* y, const W* w, float* o,    \
                                                 int d, float e) {                                 \
        grid_dependency_sync();                                                                   \
        add_rms_norm<W>(x, y, w, o, d, e);                                                        \
    }                                                                                             \
    extern "C" __global__ void gemv_any_##S(const float* x, const W* w, float* o, int n, int k, int m) { \
        grid_dependency_sync();                                                                   \
        gemv_any<W>(x, w, o, n, k, m);                                                            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) gemv1_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 1, 2, 4, 8, false>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) gemv1n_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 1, 2, 4, 8, true>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) gemv2_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 2, 2, 4, 8, false>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) gemv2n_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 2, 2, 4, 8, true>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) gemv4_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 4, 4, 2, 4, false>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) gemv4n_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 4, 4, 2, 4, true>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) gemv8_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 8, 8, 1, 4, false>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128) gemv8n_##S(const float* x, GemvBatch p) { \
        grid_dependency_sync();                                                                   \
        gemv<W, 8, 8, 1, 4, true>(x, p);                                                   \
    }                                                                                             \
    extern "C" __global__ void gemm_##S(const float* x, const W* w, float* o, int n, int k, int m) { \
        grid_dependency_sync();                                                                   \
        gemm<W>(x, w, o, n, k, m);                                                                \
    }
DENSE_INSTANCES(f16_t, f16)
DENSE_INSTANCES(bf16_t, bf16)
DENSE_INSTANCES(float, f32)

extern "C" __global__ void __launch_bounds__(GEMV_TC_KS * 32) gemvtc_f16(const float* x, GemvBatch p) {
    grid_dependency_sync();
    gemv_tc<false>(x, p);
}
extern "C" __global__ void __launch_bounds__(GEMV_TC_KS * 32) gemvtcn_f16(const float* x, GemvBatch p) {
    grid_dependency_sync();
    gemv_tc<true>(x, p);
}
// x[n, row_x] and y[n, row_y] (queries and keys of the same tokens; row = heads * head_dim,
// row_y = 0 for one tensor): one thread per (t, head, c < head_dim / 2) of x, then of y.
extern "C" __global__ void rope(float* x, float* y, const int* positions, const float* inv_freq,
                                long long n, int row_x, int row_y, int head_dim) {
    grid_dependency_sync();
    int half = head_dim / 2;
    long long px = row_x / 2, py = row_y / 2, per_token = px + py;
    long long total = n * per_token;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long t = e / per_token;
        int rem = (int)(e % per_token);
        float* base = x + t * row_x;
        if (rem >= px) { base = y + t * row_y; rem -= (int)px; }
        int head = rem / half, c = rem % half;
        float angle = (float)positions[t] * inv_freq[c];
        float cs = cosf(angle), sn = sinf(angle);
        float* h = base + (size_t)head * head_dim;
        float x0 = h[c], x1 = h[c + half];
        h[c] = x0 * cs - x1 * sn;
        h[c + half] = x1 * cs + x0 * sn;
    }
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* out, long long n) {
    grid_dependency_sync();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_assign(float* x, const float* y, long long n) {
    grid_dependency_sync();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}
