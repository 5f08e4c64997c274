#!/usr/bin/env python
"""Write a synthetic ArchScale training checkpoint (random weights of the right shapes) for converter tests.

The file looks like what ArchScale's pretrain script saves with Lightning Fabric: a dict with ``model`` (the GPT
state dict, float32 masters), ``optimizer`` (AdamW-style exp_avg / exp_avg_sq per parameter, i.e. twice the model),
``hparams``, ``iter_num`` and ``step_count``, in a run folder named the way ArchScale names runs.

Examples:
  python tools/make_synthetic_archscale.py /tmp/as --model phi4miniflash_d32            # official shape, 15.4 GB
  python tools/make_synthetic_archscale.py /tmp/as --tiny --layout 2026 --model sambayda_d8
Never write it into the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sambay_cli.convert import archscale_config as asc  # noqa: E402
from sambay_cli.convert.mapping import expected_archscale_shapes  # noqa: E402


def tiny_fields(model: str, n_layer: int = 8) -> dict:
    """A tiny stand-in for a registry model: same flags, small widths."""
    base = asc.resolve_registry_name(model)
    heads, groups = (4, 2) if model.startswith("phi4") else (4, 2)
    head_dim = 16 if model.startswith("phi4") else 24
    fields = dict(base, n_layer=n_layer, n_head=heads, n_query_groups=groups, head_dim=head_dim, ar=None,
                  n_embd=64, intermediate_size=128, vocab_size=256, padding_multiple=64, local_window=8)
    if "name" in fields:
        del fields["name"]
    return fields


def synthetic_state(cfg: asc.ArchConfig, layout: str, seed: int = 0, tie_twice: bool = True) -> dict[str, torch.Tensor]:
    """Random float32 tensors with ArchScale names/shapes; scaled so a forward pass stays well-behaved."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_archscale_shapes(cfg, layout).items():
        if name.endswith("A_log"):
            t = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).repeat(shape[0], 1)
            t += 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".D"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("dt_proj.bias"):
            t = torch.empty(shape).uniform_(-4.0, -1.0, generator=g)
        elif "lambda_" in name:
            t = 0.1 * torch.randn(shape, generator=g)
        elif ("norm" in name or "subln" in name or "ln_f" in name) and name.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
            if name.endswith("wte.weight") or name == "lm_head.weight":
                t = torch.randn(shape, generator=g) * 0.2
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        out[name] = t.float().contiguous()
    if cfg["tied_embed"] and tie_twice:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def fast_state(cfg: asc.ArchConfig, layout: str) -> dict[str, torch.Tensor]:
    """Large checkpoints: cheap deterministic fill (no RNG) so multi-GB files are written quickly."""
    out = {}
    for name, shape in expected_archscale_shapes(cfg, layout).items():
        t = torch.empty(shape, dtype=torch.float32)
        t.fill_(0.01 if len(shape) >= 2 else 1.0)
        out[name] = t
    if cfg["tied_embed"]:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def sparse_zeros_factory(folder: Path):
    """Zero tensors backed by sparse files: no RAM and no disk until torch.save writes the real checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = [0]

    def zeros_like(t: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        f = folder / f"backing-{counter[0]}.bin"
        with open(f, "wb") as fh:
            fh.truncate(t.numel() * 4)
        return torch.from_file(str(f), shared=True, size=t.numel(), dtype=torch.float32).view(t.shape)

    return zeros_like


def write_checkpoint(out_dir: Path, cfg: asc.ArchConfig, layout: str, state: dict[str, torch.Tensor],
                     hparams: dict, with_optimizer: bool = True, iter_num: int = 1000, zeros_like=torch.zeros_like
                     ) -> Path:
    run = out_dir / f"{hparams['train_config']}_{hparams['model_name']}_ctx{hparams['seq_len']}"
    run.mkdir(parents=True, exist_ok=True)
    optimizer: dict = {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]}
    if with_optimizer:
        for i, (name, t) in enumerate(state.items()):
            if name == "lm_head.weight" and cfg["tied_embed"]:
                continue
            optimizer["state"][i] = {"step": torch.tensor(float(iter_num)), "exp_avg": zeros_like(t),
                                     "exp_avg_sq": zeros_like(t)}
            optimizer["param_groups"][0]["params"].append(i)
    path = run / f"iter-{iter_num:06d}-ckpt.pth"
    torch.save({"model": state, "optimizer": optimizer, "hparams": hparams, "iter_num": iter_num,
                "step_count": iter_num}, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="phi4miniflash_d32")
    ap.add_argument("--layout", default="2025", choices=["2025", "2026"])
    ap.add_argument("--train-name", default="scaling")
    ap.add_argument("--tiny", action="store_true", help="small widths (tests)")
    ap.add_argument("--no-optimizer", action="store_true")
    ap.add_argument("--fast", action="store_true", help="constant fill instead of random (large files)")
    ap.add_argument("--sparse", action="store_true", help="zero weights and optimizer state backed by sparse files "
                    "(official-size checkpoints on machines with little RAM)")
    a = ap.parse_args()
    if str(a.out.resolve()).startswith(str(Path(__file__).resolve().parents[1])):
        sys.exit("refusing to write into the repository")
    train_model, depth = a.model.rsplit("_d", 1)
    hparams = {"train_config": a.train_name, "train_name": a.train_name, "model_name": a.model,
               "train_model": train_model, "depth": int(depth), "seq_len": 4096,
               "base_hps.d0": 16 if a.layout == "2025" else 8}
    hparams["mup"] = "mup" in a.train_name or "muonh" in a.train_name
    if a.tiny:
        cfg = asc.ArchConfig(asc.finish_fields(tiny_fields(a.model)), "synthetic")
    else:
        cfg = asc.from_hparams(hparams, a.layout)
    zeros_like = torch.zeros_like
    if a.sparse:
        import tempfile

        backing = Path(tempfile.mkdtemp(prefix="sparse-", dir=a.out.parent))
        zeros_like = sparse_zeros_factory(backing)
        state = {k: zeros_like(torch.empty(s, device="meta")) for k, s in expected_archscale_shapes(
            cfg, a.layout).items()}
        if cfg["tied_embed"]:
            state["lm_head.weight"] = state["transformer.wte.weight"]
    else:
        state = fast_state(cfg, a.layout) if a.fast else synthetic_state(cfg, a.layout)
    path = write_checkpoint(a.out, cfg, a.layout, state, hparams, with_optimizer=not a.no_optimizer,
                            zeros_like=zeros_like)
    if a.sparse:
        import shutil

        shutil.rmtree(backing)
    if a.tiny:  # the registry name does not describe the tiny widths: give the converter the Config as JSON
        (path.parent / "model_config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()
