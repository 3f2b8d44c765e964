#!/usr/bin/env bash
# y6: hostile cache and generation requests on the CUDA backend (hostile_ops, hostile_generate
# on_cuda::*), plain and under memcheck; the error catalogue; the top-k tests after the dynamic
# shared-memory limit change (key_smem sets the whole room).
set -u
D=.dev/y6
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
{ for t in hostile_ops hostile_generate errors cuda_vs_cpu_adaptive; do echo "== $t"; timeout 150 /tmp/q/$t --test-threads 4 2>&1 | grep -E "^test |test result|panicked|skipped"; done
  echo "== cuda_vs_cpu top_k"; timeout 150 /tmp/q/cuda_vs_cpu top_k 2>&1 | grep -E "^test |test result|panicked"
  for t in hostile_ops hostile_generate; do echo "== memcheck $t"; timeout 150 compute-sanitizer --tool memcheck /tmp/q/$t on_cuda 2>&1 | grep -E "test result|ERROR SUMMARY"; done; } > $OUT/tests.log 2>&1
cat $OUT/tests.log | grep -vE "^test .* ok$"
