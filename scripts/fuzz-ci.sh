#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time, starting from the
# committed seed corpus (fuzz/corpus/<target>, read-only: new inputs go to a scratch directory).
# Fails on the first crash, leak of a panic, timeout or out-of-memory; the input that did it is
# left in fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run --sanitizer none <target> <file>`).
#
#   FUZZ_SECONDS    seconds per target (default 60: build ~3 min + 6 minutes of fuzzing on 2 cores)
#   FUZZ_TARGETS    space-separated targets (default: all of them)
#   FUZZ_SANITIZER  none (default, works on stable) or address (uses RUSTC_BOOTSTRAP=1)
#
# Installs cargo-fuzz if it is missing (CI starts on a fresh machine). See docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"gguf safetensors config_json tokenizer_json page_pool kv_cache"}
sanitizer=${FUZZ_SANITIZER:-none}

start=$(date +%s)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-ci: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

build_args=(--sanitizer "$sanitizer")
if [ "$sanitizer" != none ]; then
    # -Zsanitizer is a nightly flag; this lets the stable compiler accept it. A separate target
    # directory keeps the uninstrumented build.
    export RUSTC_BOOTSTRAP=1
    build_args+=(--target-dir target/"$sanitizer")
fi

echo "fuzz-ci: building all targets (sanitizer $sanitizer)"
cargo fuzz build "${build_args[@]}"
echo "fuzz-ci: built in $(($(date +%s) - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $targets; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    echo "fuzz-ci: $t for ${seconds} s"
    if cargo fuzz run "${build_args[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "fuzz-ci: $t ok: ${runs:-?} runs, ${rate:-?} exec/s"
    else
        echo "fuzz-ci: $t FAILED; last lines of its log:"
        tail -n 60 "$log"
        failed+=("$t")
    fi
done

echo "fuzz-ci: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-ci: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz-ci: all targets ran without a crash"
