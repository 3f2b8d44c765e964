#!/usr/bin/env bash
# CI check: regenerates the PTX into a temporary directory with ptx/build.sh and fails on any
# difference from the committed ptx/*.ptx, then assembles every committed file with ptxas as the
# driver's JIT will: *.sm80.ptx for sm_80 and sm_90 (A100, and H100 as a fallback), *.sm90.ptx
# for sm_90 (H100).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/build.sh" "$tmp" >/dev/null
status=0
for f in "$here"/*.ptx; do
    name="$(basename "$f")"
    if ! cmp -s "$f" "$tmp/$name"; then
        echo "ptx/$name differs from what ptx/${name%.ptx}.cu produces (run ptx/build.sh)" >&2
        status=1
    fi
done
for f in "$tmp"/*.ptx; do
    [ -f "$here/$(basename "$f")" ] || { echo "ptx/$(basename "$f") is not committed" >&2; status=1; }
done
ptxas="${QUEST_NVCC_DIR:-$root/.dev/nvcc}/nvidia/cu13/bin/ptxas"
for f in "$here"/*.ptx; do
    case "$f" in
        *.sm80.ptx) archs="sm_80 sm_90" ;;
        *.sm90.ptx) archs="sm_90" ;;
        *) echo "ptx/$(basename "$f"): expected NAME.sm80.ptx or NAME.sm90.ptx" >&2; status=1; continue ;;
    esac
    for arch in $archs; do
        "$ptxas" -arch="$arch" -O3 "$f" -o /dev/null || { echo "ptxas $arch rejected $f" >&2; status=1; }
    done
done
[ $status -eq 0 ] && echo "PTX up to date; ptxas accepts every file for its targets"
exit $status
