#!/usr/bin/env bash
# Run U: the error catalogue and the top-k/force_pages tests after check_row_structure (one row check for both backends).
set -u
D=.dev/ya
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
{ timeout 150 /tmp/q/errors 2>&1 | grep -E "test result|FAILED|panicked"
  timeout 150 /tmp/q/cuda_vs_cpu 2>&1 | grep -E "test result|FAILED|panicked"
  timeout 150 compute-sanitizer --tool memcheck /tmp/q/errors 2>&1 | grep -E "ERROR SUMMARY"; } > $OUT/tests.log 2>&1
cat $OUT/tests.log
