#!/usr/bin/env python3
"""Time the Triton decode-attention kernel on the official shape for several launch configurations (GPU).

    python tools/bench_attention_decode.py --contexts 2048 32768 --batches 1 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.kernels import triton_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-length", type=int, default=34816)
    args = ap.parse_args()
    h, g, d = 40, 20, 64
    dev = "cuda"
    rows = []
    for b, ctx in itertools.product(args.batches, args.contexts):
        q = torch.randn(b, h, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, g, args.max_length, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        valid = torch.zeros(b, args.max_length, dtype=torch.bool, device=dev)
        valid[:, :ctx] = True
        n = torch.full((b,), ctx, dtype=torch.long, device=dev)
        lam = torch.tensor(0.3, device=dev)
        w = torch.ones(2 * d, device=dev)
        nbytes = 2 * b * g * ctx * d * 2
        for block_s, warps, pps, stages in itertools.product((32, 64, 128), (4, 8), (2, 4, 8), (2, 3)):
            def run(q=q, k=k, v=v, valid=valid, n=n, lam=lam, w=w, block_s=block_s, warps=warps, pps=pps,
                    stages=stages):
                return triton_ops.diff_attention_decode(q, k, v, valid, n, scale=0.125, lambda_full=lam,
                                                        lambda_init=0.8, subln_weight=w, eps=1e-5, block_s=block_s,
                                                        num_warps=warps, num_stages=stages, programs_per_sm=pps)
            try:
                run()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(20):
                    run()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / 20
                rows.append({"batch": b, "context": ctx, "block_s": block_s, "num_warps": warps,
                             "programs_per_sm": pps, "num_stages": stages, "us": round(1000 * ms, 1),
                             "TB_s": round(nbytes / ms / 1e9, 3)})
            except Exception as e:  # noqa: BLE001 - report and continue (e.g. out of resources)
                rows.append({"batch": b, "context": ctx, "block_s": block_s, "num_warps": warps,
                             "programs_per_sm": pps, "num_stages": stages, "error": type(e).__name__})
    for b, ctx in itertools.product(args.batches, args.contexts):
        sel = sorted((r for r in rows if r["batch"] == b and r["context"] == ctx and "us" in r), key=lambda r: r["us"])
        default = next((r for r in sel if r["block_s"] == 64 and r["num_warps"] == 4 and r["programs_per_sm"] == 4
                        and r["num_stages"] == 2),
                       None)
        print(f"batch {b} ctx {ctx}: default {default}; best {sel[:3]}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
