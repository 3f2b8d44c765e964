// Experiment: can the Quest step's three stages overlap instead of running back to back?
//
// Shape of issue 7's line: batch 1, 32 query heads = 32 KV heads, head_dim 128, 8192 pages of 16
// tokens (128K), budget 4096 tokens (256 pages a head), 8-bit bounds, f16 K/V.
//
// chain:   the product's launches (estimate_pages_int8_g1, select_top_pages, decode_f16_g1 with
//          its in-kernel merge), each waiting for the previous grid (PDL), as the model runs them.
// overlap: the same arithmetic in three kernels that run at the same time and hand over per head
//          through flags in global memory instead of grid boundaries:
//          - the estimate walks heads in order (head-major teams) with EB blocks an SM, and after
//            each grid-stride round adds the entries it scored to a per-head counter;
//          - a 256-thread top-k block per head (32 keys a thread in registers) waits for its
//            head's counter, selects, and publishes the row with an epoch flag;
//          - the decode blocks wait for their row's flag, then run the product's decode body.
//          Each kernel lets the next one launch at once (griddepcontrol.launch_dependents) and
//          only the estimate waits for its predecessor grid. No kernel waits on a block that is
//          not resident: the estimate never waits, the top-k blocks (all resident before the
//          decode launches) wait only on the estimate.
// Both are timed like the benchmarks (L2 evicted by a 256 MiB read before each run, CUDA
// events, median) and their outputs compared bit for bit.
#include "decode_attention.cu"
#include "bounds_int8.cu"
#include "select.cu"
#include "harness.cuh"

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void let_next_launch() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Head-major 8-bit estimate, group 1, batch 1, nnz a multiple of PPT (the experiment's shape).
#define OV_PPT 2
__global__ void __launch_bounds__(256, 4)
est_head_major(const float* __restrict__ q, const uint8_t* __restrict__ codes, const float* __restrict__ params,
               const int* __restrict__ indices, float* __restrict__ scores, Int8EstimateParams p, unsigned* done) {
    grid_dependency_sync();
    const int team = p.head_dim >> 4, lane = threadIdx.x & (team - 1), tm = threadIdx.x / team;
    const int block_teams = blockDim.x / team;
    const int nchunk = p.nnz / OV_PPT, teams = nchunk * p.num_kv_heads;
    int qg = -1;
    float qv[1][16];
    for (int t_block = blockIdx.x * block_teams; t_block < teams; t_block += gridDim.x * block_teams) {
        const int t = t_block + tm;
        const bool live_t = t < teams;
        const int g = live_t ? t / nchunk : 0, j0 = live_t ? (t % nchunk) * OV_PPT : 0;
        uint4 hi[OV_PPT], lo[OV_PPT];
        float4 pr[OV_PPT];
        bool live[OV_PPT];
#pragma unroll
        for (int u = 0; u < OV_PPT; ++u) {
            const int page = live_t ? indices[j0 + u] : -1;
            live[u] = page >= 0 && page < p.num_pages;
            hi[u] = lo[u] = make_uint4(0u, 0u, 0u, 0u);
            pr[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (live[u]) {
                const uint8_t* c = codes + (((size_t)page * 2) * p.num_kv_heads + g) * p.head_dim + lane * 16;
                hi[u] = *reinterpret_cast<const uint4*>(c);
                lo[u] = *reinterpret_cast<const uint4*>(c + (size_t)p.num_kv_heads * p.head_dim);
                pr[u] = *reinterpret_cast<const float4*>(params + ((size_t)page * p.num_kv_heads + g) * 4);
            }
        }
        if (g != qg) {
            load_q<1>(q, p, 0, g, 1, lane, live_t, qv);
            qg = g;
        }
#pragma unroll
        for (int u = 0; u < OV_PPT; ++u) {
            const uint32_t hw[4] = {hi[u].x, hi[u].y, hi[u].z, hi[u].w};
            const uint32_t lw[4] = {lo[u].x, lo[u].y, lo[u].z, lo[u].w};
            float s = 0.f;
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float hv = fmaf(code_at(hw[k >> 2], k & 3), pr[u].y, pr[u].x);
                const float lv = fmaf(code_at(lw[k >> 2], k & 3), pr[u].w, pr[u].z);
                s += fmaxf(qv[0][k] * hv, qv[0][k] * lv);
            }
            for (int o = team >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (live[u] && lane == 0) scores[(size_t)g * p.nnz + j0 + u] = s;
        }
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {  // entries of this round, per head (a round spans at most 2 heads)
            const int t_end = min(t_block + block_teams, teams);
            for (int gg = t_block / nchunk; gg <= (t_end - 1) / nchunk; ++gg) {
                const int a = max(t_block, gg * nchunk), b = min(t_end, (gg + 1) * nchunk);
                atomicAdd(&done[gg], (unsigned)((b - a) * OV_PPT));
            }
        }
    }
}

__global__ void __launch_bounds__(256)
topk_when_ready(const float* __restrict__ scores, const int* in_indptr, const int* in_indices, const int* in_last,
                const int* out_indptr, int* out_indices, int* out_last, SelectParams p, const unsigned* done,
                unsigned target, unsigned* ready, unsigned epoch) {
    let_next_launch();
    if (threadIdx.x == 0)
        while (ld_acquire(&done[blockIdx.x]) < target) __nanosleep(256);
    __syncthreads();
    const int start = in_indptr[0], end = in_indptr[1];  // batch 1
    __shared__ TopkShared<false> sh;
    select_top_pages_impl<false, 32>(scores, in_indices, in_last, out_indptr, out_indices, out_last, nullptr, p, 0,
                                     start, end, sh);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) st_release(&ready[blockIdx.x], epoch);
}

__global__ void __launch_bounds__(ATT_THREADS, 8)
decode_when_ready(const float* q, const f16_t* kv, const int* ip, const int* ix, const int* ll, float* out, float* po,
                  float* pl, AttnParams p, const unsigned* ready, unsigned epoch) {
    let_next_launch();
    if (threadIdx.x == 0)
        while (ld_acquire(&ready[blockIdx.x]) < epoch) __nanosleep(128);
    __syncthreads();
    attention_kernel<f16_t, 1, false>(q, kv, ip, ix, ll, nullptr, out, po, pl, p);
}


int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    float* flush; CK(cudaMalloc(&flush, 256 << 20)); CK(cudaMemset(flush, 0, 256 << 20));
    float* fo; CK(cudaMalloc(&fo, 4096));
    const size_t n4 = (256u << 20) / 16;
    const int H = 32, D = 128, N = 8192, BUDGET = 256;  // pages
    const size_t clen = (size_t)N * 2 * H * D, plen = (size_t)N * H * 4, kvn = (size_t)N * 2 * 16 * H * D;
    std::vector<uint8_t> hc(clen);
    std::vector<float> hp(plen), hq(H * D);
    unsigned seed = 2026;
    for (auto& c : hc) c = (uint8_t)(nxt(seed) >> 24);
    for (size_t i = 0; i < plen; i += 4) {  // Quest-like: positive scores of one magnitude
        hp[i] = -1.f + 0.2f * frand(seed);
        hp[i + 1] = 0.01f * (frand(seed) + 1.1f);
        hp[i + 2] = -1.f + 0.1f * frand(seed);
        hp[i + 3] = -0.004f * (frand(seed) + 1.1f);
    }
    for (auto& x : hq) x = frand(seed);
    uint8_t* codes; float *params, *q, *scores, *out, *out_ref, *po, *pl;
    __half* kv;
    CK(cudaMalloc(&codes, clen)); CK(cudaMemcpy(codes, hc.data(), clen, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&params, plen * 4)); CK(cudaMemcpy(params, hp.data(), plen * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&q, H * D * 4)); CK(cudaMemcpy(q, hq.data(), H * D * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&kv, kvn * 2)); fillh<<<4096, 256>>>(kv, kvn, 7);
    CK(cudaMalloc(&scores, (size_t)H * N * 4));
    CK(cudaMalloc(&out, H * D * 4)); CK(cudaMalloc(&out_ref, H * D * 4));
    CK(cudaMalloc(&po, 64 << 20)); CK(cudaMalloc(&pl, 4 << 20));
    std::vector<int> hix(N), hip = {0, N}, hlast = {16}, hoip(H + 1);
    for (int j = 0; j < N; ++j) hix[j] = j;
    for (int r = 0; r <= H; ++r) hoip[r] = r * BUDGET;
    int *ip, *ix, *il, *oip, *oix, *oil;
    CK(cudaMalloc(&ip, 8)); CK(cudaMemcpy(ip, hip.data(), 8, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&ix, N * 4)); CK(cudaMemcpy(ix, hix.data(), N * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&il, 4)); CK(cudaMemcpy(il, hlast.data(), 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&oip, (H + 1) * 4)); CK(cudaMemcpy(oip, hoip.data(), (H + 1) * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&oix, H * BUDGET * 4)); CK(cudaMalloc(&oil, H * 4));
    unsigned *done, *ready; int* tickets;
    CK(cudaMalloc(&done, H * 4)); CK(cudaMemset(done, 0, H * 4));
    CK(cudaMalloc(&ready, H * 4)); CK(cudaMemset(ready, 0, H * 4));
    CK(cudaMalloc(&tickets, 4096)); CK(cudaMemset(tickets, 0, 4096));

    Int8EstimateParams ep{1, H, H, D, N, N, 1};
    SelectParams sp{H, H, 1, N, BUDGET, 1.f, 0.f};
    int resident = 0; CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, decode_f16_g1, ATT_THREADS, 0));
    const int budget_tokens = BUDGET * 16, step = (ATT_THREADS / 16) * ATT_U;
    const int want = std::max(1, (sms * resident + H - 1) / H);
    int chunk = std::max((budget_tokens + want - 1) / want, 128);
    chunk = (chunk + step - 1) / step * step;
    const int splits = (budget_tokens + chunk - 1) / chunk;
    AttnParams ap{1, 1, H, H, D, 16, 4, N, 2, 1, chunk, splits, 0.0883883f * 1.442695f, tickets};
    const long long est_threads = (long long)(N / EST8_PPT) * H * (D / 16);
    const int est_blocks = (int)std::min<long long>((est_threads + 255) / 256, (long long)EST8_MIN_BLOCKS * sms);
    printf("decode resident %d chunk %d splits %d; product estimate grid %d\n", resident, chunk, splits, est_blocks);

    auto chain = [&](int) {
        launch_k(true, estimate_pages_int8_g1, dim3(est_blocks), dim3(256), q, codes, params, ip, ix, scores, ep);
        launch_k(true, select_top_pages, dim3(H), dim3(1024), scores, ip, ix, il, oip, oix, oil,
                 (unsigned long long*)nullptr, sp);
        launch_k(true, decode_f16_g1, dim3(H, splits), dim3(ATT_THREADS), q, kv, oip, oix, oil, (const int*)nullptr,
                 out_ref, po, pl, ap);
    };
    unsigned epoch = 0;
    int eb = 2;
    auto overlap = [&](int) {
        ++epoch;
        launch_k(true, est_head_major, dim3(eb * sms), dim3(256), q, codes, params, ix, scores, ep, done);
        launch_k(true, topk_when_ready, dim3(H), dim3(256), scores, ip, ix, il, oip, oix, oil, sp,
                 (const unsigned*)done, epoch * (unsigned)N, ready, epoch);
        launch_k(true, decode_when_ready, dim3(H, splits), dim3(ATT_THREADS), q, kv, oip, oix, oil, out, po, pl, ap,
                 (const unsigned*)ready, epoch);
    };
    chain(0);
    CK(cudaDeviceSynchronize());
    std::vector<float> ref(H * D), got(H * D);
    CK(cudaMemcpy(ref.data(), out_ref, ref.size() * 4, cudaMemcpyDeviceToHost));
    for (int r = 0; r < 1; ++r) {
        const double t_chain = median_us(chain, 5, 31, (const float4*)flush, n4, fo, sms * 8);
        printf("chain                  %7.1f us\n", t_chain);
        for (int e : {2, 3, 1}) {
            eb = e;
            CK(cudaMemset(out, 0xff, H * D * 4));
            overlap(0);
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost));
            const bool same = memcmp(got.data(), ref.data(), ref.size() * 4) == 0;
            const double t = median_us(overlap, 5, 31, (const float4*)flush, n4, fo, sms * 8);
            printf("overlap, estimate %d/SM %7.1f us  %s\n", e, t, same ? "bit-identical" : "MISMATCH");
        }
    }
    // Each kernel alone (flags already satisfied: target 0, epoch 0).
    auto alone = [&](const char* what, auto run) {
        printf("alone %-28s %7.1f us\n", what, median_us(run, 5, 31, (const float4*)flush, n4, fo, sms * 8));
    };
    alone("estimate (product)", [&](int) {
        launch_k(true, estimate_pages_int8_g1, dim3(est_blocks), dim3(256), q, codes, params, ip, ix, scores, ep);
    });
    for (int e : {2, 3, 4}) {
        char name[64];
        snprintf(name, sizeof name, "estimate head-major %d/SM", e);
        alone(name, [&](int) {
            launch_k(true, est_head_major, dim3(e * sms), dim3(256), q, codes, params, ix, scores, ep, done);
        });
    }
    alone("top-k 1024 (product)", [&](int) {
        launch_k(true, select_top_pages, dim3(H), dim3(1024), scores, ip, ix, il, oip, oix, oil,
                 (unsigned long long*)nullptr, sp);
    });
    alone("top-k 256, 32 keys a thread", [&](int) {
        launch_k(true, topk_when_ready, dim3(H), dim3(256), scores, ip, ix, il, oip, oix, oil, sp,
                 (const unsigned*)done, 0u, ready, epoch);
    });
    alone("decode (product)", [&](int) {
        launch_k(true, decode_f16_g1, dim3(H, splits), dim3(ATT_THREADS), q, kv, oip, oix, oil, (const int*)nullptr,
                 out_ref, po, pl, ap);
    });
    alone("decode_when_ready", [&](int) {
        launch_k(true, decode_when_ready, dim3(H, splits), dim3(ATT_THREADS), q, kv, oip, oix, oil, out, po, pl, ap,
                 (const unsigned*)ready, 0u);
    });
    CK(cudaGetLastError());
    return 0;
}
