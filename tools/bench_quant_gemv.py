#!/usr/bin/env python3
"""Sweep the W8A16 / W4A16 GEMV launch parameters on a GPU (batch-1 decode shapes of the 3.8B model).

    python tools/bench_quant_gemv.py        # prints, per config, the time of all linears of one token
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402
from sambay_cli.quant.bench_kernels import SHAPES  # noqa: E402

CONFIGS = [(4, 2048, 8), (4, 1024, 4), (8, 1024, 8), (2, 4096, 8), (1, 4096, 4), (8, 512, 4), (16, 256, 4),
           (2, 2048, 4), (4, 4096, 8)]


def timed(fn, reps=50):
    """Device time per call in µs, from a CUDA graph of ``reps`` calls (no Python/launch overhead: decode replays
    graphs too)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    graph.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1000


def main() -> None:
    dev = "cuda"
    layers = []
    for name, n, k, count in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
        q8 = formats.quantize_int8(w)
        q4 = formats.quantize_int4(w, 128)
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        layers.append((name, n, k, count, w, q8, q4, x))
    results = {}
    base = sum(c * timed(lambda w=w, x=x: F.linear(x, w)) for _, _, _, c, w, _, _, x in layers)
    results["bf16"] = base
    for cfg in CONFIGS:
        os.environ["SAMBAY_GEMV"] = ",".join(map(str, cfg))
        t8 = t4 = 0.0
        for _, _, _, c, _, q8, q4, x in layers:
            t8 += c * timed(lambda q8=q8, x=x: tk.w8a16_linear(x, q8.qweight, q8.scales, None))
            t4 += c * timed(lambda q4=q4, x=x: tk.w4a16_linear(x, q4.qweight, q4.scales, q4.zeros, 128, None))
        results[str(cfg)] = {"int8_us": round(t8, 1), "int4_us": round(t4, 1)}
        print(f"{cfg}: int8 {t8 / 1000:.2f} ms  int4 {t4 / 1000:.2f} ms  (bf16 {base / 1000:.2f} ms per token)",
              flush=True)
    # correctness of the default config against dequantize-then-matmul
    os.environ.pop("SAMBAY_GEMV", None)
    _, n, k, _, w, q8, q4, x = layers[1]
    ref8 = F.linear(x.float(), formats.dequantize_int8(q8.qweight, q8.scales))
    got8 = tk.w8a16_linear(x, q8.qweight, q8.scales, None).float()
    print("int8 rel err", ((got8 - ref8).norm() / ref8.norm()).item())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
