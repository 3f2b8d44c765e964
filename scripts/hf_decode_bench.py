#!/usr/bin/env python3
"""The peer of `quest bench decode`: Hugging Face transformers (PyTorch) decode on the same model
shape and context, random fp16 weights on the GPU, attention through SDPA (transformers' best
built-in implementation without extra packages), timed with CUDA events (median of the steps after
a warm-up).

The cache is filled to the context length with random K/V (no prefill, like the quest bench), and
after every step it is rolled back to that length, so each step attends over context + 1 tokens.
Two caches are timed:
  dynamic: DynamicCache (transformers' default; every step concatenates the new token onto each
           layer's K/V, a copy of the whole cache after the roll-back)
  static:  StaticCache of length context + 8 (preallocated; the new token is written in place at
           position `context` and attention runs over the full length under a mask)
A device-side assert (seen once with StaticCache) poisons the CUDA context of the process, so run
each cache kind in its own process (--cache dynamic, then --cache static).

  python3 scripts/hf_decode_bench.py --shape llama2-7b --context 8192,16384,32768 --batch 1 \
      [--steps 50] [--warmup 5] [--cache dynamic,static] [--json FILE]
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # hidden, inter, layers, heads, kv heads, head_dim, vocab, theta, rope scaling, tied
    "llama2-7b": (4096, 11008, 32, 32, 32, 128, 32000, 10000.0, None, False),
    "llama3-8b": (4096, 14336, 32, 32, 8, 128, 128256, 500000.0,
                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, False),
    "smollm2-135m": (576, 1536, 30, 9, 3, 64, 49152, 100000.0, None, True),
}


def make_config(shape, max_pos):
    h, i, l, nh, nkv, hd, v, theta, scaling, tied = SHAPES[shape]
    kw = dict(hidden_size=h, intermediate_size=i, num_hidden_layers=l, num_attention_heads=nh,
              num_key_value_heads=nkv, head_dim=hd, vocab_size=v, rms_norm_eps=1e-5,
              max_position_embeddings=max_pos, tie_word_embeddings=tied)
    rope = {"rope_type": "default", "rope_theta": theta} if scaling is None else \
        dict(scaling, rope_theta=theta)
    try:  # transformers 5: rope_parameters
        cfg = LlamaConfig(rope_parameters=rope, **kw)
    except TypeError:
        cfg = LlamaConfig(rope_theta=theta, rope_scaling=scaling, **kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(cfg):
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model = model.to(device="cuda", dtype=torch.float16).eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # never time on zeros or uninitialised memory
            p.uniform_(-0.02, 0.02, generator=gen)
    return model


def filled_cache(kind, cfg, batch, context):
    from transformers import DynamicCache, StaticCache
    nkv, hd, layers = cfg.num_key_value_heads, cfg.head_dim, cfg.num_hidden_layers
    if kind == "dynamic":
        try:
            cache = DynamicCache(config=cfg)
        except TypeError:
            cache = DynamicCache()
        kwargs = None
    else:
        try:
            cache = StaticCache(config=cfg, max_cache_len=context + 8)
        except TypeError:
            cache = StaticCache(config=cfg, max_batch_size=batch, max_cache_len=context + 8,
                                device="cuda", dtype=torch.float16)
        kwargs = {"cache_position": torch.arange(context, device="cuda")}
    for layer in range(layers):
        k = torch.empty(batch, nkv, context, hd, device="cuda", dtype=torch.float16).uniform_(-1, 1)
        v = torch.empty_like(k).uniform_(-1, 1)
        cache.update(k, v, layer, kwargs)
        del k, v
    return cache


def time_decode(model, cfg, kind, batch, context, steps, warmup):
    cache = filled_cache(kind, cfg, batch, context)
    ids = (torch.arange(batch, device="cuda").view(batch, 1) * 7919 + 11) % cfg.vocab_size
    pos = torch.full((batch, 1), context, device="cuda", dtype=torch.long)
    cpos = torch.tensor([context], device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for step in range(warmup + steps):
            start.record()
            out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                        position_ids=pos, cache_position=cpos, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1)
            end.record()
            end.synchronize()
            if step >= warmup:
                times.append(start.elapsed_time(end))
            if kind == "dynamic":
                cache.crop(context)
            del out, nxt
    del cache
    torch.cuda.empty_cache()
    times.sort()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache", default="dynamic,static")
    ap.add_argument("--json")
    a = ap.parse_args()
    contexts = [int(c) for c in a.context.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    t0 = time.time()
    cfg = make_config(a.shape, max(max(contexts) + 2, 4096))
    model = build_model(cfg)
    torch.cuda.synchronize()
    print(f"{a.shape}: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}, model built in {time.time() - t0:.1f} s", file=sys.stderr)
    rows = []
    for context in contexts:
        for batch in batches:
            for kind in a.cache.split(","):
                row = {"shape": a.shape, "context": context, "batch": batch, "cache": kind,
                       "attention": "sdpa"}
                try:
                    t = time_decode(model, cfg, kind, batch, context, a.steps, a.warmup)
                    row.update(ms_per_step=t[len(t) // 2], ms_min=t[0], ms_max=t[-1],
                               steps=len(t), tokens_per_s=batch / (t[len(t) // 2] * 1e-3))
                except Exception as e:  # noqa: BLE001 (out of memory, API change): report, go on
                    row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    torch.cuda.empty_cache()
                rows.append(row)
                ms = f"{row['ms_per_step']:.3f}" if "ms_per_step" in row else row["error"]
                print(f"| hf {a.shape} | {context} | {batch} | {kind} | {ms} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                       "device": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
