#!/usr/bin/env python3
"""Where a decode step's time goes (GPU): kernels of one step of the 3.8B shape with random weights, by device time.

    python tools/profile_decode.py --batch 1 --context 2048 [--quant int8|int4|nf4]

Prints the kernels of a graph-replayed step grouped by name (calls per step, µs per step), the sum of kernel time
and the step's wall time — the difference is what launches and gaps cost inside the graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sambay_cli.bench import fill_cache, random_model  # noqa: E402
from sambay_cli.config import official_config  # noqa: E402
from sambay_cli.generation.cuda_graphs import GraphedDecodeStep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--prefill", type=int, default=0, help="profile a prefill of this many tokens instead")
    ap.add_argument("--quant", choices=["int8", "int4", "nf4"], help="quantize the linears in memory first "
                    "(as tools/bench_quant_model.py does)")
    args = ap.parse_args()
    if args.prefill:
        return profile_prefill(args)
    cfg = official_config()
    model = random_model(cfg, "cuda", torch.bfloat16)
    if args.quant:
        from bench_quant_model import quantize_in_memory

        quantize_in_memory(model, args.quant)
    cache = model.new_cache(args.batch, args.context + 64)
    fill_cache(cache, args.context)
    tok = torch.zeros(args.batch, 1, dtype=torch.long, device="cuda")
    with torch.inference_mode():
        model.run(tok, cache=cache)
        step = GraphedDecodeStep(model, cache)
        for _ in range(3):
            step(tok)
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        for _ in range(args.steps):
            step(tok)
        ev[1].record()
        torch.cuda.synchronize()
        wall_us = 1000 * ev[0].elapsed_time(ev[1]) / args.steps
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step(tok)
            torch.cuda.synchronize()
    report(prof, args.steps, wall_us, f"batch {args.batch} context {args.context}: step", args.top)


def profile_prefill(args) -> None:
    from sambay_cli.generation.engine import prefill

    cfg = official_config()
    model = random_model(cfg, "cuda", torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prefill)).tolist()
    with torch.inference_mode():
        prefill(model, ids, 1)
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        prefill(model, ids, 1)
        ev[1].record()
        torch.cuda.synchronize()
        wall_us = 1000 * ev[0].elapsed_time(ev[1])
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            prefill(model, ids, 1)
            torch.cuda.synchronize()
    report(prof, 1, wall_us, f"prefill of {args.prefill} tokens: wall", args.top)


def _exposed(prof) -> dict[str, float]:
    """Per kernel name, µs of the timeline it alone extends: kernels in start order, each counted from the later of
    its start and the end of everything before it (programmatic dependent launch overlaps neighbours, so kernel
    durations add up to more than the step; these add up to the busy time). Gaps between kernels are not counted."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    exposed: dict[str, float] = {}
    covered = float("-inf")
    for start, end, name in spans:
        exposed[name] = exposed.get(name, 0.0) + max(0.0, end - max(start, covered))
        covered = max(covered, end)
    return exposed


def report(prof, steps: int, wall_us: float, title: str, top: int) -> None:
    kernels: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(e.name, []).append(e.device_time)
    exposed = _exposed(prof)
    rows = sorted(((n, len(t) / steps, sum(t) / steps, exposed.get(n, 0.0) / steps) for n, t in kernels.items()),
                  key=lambda r: -r[3])
    total = sum(r[2] for r in rows)
    busy = sum(r[3] for r in rows)
    calls = sum(r[1] for r in rows)
    print(f"{title} wall {wall_us:.0f} us; kernel time {total:.0f} us in {calls:.0f} kernels, {busy:.0f} us of it "
          "not overlapped by an earlier kernel (second column)")
    for name, n, us, alone in rows[:top]:
        print(f"{us:8.1f} us {alone:8.1f} us {n:6.0f}x  {name[:100]}")
    print(json.dumps({"wall_us": wall_us, "kernel_us": total, "busy_us": busy, "kernels": calls}))


if __name__ == "__main__":
    main()
