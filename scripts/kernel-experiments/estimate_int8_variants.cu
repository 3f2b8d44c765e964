// Standalone harness for estimate_pages_int8 (ptx/bounds_int8.cu) under compile-time variants:
// EST8_MIN_BLOCKS (__launch_bounds__ min blocks and the grid cap per SM) and EST8_PPT (entries
// per team) for groups of 1 and 2, EST8_G4_MIN_BLOCKS and EST8_G4_PPT for groups of 4.
//
// Shapes of the Quest step: 32 query heads, 32 or 8 KV heads, head_dim 128, one sequence of 2048
// or 8192 pages (32K / 128K tokens at 16-token pages), random codes and (base, step) params.
// "single": one launch between events after a kernel that reads 256 MiB (bounds from DRAM);
// "x8": eight launches back to back over eight copies of the bounds, per launch (the launch
// overhead amortised, as in a decode step). Every variant is checked against a host reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "harness.cuh"
#include "../../ptx/bounds_int8.cu"

#ifndef VARIANT
#define VARIANT "default"
#endif


int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    float *flush, *fl_out;
    CK(cudaMalloc(&flush, 256 << 20));
    CK(cudaMemset(flush, 0, 256 << 20));
    CK(cudaMalloc(&fl_out, 64));
    int bad = 0;
    for (int hkv : {32, 8})
        for (int n : {2048, 8192}) {
            const int hq = 32, d = 128, C = 8, num_pages = C * n, group = hq / hkv;
            const size_t clen = (size_t)num_pages * 2 * hkv * d, plen = (size_t)num_pages * hkv * 4;
            std::vector<uint8_t> hc(clen);
            std::vector<float> hp(plen), hqv(hq * d);
            random_int8_bounds(7u + hkv + n, hc, hp, hqv);
            uint8_t* dc = upload(hc);
            float *dpar = upload(hp), *dq = upload(hqv), *ds;
            int *dip, *dix[C];
            CK(cudaMalloc(&ds, (size_t)hq * n * 4));
            rotated_tables(n, C, dix, &dip);
            const int heads = group == 1 ? 1 : group == 2 ? 2 : 4;
            const int ppt = heads == 4 ? EST8_G4_PPT : heads == 2 ? 4 : EST8_PPT;
            const int resident = heads == 4 ? EST8_G4_MIN_BLOCKS : heads == 2 ? 2 : EST8_MIN_BLOCKS;
            const int slices = (group + heads - 1) / heads;
            Int8EstimateParams p{1, hq, hkv, d, n, num_pages, slices};
            const long long threads = (long long)((n + ppt - 1) / ppt) * hkv * slices * (d / 16);
            long long blocks = std::min<long long>((threads + 255) / 256, (long long)resident * sms);
            auto launch = [&](int c) {
                if (heads == 1) estimate_pages_int8_g1<<<(unsigned)blocks, 256>>>(dq, dc, dpar, dip, dix[c], ds, p);
                else if (heads == 2) estimate_pages_int8_g2<<<(unsigned)blocks, 256>>>(dq, dc, dpar, dip, dix[c], ds, p);
                else estimate_pages_int8_g4<<<(unsigned)blocks, 256>>>(dq, dc, dpar, dip, dix[c], ds, p);
            };
            launch(3);
            CK(cudaDeviceSynchronize());
            std::vector<float> got((size_t)hq * n);
            CK(cudaMemcpy(got.data(), ds, got.size() * 4, cudaMemcpyDeviceToHost));
            double worst = 0;
            for (int h = 0; h < hq; ++h)
                for (int j = 0; j < n; j += 7) {
                    const int g = h / group;
                    const size_t page = 3 * (size_t)n + j;
                    const float* pr = &hp[(page * hkv + g) * 4];
                    double s = 0;
                    for (int i = 0; i < d; ++i) {
                        double qq = hqv[h * d + i];
                        double hi = fmaf((float)hc[((page * 2) * hkv + g) * d + i], pr[1], pr[0]);
                        double lo = fmaf((float)hc[((page * 2 + 1) * hkv + g) * d + i], pr[3], pr[2]);
                        s += std::max(qq * hi, qq * lo);
                    }
                    worst = std::max(worst, std::fabs(s - got[(size_t)h * n + j]) / (1.0 + std::fabs(s)));
                }
            if (worst > 1e-5) ++bad;
            const float4* fl = reinterpret_cast<const float4*>(flush);
            const size_t n4 = (256u << 20) / 16;
            // One launch, and all C copies back to back (per launch).
            const double us1 = median_us([&](int i) { launch(i % C); }, 3, 20, fl, n4, fl_out, sms * 8);
            const double us8 = median_us([&](int) { for (int c = 0; c < C; ++c) launch(c); }, 3, 20, fl,
                                         n4, fl_out, sms * 8, C);
            const double bytes = (double)n * hkv * (2 * d + 16);
            printf("%-12s hkv=%2d pages=%5d grid=%5lld  single %6.2f us  x8 %6.2f us %6.0f GB/s  err %.1e %s\n",
                   VARIANT, hkv, n, blocks, us1, us8, bytes / us8 / 1e3, worst, worst > 1e-5 ? "MISMATCH" : "ok");
            cudaFree(dc); cudaFree(dpar); cudaFree(dq); cudaFree(ds); cudaFree(dip);
            for (int c = 0; c < C; ++c) cudaFree(dix[c]);
        }
    return bad ? 1 : 0;
}
