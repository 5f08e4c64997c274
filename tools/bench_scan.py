#!/usr/bin/env python3
"""Time the Triton prefill selective scan on the official Mamba shape (d_inner 5120, d_state 16) for several
launch configurations (GPU).

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
    ap.add_argument("--configs", nargs="+", default=["4,16,1", "4,16,2", "8,16,2", "2,32,1", "8,8,2"],
                    help="block_d,block_t,num_warps triples to time")
    ap.add_argument("--mamba", action="store_true", help="also time mamba-ssm's CUDA scan (if built)")
    args = ap.parse_args()
    b, d, n, length, dev = args.batch, 5120, 16, args.length, "cuda"
    u, z = (torch.randn(b, d, length, device=dev) for _ in range(2))
    x_dbl = torch.randn(b, length, 160 + 2 * n, device=dev)
    delta = torch.randn(b, length, d, device=dev).transpose(1, 2)
    B, C = x_dbl[..., 160:160 + n].transpose(1, 2), x_dbl[..., 160 + n:].transpose(1, 2)
    A = -torch.rand(d, n, device=dev) * 4
    D, dtb = torch.randn(d, device=dev), torch.randn(d, device=dev)
    s0 = torch.randn(b, d, n, device=dev)
    nbytes = 4 * b * d * length * 4  # u, Δ, z read; y written (float32)
    rows = []
    for bd, bt, warps in (tuple(int(x) for x in c.split(",")) for c in args.configs):
        def run(bd=bd, bt=bt, warps=warps):
            return triton_ops.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb, initial_state=s0,
                                             block_d=bd, block_t=bt, num_warps=warps)
        try:
            rows.append((cuda_ms(run), bd, bt, warps))
        except Exception as e:  # noqa: BLE001 - report and continue (out of resources)
            print(f"block_d {bd} block_t {bt} warps {warps}: {type(e).__name__}")
    if args.mamba:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        delta_c = delta.contiguous()
        ms = cuda_ms(lambda: selective_scan_fn(u, delta_c, A, B, C, D, z, dtb, delta_softplus=True,
                                               return_last_state=True))
        print(f"L {length} b {b}: mamba-ssm CUDA scan {1000 * ms:.0f} us  {nbytes / ms / 1e9:.2f} TB/s")
    rows.sort()
    for ms, bd, bt, warps in rows[:6]:
        print(f"L {length} b {b}: {1000 * ms:.0f} us  {nbytes / ms / 1e9:.2f} TB/s  (block_d {bd}, block_t {bt}, "
              f"warps {warps})")


if __name__ == "__main__":
    main()
