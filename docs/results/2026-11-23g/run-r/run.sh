#!/usr/bin/env bash
# Run R: the top-k launch sized for its longest row under the shared-memory capacity (room found
# once per backend), rows at the capacity in the tests; the output table's rows checked.
# Tests + racecheck/memcheck; kernels 256K and 128K, new vs run Q's binary.
set -u
D=.dev/y7
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
{ for t in cuda_vs_cpu cuda_vs_cpu_adaptive errors; do echo "== $t"; timeout 200 /tmp/q/$t --test-threads 8 --nocapture 2>&1 | grep -E "^test |test result|FAILED|panicked|capacity"; done
  echo "== racecheck top_k_ties_match_exactly"; timeout 200 compute-sanitizer --tool racecheck /tmp/q/cuda_vs_cpu top_k_ties_match_exactly 2>&1 | tail -2
  echo "== memcheck top_k_ties_match_exactly"; timeout 120 compute-sanitizer --tool memcheck /tmp/q/cuda_vs_cpu top_k_ties_match_exactly 2>&1 | tail -2
  echo "== memcheck adaptive"; timeout 120 compute-sanitizer --tool memcheck /tmp/q/cuda_vs_cpu_adaptive 2>&1 | tail -2; } > $OUT/tests.log 2>&1
grep -E "^==|test result|ERROR SUMMARY|RACECHECK SUMMARY|FAILED|capacity" $OUT/tests.log
A="bench kernels --no-gemv --contexts 131072,262144 --kv-heads 32,8 --budgets 4096"
for i in 1 2; do
timeout 200 /tmp/q/quest $A > $OUT/bench_new$i.log 2>&1; echo "new rc $?"
timeout 200 /tmp/q/quest_old $A > $OUT/bench_old$i.log 2>&1; echo "old rc $?"
done
grep -E "topk|quest_step" $OUT/bench_new1.log $OUT/bench_old1.log
