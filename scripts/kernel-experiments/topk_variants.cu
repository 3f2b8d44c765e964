// Standalone harness for select_top_pages (ptx/select.cu) under compile-time variants:
// TOPK_EARLY (stop the radix passes once the chosen digit's keys all win); QUEST_LIKE draws
// positive scores of one magnitude (as the estimate gives on random K/V) instead of a bell
// around zero. (TOPK_THREADS below 1024 still works, but a row's keys sit 8 a thread in
// registers, so rows over 8 x TOPK_THREADS candidates take the global-memory path.)
//
// Rows as the model launches them for one layer: PerKvHead with 32 KV heads (group 1) and with
// 8 KV heads (group 4, keys summed over 4 query heads), one sequence of n pages, budgets of 128
// and 256 pages. Scores are random (sum of uniforms, a bell shape) and stay in L2 between runs,
// as they do after the estimate in a decode step. Every variant's output is checked against a
// host reference (stable sort by key, earlier page on ties); the timing is the median of 50
// launches between CUDA events.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "harness.cuh"
#include "../../ptx/select.cu"

#ifndef VARIANT
#define VARIANT "default"
#endif

static uint32_t host_key(float s) {
    if (s != s) return 0u;
    if (s == 0.f) s = 0.f;
    uint32_t u;
    memcpy(&u, &s, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static int run(int hq, int hkv, int n, int budget, unsigned seed) {
    const int group = hq / hkv, heads = hkv, nnz = n;
    std::vector<float> scores((size_t)hq * nnz);
    srand(seed);
    for (auto& s : scores) {
        float a = 0.f;
        for (int i = 0; i < 4; ++i) a += (float)rand() / RAND_MAX;
#ifdef QUEST_LIKE  // positive scores of one magnitude, as Quest's estimate gives on random K/V
        s = 150.f + 10.f * a;
#else
        s = a - 2.f;
#endif
    }
    std::vector<int> pages(n);
    std::iota(pages.begin(), pages.end(), 0);
    std::random_shuffle(pages.begin(), pages.end());
    std::vector<int> in_indptr = {0, n}, in_last = {11};
    const int per_row = std::min(n, budget);
    std::vector<int> out_indptr(heads + 1);
    for (int r = 0; r <= heads; ++r) out_indptr[r] = r * per_row;

    float* d_scores;
    int *d_ip, *d_ix, *d_il, *d_oip, *d_oix, *d_oil;
    CK(cudaMalloc(&d_scores, scores.size() * 4));
    CK(cudaMalloc(&d_ip, 8));
    CK(cudaMalloc(&d_ix, n * 4));
    CK(cudaMalloc(&d_il, 4));
    CK(cudaMalloc(&d_oip, (heads + 1) * 4));
    CK(cudaMalloc(&d_oix, heads * per_row * 4));
    CK(cudaMalloc(&d_oil, heads * 4));
    CK(cudaMemcpy(d_scores, scores.data(), scores.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_ip, in_indptr.data(), 8, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_ix, pages.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_il, in_last.data(), 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_oip, out_indptr.data(), (heads + 1) * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(d_oix, 0xff, heads * per_row * 4));
    SelectParams p{hq, heads, group, nnz, budget};
    auto launch = [&]() {
        select_top_pages<<<heads, TOPK_THREADS>>>(d_scores, d_ip, d_ix, d_il, d_oip, d_oix, d_oil, nullptr, p);
    };
    launch();
    CK(cudaDeviceSynchronize());
    std::vector<int> got(heads * per_row);
    CK(cudaMemcpy(got.data(), d_oix, got.size() * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int h = 0; h < heads; ++h) {
        std::vector<uint32_t> key(n - 1);
        for (int j = 0; j < n - 1; ++j) {
            float s = -0.f;
            for (int g = 0; g < group; ++g) s += scores[(size_t)(h * group + g) * nnz + j];
            key[j] = host_key(s);
        }
        std::vector<int> order(n - 1);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
        std::vector<int> win(order.begin(), order.begin() + (budget - 1));
        std::sort(win.begin(), win.end());
        for (int i = 0; i < budget - 1; ++i)
            if (got[h * per_row + i] != pages[win[i]]) ++bad;
        if (got[h * per_row + budget - 1] != pages[n - 1]) ++bad;
    }
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int i = 0; i < 55; ++i) {
        CK(cudaEventRecord(a));
        launch();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (i >= 5) t.push_back(ms * 1000.f);
    }
    std::sort(t.begin(), t.end());
    printf("%-22s hq=%d hkv=%2d pages=%5d budget_pages=%3d  %7.2f us  %s\n", VARIANT, hq, hkv, n, budget,
           t[t.size() / 2], bad ? "MISMATCH" : "ok");
    cudaFree(d_scores); cudaFree(d_ip); cudaFree(d_ix); cudaFree(d_il);
    cudaFree(d_oip); cudaFree(d_oix); cudaFree(d_oil);
    return bad;
}

int main() {
    int bad = 0;
    for (int hkv : {32, 8})
        for (int n : {2048, 8192})
            for (int budget : {128, 256}) bad += run(32, hkv, n, budget, 1234 + n + budget + hkv);
    return bad ? 1 : 0;
}
