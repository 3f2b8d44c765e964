#!/usr/bin/env bash
# Run K: both decode kernels merge their splits in the kernel: GPU tests, memcheck + racecheck on the decode
# paths, kernels (new and old binary) + FlashInfer + one-launch read floors in one call, e2e rows.
set -u
D=.dev/k1
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
if [ "${1:-tests}" = tests ]; then
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  for t in cuda_vs_cpu cuda_int8_bounds cuda_gqa_decode cuda_vs_cpu_adaptive cuda_fused errors; do echo "== $t"; timeout 120 /tmp/q/$t --test-threads 8 2>&1 | grep -E "^test |test result|FAILED|panicked"; done; } > $OUT/tests.log 2>&1
grep -E "^==|test result" $OUT/tests.log
{ for i in 1 2 3; do echo "== memcheck cuda_gqa_decode ($i)"; timeout 110 compute-sanitizer --tool memcheck --print-limit 3 /tmp/q/cuda_gqa_decode 2>&1 | grep -E "test result|ERROR SUMMARY|Invalid|panicked" | head -8; done
  echo "== racecheck cuda_gqa_decode"; timeout 110 compute-sanitizer --tool racecheck /tmp/q/cuda_gqa_decode 2>&1 | tail -3
  echo "== memcheck cuda_vs_cpu long_contexts"; timeout 110 compute-sanitizer --tool memcheck /tmp/q/cuda_vs_cpu long_contexts 2>&1 | tail -3
  echo "== racecheck cuda_vs_cpu long_contexts"; timeout 110 compute-sanitizer --tool racecheck /tmp/q/cuda_vs_cpu long_contexts 2>&1 | tail -3; } > $OUT/sanitizer.log 2>&1
cat $OUT/sanitizer.log
exit 0
fi
timeout 300 python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz --out $OUT/flashinfer.json > $OUT/flashinfer.log 2>&1; echo "fi rc $?"
timeout 200 /tmp/q/quest bench kernels --no-gemv --json $OUT/bench_kernels.json > $OUT/bench_kernels.log 2>&1; echo "bench rc $?"
timeout 150 /tmp/q/quest_old bench kernels --no-gemv --contexts 8192,32768,131072 --json /tmp/old.json > $OUT/bench_kernels_old.log 2>&1; echo "old rc $?"
(cd scripts/kernel-experiments && nvcc -O3 -std=c++17 -arch=sm_90 -I../../ptx -DVARIANT='"u2"' -o /tmp/floor sparse_variants.cu 2>/dev/null && GATHER=1 /tmp/floor) > $OUT/read_floor.log 2>&1
cat $OUT/read_floor.log
{ timeout 120 /tmp/q/quest bench decode --shape llama2-7b --context 32768 --budget 2048 --batch 1 --bounds f16,int8 2>&1
  timeout 150 /tmp/q/quest bench decode --shape llama3-8b --context 131072 --budget 4096 --batch 1 --rows per-kv-head --bounds f16,int8 2>&1; } > $OUT/decode.log
grep "^| llama" $OUT/decode.log
bash scripts/kernel-experiments/run_sparse_variants.sh u2 u2_separate_merge u2_old_merge u2_no_merge 2>&1 | grep -v -E "warning|Remark|^\s*$|\^|float \*|const size_t" > $OUT/sparse_variants.log; cat $OUT/sparse_variants.log
