#!/usr/bin/env python3
"""Decode speed of the eager engine at long context, without running 32K steps.

Builds a model from a config (default: the official Phi-4-mini-flash-reasoning 3.8B shape) with random weights on the
GPU, preallocates the cache for PROMPT + 32,768 new tokens, fills the shared KV (and the SWA rings and Mamba states)
synthetically up to each context length, then times decode steps there.

    python tools/bench_long_decode.py --contexts 2048 8192 32768 --steps 200 --batch 1 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.config import SambaYConfig, official_config_dir  # noqa: E402
from sambay_cli.model.modeling import FLOAT32_PARAMS, SambaYForCausalLM  # noqa: E402


def random_model(cfg: SambaYConfig, device: str, dtype: torch.dtype) -> SambaYForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = SambaYForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.log(torch.arange(1, p.shape[-1] + 1, device=device, dtype=torch.float32)))
            elif leaf.startswith("lambda_"):
                p.normal_(0, 0.1)
            if leaf not in FLOAT32_PARAMS:
                p.data = p.data.to(dtype)
    model.eval().requires_grad_(False)
    return model


def fill_cache(cache, context: int) -> None:
    """Pretend ``context`` positions were processed: random K/V, valid masks, random small recurrent states."""
    g = torch.Generator(device=cache.device).manual_seed(1)
    if cache.kv_k is not None:
        cache.kv_k[:, :, :context].normal_(generator=g)
        cache.kv_v[:, :, :context].normal_(generator=g)
    cache.kv_valid[:, :context] = True
    for t in list(cache.swa_k.values()) + list(cache.swa_v.values()):
        t.normal_(generator=g)
    w = cache.window
    if w:
        pos = torch.arange(max(0, context - w), context, device=cache.device)
        cache.swa_pos[pos % w] = pos
        cache.swa_valid[:, pos % w] = True
    for t in list(cache.ssm_states.values()) + list(cache.conv_states.values()):
        t.normal_(generator=g).mul_(0.1)
    cache.seen = context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=official_config_dir())
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 16384, 32768])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompt", type=int, default=2048, help="prompt length the cache is sized for")
    ap.add_argument("--new-tokens", type=int, default=32768)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    cfg = SambaYConfig.from_file(args.config)
    model = random_model(cfg, args.device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cuda = args.device.startswith("cuda")
    results = []
    for ctx in args.contexts:
        cache = model.new_cache(args.batch, args.prompt + args.new_tokens)
        fill_cache(cache, ctx)
        tok = torch.randint(0, cfg.vocab_size, (args.batch, 1), device=args.device)
        for _ in range(5):  # warm-up
            tok = model.run(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tok = model.run(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        r = {"context": ctx, "batch": args.batch, "steps": args.steps, "ms_per_step": round(1000 * dt / args.steps, 3),
             "tokens_per_s": round(args.batch * args.steps / dt, 2), "cache_bytes": cache.nbytes(),
             "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None}
        results.append(r)
        if not args.json:
            print(r, flush=True)
        del cache
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": args.dtype, "weights_bytes": weights,
           "torch": torch.__version__, "cache_sized_for": args.prompt + args.new_tokens, "results": results,
           "method": "eager reference kernels; caches filled synthetically to each context; decode steps timed there"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
