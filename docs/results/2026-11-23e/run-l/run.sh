#!/usr/bin/env bash
# Variance of the dense 32/8 rows: FlashInfer and quest (run K's kernels) alternated 3 times in one call.
# Kept as it ran: from the repo root as .dev/v1/run.sh (an ignored folder holding run K's `quest`,
# xz-packed), with `carry [".dev/v1", ".whl"]`; from this folder its paths would not resolve.
set -u
D=.dev/v1
cd "$(dirname "$0")/../.."
mkdir -p /tmp/q && xz -dc $D/quest.xz > /tmp/q/quest && chmod +x /tmp/q/quest
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
for i in 1 2 3; do
  timeout 400 python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz --out $OUT/fi$i.json > /tmp/fi$i.log 2>&1; echo "fi$i rc $?"; tail -3 /tmp/fi$i.log
  timeout 100 /tmp/q/quest bench kernels --no-gemv --contexts 8192,16384,32768 --kv-heads 8 --json /tmp/q$i.json > $OUT/q$i.log 2>&1; echo "q$i rc $?"
done
