// Experiment: estimate_pages_int8 (ptx/bounds_int8.cu) with the bounds streamed through a
// shared-memory cp.async pipeline instead of register loads issued a few entries at a time.
//
// A block takes chunks of E consecutive table entries (all KV heads of each page: its codes
// [2, kvh, d] and params [kvh, 4] are two contiguous runs), STAGES chunks in flight; the teams
// score from shared memory with the product kernel's arithmetic (bit-identical scores). Shapes as
// in estimate_int8_variants.cu: 32 query heads, 32 or 8 KV heads, 2048 or 8192 pages. Prints the
// product kernel's time beside each variant, both checked against a host reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "harness.cuh"
#include "../../ptx/bounds_int8.cu"

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <int G, int STAGES>
__global__ void __launch_bounds__(256) est8_pipe(const float* __restrict__ q, const uint8_t* __restrict__ codes,
                                                 const float* __restrict__ params, const int* __restrict__ indptr,
                                                 const int* __restrict__ indices, float* __restrict__ scores,
                                                 Int8EstimateParams p, int E) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int kvh = p.num_kv_heads, d = p.head_dim;
    const int code_bytes = 2 * kvh * d, par_bytes = kvh * 16, entry_bytes = code_bytes + par_bytes;
    const int stage_bytes = E * entry_bytes;
    const int pieces_code = code_bytes / 16, pieces_entry = pieces_code + par_bytes / 16;
    const int chunks = (p.nnz + E - 1) / E;
    const int my_chunks = chunks > (int)blockIdx.x ? (chunks - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    auto issue = [&](int i) {
        if (i < my_chunks) {
            const int c = blockIdx.x + i * gridDim.x;
            unsigned char* st = smem + (i % STAGES) * stage_bytes;
            for (int piece = threadIdx.x; piece < E * pieces_entry; piece += blockDim.x) {
                const int e = piece / pieces_entry, r = piece - e * pieces_entry;
                const int j = c * E + e;
                if (j < p.nnz) {
                    const int page = indices[j];
                    if (page >= 0 && page < p.num_pages) {
                        const void* src = r < pieces_code
                                              ? (const void*)(codes + (size_t)page * code_bytes + r * 16)
                                              : (const void*)(params + ((size_t)page * kvh) * 4 + (r - pieces_code) * 4);
                        cp_async16(st + e * entry_bytes + r * 16, src);
                    }
                }
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) issue(s);

    const int team = d >> 4, lane = threadIdx.x & (team - 1), tm = threadIdx.x / team;
    const int nteams = blockDim.x / team;
    const int group = p.num_qo_heads / kvh;
    int b = -1, row_end = 0, q_b = -1, q_h0 = -1;
    float qv[G][16];
    for (int i = 0; i < my_chunks; ++i) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        issue(i + STAGES - 1);
        const int c = blockIdx.x + i * gridDim.x;
        const unsigned char* st = smem + (i % STAGES) * stage_bytes;
        const int pairs = E * kvh * p.slices;
        for (int pr0 = 0; pr0 < pairs; pr0 += nteams) {  // uniform trip count (shuffles)
            const int pr = pr0 + tm;
            const int g = pr % kvh, rest = pr / kvh, slice = rest % p.slices, e = rest / p.slices;
            const int j = c * E + e;
            const int page = (pr < pairs && j < p.nnz) ? indices[j] : -1;
            const bool live = page >= 0 && page < p.num_pages;
            const int h0 = g * group + slice * G, nh = min(G, group - slice * G);
            float s[G];
#pragma unroll
            for (int k = 0; k < G; ++k) s[k] = 0.f;
            if (live) {
                if (b < 0) {  // first entry: binary search for its sequence
                    int lo_b = 0, hi_b = p.batch - 1;
                    while (lo_b < hi_b) {
                        const int mid = (lo_b + hi_b + 1) >> 1;
                        if (indptr[mid] <= j) lo_b = mid; else hi_b = mid - 1;
                    }
                    b = lo_b;
                    row_end = indptr[b + 1];
                }
                while (j >= row_end) {
                    ++b;
                    row_end = indptr[b + 1];
                }
                if (b != q_b || h0 != q_h0) {
                    load_q<G>(q, p, b, h0, nh, lane, true, qv);
                    q_b = b;
                    q_h0 = h0;
                }
                const unsigned char* en = st + e * entry_bytes;
                const uint4 hi = *reinterpret_cast<const uint4*>(en + (size_t)g * d + lane * 16);
                const uint4 lo = *reinterpret_cast<const uint4*>(en + (size_t)(kvh + g) * d + lane * 16);
                const float4 prm = *reinterpret_cast<const float4*>(en + code_bytes + g * 16);
                const uint32_t hw[4] = {hi.x, hi.y, hi.z, hi.w};
                const uint32_t lw[4] = {lo.x, lo.y, lo.z, lo.w};
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    const float hv = fmaf(code_at(hw[k >> 2], k & 3), prm.y, prm.x);
                    const float lv = fmaf(code_at(lw[k >> 2], k & 3), prm.w, prm.z);
#pragma unroll
                    for (int x = 0; x < G; ++x) s[x] += fmaxf(qv[x][k] * hv, qv[x][k] * lv);
                }
            }
            for (int o = team >> 1; o > 0; o >>= 1) {
#pragma unroll
                for (int x = 0; x < G; ++x) s[x] += __shfl_xor_sync(0xffffffffu, s[x], o);
            }
            if (live && lane == 0) {
#pragma unroll
                for (int x = 0; x < G; ++x)
                    if (x < nh) scores[(size_t)(h0 + x) * p.nnz + j] = s[x];
            }
        }
    }
    cp_async_wait<0>();
}


int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    float *flush, *fl_out;
    CK(cudaMalloc(&flush, 256 << 20));
    CK(cudaMemset(flush, 0, 256 << 20));
    CK(cudaMalloc(&fl_out, 64));
    const float4* fl = reinterpret_cast<const float4*>(flush);
    const size_t n4 = (256u << 20) / 16;
    int bad = 0;
    for (int hkv : {32, 8})
        for (int n : {2048, 8192}) {
            const int hq = 32, d = 128, C = 8, num_pages = C * n, group = hq / hkv;
            const size_t clen = (size_t)num_pages * 2 * hkv * d, plen = (size_t)num_pages * hkv * 4;
            std::vector<uint8_t> hc(clen);
            std::vector<float> hp(plen), hqv(hq * d);
            random_int8_bounds(7u + hkv + n, hc, hp, hqv);
            uint8_t* dc = upload(hc);
            float *dpar = upload(hp), *dq = upload(hqv), *ds, *ds_ref;
            int *dip, *dix[C];
            CK(cudaMalloc(&ds, (size_t)hq * n * 4));
            CK(cudaMalloc(&ds_ref, (size_t)hq * n * 4));
            rotated_tables(n, C, dix, &dip);
            const int heads = group == 1 ? 1 : group == 2 ? 2 : 4;
            const int slices = (group + heads - 1) / heads;
            Int8EstimateParams p{1, hq, hkv, d, n, num_pages, slices};
            // The product kernel, as the host launches it.
            const int ppt = heads == 4 ? EST8_G4_PPT : EST8_PPT;
            const int resident0 = heads == 4 ? EST8_G4_MIN_BLOCKS : EST8_MIN_BLOCKS;
            const long long threads = (long long)((n + ppt - 1) / ppt) * hkv * slices * (d / 16);
            const long long blocks0 = std::min<long long>((threads + 255) / 256, (long long)resident0 * sms);
            auto launch0 = [&](int c, float* out) {
                if (heads == 1) estimate_pages_int8_g1<<<(unsigned)blocks0, 256>>>(dq, dc, dpar, dip, dix[c], out, p);
                else estimate_pages_int8_g4<<<(unsigned)blocks0, 256>>>(dq, dc, dpar, dip, dix[c], out, p);
            };
            launch0(3, ds_ref);
            CK(cudaDeviceSynchronize());
            std::vector<float> ref((size_t)hq * n);
            CK(cudaMemcpy(ref.data(), ds_ref, ref.size() * 4, cudaMemcpyDeviceToHost));
            const double bytes = (double)n * hkv * (2 * d + 16);
            const double t1 = median_us([&](int i) { launch0(i % C, ds_ref); }, 3, 20, fl, n4, fl_out, sms * 8);
            const double t8 = median_us([&](int) { for (int c = 0; c < C; ++c) launch0(c, ds_ref); }, 3, 20, fl, n4,
                                        fl_out, sms * 8, C);
            printf("product      hkv=%2d pages=%5d grid=%5lld          single %6.2f us  x8 %6.2f us %6.0f GB/s\n", hkv,
                   n, blocks0, t1, t8, bytes / t8 / 1e3);
            auto variant = [&](auto kern, int stages, int E) {
                const int entry_bytes = 2 * hkv * d + hkv * 16;
                const int smem = stages * E * entry_bytes;
                CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
                int res = 0;
                CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&res, kern, 256, smem));
                const int chunks = (n + E - 1) / E;
                const int blocks = std::min(chunks, res * sms);
                auto launch = [&](int c) { kern<<<blocks, 256, smem>>>(dq, dc, dpar, dip, dix[c], ds, p, E); };
                CK(cudaMemset(ds, 0xff, (size_t)hq * n * 4));
                launch(3);
                CK(cudaDeviceSynchronize());
                std::vector<float> got((size_t)hq * n);
                CK(cudaMemcpy(got.data(), ds, got.size() * 4, cudaMemcpyDeviceToHost));
                long long diff = 0;
                for (size_t i = 0; i < got.size(); ++i) diff += memcmp(&got[i], &ref[i], 4) != 0;
                const double u1 = median_us([&](int i) { launch(i % C); }, 3, 20, fl, n4, fl_out, sms * 8);
                const double u8 = median_us([&](int) { for (int c = 0; c < C; ++c) launch(c); }, 3, 20, fl, n4,
                                            fl_out, sms * 8, C);
                printf("pipe s%d e%d   hkv=%2d pages=%5d grid=%5d res=%d  single %6.2f us  x8 %6.2f us %6.0f GB/s  %s\n",
                       stages, E, hkv, n, blocks, res, u1, u8, bytes / u8 / 1e3, diff ? "MISMATCH" : "bit-identical");
                bad += diff != 0;
            };
            for (int E : {1, 2, 4}) {
                if (heads == 1) {
                    variant(est8_pipe<1, 3>, 3, E);
                    variant(est8_pipe<1, 4>, 4, E);
                } else {
                    variant(est8_pipe<4, 3>, 3, E * 4);
                    variant(est8_pipe<4, 4>, 4, E * 4);
                }
            }
            cudaFree(dc); cudaFree(dpar); cudaFree(dq); cudaFree(ds); cudaFree(ds_ref); cudaFree(dip);
            for (int c = 0; c < C; ++c) cudaFree(dix[c]);
        }
    return bad ? 1 : 0;
}
