// Event-timed empty kernel, grid 32 x 1024 threads: the floor under the top-k harness's numbers.
#include <cstdio>
#include <vector>
#include <algorithm>
__global__ void empty_kernel(int* p) { if (p && threadIdx.x == 9999) *p = 1; }
int main() {
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    std::vector<float> t;
    for (int i = 0; i < 105; ++i) {
        cudaEventRecord(a); empty_kernel<<<32, 1024>>>(nullptr); cudaEventRecord(b);
        cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); if (i >= 5) t.push_back(ms * 1000.f);
    }
    std::sort(t.begin(), t.end());
    printf("empty kernel 32x1024: median %.2f us\n", t[t.size() / 2]);
}
