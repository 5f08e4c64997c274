#!/usr/bin/env python3
"""int4 prefill-sized matmuls on a GPU: the fused Triton GEMM against dequantize-into-scratch + F.linear (the path
taken from triton_kernels.DEQUANT_MIN_ROWS rows), with the bf16 matmul for scale, on 3.8B shapes.

    python tools/bench_int4_prefill.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402


def time_layer(n: int, k: int, rows: tuple[int, ...]) -> None:
    w = torch.randn(n, k, device="cuda") / k ** 0.5
    q = formats.quantize_int4(w, 128)
    qi = formats.interleave_int4(q.qweight, 128)
    wb = w.bfloat16()

    def int4(x):
        return tk.w4a16_linear(x, qi, q.scales, q.zeros, 128, None, interleaved=True)

    default_min_rows = tk.DEQUANT_MIN_ROWS
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        tk.DEQUANT_MIN_ROWS = 10 ** 9  # the fused GEMM
        t_gemm = do_bench(lambda x=x: int4(x))
        y_gemm = int4(x)
        tk.DEQUANT_MIN_ROWS = 1  # dequantize + matmul
        t_dq = do_bench(lambda x=x: int4(x))
        y_dq = int4(x)
        t_bf = do_bench(lambda x=x: torch.nn.functional.linear(x, wb))
        rel = ((y_gemm.float() - y_dq.float()).norm() / y_dq.float().norm()).item()
        print(f"{n}x{k} m={m}: fused GEMM {t_gemm * 1000:.1f} us, dequant+matmul {t_dq * 1000:.1f} us, "
              f"bf16 matmul {t_bf * 1000:.1f} us (rel diff {rel:.1e})", flush=True)
    tk.DEQUANT_MIN_ROWS = default_min_rows
    out = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
    t = do_bench(lambda: tk.w4_dequantize(qi, q.scales, q.zeros, 128, slice(0, n), out, interleaved=True))
    print(f"  dequantize alone {t * 1000:.1f} us: {(n * k * 2.5) / t / 1e9:.2f} TB/s (int4 read + bf16 write)")


if __name__ == "__main__":
    torch.manual_seed(0)
    for n, k in ((20480, 2560), (2560, 10240), (2560, 2560)):
        time_layer(n, k, (8, 16, 32, 64, 128, 512, 2048))
