#!/usr/bin/env python3
"""Relative error of the int4 decode GEMV against float32 dequantize-then-matmul on 3.8B shapes (GPU).

    python tools/int4_gemv_error.py

bf16 activations take the packed bfloat16 path (products and sums of four rounded to bf16); float32 activations the
float32 path. For scale, the line also gives the error of rounding the exact result to bf16.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402


def rel(a, ref):
    return ((a - ref).norm() / ref.norm()).item()


torch.manual_seed(0)
for n, k in ((2560, 2560), (20480, 2560), (2560, 10240), (10240, 2560)):
    w = torch.randn(n, k, device="cuda") / k ** 0.5
    x = torch.randn(1, k, device="cuda")
    for sym in (False, True):
        q = formats.quantize_int4(w, 128, symmetric=sym)
        ref = F.linear(x.bfloat16().float(), formats.dequantize_int4(q))
        qi = formats.interleave_int4(q.qweight, 128)
        yb = tk.w4a16_gemv(x.bfloat16(), qi, q.scales, q.zeros, 128, None).float()
        yf = tk.w4a16_gemv(x, qi, q.scales, q.zeros, 128, None)
        print(f"{n}x{k} sym={sym}: bf16 packed rel {rel(yb, ref):.2e} "
              f"(bf16 rounding of the exact result {rel(ref.bfloat16().float(), ref):.2e}); "
              f"fp32 path rel {rel(yf, ref):.2e}")
