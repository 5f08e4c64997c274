#!/usr/bin/env python3
"""Batch-1 decode linears of the 3.8B shape: cuBLAS (+ the element-wise kernel that follows it) against the Triton
GEMV with its fused epilogue, over a sweep of launch parameters (GPU).

    python tools/bench_gemv.py [--quick] [--json OUT]

Device time per call comes from a CUDA graph of many calls that cycle through enough copies of the weight to defeat
the L2 cache (decode streams every weight once per step). Prints, per shape, cuBLAS, the best Triton config and its
bandwidth (weight bytes / time) as a share of the copy bandwidth measured in the same run, then the total for all
linears of one token with each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.bench import copy_bandwidth  # noqa: E402
from sambay_cli.kernels import (
    reference,  # noqa: E402
    triton_ops,  # noqa: E402
)
from sambay_cli.kernels import triton_gemv as tg  # noqa: E402

# (name, rows of W, K, epilogue, count per token) of the official Phi-4-mini-flash shape
SHAPES = [("mlp.fc1+swiglu", 20480, 2560, "swiglu", 32), ("mlp.fc2", 2560, 10240, "none", 32),
          ("mamba.in_proj", 10240, 2560, "none", 9), ("mamba.out_proj", 2560, 5120, "none", 9),
          ("mamba.x_proj", 192, 5120, "none", 9), ("mamba.dt_proj", 5120, 160, "none", 9),
          ("gmu.in_proj+gate", 5120, 2560, "gate", 7), ("gmu.out_proj", 2560, 5120, "none", 7),
          ("attn.Wqkv", 5120, 2560, "none", 9), ("xattn.Wq", 2560, 2560, "none", 7),
          ("attn.out_proj", 2560, 2560, "none", 16), ("lm_head", 200064, 2560, "none", 1)]
L2_DEFEAT_BYTES = 256 << 20


def graph_us(fns, reps: int = 4, best_of: int = 1) -> float:
    """Device µs per call of the functions in ``fns`` (each called once per round, ``reps`` rounds in one graph);
    with ``best_of`` > 1 the fastest of that many timed replays."""
    for f in fns:
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for f in fns:
                f()
    g.replay()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(best_of):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1000 / (reps * len(fns)))
    return best


def sweep(cfgs, apply, call, timed, ref, tol: float, label: str):
    """The fastest of ``cfgs``: for each, ``apply(cfg)`` (sets the environment the kernel reads), check ``call()``
    against ``ref`` (relative error ≤ ``tol``, else reported and skipped), time the ``timed`` functions with
    graph_us. Configs that fail to compile are reported and skipped. Returns (cfg, µs) or None."""
    best = None
    for cfg in cfgs:
        apply(cfg)
        try:
            err = ((call().float() - ref).norm() / ref.norm()).item()
            if err > tol:
                print(f"  {label} {cfg}: wrong (rel {err:.1e})")
                continue
            t = graph_us(timed)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
            print(f"  {label} {cfg}: {type(e).__name__} {str(e)[:80]}")
            continue
        if best is None or t < best[1]:
            best = (cfg, t)
    return best


def configs(quick: bool):
    bns, bks, warps = ([2, 4, 8], [512, 1024], [4, 8]) if quick else ([1, 2, 4, 8], [256, 512, 1024, 2048], [4, 8])
    for bn, bk, nw in itertools.product(bns, bks, warps):
        if bn * bk <= 2048 * nw:  # the float32 partial product lives in registers
            yield bn, bk, nw
    if not quick:  # narrow steps, few warps: many programs in flight (the wide MLP fc1)
        yield from [(1, 128, 4), (1, 128, 2), (1, 256, 2), (2, 128, 4), (2, 256, 2), (1, 512, 2)]


def bench_shape(name: str, n: int, k: int, epi: str, count: int, bw: float, quick: bool) -> dict:
    dev = "cuda"
    nbytes = n * k * 2
    copies = max(1, math.ceil(L2_DEFEAT_BYTES / nbytes))
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
    x = torch.randn(1, 1, k, device=dev, dtype=torch.bfloat16)
    n_out = n // 2 if epi == "swiglu" else n
    mem = torch.randn(1, 1, n_out, device=dev, dtype=torch.bfloat16)

    def cublas(w):
        if epi == "swiglu":
            gate, up = torch.nn.functional.linear(x, w).chunk(2, dim=-1)
            return triton_ops.silu_mul(gate, up, up.dtype)
        if epi == "gate":
            return triton_ops.silu_mul(torch.nn.functional.linear(x, w), mem, x.dtype)
        return torch.nn.functional.linear(x, w)

    def ours(w):
        return tg.gemv(x, w, None, epilogue=epi, memory=mem)

    t_cublas = graph_us([lambda w=w: cublas(w) for w in ws])
    x32, w32 = x.float(), ws[0].float()
    ref = {"none": lambda: reference.linear(x32, w32, None),
           "swiglu": lambda: reference.linear_swiglu(x32, w32, None),
           "gate": lambda: reference.linear_gate(x32, w32, None, mem.float())}[epi]()

    def apply(cfg):
        os.environ["SAMBAY_GEMV_BF16"] = ",".join(map(str, cfg))

    best = sweep(configs(quick), apply, lambda w=ws[0]: ours(w), [lambda w=w: ours(w) for w in ws], ref, 2e-2,
                 name)
    os.environ.pop("SAMBAY_GEMV_BF16", None)
    cfg, t = best
    share = nbytes / (t * 1e-6) / bw
    print(f"{name:18s} {n:6d}x{k:5d} x{count:2d}: cuBLAS {t_cublas:7.1f} us  triton {t:7.1f} us {cfg} "
          f"({share:.0%} of copy BW; cuBLAS {nbytes / (t_cublas * 1e-6) / bw:.0%})", flush=True)
    del ws
    torch.cuda.empty_cache()
    return {"name": name, "n": n, "k": k, "epilogue": epi, "count": count, "cublas_us": t_cublas, "triton_us": t,
            "config": cfg, "share_of_copy_bw": share}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bw = copy_bandwidth(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")
    rows = [bench_shape(name, n, k, epi, count, bw, args.quick) for name, n, k, epi, count in SHAPES]
    tot_cublas = sum(r["count"] * r["cublas_us"] for r in rows)
    tot_best = sum(r["count"] * r["triton_us"] for r in rows)
    print(f"all linears of one token: cuBLAS {tot_cublas / 1000:.3f} ms, triton {tot_best / 1000:.3f} ms")
    result = {"device": torch.cuda.get_device_name(), "copy_bw": bw, "rows": rows, "cublas_ms": tot_cublas / 1000,
              "triton_ms": tot_best / 1000}
    print(json.dumps({(r["n"], r["k"]).__str__(): r["config"] for r in rows}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
