#!/usr/bin/env python3
"""Time the Triton decode-attention kernel (differential attention, 3.8B shape) on a GPU: the default launch of
``triton_ops.attention_decode_launch`` against a sweep of launches, each timed as 20 calls replayed from one CUDA
graph, best of five replays (as the decode step runs it; eager calls would time Python's launch cost instead).

    python tools/bench_attention_decode.py                       # the default cases below
    python tools/bench_attention_decode.py --case 1,34816,2048 --case 16,512,512 --json sweep.json

A case is batch,cache_positions,filled_keys: the SWA ring is 512 positions, full; the shared KV is as long as the
generation (prompt + --max-tokens) and filled to the current context. The last table ranks the launches that ran in
the most cases (a launch with more splits than a small cache can fill is skipped there) by their mean time relative
to the default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.kernels import triton_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemv import graph_us  # noqa: E402

CASES = ["1,512,512", "1,4096,2048", "1,34816,2048", "1,34816,8192", "1,34816,32768", "16,512,512", "16,4096,2048"]


def time_case(bsz: int, s_max: int, filled: int, launches: list[tuple[int, int, int, int]],
              kv_dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """µs per call of the default launch and of each of ``launches`` (block_s, splits, num_warps, num_stages)."""
    h, g, d = 40, 20, 64
    dev = "cuda"
    q = torch.randn(bsz, h, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(bsz, g, s_max, d, device=dev, dtype=torch.bfloat16).to(kv_dtype)
    v = torch.randn(bsz, g, s_max, d, device=dev, dtype=torch.bfloat16).to(kv_dtype)
    valid = torch.zeros(bsz, s_max, dtype=torch.bool, device=dev)
    valid[:, :filled] = True
    n = torch.full((bsz,), filled, dtype=torch.long, device=dev)
    lam = torch.tensor(0.3, device=dev)
    w = torch.ones(2 * d, device=dev)

    def run(**launch):
        return lambda: triton_ops.diff_attention_decode(q, k, v, valid, n, scale=0.125, lambda_full=lam,
                                                        lambda_init=0.8, subln_weight=w, eps=1e-5,
                                                        out_dtype=torch.bfloat16, **launch)

    default = triton_ops.attention_decode_launch(bsz * g // 2, s_max, triton_ops._sm_count(q.device), k.element_size())
    graph_us([run()], 20)  # warm-up: the first launch timed after the allocations ran up to 14 % slow
    times = {"default": graph_us([run()], 20, best_of=5)}
    for block_s, splits, warps, stages in launches:
        try:
            times[f"{block_s},{splits},{warps},{stages}"] = graph_us(
                [run(block_s=block_s, splits=splits, num_warps=warps, num_stages=stages)], 20, best_of=5)
        except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of shared memory)
            print(f"{bsz},{s_max},{filled}: {block_s},{splits},{warps},{stages}: {type(e).__name__}", flush=True)
    nbytes = 2 * bsz * g * filled * d * k.element_size()
    best = sorted((t, key) for key, t in times.items())[:4]
    print(f"batch {bsz}, {s_max} positions, {filled} keys: default {default} {times['default']:.2f} µs "
          f"({nbytes / times['default'] / 1e6:.2f} TB/s); best " + ", ".join(f"{key} {t:.2f}" for t, key in best),
          flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="batch,cache_positions,filled_keys (repeatable)")
    ap.add_argument("--block-s", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--splits", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--warps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--kv-cache-dtype", choices=["bf16", "fp8"], default="bf16",
                    help="fp8: the shared KV as `--kv-cache-dtype fp8` stores it (float8 e4m3, widened on load)")
    ap.add_argument("--json", type=Path, help="write every timing here")
    args = ap.parse_args()
    table: dict[str, dict[str, float]] = {}
    for case in args.case or CASES:
        bsz, s_max, filled = (int(v) for v in case.split(","))
        launches = [launch for launch in itertools.product(args.block_s, args.splits, args.warps, args.stages)
                    if launch[1] == 1 or launch[1] * launch[0] <= s_max]  # else some splits could never own keys
        kv_dtype = torch.float8_e4m3fn if args.kv_cache_dtype == "fp8" else torch.bfloat16
        table[case] = time_case(bsz, s_max, filled, launches, kv_dtype)
        torch.cuda.empty_cache()
    ratios: dict[str, list[float]] = {}
    for times in table.values():
        for key, t in times.items():
            if key != "default":
                ratios.setdefault(key, []).append(t / times["default"])
    ranked = sorted((sum(r) / len(r), key, len(r)) for key, r in ratios.items() if len(r) == max(map(len, ratios.values())))
    print("mean time relative to the default, launches that ran in the most cases:")
    for ratio, key, count in ranked[:10]:
        print(f"  {key}: {ratio:.3f} over {count} cases")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
