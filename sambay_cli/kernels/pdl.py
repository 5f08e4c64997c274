"""Programmatic dependent launch (PDL, compute capability 9.0 and newer) for the decode-step kernels.

A batch-1 decode step is a chain of about 260 short kernels. Between two of them the GPU drains, launches the next
kernel, and waits a DRAM round trip before bytes flow again. With PDL a kernel launched with the ``launch_pdl``
attribute may start while the kernel before it in the stream still runs. Until it calls ``gdc_wait`` it may only
read data no earlier kernel of the step writes (a GEMV's weights); ``gdc_wait`` returns once every earlier kernel
has finished and its writes are visible. A kernel lets the next one start by calling ``gdc_launch_dependents`` (or
by ending). CUDA-graph capture keeps the attribute.

Each kernel here takes a ``PDL`` constexpr, one of:

* ``PDL_OFF`` (0): plain stream order; the kernel compiles as it would without this module.
* ``PDL_LATE`` (1): wait, then let the next kernel start: at most one kernel runs ahead of its inputs.
* ``PDL_EARLY`` (2): let the next kernel start, then wait: kernels may queue several deep (each one resident
  only once the one before it is wholly resident, so this cannot deadlock).
* ``PDL_EMULATE`` (3): the PDL code structure (constant reads hoisted before the wait point) without the
  instructions — what the Triton interpreter runs, so the CPU tests cover that structure.

The rule every kernel follows: before :func:`pdl_wait` it writes nothing and reads only constants of the model
(weights, scales) — or, in the late mode, what its caller declares *settled*: written before the kernel launched
just before it (:func:`reads_settled`); after it, anything. A kernel launched with the attribute must call
:func:`pdl_wait` before its first dependent access. ``SAMBAY_PDL=off|late|early`` picks the mode (default:
:data:`DEFAULT_MODE`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

PDL_OFF, PDL_LATE, PDL_EARLY, PDL_EMULATE = 0, 1, 2, 3
_MODES = {"off": PDL_OFF, "late": PDL_LATE, "early": PDL_EARLY}
DEFAULT_MODE = "late"  # H100, whole 3.8B step at 2K: int4 +8 %, int8 +5 %, bf16 ±0 (early: +5 %, +4 %, -0.5 %)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_CAPABLE: dict[int, bool] = {}


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """The kernel's wait point: from here on it may read what earlier kernels wrote, and write."""
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
    if PDL == 1 or PDL == 2:
        tl.extra.cuda.gdc_wait()
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()


def _requested() -> int:
    name = os.environ.get("SAMBAY_PDL", DEFAULT_MODE).strip().lower() or DEFAULT_MODE
    if name not in _MODES:
        raise ValueError(f"SAMBAY_PDL must be one of {', '.join(_MODES)}, not {name!r}")
    return _MODES[name]


def pdl_mode(t: torch.Tensor) -> int:
    """The PDL constexpr for kernels on ``t``'s device: the requested mode on CUDA devices of compute capability
    9.0 or newer, PDL_EMULATE under the Triton interpreter (unless SAMBAY_PDL=off), else PDL_OFF."""
    mode = _requested()
    if mode == PDL_OFF:
        return PDL_OFF
    if _INTERPRET:
        return PDL_EMULATE
    if not t.is_cuda:
        return PDL_OFF
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _CAPABLE:
        _CAPABLE[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return mode if _CAPABLE[idx] else PDL_OFF


def reads_settled(mode: int) -> bool:
    """Whether a kernel compiled for ``mode`` may read, before its wait point, tensors written by kernels earlier than
    the one just before it. Under PDL_LATE every kernel waits for its predecessor before it lets its own successor
    start, so when a kernel starts, every kernel but the last one before it has finished and its writes are visible
    (a kernel launched without the attribute starts only once the one before it has ended, which keeps the
    guarantee). PDL_EARLY lets kernels queue several deep, so there nothing but constants is safe. PDL_EMULATE keeps
    the structure for the interpreter's tests."""
    return mode in (PDL_LATE, PDL_EMULATE)


def launch_options(mode: int) -> dict:
    """The launch keyword arguments that go with a kernel compiled for ``mode``."""
    return {"launch_pdl": True} if mode in (PDL_LATE, PDL_EARLY) else {}
