#!/usr/bin/env bash
# y5: the error catalogue on the CUDA backend (tests/errors.rs on_cuda::*), plain and under memcheck.
set -u
D=.dev/y5
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && for f in $D/*.xz; do xz -dc $f > /tmp/q/$(basename $f .xz); chmod +x /tmp/q/$(basename $f .xz); done
export PATH=/usr/local/cuda/bin:$PATH
timeout 120 /tmp/q/errors --test-threads 1 > $OUT/errors.log 2>&1; echo "rc $?" >> $OUT/errors.log
timeout 200 compute-sanitizer --tool memcheck /tmp/q/errors --test-threads 1 > $OUT/errors_memcheck.log 2>&1
tail -40 $OUT/errors.log; tail -3 $OUT/errors_memcheck.log
