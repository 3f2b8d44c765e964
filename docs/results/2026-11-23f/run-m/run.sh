#!/usr/bin/env bash
# x2: top-k keys in registers + double-buffered histograms. GPU tests, racecheck on top-k, harness
# A/B (old select.cu vs new), quest bench kernels new vs old + FlashInfer.
set -u
D=.dev/x2
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
# harness A/B, compiled in the background while the tests run
H=/tmp/h && mkdir -p $H/new $H/old && cp scripts/kernel-experiments/*.cu* $H/new/ && cp scripts/kernel-experiments/*.cu* $H/old/
sed -i "s#../../ptx/select.cu#$PWD/ptx/select.cu#" $H/new/topk_variants.cu
sed -i "s#../../ptx/select.cu#$PWD/$D/select_old.cu#" $H/old/topk_variants.cu
cp ptx/common.cuh $D/ 2>/dev/null
( for v in new old; do for dist in q b; do
    X=""; [ $dist = q ] && X=-DQUEST_LIKE
    nvcc -O3 -std=c++17 -arch=sm_90 -I$PWD/ptx -DVARIANT="\"${v}_$dist\"" $X -o /tmp/topk_${v}_$dist $H/$v/topk_variants.cu 2>/dev/null &
  done; done; wait ) &
BUILD=$!
{ for t in cuda_vs_cpu cuda_vs_cpu_adaptive cuda_int8_bounds cuda_gqa_decode cuda_fused errors; do echo "== $t"; timeout 150 /tmp/q/$t --test-threads 8 2>&1 | grep -E "^test |test result|FAILED|panicked"; done; } > $OUT/tests.log 2>&1
grep -E "^==|test result" $OUT/tests.log
{ echo "== racecheck top_k_ties"; timeout 120 compute-sanitizer --tool racecheck /tmp/q/cuda_vs_cpu top_k_ties 2>&1 | tail -3
  echo "== memcheck top_k_ties"; timeout 120 compute-sanitizer --tool memcheck /tmp/q/cuda_vs_cpu top_k_ties 2>&1 | tail -3; } > $OUT/sanitizer.log 2>&1
cat $OUT/sanitizer.log
wait $BUILD
{ for r in 1 2; do for v in new old; do for dist in q b; do /tmp/topk_${v}_$dist; done; done; done; } > $OUT/topk_ab.log 2>&1
timeout 300 python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz --out $OUT/flashinfer.json > /tmp/fi.log 2>&1; echo "fi rc $?"; tail -3 /tmp/fi.log
for i in 1 2; do
timeout 150 /tmp/q/quest bench kernels --no-gemv --contexts 32768,131072 --kv-heads 32 --budgets 2048,4096 > $OUT/bench_new$i.log 2>&1; echo "new rc $?"
timeout 150 /tmp/q/quest_old bench kernels --no-gemv --contexts 32768,131072 --kv-heads 32 --budgets 2048,4096 > $OUT/bench_old$i.log 2>&1; echo "old rc $?"
done
