#!/usr/bin/env python3
"""Write a synthetic SambaY checkpoint with the exact tensor names, shapes and dtypes of a config — random values.

Default: the official Phi-4-mini-flash-reasoning shape (3.8B; bf16 with A_log and λ in float32, the real mix), in
two shards with an index, like the Hub repository. Used to measure loading memory/time without the real weights:

    python tools/make_synthetic_checkpoint.py /tmp/phi4-synthetic
    python tools/measure_load.py /tmp/phi4-synthetic
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sambay_cli.config import SambaYConfig, official_config_dir  # noqa: E402
from sambay_cli.loading import build_empty  # noqa: E402

FLOAT32_STORED = ("A_log", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


def synthetic_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "A_log":
        return torch.log(torch.arange(1, shape[-1] + 1, dtype=torch.float32)).expand(shape).contiguous()
    if leaf == "D" or (leaf == "weight" and ("norm" in name or "subln" in name)):
        return torch.ones(shape, dtype=torch.bfloat16)
    if leaf.startswith("lambda_"):
        return (torch.randn(shape, generator=gen) * 0.1).float()
    if leaf == "bias":
        return torch.zeros(shape, dtype=torch.bfloat16)
    fan_in = shape[-1] if len(shape) > 1 else 1
    t = torch.empty(shape, dtype=torch.bfloat16)
    t.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)), generator=gen)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", type=Path, default=official_config_dir(), help="config.json or its folder")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = SambaYConfig.from_file(args.config)
    shapes = {k: tuple(v.shape) for k, v in build_empty(cfg).state_dict().items()}
    names = list(shapes)
    args.out.mkdir(parents=True, exist_ok=True)
    src = args.config if args.config.is_dir() else args.config.parent
    for f in ("config.json", "generation_config.json"):
        if (src / f).is_file():
            shutil.copy(src / f, args.out / f)
    gen = torch.Generator().manual_seed(args.seed)
    per = math.ceil(len(names) / args.shards)
    weight_map, total = {}, 0
    for s in range(args.shards):
        fname = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors" if args.shards > 1 else "model.safetensors"
        part = {}
        for name in names[s * per:(s + 1) * per]:
            t = synthetic_tensor(name, shapes[name], gen)
            part[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(part, args.out / fname, metadata={"format": "pt"})
        del part
        print(f"wrote {fname}", flush=True)
    if args.shards > 1:
        (args.out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    print(f"{len(names)} tensors, {total:,} bytes of weights in {args.out}")


if __name__ == "__main__":
    main()
