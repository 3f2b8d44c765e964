// Standalone harness for estimate_pages (ptx/select.cu) under compile-time variants: EST_PPT
// (pages per team), EST_MIN_BLOCKS (__launch_bounds__ min blocks, and the grid cap per SM unless
// GRID_PER_SM overrides it; GRID_PER_SM=0 launches every block, no grid-stride).
//
// Shapes of the Quest step: 32 query heads, 32 or 8 KV heads, head_dim 128, one sequence of 2048
// or 8192 pages (32K / 128K tokens), f16 bounds. Before each timed run a kernel reads 256 MiB so
// the bounds come from DRAM, as in a decode step; three copies of the bounds rotate. The output
// of every variant is compared with a host f32 reference (same summation order per lane is not
// guaranteed across variants, so the check is relative 1e-5).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "harness.cuh"
#include "../../ptx/select.cu"

#ifndef VARIANT
#define VARIANT "default"
#endif
#ifndef GRID_PER_SM
#define GRID_PER_SM EST_MIN_BLOCKS
#endif

int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    float* flush;
    float* fl_out;
    CK(cudaMalloc(&flush, 256 << 20));
    CK(cudaMemset(flush, 0, 256 << 20));
    CK(cudaMalloc(&fl_out, 64));
    int bad = 0;
    for (int hkv : {32, 8})
        for (int n : {2048, 8192}) {
            const int hq = 32, d = 128, C = 3, num_pages = C * n;
            const size_t blen = (size_t)num_pages * 2 * hkv * d;
            std::vector<__half> hb(blen);
            unsigned seed = 7u + hkv + n;
            for (size_t i = 0; i < blen; ++i) hb[i] = __float2half(frand(seed));
            std::vector<float> hqv(hq * d);
            for (auto& x : hqv) x = frand(seed);
            __half* db;
            float *dq, *ds;
            int *dip, *dix[C];
            db = upload(hb);
            dq = upload(hqv);
            CK(cudaMalloc(&ds, (size_t)hq * n * 4));
            rotated_tables(n, C, dix, &dip);
            EstimateParams p{1, hq, hkv, d, n, num_pages};
            const long long threads = (long long)((n + EST_PPT - 1) / EST_PPT) * hkv * (d / 8);
            long long blocks = (threads + 255) / 256;
            if (GRID_PER_SM > 0) blocks = std::min<long long>(blocks, (long long)GRID_PER_SM * sms);
            auto launch = [&](int c) { estimate_pages_f16<<<(unsigned)blocks, 256>>>(dq, db, dip, dix[c], ds, p); };
            launch(0);
            CK(cudaDeviceSynchronize());
            std::vector<float> got((size_t)hq * n);
            CK(cudaMemcpy(got.data(), ds, got.size() * 4, cudaMemcpyDeviceToHost));
            int group = hq / hkv;
            double worst = 0;
            for (int h = 0; h < hq; ++h)
                for (int j = 0; j < n; j += 7) {
                    int g = h / group;
                    double s = 0;
                    for (int i = 0; i < d; ++i) {
                        double qq = hqv[h * d + i];
                        double mx = __half2float(hb[((size_t)j * 2 * hkv + g) * d + i]);
                        double mn = __half2float(hb[((size_t)(j * 2 + 1) * hkv + g) * d + i]);
                        s += std::max(qq * mx, qq * mn);
                    }
                    worst = std::max(worst, std::fabs(s - got[(size_t)h * n + j]) / (1.0 + std::fabs(s)));
                }
            if (worst > 1e-5) ++bad;
            const double us = median_us([&](int i) { launch(i % C); }, 3, 30,
                                        reinterpret_cast<const float4*>(flush), (256u << 20) / 16, fl_out,
                                        sms * 8);
            const double bytes = (double)n * 2 * hkv * d * 2;
            printf("%-22s hkv=%2d pages=%5d grid=%6lld  %7.2f us  %6.0f GB/s  err %.1e %s\n", VARIANT, hkv, n, blocks, us,
                   bytes / us / 1e3, worst, worst > 1e-5 ? "MISMATCH" : "ok");
            cudaFree(db); cudaFree(dq); cudaFree(ds); cudaFree(dip);
            for (int c = 0; c < C; ++c) cudaFree(dix[c]);
        }
    return bad ? 1 : 0;
}
