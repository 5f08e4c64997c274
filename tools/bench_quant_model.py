#!/usr/bin/env python3
"""Whole-model decode speed of weight-only quantized SambaY on a GPU, without a checkpoint on disk.

Builds the official 3.8B shape with random weights, quantizes the default selection of linear layers in memory with
the same functions `sambay quantize` uses (int8 per row, int4 group 128), and times batch-1 decode at the given
contexts with `sambay bench`'s method (caches filled synthetically, CUDA-graph decode steps), bf16 in the same run.

    python tools/bench_quant_model.py --methods bf16 int8 int4 --contexts 2048 32768
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.bench import bench_sambay, copy_bandwidth, random_model  # noqa: E402
from sambay_cli.config import official_config  # noqa: E402
from sambay_cli.quant import formats  # noqa: E402
from sambay_cli.quant.modules import QuantLinear  # noqa: E402
from sambay_cli.quant.policy import select_modules  # noqa: E402


def quantize_in_memory(model, method: str) -> None:
    selection = select_modules(model)
    names = getattr(selection, "modules", selection)
    for name in sorted(names):
        lin = model.get_submodule(name)
        if not isinstance(lin, torch.nn.Linear):
            continue
        w = lin.weight.data
        if method in ("nf4", "fp4"):  # bitsandbytes' own 4-bit (blocksize 64), served by bitsandbytes' matmul
            import bitsandbytes.functional as bnb_f

            packed, state = bnb_f.quantize_4bit(w.contiguous(), blocksize=64, quant_type=method)
            layer = QuantLinear(method, lin.in_features, lin.out_features,
                                {"qweight": packed, "absmax": state.absmax, "quant_map": state.code}, lin.bias,
                                w.dtype, bnb_state={"blocksize": 64, "dtype": "bfloat16", "quant_type": method,
                                                    "shape": [lin.out_features, lin.in_features]})
        elif method == "int8":
            q = formats.quantize_int8(w)
            layer = QuantLinear("int8", lin.in_features, lin.out_features, {"qweight": q.qweight, "scales": q.scales},
                                lin.bias, w.dtype)
        elif method == "int4":
            q = formats.quantize_int4(w, 128)
            tensors = {"qweight": q.qweight, "scales": q.scales}
            if q.zeros is not None:
                tensors["zeros"] = q.zeros
            layer = QuantLinear("int4", lin.in_features, lin.out_features, tensors, lin.bias, w.dtype,
                                group_size=q.group_size)
            if w.is_cuda:  # the GPU byte order, as the loader does for CUDA models
                layer.interleave_for_gpu_()
        else:
            raise SystemExit(f"unknown method {method!r} (bf16, int8, int4, nf4, fp4)")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, layer)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["bf16", "int8", "int4"])
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 32768])
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="decode batch sizes (sequences per step)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (no graphs, no copy bandwidth)")
    ap.add_argument("--prompt-len", type=int, default=2048, help="prefill length timed (keep it small on CPU)")
    args = ap.parse_args()
    cfg = official_config()
    cuda = args.device == "cuda"
    bw = copy_bandwidth(torch.device("cuda")) if cuda else None
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "copy_bandwidth": bw, "results": {}}
    for method in args.methods:
        model = random_model(cfg, args.device, torch.bfloat16)
        if method != "bf16":
            quantize_in_memory(model, method)
        r = bench_sambay(model, cfg, batches=args.batches, contexts=args.contexts, steps=args.steps,
                         prompt_len=args.prompt_len, gen_len=max(args.contexts), graphs=cuda, copy_bw=bw,
                         prefill_lens=[args.prompt_len])
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        out["results"][method] = {"weight_bytes": weight_bytes, "decode": r["decode"], "prefill": r["prefill"]}
        for d in r["decode"]:
            share = f", {100 * d['fraction_of_copy_bandwidth']:.0f}% of copy BW" if bw else ""
            print(f"{method}: batch {d['batch']} ctx {d['context']}: {d['tokens_per_s']:.1f} tok/s, {d['ms_per_step']:.2f} ms/step, "
                  f"{d['bytes_per_step'] / 1e9:.2f} GB/step{share}", flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
