#!/usr/bin/env bash
# xc: the top-k reads its row bounds once (passed to the impl). Top-k tests, racecheck, kernels new vs old.
set -u
D=.dev/xc
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
{ timeout 150 /tmp/q/cuda_vs_cpu --test-threads 8 2>&1 | grep -E "^test |test result|panicked"
  timeout 120 /tmp/q/cuda_vs_cpu_adaptive --test-threads 4 2>&1 | grep -E "^test |test result|panicked"
  timeout 200 compute-sanitizer --tool racecheck /tmp/q/cuda_vs_cpu top_k_ties 2>&1 | tail -2; } > $OUT/tests.log 2>&1
cat $OUT/tests.log
A="bench kernels --no-gemv --contexts 32768,131072 --kv-heads 32,8 --budgets 2048,4096"
for i in 1 2; do
timeout 150 /tmp/q/quest $A > $OUT/bench_new$i.log 2>&1
timeout 150 /tmp/q/quest_old $A > $OUT/bench_old$i.log 2>&1
done
for f in $OUT/bench_*.log; do echo "== $(basename $f)"; grep -E "^(topk|quest_step_int8)" $f | awk '{print $1, $3, $4, $5, $6}' | tr '\n' ';'; echo; done
