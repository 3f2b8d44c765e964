#!/usr/bin/env bash
# Run P: the tree after the lse_fold refactor (21cbb2b kernels): GPU tests + memcheck on the decode
# paths; kernels new vs old (run N's dfb76e3 binary) + FlashInfer; top-k and estimate at 256K
# (rows over 8192 candidates: the top-k's global-memory path).
set -u
D=.dev/y3
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
{ for t in cuda_vs_cpu cuda_vs_cpu_adaptive cuda_int8_bounds cuda_gqa_decode cuda_fused errors; do echo "== $t"; timeout 150 /tmp/q/$t --test-threads 8 2>&1 | grep -E "^test |test result|FAILED|panicked"; done
  echo "== memcheck cuda_gqa_decode"; timeout 150 compute-sanitizer --tool memcheck /tmp/q/cuda_gqa_decode 2>&1 | tail -2
  echo "== memcheck cuda_vs_cpu"; timeout 200 compute-sanitizer --tool memcheck /tmp/q/cuda_vs_cpu 2>&1 | tail -2; } > $OUT/tests.log 2>&1
grep -E "^==|test result|ERROR SUMMARY" $OUT/tests.log
timeout 300 python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz --out $OUT/flashinfer.json > /tmp/fi.log 2>&1; echo "fi rc $?"
A="bench kernels --no-gemv --contexts 32768,131072 --kv-heads 32 --budgets 2048,4096"
for i in 1 2; do
timeout 150 /tmp/q/quest $A > $OUT/bench_new$i.log 2>&1; echo "new rc $?"
timeout 150 /tmp/q/quest_old $A > $OUT/bench_old$i.log 2>&1; echo "old rc $?"
done
timeout 200 /tmp/q/quest bench kernels --no-gemv --contexts 131072,262144 --kv-heads 32,8 --budgets 4096 > $OUT/bench_256k.log 2>&1; echo "256k rc $?"
grep -E "topk|quest_step" $OUT/bench_new1.log $OUT/bench_old1.log $OUT/bench_256k.log | head -40
