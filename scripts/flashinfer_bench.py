#!/usr/bin/env python3
"""FlashInfer's paged decode on the shapes of `quest bench kernels`, timed the same way, written as JSON.

    python3 scripts/flashinfer_bench.py --sdist .whl/flashinfer_python-0.2.14.post1.tar.gz \
        --out flashinfer.json

Shapes: fp16, NHD pages of 16 tokens, head_dim 128, 32 query heads with 32 and with 8 KV heads,
batch 1, contexts 4K-128K. `BatchDecodeWithPagedKVCacheWrapper` is timed with CUDA-core decode
kernels and, where it builds, with `use_tensor_cores=True` (FlashInfer's recommended path for GQA
groups of 4 and more); the JSON keeps both, and the faster is the baseline.

Method (the same as `quest bench kernels`, crates/quest-cli/src/bench_kernels.rs): CUDA events around each
run; before each run a 512 MiB read (an argmax over it) keeps the GPU busy while the host queues
the op (so Python launch time is not measured) and evicts L2, leaving clean lines; the KV pool and q exist in 3 copies, rotated between
runs; 5 warm-up runs, then the median of 25. GB/s counts the K/V bytes of the context plus q read
and out written; "% copy" compares with a 1 GiB device-to-device copy measured in the same run.

FlashInfer 0.2.14.post1 has no wheel on PyPI; its sdist is used in place: unpacked to a temporary
directory, the `flashinfer/data/{include,csrc,cutlass,spdlog}` links that an installed copy has
are added, and it JIT-compiles its kernels with the host's nvcc on first use (minutes). If the
full package import fails on this host (optional dependencies), its `__init__` is reduced to the
decode wrapper and the import retried; the JSON says so.
"""

import argparse
import json
import os
import pathlib
import sys
import tarfile
import tempfile
import time
import traceback

COPIES, WARMUP, RUNS = 3, 5, 25
HQ, D, PS = 32, 128, 16
CONTEXTS = [4096, 8192, 16384, 32768, 65536, 131072]


def unpack(sdist: str) -> tuple[pathlib.Path, str]:
    root = pathlib.Path(tempfile.mkdtemp(prefix="flashinfer_src_"))
    with tarfile.open(sdist) as t:
        t.extractall(root, filter="data")
    src = next(root.iterdir())
    data = src / "flashinfer" / "data"
    data.mkdir(exist_ok=True)
    for name, target in [
        ("include", src / "include"),
        ("csrc", src / "csrc"),
        ("cutlass", src / "3rdparty" / "cutlass"),
        ("spdlog", src / "3rdparty" / "spdlog"),
        ("tvm_binding", src / "tvm_binding"),
    ]:
        link = data / name
        if target.exists() and not link.exists():
            link.symlink_to(target)
    version = (src / "version.txt").read_text().strip() if (src / "version.txt").exists() else "?"
    meta = src / "flashinfer" / "_build_meta.py"
    if not meta.exists():
        meta.write_text(f'__version__ = "{version}"\n')
    return src, version


def import_flashinfer(src: pathlib.Path):
    sys.path.insert(0, str(src))
    try:
        import flashinfer  # noqa: F401

        return flashinfer, "full import"
    except Exception:
        err = traceback.format_exc(limit=3)
        print(f"full flashinfer import failed, reducing __init__ to the decode wrapper:\n{err}")
        for m in [m for m in sys.modules if m == "flashinfer" or m.startswith("flashinfer.")]:
            del sys.modules[m]
        init = src / "flashinfer" / "__init__.py"
        init.write_text(
            "from ._build_meta import __version__ as __version__\n"
            "from .decode import BatchDecodeWithPagedKVCacheWrapper as BatchDecodeWithPagedKVCacheWrapper\n"
        )
        import flashinfer  # noqa: F401

        return flashinfer, "reduced __init__ (decode wrapper only): " + err.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdist", required=True)
    ap.add_argument("--out", default="flashinfer.json")
    ap.add_argument("--no-tensor-cores", action="store_true")
    args = ap.parse_args()

    import torch

    src, version = unpack(args.sdist)
    t_import = time.time()
    fi, how = import_flashinfer(src)
    print(f"flashinfer {version} from {src} ({how}), import {time.time() - t_import:.1f} s")

    dev = torch.device("cuda")
    flush = torch.rand(128 << 20, dtype=torch.float32, device=dev).view(-1, 32768)

    def time_us(fn) -> float:
        samples = []
        for i in range(WARMUP + RUNS):
            flush.argmax(dim=1)  # reads 512 MiB, writes 32 KiB: L2 ends full of clean lines
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i % COPIES)
            b.record()
            if i >= WARMUP:
                samples.append((a, b))
        torch.cuda.synchronize()
        t = sorted(a.elapsed_time(b) * 1000.0 for a, b in samples)
        return t[len(t) // 2]

    src_buf = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst_buf = torch.empty_like(src_buf)
    copy_us = time_us(lambda c: dst_buf.copy_(src_buf))
    copy_gbs = 2 * (1 << 30) / copy_us / 1e3
    del src_buf, dst_buf
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {copy_gbs:.0f} GB/s")

    result = {
        "device": torch.cuda.get_device_name(),
        "unix_time": int(time.time()),
        "flashinfer": version,
        "import": how,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "copy_gbs": round(copy_gbs, 1),
        "method": f"CUDA events, 512 MiB read (argmax) before each run, {COPIES} rotated copies, "
        f"{WARMUP} warm-up, median of {RUNS}",
        "rows": [],
    }
    modes = [False] if args.no_tensor_cores else [False, True]
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    for hkv in [32, 8]:
        max_pages = CONTEXTS[-1] // PS
        kvs = [
            (torch.rand(max_pages, 2, PS, hkv, D, device=dev, dtype=torch.float16) * 4 - 2)
            for _ in range(COPIES)
        ]
        qs = [torch.randn(1, HQ, D, device=dev, dtype=torch.float16) for _ in range(COPIES)]
        for tc in modes:
            for ctx in CONTEXTS:
                n = ctx // PS
                row = {"op": "flashinfer_decode", "num_qo_heads": HQ, "num_kv_heads": hkv,
                       "context": ctx, "tensor_cores": tc}
                try:
                    t0 = time.time()
                    w = fi.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=tc)
                    w.plan(
                        torch.tensor([0, n], dtype=torch.int32, device=dev),
                        torch.arange(n, dtype=torch.int32, device=dev),
                        torch.tensor([PS], dtype=torch.int32, device=dev),
                        HQ, hkv, D, PS,
                        pos_encoding_mode="NONE",
                        q_data_type=torch.float16,
                        kv_data_type=torch.float16,
                    )
                    outs = [w.run(qs[c], kvs[c]) for c in range(COPIES)]
                    torch.cuda.synchronize()
                    setup = time.time() - t0
                    us = time_us(lambda c: w.run(qs[c], kvs[c], out=outs[c]))
                    nbytes = ctx * 2 * hkv * D * 2 + 2 * HQ * D * 2
                    gbs = nbytes / us / 1e3
                    row.update(time_us=round(us, 2), bytes=nbytes, gbs=round(gbs, 1),
                               pct_copy=round(100 * gbs / copy_gbs, 1))
                    print(f"flashinfer hkv {hkv:>2} ctx {ctx:>6} tc {int(tc)}: {us:8.1f} us "
                          f"{gbs:6.0f} GB/s {100 * gbs / copy_gbs:5.1f}% (setup {setup:.1f} s)",
                          flush=True)
                except Exception:
                    row["error"] = traceback.format_exc(limit=4).strip().splitlines()[-1]
                    print(f"flashinfer hkv {hkv} ctx {ctx} tc {int(tc)} failed: {row['error']}",
                          flush=True)
                    traceback.print_exc(limit=4)
                result["rows"].append(row)
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1)
                if "error" in row:
                    break  # the same failure would repeat at every context
        del kvs, qs
        torch.cuda.empty_cache()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
