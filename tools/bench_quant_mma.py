#!/usr/bin/env python3
"""Tensor-core (MMA) quantized GEMVs against the CUDA-core ones, per linear shape of the 3.8B model (GPU).

    python tools/bench_quant_mma.py

Same method as tools/bench_quant_gemv.py (CUDA-graph device time, weights rotated to defeat the L2 cache); prints
per shape the best CUDA-core time (the shipped configuration) and the best tensor-core configuration, as µs and as a
share of the copy bandwidth on the bytes each reads.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from sambay_cli.bench import copy_bandwidth  # noqa: E402
from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402
from sambay_cli.quant.bench_kernels import SHAPES  # noqa: E402


def main() -> None:
    from bench_gemv import L2_DEFEAT_BYTES, graph_us

    bw = copy_bandwidth(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    totals: dict[str, float] = {}
    best_all = {}
    for name, n, k, count in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        q8, q4 = formats.quantize_int8(w), formats.quantize_int4(w, 128)
        b8, b4 = n * k + 4 * n, n * k // 2 + 3 * n * k // 128
        line = f"{name:16s} {n:5d}x{k:5d}:"
        for fmt, q, nbytes, base, variants in (
            ("int8", q8, b8, lambda q, x=x: tk.w8a16_linear(x, q.qweight, q.scales, None),
             [((bn, bk, nw), lambda q, x=x, c=(bn, bk, nw): tk.w8a16_mma_gemv(x, q.qweight, q.scales, None, *c))
              for bn, bk, nw in itertools.product((16, 32, 64), (128, 256, 512), (1, 2, 4)) if bn * bk <= 16384]),
            ("int4", q4, b4, lambda q, x=x: tk.w4a16_linear(x, q.qweight, q.scales, q.zeros, 128, None),
             [((bn, nw), lambda q, x=x, c=(bn, nw): tk.w4a16_mma_gemv(x, q.qweight, q.scales, q.zeros, 128, None, *c))
              for bn, nw in itertools.product((16, 32, 64, 128), (1, 2, 4))]),
        ):
            copies = max(1, math.ceil(L2_DEFEAT_BYTES / nbytes))
            qs = [q] + [type(q)(**{f: (getattr(q, f).clone() if torch.is_tensor(getattr(q, f)) else getattr(q, f))
                                   for f in q.__dataclass_fields__}) for _ in range(copies - 1)]
            ref = base(q).float()
            t_base = graph_us([lambda q=q, base=base: base(q) for q in qs])
            best = None
            for cfg, fn in variants:
                try:
                    err = ((fn(q).float() - ref).norm() / ref.norm()).item()
                    if err > 1e-2:
                        print(f"  {fmt} mma {cfg}: wrong ({err:.1e})")
                        continue
                    t = graph_us([lambda q=q, fn=fn: fn(q) for q in qs])
                except Exception as e:  # noqa: BLE001
                    print(f"  {fmt} mma {cfg}: {type(e).__name__} {str(e)[:60]}")
                    continue
                if best is None or t < best[1]:
                    best = (cfg, t)
            totals[f"{fmt} cuda-core"] = totals.get(f"{fmt} cuda-core", 0.0) + count * t_base
            totals[f"{fmt} mma"] = totals.get(f"{fmt} mma", 0.0) + count * (best[1] if best else t_base)
            best_all[f"{fmt} {n}x{k}"] = best[0] if best else None
            line += (f" | {fmt} {t_base:5.1f} us {nbytes / t_base / 1e-6 / bw:4.0%}"
                     + (f" mma {best[1]:5.1f} us {nbytes / best[1] / 1e-6 / bw:4.0%} {best[0]}" if best else ""))
        print(line, flush=True)
    print("all linears of one token (lm_head excluded): "
          + ", ".join(f"{f} {t / 1000:.3f} ms" for f, t in totals.items()))
    print(json.dumps({"totals_us": totals, "best": best_all}))


if __name__ == "__main__":
    main()
