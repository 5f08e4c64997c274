"""Kernel benchmark for the quantized linears on one GPU (the lead runs it; no CPU use):

    python -m sambay_cli.quant.bench_kernels [--rows 1] [--json]

For every linear shape of the official 3.8B model (random weights) it times, at the given activation row count,
bf16 ``F.linear``, the fused W8A16 and W4A16-g128 Triton kernels and bitsandbytes nf4 (when installed), and reports
time, the bytes each reads (weight + scales/zeros + activations) as achieved bandwidth, that bandwidth as a share of
the measured device copy bandwidth, and the speed ratios to bf16 and to nf4. Whole-model decode numbers come from
``sambay bench DIR`` on a quantized directory (e.g. made from the synthetic official-shape checkpoint).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

# (name, out_features, in_features, count per model) of the official Phi-4-mini-flash shape
SHAPES = [("mlp.fc1", 20480, 2560, 32), ("mlp.fc2", 2560, 10240, 32), ("mamba.in_proj", 10240, 2560, 9),
          ("mamba.out_proj", 2560, 5120, 9), ("gmu.in_proj", 5120, 2560, 7), ("gmu.out_proj", 2560, 5120, 7),
          ("attn.Wqkv", 5120, 2560, 9), ("xattn.Wq", 2560, 2560, 7), ("attn.out_proj", 2560, 2560, 16)]


def _time(fn, reps: int = 50) -> float:
    """Seconds per eager call."""
    from ..bench import cuda_ms

    return cuda_ms(fn, reps) / 1e3


def main() -> None:
    from ..bench import copy_bandwidth
    from . import formats, triton_kernels

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev)
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_f
    except Exception:
        bnb = None
    rows = []
    totals = {"bf16": 0.0, "int8": 0.0, "int4": 0.0, "nf4": 0.0}
    for name, n, k, count in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        x = torch.randn(args.rows, k, device=dev, dtype=torch.bfloat16)
        q8 = formats.quantize_int8(w)
        q4 = formats.quantize_int4(w, 128, clip_search=False)
        q4.qweight = formats.interleave_int4(q4.qweight, 128)  # the byte order the GPU kernels read
        act = x.numel() * 2 + args.rows * n * 2
        res = {"shape": name, "out": n, "in": k}
        t = _time(lambda w=w, x=x: F.linear(x, w))
        res["bf16"] = {"s": t, "bytes": w.numel() * 2 + act}
        t = _time(lambda x=x, q8=q8: triton_kernels.w8a16_linear(x, q8.qweight, q8.scales, None))
        res["int8"] = {"s": t, "bytes": q8.qweight.numel() + q8.scales.numel() * 4 + act}
        t = _time(lambda x=x, q4=q4: triton_kernels.w4a16_linear(x, q4.qweight, q4.scales, q4.zeros, 128, None,
                                                                 interleaved=True))
        res["int4"] = {"s": t, "bytes": q4.qweight.numel() + q4.scales.numel() * 3 + act}
        if bnb is not None:
            packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
            t = _time(lambda x=x, packed=packed, state=state: bnb.matmul_4bit(x, packed.t(), quant_state=state))
            res["nf4"] = {"s": t, "bytes": packed.numel() + state.absmax.numel() * 4 + act}
        for key in ("bf16", "int8", "int4", "nf4"):
            if key in res:
                res[key]["GB/s"] = res[key]["bytes"] / res[key]["s"] / 1e9
                res[key]["of_copy_bw"] = res[key]["bytes"] / res[key]["s"] / bw
                totals[key] += res[key]["s"] * count
        rows.append(res)
    summary = {"copy_bandwidth_GBps": bw / 1e9, "rows": args.rows, "device": torch.cuda.get_device_name(),
               "linear_time_per_token_s": totals,
               "speedup_vs_bf16": {k: totals["bf16"] / v for k, v in totals.items() if v},
               "speedup_vs_nf4": {k: totals["nf4"] / v for k, v in totals.items() if v and totals["nf4"]},
               "shapes": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['device']}: copy bandwidth {bw / 1e9:.0f} GB/s, rows={args.rows}")
    for r in rows:
        cells = [f"{k} {r[k]['s'] * 1e6:7.1f} us {100 * r[k]['of_copy_bw']:5.1f}%" for k in ("bf16", "int8", "int4",
                                                                                           "nf4") if k in r]
        print(f"{r['shape']:15s} " + " | ".join(cells))
    print("all linears per token:", {k: f"{v * 1e3:.3f} ms" for k, v in totals.items() if v})
    print("speedup vs bf16:", {k: round(v, 2) for k, v in summary["speedup_vs_bf16"].items()})
    print("speedup vs nf4:", {k: round(v, 2) for k, v in summary["speedup_vs_nf4"].items()})


if __name__ == "__main__":
    main()
