#!/usr/bin/env python3
"""Time the Triton prefill attention on the official head layout for several launch configurations (GPU).

    python tools/bench_attention_prefill.py --chunk 2048 --past 0 2048 30720
    python tools/bench_attention_prefill.py --chunk 2048 --past 2048 --window 512    # SWA: ring + chunk

Reports µs per call and TFLOP/s of the executed (visible) score/value products, both streams.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.bench import cuda_ms  # noqa: E402
from sambay_cli.kernels import triton_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--past", type=int, nargs="+", default=[0, 2048, 30720])
    ap.add_argument("--window", type=int, default=0, help="sliding window (0: full attention)")
    args = ap.parse_args()
    h, g, d = 40, 20, 64
    dev = "cuda"
    for past in args.past:
        window = args.window or None
        # full attention: the shared KV from position 0; SWA: a ring of the window before the chunk + the chunk
        lk = args.chunk if window else past + args.chunk
        q = torch.randn(1, h, args.chunk, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, g, lk, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        valid = torch.ones(1, lk, dtype=torch.bool, device=dev)
        ring = None
        if window:
            rpos = torch.arange(past - window, past, device=dev).roll(past % window).unsqueeze(0)
            ring = (torch.randn(1, g, window, d, device=dev, dtype=torch.bfloat16),
                    torch.randn(1, g, window, d, device=dev, dtype=torch.bfloat16), rpos, rpos >= 0)
        visible = sum(min(past + i + 1, window or lk + past) for i in range(args.chunk))
        flops = 2 * 2 * d * h * visible * 1.5  # QK (d) and PV (2d) per stream, two streams per head pair
        best = []
        kw = dict(ring=ring, scale=0.125, lambda_full=torch.tensor(0.3, device=dev), lambda_init=0.8,
                  subln_weight=torch.ones(2 * d, device=dev), eps=1e-5)
        inputs = (q, k, v, valid, past, past if window else 0, window)
        for bm, bn, warps, stages in itertools.product((64, 128), (32, 64), (4, 8), (2, 3)):
            def run(bm=bm, bn=bn, warps=warps, stages=stages, inputs=inputs, kw=kw):
                return triton_ops.attention_prefill(*inputs, block_m=bm, block_n=bn, num_warps=warps,
                                                    num_stages=stages, **kw)
            try:
                best.append((cuda_ms(run), bm, bn, warps, stages))
            except Exception as e:  # noqa: BLE001 - report and continue (out of resources)
                print(f"bm {bm} bn {bn} warps {warps} stages {stages}: {type(e).__name__}")
        best.sort()
        for ms, bm, bn, warps, stages in best[:4]:
            print(f"past {past} chunk {args.chunk} window {window}: {1000 * ms:.0f} us  {flops / ms / 1e9:.0f} TFLOP/s  "
                  f"(block_m {bm}, block_n {bn}, warps {warps}, stages {stages})")


if __name__ == "__main__":
    main()
