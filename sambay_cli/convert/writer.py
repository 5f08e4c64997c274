"""Atomic output directories and a streaming safetensors writer.

Shards are written tensor by tensor: the header is computed from the planned shapes, then each tensor is produced,
written and freed, so resident memory stays near one tensor (not one shard).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SambaYError

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def atomic_output_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``out`` on success, delete it on any failure."""
    out = Path(out).absolute()
    if out.exists() and not force:
        raise SambaYError(f"{out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise SambaYError(f"{out} exists and is not a directory")
    parent = out.parent
    if not parent.is_dir():
        raise SambaYError(f"parent directory {parent} does not exist")
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def split_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def write_safetensors_model(folder: Path, specs: Sequence[TensorSpec], max_shard_bytes: int,
                            on_bytes: Callable[[int], None] | None = None) -> list[str]:
    """Write ``model.safetensors`` or sharded files plus ``model.safetensors.index.json``; return the file names."""
    total = sum(s.nbytes for s in specs)
    if free_bytes(folder) < total + (16 << 20):
        raise SambaYError(f"not enough disk space in {folder.parent}: need {total / 1e9:.2f} GB, "
                          f"{free_bytes(folder) / 1e9:.2f} GB free")
    shards = split_shards(specs, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for fname, shard in zip(names, shards, strict=True):
        _write_one(folder / fname, shard, on_bytes)
        weight_map.update({s.name: fname for s in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        names.append("model.safetensors.index.json")
    return names


def _write_one(path: Path, shard: Sequence[TensorSpec], on_bytes: Callable[[int], None] | None) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in shard:
        header[s.name] = {"dtype": SAFETENSORS_DTYPES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for s in shard:
                t = s.produce()
                if t.dtype != s.dtype or tuple(t.shape) != s.shape:
                    raise SambaYError(f"internal: {s.name} produced {t.dtype} {list(t.shape)}, planned "
                                      f"{s.dtype} {list(s.shape)}")
                _write_tensor(f, t)
                del t
                if on_bytes:
                    on_bytes(s.nbytes)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SambaYError(f"no space left on device while writing {path.name}") from None
        raise SambaYError(f"cannot write {path}: {e}") from None


def _write_tensor(f, t: torch.Tensor) -> None:
    t = t.detach().contiguous().cpu()
    if t.numel() == 0:
        return
    flat = t.reshape(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.reshape(-1)
    f.write(memoryview(flat.numpy()))
