"""Tensor-level weight formats of `sambay quantize` (byte layouts are documented in docs/quantize.md).

Own formats (``quant_method: "sambay"`` in config.json), for a linear layer ``X`` with weight W [out, in]:

* ``int8`` — per-output-channel symmetric: ``X.qweight`` int8 [out, in], ``X.scales`` float32 [out];
  W ≈ qweight · scales[:, None], qweight ∈ [−127, 127], scale = max|W[row]| / 127.
* ``int4`` — group-wise along the input dimension (group g, default 128): ``X.qweight`` uint8 [out, in/2] with two
  4-bit codes per byte — element 2j in the **low** nibble, element 2j+1 in the **high** nibble — ``X.scales``
  bfloat16 [out, in/g] and, when asymmetric (the default), ``X.zeros`` uint8 [out, in/g] holding integer zero points
  in [0, 15]. W ≈ (code − zero) · scale, with zero = 8 implied for the symmetric variant (scale = max|W|/7).

In GPU memory an int4 layer is held in the **word-interleaved** order of the decode kernel (same codes, same size;
:func:`interleave_int4`): the G/2 column pairs of a group (pair p = columns 2p, 2p+1) fill G/8 little-endian 32-bit
words, and word j holds the pairs p_q = q·G/8 + j (q = 0…3) with the even column of p_q in bits 4q…4q+3 and the odd
column in bits 16+4q…19+4q. Each 16-bit half is then a run of four even (or odd) codes whose activations are G/8
pairs apart, and ``(word >> 4q) & 0x000F000F`` puts both codes of pair p_q into the two bfloat16 lanes of a register.
Files always use the plain order above.

bitsandbytes formats (``nf4``, ``fp4``, ``bnb-int8``) are written by bitsandbytes itself (see :mod:`.bnb`); this
module only holds their dequantization, which needs no bitsandbytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MAX = 127
INT4_LEVELS = 15


@dataclass
class Int8Weight:
    qweight: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # float32 [out]


@dataclass
class Int4Weight:
    qweight: torch.Tensor  # uint8 [out, in/2], low nibble = even column
    scales: torch.Tensor  # bfloat16 [out, in/g]
    zeros: torch.Tensor | None  # uint8 [out, in/g] (asymmetric) or None (symmetric, zero point 8)
    group_size: int

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * 2


# ------------------------------------------------------------------------------------------------------------ int8


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """Round-to-nearest, symmetric, one float32 scale per output row."""
    w32 = w.detach().float()
    scales = w32.abs().amax(dim=1) / INT8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w32 / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return Int8Weight(q, scales)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scales.float()[:, None]).to(dtype)


# ------------------------------------------------------------------------------------------------------------ int4


def fallback_group_size(in_features: int, group_size: int) -> int:
    """The largest power of two ≤ group_size that divides in_features (1 when in_features is odd)."""
    g = 1
    while g * 2 <= group_size and in_features % (g * 2) == 0:
        g *= 2
    return g


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], [out, in] (in even) → uint8 [out, in/2]; even column in the low nibble."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 [out, in/2] → uint8 codes [out, in]."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def interleave_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """File byte order → the decode kernel's word-interleaved order (group_size a multiple of 8; see the module
    docstring): nibble field f = 4h + q of word j in a group holds column 2·(q·G/8 + j) + h."""
    n, kh = packed.shape
    codes = unpack_int4(packed).reshape(n, kh * 2 // group_size, 4, group_size // 8, 2)  # [row, group, q, j, h]
    return pack_int4(codes.permute(0, 1, 3, 4, 2).reshape(n, kh * 2))  # → [row, group, j, h, q]


def deinterleave_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`interleave_int4`."""
    n, kh = packed.shape
    codes = unpack_int4(packed).reshape(n, kh * 2 // group_size, group_size // 8, 2, 4)  # [row, group, j, h, q]
    return pack_int4(codes.permute(0, 1, 4, 2, 3).reshape(n, kh * 2))  # → [row, group, q, j, h]


def int4_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Round-to-nearest codes of W for the given (stored-precision) scales and zero points; uint8 [out, in]."""
    out_f, in_f = w.shape
    g = w.detach().float().reshape(out_f, in_f // group_size, group_size)
    s = scales.float().unsqueeze(-1)
    z = zeros.float().unsqueeze(-1) if zeros is not None else torch.full_like(s, 8.0)
    return torch.round(g / s + z).clamp_(0, INT4_LEVELS).to(torch.uint8).reshape(out_f, in_f)


def int4_params(w: torch.Tensor, group_size: int, symmetric: bool,
                clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (bfloat16) and zero points (uint8, asymmetric) per group; ``clip`` shrinks the range (per group or
    scalar)."""
    out_f, in_f = w.shape
    g = w.detach().float().reshape(out_f, in_f // group_size, group_size)
    if symmetric:
        absmax = g.abs().amax(dim=-1) * clip
        scales = (absmax / 7).to(torch.bfloat16)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        return scales, None
    lo = g.amin(dim=-1).clamp(max=0) * clip
    hi = g.amax(dim=-1).clamp(min=0) * clip
    scales = ((hi - lo) / INT4_LEVELS).to(torch.bfloat16)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.round(-lo / scales.float()).clamp_(0, INT4_LEVELS).to(torch.uint8)
    return scales, zeros


def dequantize_int4_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out_f, in_f = codes.shape
    c = codes.float().reshape(out_f, in_f // group_size, group_size)
    z = zeros.float().unsqueeze(-1) if zeros is not None else 8.0
    return ((c - z) * scales.float().unsqueeze(-1)).reshape(out_f, in_f).to(dtype)


def quantize_int4(w: torch.Tensor, group_size: int = 128, symmetric: bool = False,
                  clip_search: bool = False) -> Int4Weight:
    """Group-wise round-to-nearest over each group's full [min, max] range. With ``clip_search`` each group's range is
    shrunk by the factor (of a small grid) that minimises its squared weight error — never a larger weight error, but
    clipping the largest weights can cost more in the model's outputs (it did on the demo model)."""
    if w.shape[1] % group_size or group_size % 2:
        raise ValueError(f"group size {group_size} does not divide in_features {w.shape[1]}")
    w32 = w.detach().float()
    best_scales, best_zeros = int4_params(w32, group_size, symmetric)
    if clip_search:
        best_err = _group_sq_error(w32, best_scales, best_zeros, group_size)
        for factor in (0.95, 0.9, 0.85, 0.8, 0.75):
            scales, zeros = int4_params(w32, group_size, symmetric, clip=factor)
            err = _group_sq_error(w32, scales, zeros, group_size)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scales = torch.where(better, scales, best_scales)
            if zeros is not None:
                best_zeros = torch.where(better, zeros, best_zeros)
    codes = int4_codes(w32, best_scales, best_zeros, group_size)
    return Int4Weight(pack_int4(codes), best_scales, best_zeros, group_size)


def _group_sq_error(w32: torch.Tensor, scales, zeros, group_size: int) -> torch.Tensor:
    codes = int4_codes(w32, scales, zeros, group_size)
    deq = dequantize_int4_codes(codes, scales, zeros, group_size)
    out_f, in_f = w32.shape
    return (deq - w32).pow(2).reshape(out_f, in_f // group_size, group_size).sum(-1)


def dequantize_int4(q: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize_int4_codes(unpack_int4(q.qweight), q.scales, q.zeros, q.group_size, dtype)


# ------------------------------------------------------------------------------------- bitsandbytes dequantization


def dequantize_bnb4(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor, blocksize: int,
                    shape: tuple[int, int], dtype: torch.dtype = torch.float32,
                    nested: dict | None = None) -> torch.Tensor:
    """bitsandbytes 4-bit (nf4/fp4): flat row-major blocks of ``blocksize`` elements, one absmax per block, two codes
    per byte with the **first element in the high nibble**. ``nested``: {absmax, quant_map, blocksize, offset} when
    the absmax itself is 8-bit blockwise quantized ("double quant")."""
    if nested is not None:
        absmax = dequantize_blockwise8(absmax, nested["absmax"], nested["quant_map"], nested["blocksize"])
        absmax = absmax + float(nested["offset"])
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=-1).reshape(-1).long()
    n = shape[0] * shape[1]
    values = quant_map.float()[codes[:n]]
    if n % blocksize == 0:
        out = (values.reshape(-1, blocksize) * absmax.float()[:, None]).reshape(-1)
    else:  # a last, partial block
        out = values * absmax.float().repeat_interleave(blocksize)[:n]
    return out.reshape(shape).to(dtype)


def dequantize_blockwise8(codes: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor,
                          blocksize: int) -> torch.Tensor:
    """bitsandbytes 8-bit blockwise (dynamic map) dequantization of a 1-D uint8 tensor."""
    values = quant_map.float()[codes.reshape(-1).long()]
    scale = absmax.float().repeat_interleave(blocksize)[: values.numel()]
    return values * scale


def dequantize_bnb_int8(cb: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LLM.int8 row format: W ≈ CB · SCB[:, None] / 127."""
    return (cb.float() * (scb.float()[:, None] / INT8_MAX)).to(dtype)
