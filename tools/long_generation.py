#!/usr/bin/env python3
"""A whole long generation on the official 3.8B shape with random weights (GPU): a 2,048-token prompt, then
32,768 generated tokens at batch 1 through the engine `sambay generate` uses (chunked prefill, CUDA-graph decode),
greedy, no early stop. Prints wall time, tokens/s and peak memory as JSON.

    python tools/long_generation.py --prompt-len 2048 --new-tokens 32768
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.bench import random_model  # noqa: E402
from sambay_cli.config import official_config  # noqa: E402
from sambay_cli.generation.engine import generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=32768)
    args = ap.parse_args()
    cfg = official_config()
    model = random_model(cfg, "cuda", torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    generate(model, [prompt[:64]], max_new_tokens=8, stop_token_ids=[])  # compile the kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = generate(model, [prompt], max_new_tokens=args.new_tokens, stop_token_ids=[])
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    n = len(out.tokens[0])
    print(json.dumps({"device": torch.cuda.get_device_name(), "prompt_len": args.prompt_len, "generated": n,
                      "seconds": round(wall, 2), "tokens_per_s": round(n / wall, 1),
                      "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}))


if __name__ == "__main__":
    main()
