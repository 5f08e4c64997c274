#!/usr/bin/env python3
"""Sweep the batched-decode launches of the int4 GEMM (and optionally the int8 tiles) on a GPU, 3.8B shapes.

    python tools/sweep_batched_decode.py --rows 8 16 32 64 128 [--int8] [--json out.json]

For each row count and layer shape: bf16 ``F.linear``, the shipped dispatch, and every candidate launch of
``_w4_batched_gemm_kernel`` — (activation rows per tile, output rows per program, warps, stages, split-K program
target) — graph-timed over weight copies that defeat L2. Then, per layer class (wide: at least WIDE_MIN_N
outputs; narrow: the rest), the best launches by count-weighted total over the model's layers: the numbers behind
``triton_kernels._W4_BATCHED_LAUNCH``. ``--int8`` does the same for the int8 batched GEMM,
(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, transposed, split target): ``triton_kernels._W8_BATCHED_LAUNCH``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant import triton_kernels as tk  # noqa: E402
from sambay_cli.quant.bench_kernels import SHAPES  # noqa: E402

TARGETS = (0, 264, 528)
INT8_TILES = ((64, 128, 64, 4, 3), (128, 64, 64, 4, 4), (64, 64, 128, 4, 4), (32, 64, 128, 4, 4),
              (32, 32, 128, 4, 4), (16, 32, 256, 4, 4))


def int8_candidates(m: int) -> list[tuple[int, ...]]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, transposed): the tiles above, and transposed tiles of the row count."""
    bm = min(128, max(16, m))
    return [(*t, 0) for t in INT8_TILES] + [(bm, bn, bk, nw, ns, 1) for bn, bk, nw in
                                           ((64, 128, 4), (64, 64, 4), (128, 64, 8), (128, 128, 8)) for ns in (3, 4)]


def shapes() -> list[tuple[int, int, int]]:
    """(outputs, inputs, layers of that shape in the 3.8B model)."""
    counts: dict[tuple[int, int], int] = {}
    for _, n, k, count in SHAPES:
        counts[(n, k)] = counts.get((n, k), 0) + count
    return [(n, k, c) for (n, k), c in counts.items()]


def int4_candidates(m: int) -> list[tuple[int, ...]]:
    tiles = sorted({min(128, max(16, b)) for b in (m // 2, m)})
    return [(bm, bn, nw, 3, target) for bm in tiles for bn, nw in ((64, 4), (128, 8), (128, 4)) for target in TARGETS]


def n_copies(bytes_each: int) -> int:
    """Weight copies whose round-robin use keeps every read out of L2."""
    from bench_gemv import L2_DEFEAT_BYTES

    return math.ceil(L2_DEFEAT_BYTES / bytes_each)


def main() -> None:
    from bench_gemv import graph_us
    from bench_quant_gemv import copy_quantized

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--int8", action="store_true", help="also sweep the int8 batched tiles")
    ap.add_argument("--no-int4", action="store_true", help="skip the int4 candidates")
    ap.add_argument("--json", type=Path, help="write every timing here")
    args = ap.parse_args()
    torch.manual_seed(0)
    records = []
    for n, k, count in shapes():
        w = torch.randn(n, k, device="cuda") / k ** 0.5
        q4 = formats.quantize_int4(w.bfloat16(), 128)
        deq4 = formats.dequantize_int4(q4).float()
        q4.qweight = formats.interleave_int4(q4.qweight, 128)
        q8 = formats.quantize_int8(w.bfloat16())
        deq8 = formats.dequantize_int8(q8.qweight, q8.scales).float()
        wbs = [w.bfloat16() for _ in range(n_copies(n * k * 2))]
        q4s = [q4] + [copy_quantized(q4) for _ in range(n_copies(n * k // 2) - 1)]
        q8s = [q8] + [copy_quantized(q8) for _ in range(n_copies(n * k) - 1)]
        for m in args.rows:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref4, ref8 = x.float() @ deq4.T, x.float() @ deq8.T

            def int4(q, x=x):
                return tk.w4a16_linear(x, q.qweight, q.scales, q.zeros, 128, None, interleaved=True)

            def int8(q, x=x):
                return tk.w8a16_linear(x, q.qweight, q.scales, None)

            rec = {"n": n, "k": k, "count": count, "rows": m,
                   "bf16": graph_us([lambda w=w, x=x: F.linear(x, w) for w in wbs]),
                   "int4 shipped": graph_us([lambda q=q: int4(q) for q in q4s]),
                   "int8 shipped": graph_us([lambda q=q: int8(q) for q in q8s]), "int4": {}, "int8": {}}
            gemv_rows = tk.GEMV_MAX_ROWS
            tk.GEMV_MAX_ROWS = min(gemv_rows, m - 1)  # candidates are batched-GEMM launches, also below 5 rows
            for cfg in [] if args.no_int4 else int4_candidates(m):
                os.environ["SAMBAY_W4_GEMM_BATCHED"] = ",".join(map(str, cfg))
                y = int4(q4)
                assert ((y.float() - ref4).norm() / ref4.norm()).item() < 1e-2, cfg
                rec["int4"][str(cfg)] = graph_us([lambda q=q: int4(q) for q in q4s])
            os.environ.pop("SAMBAY_W4_GEMM_BATCHED", None)
            if args.int8:
                for tiles in int8_candidates(m):
                    for target in TARGETS:
                        os.environ["SAMBAY_W8_GEMM_BATCHED"] = ",".join(map(str, (*tiles, target)))
                        try:
                            y = int8(q8)
                        except Exception as e:  # noqa: BLE001 - tiles too large for shared memory
                            print(f"  int8 {tiles}: {type(e).__name__}", flush=True)
                            break
                        assert ((y.float() - ref8).norm() / ref8.norm()).item() < 1e-2, tiles
                        rec["int8"][str((*tiles, target))] = graph_us([lambda q=q: int8(q) for q in q8s])
                os.environ.pop("SAMBAY_W8_GEMM_BATCHED", None)
            tk.GEMV_MAX_ROWS = gemv_rows
            records.append(rec)
            best = {f: min(rec[f].items(), key=lambda kv: kv[1]) for f in ("int4", "int8") if rec[f]}
            print(f"rows {m} {n}x{k}: bf16 {rec['bf16']:.1f} us, int4 shipped {rec['int4 shipped']:.1f}, int8 shipped "
                  f"{rec['int8 shipped']:.1f}; best " + ", ".join(f"{f} {t:.1f} {c}" for f, (c, t) in best.items()),
                  flush=True)
    for m in args.rows:
        rows = [r for r in records if r["rows"] == m]
        total = {key: sum(r["count"] * r[key] for r in rows) for key in ("bf16", "int4 shipped", "int8 shipped")}
        print(f"rows {m}, all linears of a step (us): " + ", ".join(f"{a} {b:.0f}" for a, b in total.items()))
        for name, cls in (("wide", [r for r in rows if r["n"] >= tk.WIDE_MIN_N]),
                          ("narrow", [r for r in rows if r["n"] < tk.WIDE_MIN_N])):
            for fmt in [f for f in ("int4", "int8") if cls and cls[0][f]]:
                keys = set.intersection(*(set(r[fmt]) for r in cls)) if cls else set()
                best = sorted((sum(r["count"] * r[fmt][c] for r in cls), c) for c in keys)[:3]
                print(f"  {fmt} {name} layers, best launches: " + ", ".join(f"{c} {t:.0f}" for t, c in best))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
