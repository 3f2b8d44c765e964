// Dense ops of a Llama layer (CPU reference: quest-kernels/src/cpu/dense.rs).
//
// Math, per kernel (activations f32 row-major; weights/embeddings in storage type W = f16, bf16
// or f32, converted to f32 before any arithmetic):
//   embedding:  out[i, :] = table[tokens[i], :]                  grid (n), block 256
//   rms_norm:   out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * w   grid (rows), block 256
//   rope:       rotate-half pairs (c, c + d/2) of every head by positions[t] * inv_freq[c], the
//               angle in f32 and cosf/sinf (full-precision, not the fast intrinsics), as the CPU
//               does.                                           grid-stride over (t, head, c)
//   silu_mul:   out = gate / (1 + exp(-gate)) * up              grid-stride
//   add_assign: x += y                                          grid-stride
//   matmul:     out[n, m] = x[n, k] . w[m, k]^T  (PyTorch linear layout)
//     - gemv (n <= 8, decode): one warp per weight row j, 16-byte loads of w along k, all n rows
//       of x reused from L1, so each weight byte is read once at full bandwidth.
//                                                               grid (ceil(m / 8)), block 256
//     - gemm (n > 8, prefill): 64x64 output tiles, k in steps of 16 staged in shared memory as
//       f32, each thread 4x4 outputs.                           grid (ceil(m/64), ceil(n/64)), block 256
// Layout: no paged data here; see quest-kernels/src/layout.rs for the cache.
#include "common.cuh"

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

// n <= 8 rows of x. Warp per weight row; lanes stride k by 8 elements (16 bytes of f16/bf16).
template <typename W>
__device__ void gemv(const float* x, const W* w, float* out, int n, int k, int m) {
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
        embedding<W>(t, tok, o, h);                                                               \
    }                                                                                             \
    extern "C" __global__ void rms_norm_##S(const float* x, const W* w, float* o, int d, float e) { \
        rms_norm<W>(x, w, o, d, e);                                                               \
    }                                                                                             \
    extern "C" __global__ void gemv_##S(const float* x, const W* w, float* o, int n, int k, int m) { \
        gemv<W>(x, w, o, n, k, m);                                                                \
    }                                                                                             \
    extern "C" __global__ void gemm_##S(const float* x, const W* w, float* o, int n, int k, int m) { \
        gemm<W>(x, w, o, n, k, m);                                                                \
    }
DENSE_INSTANCES(f16_t, f16)
DENSE_INSTANCES(bf16_t, bf16)
DENSE_INSTANCES(float, f32)

// x[n, row] with row = heads * head_dim; one thread per (t, head, c < head_dim / 2).
extern "C" __global__ void rope(float* x, const int* positions, const float* inv_freq, long long n,
                                int row, int head_dim) {
    int half = head_dim / 2;
    long long pairs_per_row = row / 2;
    long long total = n * pairs_per_row;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        long long t = e / pairs_per_row;
        int rem = (int)(e % pairs_per_row);
        int head = rem / half, c = rem % half;
        float angle = (float)positions[t] * inv_freq[c];
        float cs = cosf(angle), sn = sinf(angle);
        float* h = x + t * row + (size_t)head * head_dim;
        float x0 = h[c], x1 = h[c + half];
        h[c] = x0 * cs - x1 * sn;
        h[c + half] = x1 * cs + x0 * sn;
    }
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_assign(float* x, const float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}
