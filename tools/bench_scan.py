#!/usr/bin/env python3
"""Time the Triton prefill selective scan on the official Mamba shape (d_inner 5120, d_state 16) for several
launch configurations (GPU), with the model's inputs: bf16, channels last (u and z are halves of the input
projection's output, Δ the dt projection's output, B and C slices of x_proj's), y written bf16 channels last.

    python tools/bench_scan.py --length 2048
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.bench import cuda_ms  # noqa: E402
from sambay_cli.kernels import triton_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--configs", nargs="+", default=["4,32,1", "8,32,1", "8,16,1", "4,16,1", "2,16,1", "8,16,2",
                                                   "16,16,2", "8,8,1", "4,64,1"],
                    help="block_d,block_t,num_warps triples to time")
    ap.add_argument("--mamba", action="store_true", help="also time mamba-ssm's CUDA scan (if built)")
    args = ap.parse_args()
    b, d, n, length, dev = args.batch, 5120, 16, args.length, "cuda"
    bf = torch.bfloat16
    xz = torch.randn(b, length, 2 * d, device=dev, dtype=bf)
    u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
    x_dbl = torch.randn(b, length, 160 + 2 * n, device=dev, dtype=bf)
    delta = torch.randn(b, length, d, device=dev, dtype=bf).transpose(1, 2)
    B, C = x_dbl[..., 160:160 + n].transpose(1, 2), x_dbl[..., 160 + n:].transpose(1, 2)
    A = -torch.rand(d, n, device=dev) * 4
    D, dtb = torch.randn(d, device=dev), torch.randn(d, device=dev)
    s0 = torch.randn(b, d, n, device=dev)
    nbytes = 4 * b * d * length * 2  # u, Δ, z read; y written (bf16)
    rows = []
    for cfg in args.configs:
        bd, bt, warps = (int(x) for x in cfg.split(","))

        def run(bd=bd, bt=bt, warps=warps):
            return triton_ops.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb, initial_state=s0,
                                             out_dtype=bf, block_d=bd, block_t=bt, num_warps=warps)
        try:
            rows.append((cuda_ms(run), bd, bt, warps))
        except Exception as e:  # noqa: BLE001 - report and continue (out of resources)
            print(f"{cfg}: {type(e).__name__}")
    if args.mamba:  # its kernel wants time-contiguous inputs: copies made outside the timing
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        uc, zc, dc, Bc, Cc = (t.contiguous() for t in (u, z, delta, B, C))
        ms = cuda_ms(lambda: selective_scan_fn(uc, dc, A, Bc, Cc, D, zc, dtb, delta_softplus=True,
                                               return_last_state=True))
        print(f"L {length} b {b}: mamba-ssm CUDA scan {1000 * ms:.0f} us  {nbytes / ms / 1e9:.2f} TB/s")
    rows.sort()
    for ms, bd, bt, warps in rows[:8]:
        print(f"L {length} b {b}: {1000 * ms:.0f} us  {nbytes / ms / 1e9:.2f} TB/s  (block_d {bd}, block_t {bt}, "
              f"warps {warps})")


if __name__ == "__main__":
    main()
