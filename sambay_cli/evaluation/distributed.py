"""Several GPUs for `sambay eval`: torchrun ranks, object gathering, and the `--gpus N` launcher.

Each rank holds a full model copy and generates its share of the (problem, sample) pairs; rank 0 merges and scores.
The process group is NCCL on CUDA and gloo on CPU (used by the tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from ..errors import SambaYError


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    if not launched_by_torchrun():
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def init_if_needed(device: str | None) -> None:
    """Join the process group torchrun prepared (no-op for a single process)."""
    if not launched_by_torchrun() or is_initialized():
        return
    dist = _dist()
    use_nccl = (device is None or str(device).startswith("cuda")) and _cuda_available()
    if use_nccl:
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def rank_and_world() -> tuple[int, int]:
    if not is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str | None) -> str | None:
    """The device of this rank: cuda:<LOCAL_RANK> under torchrun with CUDA."""
    if launched_by_torchrun() and (device is None or device == "cuda") and _cuda_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    if is_initialized():
        _dist().barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    dist = _dist()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if is_initialized():
        _dist().destroy_process_group()


def launch_torchrun(gpus: int, argv: list[str]) -> int:
    """Re-run this `sambay eval` command under `torchrun --nproc-per-node gpus` (argv without --gpus)."""
    if gpus < 1:
        raise SambaYError("--gpus must be at least 1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "sambay_cli", *argv]
    return subprocess.call(command)
