#!/usr/bin/env python3
"""Sweep the W8A16 / W4A16 GEMV launch parameters on a GPU (batch-1 decode shapes of the 3.8B model).

    python tools/bench_quant_gemv.py        # prints, per shape, the best config; then all linears of one token

int8: (kernel variant, rows per program, input columns per step, warps, k-splits). int4 (word-interleaved weights):
(rows per program, groups per step, warps, k-splits), "auto" being the shipped heuristic; the MLP fc1 is also timed
with its fused SwiGLU epilogue, as the model runs it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sambay_cli.bench import copy_bandwidth  # noqa: E402
from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402
from sambay_cli.quant.bench_kernels import SHAPES  # noqa: E402

INT8_CONFIGS = [(1, 1024, 4), (2, 1024, 4), (4, 512, 4), (8, 512, 4), (1, 512, 2), (2, 512, 4), (4, 1024, 8),
                (16, 256, 4), (8, 256, 2)]
INT4_CONFIGS = ["auto"] + [(bn, ng, nw, split) for bn, ng, nw in ((8, 4, 2), (16, 4, 4), (32, 4, 4), (16, 2, 2),
                                                                  (32, 2, 4), (16, 8, 4), (8, 2, 1))
                            for split in (1, 2, 4, 5, 8)]


def bench_shape(n: int, k: int, bw: float):
    """bf16, int8 and int4 (best of each sweep) for one [n, k] weight: (printed line, µs per format, best configs)."""
    from bench_gemv import L2_DEFEAT_BYTES, graph_us, sweep

    dev = "cuda"
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    copies = max(1, math.ceil(L2_DEFEAT_BYTES / (n * k * 2)))
    ws = [w] + [w.clone() for _ in range(copies - 1)]
    times = {"bf16": graph_us([lambda w=w: F.linear(x, w) for w in ws])}
    line = f"{n:5d}x{k:5d}: bf16 {times['bf16']:6.1f} us"
    best_cfgs = {}

    def int8_call(q):
        return tk.w8a16_linear(x, q.qweight, q.scales, None)

    def int4_call(q):
        return tk.w4a16_gemv(x, q.qweight, q.scales, q.zeros, 128, None)

    q8, q4 = formats.quantize_int8(w), formats.quantize_int4(w, 128)
    ref8 = F.linear(x.float(), formats.dequantize_int8(q8.qweight, q8.scales))
    ref4 = F.linear(x.float(), formats.dequantize_int4(q4))
    q4.qweight = formats.interleave_int4(q4.qweight, 128)  # the GPU's byte order
    groups = k // 128
    int4_cfgs = [c for c in INT4_CONFIGS if c == "auto" or groups % c[1] == 0]
    splits = (1,) if n >= 10240 else (1, 2, 4, 8)  # narrow layers: also split the input dimension
    int8_cfgs = [(v, *c, sp) for v in ("words", "bytes") for c in INT8_CONFIGS for sp in splits
                 if v == "bytes" or c[0] >= 4]
    for fmt, q, cfgs, nbytes, call, ref in (("int8", q8, int8_cfgs, n * k + 4 * n, int8_call, ref8),
                                            ("int4", q4, int4_cfgs, n * k // 2 + 3 * n * k // 128, int4_call, ref4)):
        c = max(1, math.ceil(L2_DEFEAT_BYTES / nbytes))
        qs = [q] + [copy_quantized(q) for _ in range(c - 1)]

        def apply(cfg, fmt=fmt):
            if fmt == "int4":
                if cfg == "auto":
                    os.environ.pop("SAMBAY_W4_GEMV", None)
                else:
                    os.environ["SAMBAY_W4_GEMV"] = ",".join(map(str, cfg))
                return
            os.environ["SAMBAY_INT8_GEMV"] = cfg[0]
            os.environ["SAMBAY_GEMV"] = ",".join(map(str, cfg[1:]))

        best = sweep(cfgs, apply, lambda q=q, call=call: call(q), [lambda q=q, call=call: call(q) for q in qs], ref,
                     1e-2, fmt)
        os.environ.pop("SAMBAY_GEMV", None)
        os.environ.pop("SAMBAY_W4_GEMV", None)
        os.environ.pop("SAMBAY_INT8_GEMV", None)
        times[fmt] = best[1]
        best_cfgs[f"{fmt} {n}x{k}"] = best[0]
        line += f" | {fmt} {best[1]:6.1f} us {best[0]} {nbytes / (best[1] * 1e-6) / bw:4.0%}"
        if best[0] != "auto":  # the shipped launch (int4 "auto"; int8 the default table), timed the same way
            if fmt == "int4":
                apply("auto")
            t_auto = graph_us([lambda q=q, call=call: call(q) for q in qs])
            line += f" (auto {t_auto:.1f} us)"
    return line, times, best_cfgs


def bench_fc1_swiglu(bw: float) -> float:
    """int4 MLP fc1 with its fused SwiGLU epilogue (the model's decode path), shipped config: µs per call."""
    from bench_gemv import L2_DEFEAT_BYTES, graph_us

    n, k = 20480, 2560
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    q = formats.quantize_int4(w, 128)
    y = F.linear(x.float(), formats.dequantize_int4(q))
    ref = F.silu(y[:, : n // 2]) * y[:, n // 2:]
    q.qweight = formats.interleave_int4(q.qweight, 128)
    nbytes = n * k // 2 + 3 * n * k // 128
    qs = [q] + [copy_quantized(q) for _ in range(max(1, math.ceil(L2_DEFEAT_BYTES / nbytes)) - 1)]

    def call(q):
        return tk.w4a16_gemv(x, q.qweight, q.scales, q.zeros, 128, None, epilogue="swiglu")

    err = ((call(q).float() - ref).norm() / ref.norm()).item()
    t = graph_us([lambda q=q: call(q) for q in qs])
    line = f"mlp.fc1+swiglu   int4 {t:6.1f} us {nbytes / (t * 1e-6) / bw:4.0%} (auto; rel err {err:.1e}) |"
    for cfg in ((8, 4, 2, 1), (8, 2, 1, 1), (8, 4, 4, 1), (16, 2, 2, 1), (16, 4, 4, 1), (4, 4, 1, 1), (8, 2, 2, 1)):
        os.environ["SAMBAY_W4_GEMV"] = ",".join(map(str, cfg))
        line += f" {cfg}: {graph_us([lambda q=q: call(q) for q in qs]):.1f}"
    os.environ.pop("SAMBAY_W4_GEMV", None)
    print(line, flush=True)
    return t


def copy_quantized(q):
    return type(q)(**{f: (getattr(q, f).clone() if torch.is_tensor(getattr(q, f)) else getattr(q, f))
                      for f in q.__dataclass_fields__})


def main() -> None:
    bw = copy_bandwidth(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    totals = {"bf16": 0.0, "int8": 0.0, "int4": 0.0}
    best_cfgs = {}
    for name, n, k, count in SHAPES:
        line, times, cfgs = bench_shape(n, k, bw)
        print(f"{name:16s} " + line, flush=True)
        for fmt, t in times.items():
            totals[fmt] += count * t
        best_cfgs.update(cfgs)
    print("all linears of one token (lm_head excluded): " +
          ", ".join(f"{f} {t / 1000:.3f} ms" for f, t in totals.items()))
    bench_fc1_swiglu(bw)
    print(json.dumps({"totals_us": totals, "best": {k: list(v) for k, v in best_cfgs.items()}}))


if __name__ == "__main__":
    main()
