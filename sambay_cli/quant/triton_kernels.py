"""Fused weight-only quantized matmuls in Triton: W8A16 (int8 per-channel) and W4A16 (int4 group-wise).

Dequantization happens in registers; the packed weight is read once.

* GEMV (decode, few rows): each program owns BLOCK_N output channels for one activation row and walks the input
  dimension, multiplying the dequantized tile by the activation slice and reducing along K (CUDA cores; at batch 1
  the op is bound by reading the weight).
* GEMM (prefill): classic tiled matmul with ``tl.dot``; the int4 tile is split into its low-nibble (even columns) and
  high-nibble (odd columns) halves, each dotted with the matching even/odd activation columns, so no interleave is
  needed. Accumulation is float32; output in the activation dtype.

All kernels also run under the Triton interpreter (TRITON_INTERPRET=1) for CPU tests.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

GEMV_MAX_ROWS = 4  # up to this many activation rows use the GEMV kernels
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# -------------------------------------------------------------------------------------------------------- int8


@triton.jit
def _w8_gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + row * stride_xm + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :],
                    other=0)
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1) * tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _w8_gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=mask_n[None, :] & mask_k[:, None],
                    other=0)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(x, w.to(x.dtype), out_dtype=tl.float32)
    acc = acc * tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


# -------------------------------------------------------------------------------------------------------- int4


@triton.jit
def _w4_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_KH: tl.constexpr):
    """BLOCK_KH packed bytes (2·BLOCK_KH input columns) per step."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    KH = K // 2
    acc = tl.zeros((BLOCK_N, BLOCK_KH), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_KH):
        offs_kh = k0 + tl.arange(0, BLOCK_KH)
        mask_k = offs_kh < KH
        m2 = mask_n[:, None] & mask_k[None, :]
        packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_kh[None, :], mask=m2, other=0).to(tl.int32)
        lo = (packed & 0xF).to(tl.float32)
        hi = ((packed >> 4) & 0xF).to(tl.float32)
        grp = (offs_kh * 2) // GROUP
        scale = tl.load(s_ptr + offs_n[:, None] * stride_sn + grp[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + offs_n[:, None] * stride_sn + grp[None, :], mask=m2, other=0).to(tl.float32)
        else:
            zero = 8.0
        x_even = tl.load(x_ptr + row * stride_xm + offs_kh * 2, mask=mask_k, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + row * stride_xm + offs_kh * 2 + 1, mask=mask_k, other=0.0).to(tl.float32)
        acc += ((lo - zero) * x_even[None, :] + (hi - zero) * x_odd[None, :]) * scale
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _w4_gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    KH = K // 2
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_KH):
        offs_kh = k0 + tl.arange(0, BLOCK_KH)
        mask_k = offs_kh < KH
        mw = mask_k[:, None] & mask_n[None, :]
        packed = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_kh[:, None], mask=mw, other=0).to(tl.int32)
        grp = (offs_kh * 2) // GROUP
        scale = tl.load(s_ptr + offs_n[None, :] * stride_sn + grp[:, None], mask=mw, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + offs_n[None, :] * stride_sn + grp[:, None], mask=mw, other=0).to(tl.float32)
        else:
            zero = 8.0
        mx = mask_m[:, None] & mask_k[None, :]
        x_even = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_kh[None, :] * 2, mask=mx, other=0.0)
        x_odd = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_kh[None, :] * 2 + 1, mask=mx, other=0.0)
        w_lo = (((packed & 0xF).to(tl.float32) - zero) * scale).to(x_even.dtype)  # [BLOCK_KH, BLOCK_N]
        w_hi = ((((packed >> 4) & 0xF).to(tl.float32) - zero) * scale).to(x_even.dtype)
        acc += tl.dot(x_even, w_lo, out_dtype=tl.float32)
        acc += tl.dot(x_odd, w_hi, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


# ------------------------------------------------------------------------------------------------------ wrappers


def _flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1]).contiguous(), lead


def _gemv_block_n(n: int) -> int:
    """Rows per GEMV program: as many as keep ≥ ~2 programs per SM (an H100 has 132), at least 8 — small-N layers
    (N = 2560 with K = 10240) would otherwise leave SMs idle."""
    for block in (32, 16):
        if triton.cdiv(n, block) >= 256:
            return block
    return 8


def _gemm_blocks(m: int) -> tuple[int, int, int]:
    if _INTERPRET:
        return 16, 32, 32
    return (16 if m <= 16 else 32 if m <= 32 else 64), 128, 64


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """y = x · (qweight · scales[:, None])ᵀ + bias; qweight int8 [N, K], scales [N]."""
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    b = bias if bias is not None else scales
    if m <= GEMV_MAX_ROWS:
        block_n, block_k = (16, 32) if _INTERPRET else (_gemv_block_n(n), 256)
        grid = (triton.cdiv(n, block_n), m)
        _w8_gemv_kernel[grid](x2, qweight, scales, b, y, n, k, x2.stride(0), qweight.stride(0), y.stride(0),
                              HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k)
    else:
        bm, bn, bk = _gemm_blocks(m)
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _w8_gemm_kernel[grid](x2, qweight, scales, b, y, m, n, k, x2.stride(0), qweight.stride(0), y.stride(0),
                              HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return y.reshape(*lead, n)


def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x · Wᵀ + bias with W = (code − zero) · scale, codes packed two per byte (even column in the low nibble)."""
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    b = bias if bias is not None else scales
    z = zeros if zeros is not None else scales
    if m <= GEMV_MAX_ROWS:
        block_n, block_kh = (16, 16) if _INTERPRET else (_gemv_block_n(n), 128)
        grid = (triton.cdiv(n, block_n), m)
        _w4_gemv_kernel[grid](x2, qweight, scales, z, b, y, n, k, x2.stride(0), qweight.stride(0), scales.stride(0),
                              y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None,
                              BLOCK_N=block_n, BLOCK_KH=block_kh)
    else:
        bm, bn, bk = _gemm_blocks(m)
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _w4_gemm_kernel[grid](x2, qweight, scales, z, b, y, m, n, k, x2.stride(0), qweight.stride(0),
                              scales.stride(0), y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None,
                              HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_KH=bk // 2 if bk > 32 else 16)
    return y.reshape(*lead, n)
