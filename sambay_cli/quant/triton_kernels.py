"""Fused weight-only quantized matmuls in Triton: W8A16 (int8 per-channel) and W4A16 (int4 group-wise).

Dequantization happens in registers; the packed weight is read once.

* GEMV (decode, few rows): each program owns BLOCK_N output channels for one activation row and walks the input
  dimension, multiplying the dequantized tile by the activation slice and reducing along K (CUDA cores; at batch 1
  the op is bound by reading the weight). int8 runs the dense GEMV of ``kernels/triton_gemv.py`` with a row scale.
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

from ..kernels import triton_gemv

GEMV_MAX_ROWS = 4  # up to this many activation rows use the GEMV kernels
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# -------------------------------------------------------------------------------------------------------- int8


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
    """BLOCK_KH packed bytes (2·BLOCK_KH input columns, a whole number of groups) per step. Per group g the dot is
    scale_g · (Σ codes·x − zero_g · Σ x), so scales and zeros are applied once per group, not per weight."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    KH = K // 2
    HALF: tl.constexpr = GROUP // 2  # packed bytes per group
    NG: tl.constexpr = BLOCK_KH // HALF  # groups per step
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, KH, BLOCK_KH):  # few, wide steps (bandwidth- rather than latency-bound)
        offs_kh = k0 + tl.arange(0, BLOCK_KH)
        mask_k = offs_kh < KH
        m2 = mask_n[:, None] & mask_k[None, :]
        packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_kh[None, :], mask=m2, other=0).to(tl.int32)
        x_even = tl.load(x_ptr + row * stride_xm + offs_kh * 2, mask=mask_k, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + row * stride_xm + offs_kh * 2 + 1, mask=mask_k, other=0.0).to(tl.float32)
        dot = (packed & 0xF).to(tl.float32) * x_even[None, :] + ((packed >> 4) & 0xF).to(tl.float32) * x_odd[None, :]
        dot_g = tl.sum(tl.reshape(dot, (BLOCK_N, NG, HALF)), axis=2)  # [BLOCK_N, NG]
        offs_g = k0 // HALF + tl.arange(0, NG)
        mask_g = offs_g < KH // HALF
        mg = mask_n[:, None] & mask_g[None, :]
        scale = tl.load(s_ptr + offs_n[:, None] * stride_sn + offs_g[None, :], mask=mg, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + offs_n[:, None] * stride_sn + offs_g[None, :], mask=mg, other=0).to(tl.float32)
        else:
            zero = tl.full((BLOCK_N, NG), 8.0, tl.float32)
        x_sum = tl.sum(tl.reshape(x_even + x_odd, (NG, HALF)), axis=1)  # [NG]
        acc += tl.sum(scale * (dot_g - zero * x_sum[None, :]), axis=1)
    out = acc
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)

@triton.jit
def _w4_gemv_words_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_sn,
                          stride_ym, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """int4 GEMV over 32-bit words (8 codes each; code i of word j is input column 8j + i at bits 4i..4i+3 — the
    byte layout read little-endian). Each step takes [BLOCK_N, BLOCK_W] words (whole groups); for every nibble
    position i the codes become floats without an int→float conversion instruction (OR the 4 bits into the mantissa
    of 2²³, then subtract 2²³ — exact) and are multiplied by the activations of columns 8j + i. Each group's words are
    then summed and its scale and zero point applied once: scale·(Σ codes·x − zero·Σ x), into a [BLOCK_N, groups]
    float32 accumulator reduced across the row at the end."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    WPG: tl.constexpr = GROUP // 8  # words per group
    NGS: tl.constexpr = BLOCK_W // WPG  # groups per step
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    kw = K // 8
    offs_w = tl.arange(0, BLOCK_W)
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros((BLOCK_N, NGS), dtype=tl.float32)
    for w0 in range(0, kw, BLOCK_W):
        ws = w0 + offs_w
        mw = ws < kw
        words = tl.load(w_ptr + rows[:, None] * stride_wn + ws[None, :], mask=mw[None, :], other=0)
        part = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
        x_sum = tl.zeros((BLOCK_W,), dtype=tl.float32)
        for i in tl.static_range(8):
            xi = tl.load(x_row + ws * 8 + i, mask=mw, other=0.0).to(tl.float32)
            code = (((words >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            part += code * xi[None, :]
            x_sum += xi
        part_g = tl.sum(tl.reshape(part, (BLOCK_N, NGS, WPG)), axis=2)
        x_sum_g = tl.sum(tl.reshape(x_sum, (NGS, WPG)), axis=1)
        grp = w0 // WPG + tl.arange(0, NGS)
        mg = (grp < kw // WPG)[None, :]
        scale = tl.load(s_ptr + rows[:, None] * stride_sn + grp[None, :], mask=mg, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + rows[:, None] * stride_sn + grp[None, :], mask=mg, other=0).to(tl.float32)
        else:
            zero = 8.0
        acc += scale * (part_g - zero * x_sum_g[None, :])
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows).to(tl.float32)
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


# GEMV launch (rows per program, input columns per step, warps) and kernel variant, the best of
# tools/bench_quant_gemv.py's sweep on an H100 (CUDA-graph device time, weights rotated to defeat the L2 cache): all
# linears of one 3.8B token (lm_head excluded) in 1.62 ms (int8) and 1.86–1.90 ms (int4) against 2.78 ms for bf16
# cuBLAS. int8 reads its codes as 32-bit words on the wide 2560-input layers and element-wise elsewhere; int4 runs
# the byte-wise kernel on 2560-wide inputs and the word-wise kernel on wider ones.
def _default_gemv(fmt: str, k: int, n: int = 0) -> tuple[str, dict[str, int]]:
    if fmt == "int8":
        if k <= 2560 and n >= 10240:  # MLP fc1, Mamba in_proj: codes read as 32-bit words
            variant, cfg = "words", (8, 512, 4)
        elif k <= 2560:
            variant, cfg = "bytes", (1, 512, 2) if n <= 2560 else (4, 512, 4)
        else:
            variant, cfg = "bytes", (2, 1024, 4)
    elif k <= 2560:
        variant, cfg = "bytes", (8, 512, 4)
    else:
        variant, cfg = "words", (4, 1024, 4)
    return variant, {"block_n": cfg[0], "block_k": cfg[1], "num_warps": cfg[2]}


def gemv_config(fmt: str, k: int = 2560, n: int = 0) -> dict[str, int]:
    """The GEMV launch parameters of ``fmt`` for an [n, k] weight; SAMBAY_GEMV="block_n,block_k,num_warps" overrides
    them (tuning)."""
    override = os.environ.get("SAMBAY_GEMV")
    if override:
        bn, bk, nw = (int(v) for v in override.split(","))
        return {"block_n": bn, "block_k": bk, "num_warps": nw}
    return _default_gemv(fmt, k, n)[1]


def int4_gemv_variant(k: int) -> str:
    """Which int4 GEMV serves an input width ``k``: SAMBAY_INT4_GEMV (words | bytes) or the measured default."""
    return os.environ.get("SAMBAY_INT4_GEMV") or _default_gemv("int4", k)[0]


def int8_gemv_variant(k: int, n: int) -> str:
    """Whether int8 codes are read as 32-bit words or element-wise for an [n, k] weight: SAMBAY_INT8_GEMV
    (words | bytes) or the measured default."""
    return os.environ.get("SAMBAY_INT8_GEMV") or _default_gemv("int8", k, n)[0]


def _gemm_blocks(m: int) -> tuple[int, int, int]:
    if _INTERPRET:
        return 16, 32, 32
    return (16 if m <= 16 else 32 if m <= 32 else 64), 128, 64


def w8a16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *,
               epilogue: str = "none", memory: torch.Tensor | None = None) -> torch.Tensor:
    """Decode-sized W8A16 through the dense GEMV kernel (int8 codes, a scale per output row), with its fused
    epilogues: ``swiglu`` (qweight holds [gate | up] rows; returns silu(gate)·up) or ``gate`` (silu(y)·memory).
    The word-wise reads cost about two bits of the float32 accumulator (a correction subtracted at the end), which a
    bf16/fp16 output never sees; float32 activations always take the element-wise path."""
    k, n = x.shape[-1], qweight.shape[0]
    cfg = {"block_n": 16, "block_k": 32, "num_warps": 4} if _INTERPRET else gemv_config("int8", k, n)
    return triton_gemv.gemv(x, qweight, bias, scales=scales, epilogue=epilogue, memory=memory,
                            config=(cfg["block_n"], cfg["block_k"], cfg["num_warps"]),
                            int8_words=int8_gemv_variant(k, n) == "words" and x.dtype != torch.float32)


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """y = x · (qweight · scales[:, None])ᵀ + bias; qweight int8 [N, K], scales [N]."""
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0]
    if m <= GEMV_MAX_ROWS:
        return w8a16_gemv(x, qweight, scales, bias)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    bm, bn, bk = _gemm_blocks(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _w8_gemm_kernel[grid](x2, qweight, scales, bias if bias is not None else scales, y, m, n, k, x2.stride(0),
                          qweight.stride(0), y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn,
                          BLOCK_K=bk)
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
    variant = int4_gemv_variant(k)
    if m <= GEMV_MAX_ROWS and k % 8 == 0 and group_size % 8 == 0 and qweight.is_contiguous() and variant != "bytes":
        cfg = {"block_n": 4, "block_k": 64, "num_warps": 1} if _INTERPRET else gemv_config("int4", k)
        # whole groups per step (group sizes are powers of two), no more than the row needs
        block_w = max(group_size // 8, min(cfg["block_k"] // 8, triton.next_power_of_2(k // 8)))
        words = qweight.view(torch.int32)  # [N, K/8]
        grid = (triton.cdiv(n, cfg["block_n"]), m)
        _w4_gemv_words_kernel[grid](x2, words, scales, z, b, y, n, k, x2.stride(0), words.stride(0),
                                    scales.stride(0), y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None,
                                    HAS_BIAS=bias is not None, BLOCK_N=cfg["block_n"], BLOCK_W=block_w,
                                    num_warps=cfg["num_warps"])
    elif m <= GEMV_MAX_ROWS:  # odd widths and small fallback groups: the byte-wise kernel
        cfg = {"block_n": 16, "block_k": 32, "num_warps": 4} if _INTERPRET else gemv_config("int4", k)
        block_n = cfg["block_n"]
        # whole groups per step (group sizes are powers of two), no more than the row
        block_kh = max(group_size // 2, min(cfg["block_k"] // 2, triton.next_power_of_2(k // 2)))
        grid = (triton.cdiv(n, block_n), m)
        _w4_gemv_kernel[grid](x2, qweight, scales, z, b, y, n, k, x2.stride(0), qweight.stride(0), scales.stride(0),
                              y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None,
                              BLOCK_N=block_n, BLOCK_KH=block_kh, num_warps=cfg["num_warps"])
    else:
        bm, bn, bk = _gemm_blocks(m)
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        _w4_gemm_kernel[grid](x2, qweight, scales, z, b, y, m, n, k, x2.stride(0), qweight.stride(0),
                              scales.stride(0), y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None,
                              HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_KH=bk // 2 if bk > 32 else 16)
    return y.reshape(*lead, n)
