"""Programmatic dependent launch (PDL, Hopper and newer) for the decode kernels.

A decode step is a chain of a few hundred short kernels; between two of them the GPU drains and refills. With PDL a
kernel launched with ``launch_pdl`` may start while the previous kernel of the stream is still running: its programs
first read constant data (the weights of a GEMV), then ``pdl_start`` waits until every earlier kernel has finished
and its writes are visible. Kernels that precede such a kernel call ``pdl_trigger`` so it may start early.

The rule every PDL-launched kernel follows: before ``pdl_start`` it reads nothing an earlier kernel wrote and writes
nothing. Kernels launched without the attribute keep plain stream order. The attribute is captured in CUDA graphs.
``SAMBAY_PDL=off`` disables it (A/B runs).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DEVICES: dict[int, bool] = {}


@triton.jit
def pdl_trigger(PDL: tl.constexpr):
    """Let the next kernel of the stream (if launched with PDL) start its programs now."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """Let the next kernel start, then wait until every earlier kernel has finished and its writes are visible."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


def pdl_enabled(t: torch.Tensor) -> bool:
    """PDL for kernels on ``t``'s device: CUDA with compute capability ≥ 9, not under the Triton interpreter, and not
    switched off by SAMBAY_PDL=off."""
    if _INTERPRET or not t.is_cuda or os.environ.get("SAMBAY_PDL", "on").lower() == "off":
        return False
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _DEVICES:
        _DEVICES[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _DEVICES[idx]


def launch_pdl(enabled: bool) -> dict:
    """The launch option of a kernel that begins with ``pdl_start``."""
    return {"launch_pdl": True} if enabled else {}
