"""The dispatch seam for device-specific operations.

The model calls only the functions exported here. Each op has an ordered list of implementations; the first one
whose ``available(*tensors)`` is true runs. Off CUDA the torch reference (``reference.py``) is the only
implementation; on CUDA the project's Triton kernels (``triton_ops.py``, ``triton_gemv.py``) take the Mamba conv and
scan (prefill and decode), attention (prefill and decode), the fused element-wise ops and the batch-1 linears.
Optional mamba-ssm / flash-attn kernels can register in front the same way without any change to the model code.

``SAMBAY_KERNELS=torch`` forces the reference everywhere (for A/B comparisons and debugging);
``SAMBAY_KERNELS=triton`` forces the Triton kernels where they exist, even on CPU tensors (tests run them under the
Triton interpreter that way).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Callable
    available: Callable[..., bool]


_REGISTRY: dict[str, list[Implementation]] = {}


def register(op: str, name: str, fn: Callable, available: Callable[..., bool], *, first: bool = True) -> None:
    """Add an implementation of ``op``; ``first=True`` gives it priority over those already registered."""
    impls = _REGISTRY.setdefault(op, [])
    impls.insert(0 if first else len(impls), Implementation(name, fn, available))


def always(*_args, **_kwargs) -> bool:
    """The availability test of an implementation that runs everywhere (the torch reference)."""
    return True


for _op in (
    "causal_conv1d",
    "causal_conv1d_update",
    "selective_scan",
    "selective_state_update",
    "attention_prefill",
    "attention_decode",
    "swiglu",
    "gmu_gate",
    "add_norm",
    "embed_norm",
    "linear",
    "linear_swiglu",
    "linear_gate",
    "kv_write_decode",
    "decode_positions",
):
    register(_op, "torch", getattr(reference, _op), always, first=False)


# ------------------------------------------------------------------------------------ the project's Triton kernels
_OPTIONAL: dict[str, object] = {}
IMPORT_ERRORS: dict[str, str] = {}


def optional_import(module: str):
    """A kernel module imported on first use, or None when it cannot be (no Triton, a broken install); the reason is
    kept in IMPORT_ERRORS."""
    if module not in _OPTIONAL:
        try:
            _OPTIONAL[module] = importlib.import_module(module)
        except Exception as e:  # pragma: no cover - depends on the machine
            _OPTIONAL[module] = None
            IMPORT_ERRORS[module] = repr(e)
    return _OPTIONAL[module]


def _triton_module():
    return optional_import("sambay_cli.kernels.triton_ops")


def _on_cuda_with_triton(t: torch.Tensor, *_args) -> bool:
    return t.is_cuda and _triton_module() is not None


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _triton_attention_decode(q, k, v, valid, n_keys_t, n_keys, *, scale, lambda_full, lambda_init, subln_weight, eps,
                             out_dtype=torch.float32, settled=""):
    h, g, d = q.shape[1], k.shape[1], q.shape[2]
    ratio = (h // 2) // (g // 2) if lambda_full is not None else h // g
    if not (_pow2(d) and _pow2(ratio)):
        return reference.attention_decode(q, k, v, valid, n_keys_t, n_keys, scale=scale, lambda_full=lambda_full,
                                          lambda_init=lambda_init, subln_weight=subln_weight, eps=eps,
                                          out_dtype=out_dtype)
    return _triton_module().diff_attention_decode(q, k, v, valid, n_keys_t, scale=scale, lambda_full=lambda_full,
                                                  lambda_init=lambda_init, subln_weight=subln_weight, eps=eps,
                                                  out_dtype=out_dtype, settled=settled)


def _triton_attention_prefill(q, k, v, k_valid, q_start, k_start, window, *, ring=None, scale, lambda_full,
                              lambda_init, subln_weight, eps):
    impl = _triton_module() if _pow2(q.shape[-1]) and q.shape[-1] >= 16 else reference
    return impl.attention_prefill(q, k, v, k_valid, q_start, k_start, window, ring=ring, scale=scale,
                                  lambda_full=lambda_full, lambda_init=lambda_init, subln_weight=subln_weight, eps=eps)


def _triton_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                           initial_state=None, out_dtype=torch.float32):
    return _triton_module().selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                           delta_softplus=delta_softplus, initial_state=initial_state,
                                           out_dtype=out_dtype)


def _triton_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_proj_weight=None,
                         out_dtype=torch.float32, settled=False):
    return _triton_module().selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                                   dt_softplus=dt_softplus, dt_proj_weight=dt_proj_weight,
                                                   out_dtype=out_dtype, settled=settled)


def _triton_conv(x, weight, bias, conv_state=None, valid=None, out_dtype=torch.float32):
    if weight.shape[-1] < 2 or x.stride(-1) != 1:
        return reference.causal_conv1d(x, weight, bias, conv_state, valid, out_dtype)
    return _triton_module().causal_conv1d(x, weight, bias, conv_state, valid, out_dtype)


def _triton_conv_update(x, conv_state, weight, bias, out_dtype=torch.float32, settled=False):
    if weight.shape[-1] < 2:
        return reference.causal_conv1d_update(x, conv_state, weight, bias, out_dtype)
    return _triton_module().causal_conv1d_update(x, conv_state, weight, bias, out_dtype, settled=settled)


def _triton_swiglu(gate, up):
    return _triton_module().silu_mul(gate, up, up.dtype)


def _triton_gmu_gate(x, memory):
    return _triton_module().silu_mul(x, memory, x.dtype)


def _triton_add_norm_ok(h, *_args) -> bool:
    return _on_cuda_with_triton(h) and h.dtype == torch.float32 and h.shape[-1] <= 65536


def _triton_add_norm(h, delta, weight, bias, eps, rms):
    return _triton_module().add_norm(h, delta, weight, bias, eps, rms)


def _triton_embed_norm_ok(ids, table=None, *_args) -> bool:
    if table is None:  # backends() probes with one tensor
        return _on_cuda_with_triton(ids)
    return _on_cuda_with_triton(table) and table.is_contiguous() and table.shape[-1] <= 65536


def _triton_embed_norm(ids, table, weight, bias, eps, rms):
    return _triton_module().embed_norm(ids, table, weight, bias, eps, rms)


def _gemv_module():
    return optional_import("sambay_cli.kernels.triton_gemv")


def _gemv_ok(x, weight=None, *_args) -> bool:
    """Decode-sized linears on CUDA: the Triton GEMV (with its fused epilogues) instead of cuBLAS + extra kernels;
    other shapes fall back to cuBLAS inside the Triton entry points."""
    return x.is_cuda and _gemv_module() is not None


def _triton_linear(x, weight, bias, out_dtype=None):
    if not _gemv_module().supported(x, weight):
        return reference.linear(x, weight, bias, out_dtype)
    return _gemv_module().gemv(x, weight, bias, out_dtype=out_dtype)


def _triton_linear_swiglu(x, weight, bias):
    if not _gemv_module().supported(x, weight):  # prefill: cuBLAS, then the fused element-wise kernel
        gate, up = reference.linear(x, weight, bias).chunk(2, dim=-1)
        return _triton_swiglu(gate, up)
    return _gemv_module().gemv(x, weight, bias, epilogue="swiglu")


def _triton_linear_gate(x, weight, bias, memory):
    if not _gemv_module().supported(x, weight):
        return _triton_gmu_gate(reference.linear(x, weight, bias), memory)
    return _gemv_module().gemv(x, weight, bias, epilogue="gate", memory=memory)


def _kv_write_fits(k_cache) -> bool:
    """Caches in a float dtype (an fp8 cache takes the reference's saturating path) with power-of-2 head dims."""
    return k_cache.dtype in (torch.bfloat16, torch.float16, torch.float32) and _pow2(k_cache.shape[-1])


def _kv_write_ok(k_cache, *_args) -> bool:
    return _on_cuda_with_triton(k_cache) and _kv_write_fits(k_cache)


def _triton_kv_write_decode(k_cache, v_cache, k, v, slots):
    if k.stride(-1) != 1 or v.stride(-1) != 1 or not _kv_write_fits(k_cache):
        return reference.kv_write_decode(k_cache, v_cache, k, v, slots)
    return _triton_module().kv_write_decode(k_cache, v_cache, k, v, slots)


register("kv_write_decode", "triton", _triton_kv_write_decode, _kv_write_ok)


def _triton_decode_positions(pos, n_keys, kv_valid, swa_slot=None, swa_pos=None, swa_valid=None):
    return _triton_module().decode_positions(pos, n_keys, kv_valid, swa_slot, swa_pos, swa_valid)


register("decode_positions", "triton", _triton_decode_positions, _on_cuda_with_triton)
register("linear", "triton", _triton_linear, _gemv_ok)
register("linear_swiglu", "triton", _triton_linear_swiglu, _gemv_ok)
register("linear_gate", "triton", _triton_linear_gate, _gemv_ok)
register("attention_decode", "triton", _triton_attention_decode, _on_cuda_with_triton)
register("attention_prefill", "triton", _triton_attention_prefill, _on_cuda_with_triton)
register("add_norm", "triton", _triton_add_norm, _triton_add_norm_ok)
register("embed_norm", "triton", _triton_embed_norm, _triton_embed_norm_ok)
register("swiglu", "triton", _triton_swiglu, _on_cuda_with_triton)
register("gmu_gate", "triton", _triton_gmu_gate, _on_cuda_with_triton)
register("selective_scan", "triton", _triton_selective_scan, _on_cuda_with_triton)
register("selective_state_update", "triton", _triton_state_update, _on_cuda_with_triton)
register("causal_conv1d_update", "triton", _triton_conv_update, _on_cuda_with_triton)
register("causal_conv1d", "triton", _triton_conv, _on_cuda_with_triton)


def resolve(op: str, *tensors: torch.Tensor) -> Implementation:
    """The implementation of ``op`` that will run for these tensors."""
    forced = os.environ.get("SAMBAY_KERNELS", "").strip().lower()
    if forced:
        for impl in _REGISTRY[op]:
            if impl.name == forced:
                return impl
    for impl in _REGISTRY[op]:
        if impl.available(*tensors):
            return impl
    return _REGISTRY[op][-1]


def backends() -> dict[str, str]:
    """Which implementation each op would use on the default CUDA device (or CPU) — for `sambay info`/bench."""
    probe = torch.empty(0, device="cuda" if torch.cuda.is_available() else "cpu")
    return {op: resolve(op, probe).name for op in _REGISTRY}


def causal_conv1d(x, weight, bias, conv_state=None, valid=None, out_dtype=torch.float32):
    return resolve("causal_conv1d", x).fn(x, weight, bias, conv_state, valid, out_dtype)


def causal_conv1d_update(x, conv_state, weight, bias, out_dtype=torch.float32, settled=False):
    """``settled``: ``conv_state`` was written before the kernel launched just before this call (a scheduling hint
    for the Triton kernel's PDL wait point; the torch reference ignores it)."""
    return resolve("causal_conv1d_update", x).fn(x, conv_state, weight, bias, out_dtype, settled=settled)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None,
                   out_dtype=torch.float32):
    return resolve("selective_scan", u).fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state,
        out_dtype=out_dtype,
    )


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_proj_weight=None,
                           out_dtype=torch.float32, settled=False):
    """``settled``: ``x``, ``z`` and ``state`` were written before the kernel launched just before this call (a
    scheduling hint for the Triton kernel's PDL wait point; the torch reference ignores it)."""
    return resolve("selective_state_update", x).fn(
        state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_proj_weight=dt_proj_weight,
        out_dtype=out_dtype, settled=settled,
    )


def attention_prefill(q, k, v, k_valid, q_start, k_start, window, *, ring=None, scale, lambda_full, lambda_init,
                      subln_weight, eps):
    return resolve("attention_prefill", q).fn(
        q, k, v, k_valid, q_start, k_start, window, ring=ring, scale=scale, lambda_full=lambda_full,
        lambda_init=lambda_init, subln_weight=subln_weight, eps=eps,
    )


def attention_decode(q, k, v, valid, n_keys_t, n_keys, *, scale, lambda_full, lambda_init, subln_weight, eps,
                     out_dtype=torch.float32, settled=""):
    """``settled`` ("kv" / "q" / ""): which operands were written before the kernel launched just before this call
    (see triton_ops.diff_attention_decode); a scheduling hint the torch reference ignores."""
    return resolve("attention_decode", q).fn(
        q, k, v, valid, n_keys_t, n_keys, scale=scale, lambda_full=lambda_full, lambda_init=lambda_init,
        subln_weight=subln_weight, eps=eps, out_dtype=out_dtype, settled=settled,
    )


def swiglu(gate, up):
    return resolve("swiglu", gate).fn(gate, up)


def gmu_gate(x, memory):
    return resolve("gmu_gate", x).fn(x, memory)


def add_norm(h, delta, weight, bias, eps, rms):
    return resolve("add_norm", h).fn(h, delta, weight, bias, eps, rms)


def kv_write_decode(k_cache, v_cache, k, v, slots):
    return resolve("kv_write_decode", k_cache).fn(k_cache, v_cache, k, v, slots)


def decode_positions(pos, n_keys, kv_valid, swa_slot=None, swa_pos=None, swa_valid=None):
    return resolve("decode_positions", pos).fn(pos, n_keys, kv_valid, swa_slot, swa_pos, swa_valid)


def embed_norm(ids, table, weight, bias, eps, rms):
    return resolve("embed_norm", ids, table).fn(ids, table, weight, bias, eps, rms)


def linear(x, weight, bias=None, out_dtype=None):
    return resolve("linear", x, weight).fn(x, weight, bias, out_dtype)


def linear_swiglu(x, weight, bias=None):
    return resolve("linear_swiglu", x, weight).fn(x, weight, bias)


def linear_gate(x, weight, bias, memory):
    return resolve("linear_gate", x, weight).fn(x, weight, bias, memory)


attention_mask = reference.attention_mask

__all__ = [
    "register",
    "resolve",
    "backends",
    "causal_conv1d",
    "causal_conv1d_update",
    "selective_scan",
    "selective_state_update",
    "attention_prefill",
    "attention_decode",
    "swiglu",
    "gmu_gate",
    "add_norm",
    "embed_norm",
    "linear",
    "linear_swiglu",
    "linear_gate",
    "kv_write_decode",
    "decode_positions",
    "attention_mask",
]
