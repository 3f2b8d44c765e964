#!/usr/bin/env bash
# Run T: the final tree. Every GPU test binary and the hostile tests (on_cuda), racecheck on the
# top-k test, memcheck on errors/adaptive/hostile; kernels at 32K, 128K and 256K.
set -u
D=.dev/y9
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
{ for t in cuda_vs_cpu cuda_vs_cpu_adaptive cuda_int8_bounds cuda_gqa_decode cuda_fused errors hostile_ops hostile_generate; do echo "== $t"; timeout 200 /tmp/q/$t --test-threads 8 --nocapture 2>&1 | grep -E "^test |test result|FAILED|panicked|capacity"; done
  echo "== racecheck top_k_ties_match_exactly"; timeout 200 compute-sanitizer --tool racecheck /tmp/q/cuda_vs_cpu top_k_ties_match_exactly 2>&1 | tail -2
  for t in errors cuda_vs_cpu_adaptive; do echo "== memcheck $t"; timeout 150 compute-sanitizer --tool memcheck /tmp/q/$t 2>&1 | grep -E "test result|ERROR SUMMARY"; done
  for t in hostile_ops hostile_generate; do echo "== memcheck $t on_cuda"; timeout 150 compute-sanitizer --tool memcheck /tmp/q/$t on_cuda 2>&1 | grep -E "test result|ERROR SUMMARY"; done; } > $OUT/tests.log 2>&1
grep -E "^==|test result|ERROR SUMMARY|RACECHECK SUMMARY|FAILED|panicked|capacity" $OUT/tests.log
timeout 300 /tmp/q/quest bench kernels --no-gemv --contexts 32768,131072,262144 --kv-heads 32,8 --budgets 2048,4096 --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc $?"
grep -E "topk|quest_step" $OUT/bench.log
