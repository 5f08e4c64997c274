"""Reading ArchScale training checkpoints safely and lazily.

``torch.load(weights_only=True, mmap=True)`` never runs pickled code (a checkpoint that needs arbitrary unpickling is
refused) and maps tensor storages from the file instead of reading them, so the optimizer state is never
materialised and model tensors are paged in only when a converted copy is made.
"""

from __future__ import annotations

import mmap
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SambaYError

WRAPPER_PREFIXES = ("_orig_mod.", "_forward_module.", "module.")
_ITER_RE = re.compile(r"^iter-(\d+)-ckpt\.pth$")


@dataclass
class ArchScaleCheckpoint:
    path: Path
    tensors: dict[str, torch.Tensor]  # plain GPT module names, wrapper prefixes stripped, _extra_state dropped
    hparams: dict[str, Any]
    model_config: dict[str, Any] | None  # an embedded Config dict (written by `sambay convert --to archscale`)
    layout: str  # "2025" (fused grouped attn.attn) or "2026" (separate q/k/v)
    dropped: list[str]


def resolve_source(src: Path) -> tuple[Path, str | None]:
    """The .pth file to read and, for a run folder, a note saying which iteration was taken."""
    src = Path(src)
    if not src.exists():
        raise SambaYError(f"no such file or directory: {src}")
    if src.is_file():
        return src, None
    candidates = _iter_files(src)
    if not candidates:
        subdirs = [d for d in src.iterdir() if d.is_dir() and _iter_files(d)]
        if len(subdirs) == 1:
            candidates = _iter_files(subdirs[0])
        elif len(subdirs) > 1:
            raise SambaYError(f"{src} holds several ArchScale runs ({', '.join(d.name for d in subdirs)}); name one")
    if not candidates:
        raise SambaYError(f"{src} holds no ArchScale checkpoint (iter-*-ckpt.pth)")
    it, path = max(candidates)
    note = f"using {path.name} (latest of {len(candidates)} in {path.parent})"
    return path, note


def _iter_files(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.iterdir():
        m = _ITER_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return out


def load_checkpoint_object(path: Path) -> Any:
    """torch.load with weights_only and mmap; every failure becomes one clear line."""
    if not zipfile.is_zipfile(path):
        raise SambaYError(f"{path} is not a PyTorch zip checkpoint (legacy or foreign format); cannot read it safely")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "Cannot allocate memory" not in str(e):
                raise
            # A private mapping larger than RAM+swap is refused under heuristic overcommit; a shared read mapping
            # is not charged. Source tensors are never written to, so the file is left unchanged.
            with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        why = next((ln for ln in first if "Unsupported global" in ln or "GLOBAL" in ln), first[0] if first else "")
        raise SambaYError(
            f"{path} needs arbitrary unpickling, refused (never executed): {why.strip()[:200]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise SambaYError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                changed = True
    return name.replace("._orig_mod.", ".").replace("._forward_module.", ".")


def read_archscale(path: Path) -> ArchScaleCheckpoint:
    obj = load_checkpoint_object(path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise SambaYError(f"{path} is not an ArchScale checkpoint (no 'model' entry in the saved dict)")
    model = obj["model"]
    if not isinstance(model, dict):
        raise SambaYError(f"{path}: 'model' is not a state dict")
    tensors: dict[str, torch.Tensor] = {}
    dropped = []
    for raw_name, value in model.items():
        name = strip_wrappers(str(raw_name))
        if name.endswith("_extra_state") or not isinstance(value, torch.Tensor):
            dropped.append(name)
            continue
        tensors[name] = value
    if "transformer.wte.weight" not in tensors:
        raise SambaYError(f"{path} is not an ArchScale SambaY checkpoint (no transformer.wte.weight)")
    hparams = obj.get("hparams") if isinstance(obj.get("hparams"), dict) else {}
    model_config = obj.get("model_config") if isinstance(obj.get("model_config"), dict) else None
    return ArchScaleCheckpoint(path, tensors, hparams, model_config, detect_layout(tensors), dropped)


def detect_layout(tensors: dict[str, torch.Tensor]) -> str:
    fused = any(k.endswith(".attn.attn.weight") for k in tensors)
    separate = any(k.endswith(".attn.q_proj.weight") for k in tensors)
    if fused and separate:
        raise SambaYError("checkpoint mixes the fused (attn.attn) and separate (q_proj) attention layouts")
    return "2026" if separate else "2025"


def layer_count(tensors: dict[str, torch.Tensor]) -> int:
    idx = set()
    for k in tensors:
        m = re.match(r"^transformer\.h\.(\d+)\.", k)
        if m:
            idx.add(int(m.group(1)))
    return max(idx) + 1 if idx else 0
