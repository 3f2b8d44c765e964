#!/usr/bin/env bash
# The test suite. The end-to-end tests compare against a real model, so SmolLM2-135M-Instruct is
# fetched and imported first (once; models/ is not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f models/smollm2/model.safetensors ]; then
  cargo run --release -q -p quest-cli -- fetch smollm2 models/smollm2
fi
cargo test --workspace
