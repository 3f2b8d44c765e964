#!/usr/bin/env bash
# Run N: the final tree (dfb76e3 kernels): GPU tests; kernels 32 and 8 KV heads (new, old for the
# A/B) + FlashInfer; end-to-end decode rows new and old.
set -u
D=.dev/x7
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
{ for t in cuda_vs_cpu cuda_vs_cpu_adaptive cuda_int8_bounds cuda_gqa_decode cuda_fused errors; do echo "== $t"; timeout 150 /tmp/q/$t --test-threads 8 2>&1 | grep -E "^test |test result|FAILED|panicked"; done; } > $OUT/tests.log 2>&1
grep -E "^==|test result" $OUT/tests.log
timeout 300 python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz --out $OUT/flashinfer.json > /tmp/fi.log 2>&1; echo "fi rc $?"
A="bench kernels --no-gemv --contexts 32768,131072 --kv-heads 32,8 --budgets 2048,4096"
timeout 150 /tmp/q/quest $A > $OUT/bench_new.log 2>&1; echo "new rc $?"
timeout 150 /tmp/q/quest_old $A > $OUT/bench_old.log 2>&1; echo "old rc $?"
for b in quest quest_old; do
  { timeout 120 /tmp/q/$b bench decode --shape llama2-7b --context 32768 --budget 2048 --batch 1 --bounds f16,int8 2>&1
    timeout 150 /tmp/q/$b bench decode --shape llama3-8b --context 131072 --budget 4096 --batch 1 --rows per-kv-head --bounds f16,int8 2>&1; } > $OUT/decode_$b.log
  echo "$b decode"; grep "^| llama" $OUT/decode_$b.log
done
