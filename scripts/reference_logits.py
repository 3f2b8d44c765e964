#!/usr/bin/env python3
"""Reference logits for the end-to-end model test, from PyTorch + transformers.

Loads SmolLM2-135M-Instruct from its GGUF (transformers dequantizes it; the `gguf` package is
needed), runs tests/fixtures/reference_text.txt through the model in float32, and writes for every
position the top-5 token ids and logits, plus a 32-token greedy continuation, to a JSON fixture.
The token ids come from transformers' own tokenizer for the GGUF, so the Rust test feeds exactly
these ids (and separately checks that our tokenizer produces the same ones).

Usage: reference_logits.py GGUF_FILE TEXT_FILE OUT_JSON [--device cuda|cpu]
"""
import argparse
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = model.to(args.device).eval()
    text = open(args.text, encoding="utf-8").read()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids], device=args.device)
    with torch.no_grad():
        logits = model(x).logits[0].float()
        top = torch.topk(logits, 5, dim=-1)
        greedy = model.generate(
            x, max_new_tokens=args.new_tokens, do_sample=False, attention_mask=torch.ones_like(x)
        )[0, len(ids):].tolist()
    fixture = {
        "source": "scripts/reference_logits.py",
        "model": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": "float32",
        "text_file": os.path.basename(args.text),
        "input_ids": ids,
        "top5_ids": top.indices.tolist(),
        "top5_logits": [[round(v, 4) for v in row] for row in top.values.tolist()],
        "greedy_continuation": greedy,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f)
    print(f"{len(ids)} tokens; greedy: {tok.decode(greedy)!r}")


if __name__ == "__main__":
    main()
