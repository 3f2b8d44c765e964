#!/usr/bin/env bash
# Run S: the adaptive budget's top-k timed (topk_mass rows, p = 0.9) beside the plain top-k.
set -u
D=.dev/y8
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && xz -dc $D/quest.xz > /tmp/q/quest && chmod +x /tmp/q/quest
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
timeout 300 /tmp/q/quest bench kernels --no-gemv --contexts 4096,32768,131072 --kv-heads 32,8 --budgets 2048,4096 --json $OUT/bench.json > $OUT/bench.log 2>&1; echo "rc $?"
grep -E "topk" $OUT/bench.log
