"""Weight-only quantized matmuls in Triton: W8A16 (int8 per-channel) and W4A16 (int4 group-wise).

* GEMV (decode: one row, or up to GEMV_MAX_ROWS rows the batched GEMMs do not take): each program owns BLOCK_N
  output channels for one activation row and walks the input dimension on CUDA cores (at batch 1 the op is bound by
  reading the weight); dequantization happens in registers and the packed weight is read once. int8 runs the dense
  GEMV of ``kernels/triton_gemv.py`` with a row scale. int4 runs its own kernel on the word-interleaved GPU order
  (``formats.interleave_int4``): bf16 activations in packed bfloat16x2 arithmetic, others in float32; narrow layers
  split the input dimension across programs (split-K through a self-cleaning float32 workspace).
* Batched decode (BATCHED_MIN_ROWS to 128 bf16 rows): int8 runs the tiled ``tl.dot`` GEMM with narrow tiles
  (transposed at 33-64 rows); int4 a tensor-core GEMM that decodes each group into bf16 tiles in registers as wgmma's
  register operand (``_w4_batched_gemm_kernel``); both split narrow layers over K through the same workspace.
* Prefill: int8 runs the tiled GEMM; int4 dequantizes the layer into a reused scratch buffer
  (``_w4_dequant_kernel``) and calls the vendor matmul. A fused byte-wise int4 GEMM (low/high nibble halves dotted
  with gathered activation columns) serves what the other paths cannot (decode on file-order bytes, groups not a
  multiple of 8, a graph capture that finds no scratch). Accumulation is float32; output in the activation dtype.

All kernels also run under the Triton interpreter (TRITON_INTERPRET=1) for CPU tests.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..kernels import triton_gemv
from ..kernels.pdl import launch_options, pdl_mode, pdl_wait

GEMV_MAX_ROWS = 4  # the GEMV kernels serve up to this many activation rows ...
# ... but from BATCHED_MIN_ROWS bf16 rows on the batched GEMMs are faster (H100, whole 3.8B model at 2K, batch 4:
# int8 693 -> 1,332 tok/s, int4 1,108 -> 1,521; batch 2: 554 -> 691 and 770 -> 834; bf16 1,030 and 533;
# docs/results/2026-11-27-h100-int4-batched-transposed.txt): the GEMVs re-decode the weights for every row.
BATCHED_MIN_ROWS = 2
WIDE_MIN_N = 8192  # batched decode: layers with at least this many outputs take the launch tables' "wide" entries
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# -------------------------------------------------------------------------------------------------------- int8


@triton.jit
def _w8_gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                    SPLIT, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr = False, EMULATE: tl.constexpr = False,
                    TRANSPOSED: tl.constexpr = False):
    """W8A16 tiled GEMM (batched decode and prefill). With SPLIT > 1 (ATOMIC) program (m-block, n-block, split) covers
    1/SPLIT of the K steps; the scaled partial tiles meet in the float32 split-K workspace ([M, N], zero between
    calls) and the last program of a tile (ticket per tile) reads the totals back, zeroes the workspace and its
    ticket, and stores. TRANSPOSED computes yᵀ = W·xᵀ: the converted weight tile is the dot's first operand, which
    Hopper's wgmma reads from registers."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_start, k_stop = triton_gemv.splitk_range(K, BLOCK_K, SPLIT, ATOMIC)
    if TRANSPOSED:  # tiles [output rows, activation rows]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        m_at, n_at = offs_m[None, :], offs_n[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        m_at, n_at = offs_m[:, None], offs_n[None, :]
    tile_ok = (m_at < M) & (n_at < N)
    for k0 in range(k_start, k_stop, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        if TRANSPOSED:
            x = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                        mask=mask_m[None, :] & mask_k[:, None], other=0.0)  # [BLOCK_K, BLOCK_M]
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                        mask=mask_n[:, None] & mask_k[None, :], other=0)  # [BLOCK_N, BLOCK_K]
        else:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None],
                        mask=mask_n[None, :] & mask_k[:, None], other=0)  # [BLOCK_K, BLOCK_N]
        if EMULATE:  # the interpreter's dot misreads 16-bit tiles converted in registers; bf16/fp16 are f32-exact
            x, w = x.to(tl.float32), w.to(tl.float32)
        else:
            w = w.to(x.dtype)
        if TRANSPOSED:
            acc += tl.dot(w, x, out_dtype=tl.float32)
        else:
            acc += tl.dot(x, w, out_dtype=tl.float32)
    scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if TRANSPOSED:
        acc = acc * scale[:, None]
    else:
        acc = acc * scale[None, :]
    if ATOMIC:
        last, acc = triton_gemv.splitk_tile_total(acc, ws_ptr + m_at * N + n_at, tile_ok,
                                                  cnt_ptr + pid_n * tl.num_programs(0) + pid_m, SPLIT)
    else:
        last = True
    if last:  # only the program that stores reads the bias
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            if TRANSPOSED:
                acc += bias[:, None]
            else:
                acc += bias[None, :]
        tl.store(y_ptr + m_at * stride_ym + n_at, acc.to(y_ptr.dtype.element_ty), mask=tile_ok)


# -------------------------------------------------------------------------------------------------------- int4


@triton.jit
def _round_bf16(v):
    """float32 → nearest bfloat16 (ties to even), kept as float32; integer ops, so the interpreter rounds like the GPU."""
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _neg_magic_zero(zero):
    """−(128 + zero) as bfloat16 bits in both lanes of an int32 (zero an int32 in [0, 15]): adding it to the lanes
    128 + code (``(w >> 4q) & 0x000F000F | 0x4300 4300``) leaves code − zero exactly."""
    return (0xC300 | zero) * 0x10001


@triton.jit
def _bf16x2_word_dot(w, x0, x1, x2, x3, negzz, EMULATE: tl.constexpr):
    """Σ over the 8 codes of one word-interleaved int4 word of (code − zero)·x, in packed bfloat16 arithmetic.

    Pair q of the word ((w >> 4q) & 0x000F000F) becomes two bfloat16 lanes 128 + code with one LOP3 (0x4300 is 128),
    one packed add of −(128 + zero) (``negzz``, both lanes) leaves code − zero exactly, and one packed FMA multiplies
    it with the activation pair ``xq`` (even column in the low lane, as bf16 pairs sit in memory) into a bfloat16x2
    partial sum. The two lanes' sums of four products each are added in float32. Products and these short partial
    sums round to bfloat16 (8 significant bits); the caller accumulates the float32 results. About 2.4 instructions
    per weight, against 3 for the float32 path. EMULATE (the Triton interpreter, which runs no PTX) computes the same
    with float32 operations rounded to bfloat16 after each step."""
    if EMULATE:
        negz = ((negzz & 0xFFFF) << 16).to(tl.float32, bitcast=True)
        a_lo = tl.zeros(w.shape, dtype=tl.float32)
        a_hi = tl.zeros(w.shape, dtype=tl.float32)
        for q in tl.static_range(4):
            if q == 0:
                xq = x0
            elif q == 1:
                xq = x1
            elif q == 2:
                xq = x2
            else:
                xq = x3
            lo = (((w >> (4 * q)) & 0xF).to(tl.float32) + 128.0 + negz)
            hi = (((w >> (16 + 4 * q)) & 0xF).to(tl.float32) + 128.0 + negz)
            a_lo = _round_bf16(lo * (xq << 16).to(tl.float32, bitcast=True) + a_lo)
            a_hi = _round_bf16(hi * (xq & -65536).to(tl.float32, bitcast=True) + a_hi)
        return a_lo + a_hi
    else:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m, c, t, d, a, s;
            mov.b32 m, 0x000F000F;
            mov.b32 c, 0x43004300;
            lop3.b32 t, $1, m, c, 0xEA;
            add.rn.bf16x2 d, t, $6;
            mul.rn.bf16x2 a, d, $2;
            shr.u32 s, $1, 4;
            lop3.b32 t, s, m, c, 0xEA;
            add.rn.bf16x2 d, t, $6;
            fma.rn.bf16x2 a, d, $3, a;
            shr.u32 s, $1, 8;
            lop3.b32 t, s, m, c, 0xEA;
            add.rn.bf16x2 d, t, $6;
            fma.rn.bf16x2 a, d, $4, a;
            shr.u32 s, $1, 12;
            lop3.b32 t, s, m, c, 0xEA;
            add.rn.bf16x2 d, t, $6;
            fma.rn.bf16x2 a, d, $5, a;
            shl.b32 s, a, 16;
            and.b32 a, a, 0xFFFF0000;
            add.f32 $0, s, a;
            }""",
            constraints="=r,r,r,r,r,r,r",
            args=[w, x0, x1, x2, x3, negzz], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _w4_group_params(s_tile, z_tile, g0, HAS_ZEROS: tl.constexpr):
    """The scales and zero points (as stored; the scales again in place of absent zeros) of NG groups × BLOCK_N
    rows."""
    scales = tl.load(s_tile + g0)
    zeros = scales
    if HAS_ZEROS:
        zeros = tl.load(z_tile + g0)
    return scales, zeros


@triton.jit
def _w4_group_dot(words, scales, zeros, x_tile, g0, MAGIC, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
                  NG: tl.constexpr, BLOCK_N: tl.constexpr, X_PAIRS: tl.constexpr, EMULATE: tl.constexpr):
    """scale·Σ (code − zero)·x over NG whole groups of BLOCK_N rows, per [group, row, word] (word-interleaved words:
    field 4h + q of word j holds column 2·(q·G/8 + j) + h; ``scales``, ``zeros`` from :func:`_w4_group_params`).

    bf16 activations (X_PAIRS, read as 32-bit pairs) take the packed bfloat16 path (:func:`_bf16x2_word_dot`).
    Other activations take the float32 path: code q of a 16-bit half (bits 4q…4q+3) is OR-ed into the mantissa of
    2²³ in place (one LOP3 with the magic in a register), the float is 2²³ + code·2^(4q), and subtracting
    2²³ + zero·2^(4q) leaves (code − zero)·2^(4q) exactly; the activation it meets is pre-scaled by 2^(−4q) once per
    step and shared by the thread's rows."""
    WPG: tl.constexpr = GROUP // 8
    scale = scales.to(tl.float32)[:, :, None]
    if X_PAIRS:
        if HAS_ZEROS:
            zero = zeros.to(tl.int32)[:, :, None]
        else:
            zero = tl.full((NG, BLOCK_N, 1), 8, tl.int32)
        negzz = _neg_magic_zero(zero)
        x0 = tl.load(x_tile + g0 * (GROUP // 2))[:, None, :]
        x1 = tl.load(x_tile + g0 * (GROUP // 2) + WPG)[:, None, :]
        x2 = tl.load(x_tile + g0 * (GROUP // 2) + 2 * WPG)[:, None, :]
        x3 = tl.load(x_tile + g0 * (GROUP // 2) + 3 * WPG)[:, None, :]
        return scale * _bf16x2_word_dot(words, x0, x1, x2, x3, negzz, EMULATE)
    else:
        high = words >> 16  # words: [NG, BLOCK_N, WPG] int32
        if HAS_ZEROS:
            zero = zeros.to(tl.float32)[:, :, None]
        else:
            zero = tl.full((NG, BLOCK_N, 1), 8.0, tl.float32)
        part = tl.zeros((NG, BLOCK_N, WPG), dtype=tl.float32)
        for q in tl.static_range(4):  # pair q·G/8 + j of every word j: even column in the low half, odd in the high
            x_even = tl.load(x_tile + 2 * (g0 * (GROUP // 2) + WPG * q)).to(tl.float32)
            x_odd = tl.load(x_tile + 2 * (g0 * (GROUP // 2) + WPG * q) + 1).to(tl.float32)
            step = 1.0 / (1 << (4 * q))
            c = 8388608.0 + zero * (1 << (4 * q))
            part += (((words & (0xF << (4 * q))) | MAGIC).to(tl.float32, bitcast=True) - c) * (x_even * step)[:, None, :]
            part += (((high & (0xF << (4 * q))) | MAGIC).to(tl.float32, bitcast=True) - c) * (x_odd * step)[:, None, :]
        return scale * part


@triton.jit
def _w4_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, m_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, stride_xm, stride_wn,
                    stride_sn, stride_mm, stride_ym, MAGIC, SPLIT, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr,
                    ATOMIC: tl.constexpr, X_PAIRS: tl.constexpr, EMULATE: tl.constexpr = False,
                    PDL: tl.constexpr = 0):
    """W4A16 decode GEMV over word-interleaved int4 words (bf16 activations read as pairs, packed bf16 math).

    Program (n-block, k-split, activation row): BLOCK_N output rows (and, for the SwiGLU epilogue, the matching "up"
    rows N…2N) over its share of the input's NG-group steps. The float32 accumulator stays [groups, rows, words] per
    thread until the end — no cross-thread reduction in the loop. With SPLIT > 1 (ATOMIC) each program adds its
    partial sums into a float32 workspace and takes a ticket; the last program of an n-block reads the totals back,
    zeroes the workspace and its counter (triton_gemv.splitk_total) and runs the epilogue. With PDL
    (:mod:`~sambay_cli.kernels.pdl`) the first step's words, scales and zero points are read before the wait point."""
    WPG: tl.constexpr = GROUP // 8
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)  # clamped: the loads stay in bounds without a mask
    gs = tl.arange(0, NG)
    ws = tl.arange(0, WPG)
    w_tile = w_ptr + rows[None, :, None] * stride_wn + gs[:, None, None] * WPG + ws[None, None, :]
    s_tile = s_ptr + rows[None, :] * stride_sn + gs[:, None]
    z_tile = z_ptr + rows[None, :] * stride_sn + gs[:, None]
    if X_PAIRS:  # int32 pointer to the column pairs
        x_tile = x_ptr.to(tl.pointer_type(tl.int32)) + row * (stride_xm // 2) + gs[:, None] * (GROUP // 2) + ws[None, :]
    else:  # element pointer: the pair's even column
        x_tile = x_ptr + row * stride_xm + 2 * (gs[:, None] * (GROUP // 2) + ws[None, :])
    steps = K // (GROUP * NG)
    per_split = tl.cdiv(steps, SPLIT)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, steps)
    acc = tl.zeros((NG, BLOCK_N, WPG), dtype=tl.float32)
    acc2 = tl.zeros((NG, BLOCK_N, WPG), dtype=tl.float32)
    w2_tile = w_tile + N * stride_wn  # the "up" rows of [gate | up] (EPILOGUE 1)
    s2_tile = s_tile + N * stride_sn
    z2_tile = z_tile + N * stride_sn
    first = start
    if PDL != 0:  # the first step's constants before the wait point
        g0 = tl.minimum(start, steps - 1) * NG  # in bounds for an empty split
        words = tl.load(w_tile + g0 * WPG)
        scales, zeros = _w4_group_params(s_tile, z_tile, g0, HAS_ZEROS)
        if EPILOGUE == 1:
            words2 = tl.load(w2_tile + g0 * WPG)
            scales2, zeros2 = _w4_group_params(s2_tile, z2_tile, g0, HAS_ZEROS)
        pdl_wait(PDL)
        if start < stop:
            acc += _w4_group_dot(words, scales, zeros, x_tile, g0, MAGIC, GROUP, HAS_ZEROS, NG, BLOCK_N, X_PAIRS,
                                 EMULATE)
            if EPILOGUE == 1:
                acc2 += _w4_group_dot(words2, scales2, zeros2, x_tile, g0, MAGIC, GROUP, HAS_ZEROS, NG, BLOCK_N,
                                      X_PAIRS, EMULATE)
        first += 1
    for step in range(first, stop):
        g0 = step * NG
        scales, zeros = _w4_group_params(s_tile, z_tile, g0, HAS_ZEROS)
        acc += _w4_group_dot(tl.load(w_tile + g0 * WPG), scales, zeros, x_tile, g0, MAGIC, GROUP, HAS_ZEROS, NG,
                             BLOCK_N, X_PAIRS, EMULATE)
        if EPILOGUE == 1:
            scales2, zeros2 = _w4_group_params(s2_tile, z2_tile, g0, HAS_ZEROS)
            acc2 += _w4_group_dot(tl.load(w2_tile + g0 * WPG), scales2, zeros2, x_tile, g0, MAGIC, GROUP, HAS_ZEROS,
                                  NG, BLOCK_N, X_PAIRS, EMULATE)
    out = tl.sum(tl.sum(acc, axis=2), axis=0)
    up = tl.sum(tl.sum(acc2, axis=2), axis=0)
    if ATOMIC:
        last, out, up = triton_gemv.splitk_total(out, up, ws_ptr, cnt_ptr, offs_n, mask_n, row, N, SPLIT,
                                                 EPILOGUE == 1)
        if last:
            _w4_epilogue_store(out, up, b_ptr, m_ptr, y_ptr, rows, offs_n, mask_n, row, N, stride_mm, stride_ym,
                               HAS_BIAS, EPILOGUE)
    else:
        _w4_epilogue_store(out, up, b_ptr, m_ptr, y_ptr, rows, offs_n, mask_n, row, N, stride_mm, stride_ym,
                           HAS_BIAS, EPILOGUE)


@triton.jit
def _w4_epilogue_store(out, up, b_ptr, m_ptr, y_ptr, rows, offs_n, mask_n, row, N, stride_mm, stride_ym,
                       HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr):
    if HAS_BIAS:
        out += tl.load(b_ptr + rows).to(tl.float32)
        if EPILOGUE == 1:
            up += tl.load(b_ptr + rows + N).to(tl.float32)
    if EPILOGUE == 1:  # SwiGLU: silu(gate)·up
        out = out / (1.0 + tl.exp(-out)) * up
    if EPILOGUE == 2:  # GMU gate: silu(y)·memory
        out = out / (1.0 + tl.exp(-out)) * tl.load(m_ptr + row * stride_mm + rows).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _w4_scaled_pairs(w, zero, scale, q: tl.constexpr, EMULATE: tl.constexpr):
    """bf16 [rows, 2·G/8] weights (code − zero)·scale of pair q of every word: ((w >> 4q) & 0x000F000F) | 0x4300 4300
    is 128 + code in two bfloat16 lanes, one packed add of −(128 + zero) leaves code − zero exactly and one packed
    multiply by (scale, scale) rounds (code − zero)·scale to bf16 once — the same bf16 weight as dequantize. Lanes
    (even, odd column) are split and joined, so the columns come out in order: 2·(q·G/8 + j) + h."""
    if EMULATE:
        lo = (((w >> (4 * q)) & 0xF).to(tl.float32) - zero.to(tl.float32)) * scale.to(tl.float32)
        hi = (((w >> (16 + 4 * q)) & 0xF).to(tl.float32) - zero.to(tl.float32)) * scale.to(tl.float32)
        even = _round_bf16(lo).to(tl.bfloat16)  # exact: the value is a bf16 already (the interpreter cannot
        odd = _round_bf16(hi).to(tl.bfloat16)  # bitcast int16 to bf16)
    else:
        negzz = _neg_magic_zero(zero)
        sbits = scale.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        pair = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 t, m, c;
            mov.b32 m, 0x000F000F;
            mov.b32 c, 0x43004300;
            shr.u32 t, $1, $4;
            lop3.b32 t, t, m, c, 0xEA;
            add.rn.bf16x2 t, t, $2;
            mul.rn.bf16x2 $0, t, $3;
            }""",
            constraints="=r,r,r,r,r",
            args=[w, negzz, sbits | (sbits << 16), tl.full(w.shape, 4 * q, tl.int32)], dtype=tl.int32,
            is_pure=True, pack=1)
        even = (pair & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
        odd = (pair >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return tl.reshape(tl.join(even, odd), (w.shape[0], 2 * w.shape[1]))


@triton.jit
def _w4_batched_gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, stride_xm,
                            stride_wn, stride_sn, stride_ym, SPLIT, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr,
                            HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            EMULATE: tl.constexpr = False, ATOMIC: tl.constexpr = False):
    """W4A16 for a few bf16 activation rows (batched decode) on word-interleaved weights, on tensor cores, as
    yᵀ = W·xᵀ: each group of BLOCK_N weight rows is decoded in registers into four bf16 [BLOCK_N, G/4] tiles in
    natural column order (_w4_scaled_pairs), which are the dot's first operand — Hopper's wgmma reads it from
    registers, where the other orientation (x·Wᵀ) needs it in shared memory and compiles to the older mma, slower on
    every 3.8B layer — against the matching contiguous activation columns as [G/4, BLOCK_M] tiles. With SPLIT > 1
    (ATOMIC) program (n-block, m-block, split) covers 1/SPLIT of the groups; the tiles meet in the float32 split-K
    workspace ([M, N], zero between calls) and the last program of a tile (ticket per tile) reads the totals back,
    zeroes the workspace and its ticket, and stores."""
    WPG: tl.constexpr = GROUP // 8
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_j = tl.arange(0, WPG)
    offs_c = tl.arange(0, 2 * WPG)
    w_rows = w_ptr + rows[:, None] * stride_wn + offs_j[None, :]
    x_tile = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm + offs_c[:, None]  # [2·WPG, BLOCK_M]: xᵀ
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # yᵀ tile: [output rows, activation rows]
    g_start, g_stop = triton_gemv.splitk_range(K // GROUP, 1, SPLIT, ATOMIC)
    for g in range(g_start, g_stop):
        words = tl.load(w_rows + g * WPG)
        scale = tl.load(s_ptr + rows * stride_sn + g)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + rows * stride_sn + g).to(tl.int32)
        else:
            zero = tl.full((BLOCK_N,), 8, tl.int32)
        for q in tl.static_range(4):
            w_q = _w4_scaled_pairs(words, zero[:, None], scale[:, None], q, EMULATE)  # [BLOCK_N, 2·WPG] bf16
            x_q = tl.load(x_tile + g * GROUP + q * 2 * WPG, mask=mask_m[None, :], other=0.0)
            if EMULATE:  # the interpreter's dot misreads bf16 tiles built in registers; the values are bf16-exact
                w_q = w_q.to(tl.float32)
                x_q = x_q.to(tl.float32)
            acc += tl.dot(w_q, x_q, out_dtype=tl.float32)
    tile_ok = mask_n[:, None] & mask_m[None, :]
    if ATOMIC:
        last, acc = triton_gemv.splitk_tile_total(acc, ws_ptr + offs_m[None, :] * N + offs_n[:, None], tile_ok,
                                                  cnt_ptr + pid_m * tl.num_programs(0) + pid_n, SPLIT)
    else:
        last = True
    if last:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows).to(tl.float32)[:, None]
        tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(y_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _w4_gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_ym,
                    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr, INTERLEAVED: tl.constexpr = False):
    """Prefill W4A16: each packed tile dotted as its low- and high-nibble halves with the matching even / odd
    activation columns. INTERLEAVED: the codes are in the GPU's word-interleaved order (``formats.interleave_int4``),
    so the activation columns of each byte's two nibbles are gathered accordingly."""
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
        if INTERLEAVED:  # byte b of word j holds fields 2b (low nibble) and 2b + 1; field 4h + q is column
            in_group = offs_kh % (GROUP // 2)  # 2·(q·G/8 + j) + h of the group
            b = in_group % 4
            col_lo = (offs_kh - in_group) * 2 + 2 * ((b % 2) * 2 * (GROUP // 8) + in_group // 4) + b // 2
            col_hi = col_lo + 2 * (GROUP // 8)
        else:
            col_lo = offs_kh * 2
            col_hi = col_lo + 1
        x_even = tl.load(x_ptr + offs_m[:, None] * stride_xm + col_lo[None, :], mask=mx, other=0.0)
        x_odd = tl.load(x_ptr + offs_m[:, None] * stride_xm + col_hi[None, :], mask=mx, other=0.0)
        w_lo = (((packed & 0xF).to(tl.float32) - zero) * scale).to(x_even.dtype)  # [BLOCK_KH, BLOCK_N]
        w_hi = ((((packed >> 4) & 0xF).to(tl.float32) - zero) * scale).to(x_even.dtype)
        acc += tl.dot(x_even, w_lo, out_dtype=tl.float32)
        acc += tl.dot(x_odd, w_hi, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _w4_dequant_kernel(w_ptr, s_ptr, z_ptr, out_ptr, N, stride_wn, stride_sn, stride_on, GROUP: tl.constexpr,
                       HAS_ZEROS: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_N: tl.constexpr):
    """W[rows, group] = (code − zero)·scale for BLOCK_N rows and one group, in the output's dtype, from either code
    order read as 32-bit words: field f of word j is column 8j + f (file order) or 2·((f mod 4)·G/8 + j) + f div 4
    (word-interleaved)."""
    WPG: tl.constexpr = GROUP // 8
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_j = tl.arange(0, WPG)
    rows = offs_n.to(tl.int64)
    words = tl.load(w_ptr + rows[:, None] * stride_wn + g * WPG + offs_j[None, :], mask=mask_n[:, None], other=0)
    scale = tl.load(s_ptr + rows * stride_sn + g, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    if HAS_ZEROS:
        zero = tl.load(z_ptr + rows * stride_sn + g, mask=mask_n, other=0).to(tl.float32)[:, None]
    else:
        zero = 8.0
    out_row = out_ptr + rows[:, None] * stride_on + g * GROUP
    if INTERLEAVED:  # fields q and q + 4 are the even and odd columns of pairs q·G/8 + j: joined, they are the
        offs_c = tl.arange(0, 2 * WPG)  # contiguous columns 2·q·G/8 … 2·(q+1)·G/8 − 1 of the group
        for q in tl.static_range(4):
            even = (((words >> (4 * q)) & 0xF).to(tl.float32) - zero) * scale
            odd = (((words >> (16 + 4 * q)) & 0xF).to(tl.float32) - zero) * scale
            val = tl.reshape(tl.join(even, odd), (BLOCK_N, 2 * WPG)).to(out_ptr.dtype.element_ty)
            tl.store(out_row + 2 * q * WPG + offs_c[None, :], val, mask=mask_n[:, None])
    else:
        for f in tl.static_range(8):
            val = ((((words >> (4 * f)) & 0xF).to(tl.float32) - zero) * scale).to(out_ptr.dtype.element_ty)
            tl.store(out_row + 8 * offs_j[None, :] + f, val, mask=mask_n[:, None])


# ------------------------------------------------------------------------------------------------------ wrappers


def _flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1]).contiguous(), lead


# int8 GEMV launch (rows per program, input columns per step, warps) and kernel variant, the best of an H100 sweep
# under PDL (.gpu_exp-style focused sweep recorded in docs/results/2026-11-27-h100-pdl.txt; CUDA-graph device time,
# weights rotated to defeat the L2 cache, each model epilogue): MLP fc1 with its SwiGLU element-wise (22.7 → 20.5
# µs), Mamba in_proj as 32-bit words (12.6 → 11.6), the 5,120-row layers two rows per program (7.0 → 6.4), the
# 2,560 × 2,560 ones (5.0 → 4.4).
def _default_int8_gemv(k: int, n: int) -> tuple[str, dict[str, int]]:
    if k <= 2560 and n >= 20480:  # MLP fc1 ([gate | up])
        variant, cfg = "bytes", (1, 512, 2)
    elif k <= 2560 and n >= 10240:  # Mamba in_proj: codes read as 32-bit words
        variant, cfg = "words", (4, 512, 2)
    elif k <= 2560:
        variant, cfg = "bytes", (2, 1024, 4) if n <= 2560 else (2, 512, 2)
    else:
        variant, cfg = "bytes", (2, 1024, 4)
    return variant, {"block_n": cfg[0], "block_k": cfg[1], "num_warps": cfg[2], "split": 1}


def int8_gemv_config(k: int, n: int) -> dict[str, int]:
    """The int8 GEMV launch parameters for an [n, k] weight; SAMBAY_GEMV="block_n,block_k,num_warps[,split]"
    overrides them (tuning)."""
    override = os.environ.get("SAMBAY_GEMV")
    if override:
        v = [int(t) for t in override.split(",")]
        return {"block_n": v[0], "block_k": v[1], "num_warps": v[2], "split": v[3] if len(v) > 3 else 1}
    return _default_int8_gemv(k, n)[1]


def int8_gemv_variant(k: int, n: int) -> str:
    """Whether int8 codes are read as 32-bit words or element-wise for an [n, k] weight: SAMBAY_INT8_GEMV
    (words | bytes) or the measured default."""
    return os.environ.get("SAMBAY_INT8_GEMV") or _default_int8_gemv(k, n)[0]


# Batched decode (BATCHED_MIN_ROWS … W8_BATCHED_M bf16 rows; other dtypes from GEMV_MAX_ROWS + 1): the int8 GEMM
# with a launch per row count for wide layers (at least WIDE_MIN_N outputs) and narrow ones: (BLOCK_M, BLOCK_N,
# BLOCK_K, warps, stages, transposed 0/1, split-K program target; 0 never splits), each the best total of its layer
# class in H100 sweeps: 16 and 32 rows
# (docs/results/2026-11-27-h100-gemm-m16-sweep.txt, …-batched-32-64-sweep.txt, …-int8-batched-split-k.txt); 64 and
# 128 rows (docs/results/2026-11-27-h100-int4-batched-transposed.txt: all linears of a step at 64 rows 2,639 us
# transposed against 3,055 before and 2,896 for bf16; at 128 rows the prefill tiles, split: 3,772 against 6,505
# unsplit and 3,090 for bf16).
W8_BATCHED_M = 128
_W8_BATCHED_LAUNCH = ((16, (16, 32, 256, 4, 4, 0, 264), (16, 32, 256, 4, 4, 0, 264)),  # rows, wide, narrow layers
                      (32, (32, 32, 128, 4, 4, 0, 528), (32, 32, 128, 4, 4, 0, 528)),
                      (64, (64, 64, 128, 4, 3, 1, 264), (64, 64, 64, 4, 3, 1, 528)),
                      (128, (64, 128, 64, 4, 3, 0, 264), (64, 128, 64, 4, 3, 0, 264)))
W8_BATCHED_SPLIT_TARGET = None  # when set, the split-K program target for every layer (tests)


def _batched_launch(table: tuple, m: int, n: int, env: str, interpret_tiles: tuple[int, ...],
                    split_target: int | None) -> tuple[int, ...]:
    """A batched-decode launch from a (rows, wide, narrow) table: the entry of the first row class holding ``m`` rows,
    wide if the layer has at least WIDE_MIN_N outputs; the environment variable ``env`` ("a,b,…", all numbers)
    overrides it; under the interpreter the leading tile numbers become ``interpret_tiles`` (quick); ``split_target``,
    when set, replaces the last number (the split-K program target)."""
    override = os.environ.get(env)
    if override:
        cfg = tuple(int(v) for v in override.split(","))
    else:
        wide, narrow = next((w, nr) for rows, w, nr in table if m <= rows)
        cfg = wide if n >= WIDE_MIN_N else narrow
        if _INTERPRET:
            cfg = (*interpret_tiles, *cfg[len(interpret_tiles):])
    return cfg if split_target is None else (*cfg[:-1], split_target)


def w8_batched_config(m: int, n: int) -> tuple[int, int, int, int, int, int, int] | None:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, transposed, split-K program target) of the int8 GEMM for ``m``
    activation rows of batched decode and ``n`` outputs, or None above W8_BATCHED_M rows (the prefill tiles);
    SAMBAY_W8_GEMM_BATCHED="block_m,block_n,block_k,warps,stages,transposed,split_target" overrides (tuning)."""
    if m > W8_BATCHED_M:
        return None
    return _batched_launch(_W8_BATCHED_LAUNCH, m, n, "SAMBAY_W8_GEMM_BATCHED", (16, 32, 32, 4, 1),
                           W8_BATCHED_SPLIT_TARGET)


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
    cfg = {"block_n": 16, "block_k": 32, "num_warps": 4, "split": 1} if _INTERPRET else int8_gemv_config(k, n)
    return triton_gemv.gemv(x, qweight, bias, scales=scales, epilogue=epilogue, memory=memory,
                            config=(cfg["block_n"], cfg["block_k"], cfg["num_warps"], cfg["split"]),
                            int8_words=int8_gemv_variant(k, n) == "words" and x.dtype != torch.float32)


def w8a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """y = x · (qweight · scales[:, None])ᵀ + bias; qweight int8 [N, K], scales [N]."""
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0]
    if m <= GEMV_MAX_ROWS and (m < BATCHED_MIN_ROWS or x2.dtype != torch.bfloat16):
        return w8a16_gemv(x, qweight, scales, bias)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    batched = w8_batched_config(m, n)
    if batched is not None:  # batched decode: narrow tiles, long K steps, narrow layers split K (H100 sweeps)
        bm, bn, bk, warps, stages, transposed, target = batched
    else:
        (bm, bn, bk), warps, stages, transposed, target = _gemm_blocks(m), 4, 3, 0, 0
    grid_m, grid_n = triton.cdiv(m, bm), triton.cdiv(n, bn)
    split = batched_split(grid_m * grid_n, triton.cdiv(k, bk), target)
    split, partials, tickets = triton_gemv.split_buffers(x.device, split, m * n, grid_m * grid_n, y)
    _w8_gemm_kernel[(grid_m, grid_n, split)](
        x2, qweight, scales, bias if bias is not None else scales, y, partials, tickets, m, n, k, x2.stride(0),
        qweight.stride(0), y.stride(0), split, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        ATOMIC=split > 1, EMULATE=_INTERPRET, TRANSPOSED=bool(transposed), num_warps=warps, num_stages=stages)
    return y.reshape(*lead, n)


# int4 GEMV launch: 16 rows per program (8 for the 4,096–10,240-row layers that do not split), 4 groups per step,
# 4 warps — the MLP fc1 with its SwiGLU too (13.8 → 12.3 µs against its earlier 8 rows, 2 groups, 2 warps), Mamba
# in_proj 8.4 → 7.0 µs (H100 sweep under PDL, docs/results/2026-11-27-h100-pdl.txt); layers
# with fewer than SPLIT_MIN_PROGRAMS row blocks split the input dimension so that about SPLIT_TARGET programs run
# (5 splits for the 160 row blocks of a 2,560-row output: the sweep's best on all three such shapes with the packed
# bf16x2 loop, 0.2–0.4 µs a layer better than 4). Within 0.5 µs of the sweep's best on every 3.8B shape. (Prefetching the next step's words in registers gained
# at most 0.5 µs a layer; cp.async software pipelining, num_stages 2–3, gained nothing: both left out.)
SPLIT_MIN_PROGRAMS = 264
SPLIT_TARGET = 800
_MAGIC = 0x4B000000  # 2²³ as float bits: passed as a value so the compiler keeps it in a register (one LOP3 per code)


def w4_gemv_config(n: int, k: int, group_size: int, epilogue: str = "none") -> tuple[int, int, int, int]:
    """(rows per program, groups per step, warps, k-splits) of the int4 GEMV for an [n, k] weight (n output rows:
    for ``swiglu`` each program also reads the n "up" rows); SAMBAY_W4_GEMV="block_n,groups,num_warps,split"
    overrides (tuning)."""
    override = os.environ.get("SAMBAY_W4_GEMV")
    groups = k // group_size
    if override:
        bn, ng, nw, split = (int(v) for v in override.split(","))
        return bn, ng, nw, max(1, min(split, groups // ng))
    ng = 4 if groups % 4 == 0 else 2 if groups % 2 == 0 else 1
    bn, nw = (4, 1) if _INTERPRET else (16, 4)
    if not _INTERPRET and epilogue != "swiglu" and 4096 <= n <= 10240:  # Mamba / GMU in_proj, Wqkv: 8 rows
        bn = 8
    blocks = triton.cdiv(n, bn)
    split = 1 if blocks >= SPLIT_MIN_PROGRAMS else max(1, min(groups // ng, triton.cdiv(SPLIT_TARGET, blocks)))
    return bn, ng, nw, split


def w4a16_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               group_size: int, bias: torch.Tensor | None, *, epilogue: str = "none",
               memory: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Decode-sized W4A16 (up to GEMV_MAX_ROWS activation rows) on **word-interleaved** int4 weights
    (:func:`~.formats.interleave_int4`; group_size a multiple of 8), with the fused epilogues of the int8 GEMV:
    ``swiglu`` (rows are [gate | up]; returns silu(gate)·up) or ``gate`` (silu(y)·memory). bf16 activations are read
    as 32-bit pairs; fp16/fp32 ones element-wise."""
    kind = triton_gemv._EPILOGUES[epilogue]
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0] // 2 if kind == triton_gemv.EPILOGUE_SWIGLU else qweight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    mem = memory.reshape(-1, n).contiguous() if kind == triton_gemv.EPILOGUE_GATE else y
    bn, ng, nw, split = config or w4_gemv_config(n, k, group_size, epilogue)
    blocks = triton.cdiv(n, bn)
    split, partials, tickets = triton_gemv.split_buffers(x.device, split, m * qweight.shape[0], m * blocks, y)
    words = qweight.view(torch.int32)
    pairs = x2.dtype == torch.bfloat16 and x2.stride(0) % 2 == 0 and x2.data_ptr() % 4 == 0
    grid = (blocks, split, m)
    pdl = pdl_mode(x2)
    _w4_gemv_kernel[grid](x2, words, scales, zeros if zeros is not None else scales,
                          bias if bias is not None else scales, mem, y, partials, tickets, n, k, x2.stride(0),
                          words.stride(0), scales.stride(0), mem.stride(0), y.stride(0), _MAGIC, split,
                          GROUP=group_size, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None, EPILOGUE=kind,
                          BLOCK_N=bn, NG=ng, ATOMIC=split > 1, X_PAIRS=pairs, EMULATE=_INTERPRET, PDL=pdl,
                          num_warps=nw, **launch_options(pdl))
    return y.reshape(*lead, n)


# Batched decode, BATCHED_MIN_ROWS … W4_BATCHED_M bf16 activation rows: _w4_batched_gemm_kernel. Launch per row
# count for wide layers (at least WIDE_MIN_N outputs) and narrow ones: (activation rows per tile, output rows per
# program, warps, stages, split-K program target; 0 never splits), each the best total of its layer class in the
# H100 sweeps of docs/results/2026-11-27-h100-int4-batched-transposed.txt. All linears of a 3.8B step at 8 / 16 /
# 32 / 64 / 128 rows: 1,496 / 1,580 / 1,947 / 2,461 / 3,499 us, against 1,660 / 1,763 / 2,151 / 2,616 / 6,192 for
# the kernels before (weights as the dot's second operand up to 64 rows, the scratch path above) and 2,810 / 2,865 /
# 2,861 / 2,903 / 3,090 for bf16.
# Groups of 64 with zero points: compiled for sm_90 by Triton 3.6 the earlier orientation of this kernel returned
# wrong sums for them (relative error ~1, whatever the zero values), so until the eighth session they took the
# scratch path. This transposed kernel computes them right (H100: 2-128 rows, with and without split-K, 3.8B shapes,
# docs/results/2026-11-27-h100-attention-decode-launch.txt); the GPU tests hold it to that.
W4_BATCHED_M = 128
_W4_BATCHED_LAUNCH = ((16, (16, 64, 4, 3, 528), (16, 64, 4, 3, 528)),  # rows, wide layers, narrow layers
                      (32, (32, 128, 8, 3, 0), (32, 64, 4, 3, 528)),
                      (64, (64, 128, 8, 3, 0), (64, 64, 4, 3, 264)),
                      (128, (128, 128, 8, 3, 0), (64, 64, 4, 3, 264)))
W4_BATCHED_SPLIT_TARGET = None  # when set, the split-K program target for every layer (tests)
BATCHED_SPLIT_MIN_STEPS = 2  # K steps (int4: groups) per program at least


def w4_batched_config(m: int, n: int) -> tuple[int, int, int, int, int]:
    """The batched int4 GEMM's launch for ``m`` activation rows (at most W4_BATCHED_M) and ``n`` outputs: (activation
    rows per tile, output rows per program, warps, stages, split-K program target);
    SAMBAY_W4_GEMM_BATCHED="block_m,rows,warps,stages,split_target" overrides (tuning)."""
    return _batched_launch(_W4_BATCHED_LAUNCH, m, n, "SAMBAY_W4_GEMM_BATCHED", (16, 16, 1, 1),
                           W4_BATCHED_SPLIT_TARGET)


def batched_split(tiles: int, steps: int, target: int, env: str | None = None) -> int:
    """K-splits of a batched-decode GEMM launch of ``tiles`` (m-block, n-block) programs over ``steps`` K steps:
    enough for about ``target`` programs, each keeping at least BATCHED_SPLIT_MIN_STEPS steps; the environment
    variable ``env``, if given and set, overrides the target (0: never split)."""
    target = int(os.environ.get(env, target)) if env else target
    if target <= tiles:
        return 1
    return max(1, min(triton.cdiv(target, tiles), steps // BATCHED_SPLIT_MIN_STEPS))


def _w4_batched_ok(dtype: torch.dtype, scales: torch.Tensor, group_size: int, interleaved: bool) -> bool:
    """Whether the batched int4 GEMM serves these weights and activations: bf16, word-interleaved, groups of 64 or
    more (a group's quarter is one dot's K, at least 16), with or without zero points."""
    return interleaved and dtype == torch.bfloat16 and scales.dtype == torch.bfloat16 and group_size >= 64


def w4_takes_gemv(m: int, dtype: torch.dtype, scales: torch.Tensor, group_size: int, interleaved: bool) -> bool:
    """Whether an ``m``-row int4 matmul runs the decode GEMV (and may fuse its epilogue): interleaved weights, at
    most GEMV_MAX_ROWS rows, and fewer than BATCHED_MIN_ROWS unless the batched GEMM cannot take it."""
    return interleaved and m <= GEMV_MAX_ROWS and (
        m < BATCHED_MIN_ROWS or not _w4_batched_ok(dtype, scales, group_size, interleaved))


def _w4_batched_gemm(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     group_size: int, bias: torch.Tensor | None) -> torch.Tensor:
    m, k = x2.shape
    n = qweight.shape[0]
    y = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    words = qweight.view(torch.int32)
    bm, bn, nw, ns, target = w4_batched_config(m, n)
    grid_n, grid_m = triton.cdiv(n, bn), triton.cdiv(m, bm)
    split = batched_split(grid_n * grid_m, k // group_size, target)
    split, partials, tickets = triton_gemv.split_buffers(x2.device, split, m * n, grid_n * grid_m, y)
    _w4_batched_gemm_kernel[(grid_n, grid_m, split)](
        x2, words, scales, zeros if zeros is not None else scales, bias if bias is not None else scales, y, partials,
        tickets, m, n, k, x2.stride(0), words.stride(0), scales.stride(0), y.stride(0), split, GROUP=group_size,
        HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, EMULATE=_INTERPRET,
        ATOMIC=split > 1, num_warps=nw, num_stages=ns)
    return y


# int4 matmuls that neither the GEMV nor the batched GEMM takes (prefill, more than W4_BATCHED_M rows; groups under 64
# or fp16/fp32 activations) dequantize the layer into a scratch buffer (2.2-2.3 TB/s: int4 read + bf16 write) and run the vendor
# matmul. The fused GEMM (gathered activation columns, small tiles) loses from 8 rows on - by 7x on the 10240-input fc2,
# whose 20 column blocks leave most SMs idle - and reaches 40 TFLOP/s at 2,048 rows, where this path gives a 20480x2560
# layer in 347 us against 317 us for the bf16 matmul alone (H100,
# docs/results/2026-11-27-h100-int4-prefill-dequant.txt). Inside a CUDA-graph capture the path is taken only if the
# scratch already holds the layer (an eager step of the same shapes ran first), so capture never allocates it. The
# scratch holds at most DEQUANT_CHUNK_ELEMENTS weights (128 MB in bf16); larger layers (a quantized lm_head) go in row
# chunks.
DEQUANT_MIN_ROWS = GEMV_MAX_ROWS + 1
DEQUANT_CHUNK_ELEMENTS = 64 * 1024 * 1024
_SCRATCH: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _scratch_ready(device: torch.device, dtype: torch.dtype, numel: int) -> bool:
    buf = _SCRATCH.get((device, dtype))
    return buf is not None and buf.numel() >= numel


def _scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    buf = _SCRATCH.get((device, dtype))
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[(device, dtype)] = torch.empty(numel, device=device, dtype=dtype)
    return buf[:numel]


def w4_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                  rows: slice, out: torch.Tensor, *, interleaved: bool) -> torch.Tensor:
    """``out`` ([rows, K], contiguous) ← W[rows] = (code − zero)·scale in out's dtype, from either code order
    (group_size a multiple of 8)."""
    words = qweight[rows].view(torch.int32)
    sc = scales[rows]
    z = zeros[rows] if zeros is not None else sc
    n, k = out.shape
    block_n = 4 if _INTERPRET else 32
    _w4_dequant_kernel[(triton.cdiv(n, block_n), k // group_size)](
        words, sc, z, out, n, words.stride(0), sc.stride(0), out.stride(0), GROUP=group_size,
        HAS_ZEROS=zeros is not None, INTERLEAVED=interleaved, BLOCK_N=block_n)
    return out


def _dequant_chunk_rows(n: int, k: int) -> int:
    """Rows of an [n, k] layer dequantized at a time (all of them unless that exceeds DEQUANT_CHUNK_ELEMENTS)."""
    return max(1, min(n, DEQUANT_CHUNK_ELEMENTS // k))


def _dequant_matmul(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    group_size: int, bias: torch.Tensor | None, interleaved: bool) -> torch.Tensor:
    n, k = qweight.shape[0], qweight.shape[1] * 2
    chunk = _dequant_chunk_rows(n, k)
    if chunk == n:
        w = w4_dequantize(qweight, scales, zeros, group_size, slice(0, n),
                          _scratch(x2.device, x2.dtype, n * k).view(n, k), interleaved=interleaved)
        return torch.nn.functional.linear(x2, w, bias)
    y = torch.empty(x2.shape[0], n, device=x2.device, dtype=x2.dtype)
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        w = w4_dequantize(qweight, scales, zeros, group_size, slice(n0, n1),
                          _scratch(x2.device, x2.dtype, (n1 - n0) * k).view(n1 - n0, k), interleaved=interleaved)
        y[:, n0:n1] = torch.nn.functional.linear(x2, w, bias[n0:n1] if bias is not None else None)
    return y


def w4a16_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 group_size: int, bias: torch.Tensor | None, *, interleaved: bool = False) -> torch.Tensor:
    """y = x · Wᵀ + bias with W = (code − zero) · scale. ``qweight`` holds two codes per byte in file order (even
    column in the low nibble) or, with ``interleaved``, in the GPU's word-interleaved order. One-row calls on
    interleaved weights (up to GEMV_MAX_ROWS rows if the batched GEMM cannot take them) run the GEMV, up to
    W4_BATCHED_M bf16 rows the tensor-core GEMM that decodes groups in registers; other calls of ``DEQUANT_MIN_ROWS``
    rows or more dequantize into a scratch buffer and matmul; the fused tiled GEMM serves the rest (file-order
    decode, groups not a multiple of 8, a graph capture that finds no scratch)."""
    x2, lead = _flatten(x)
    m, k = x2.shape
    n = qweight.shape[0]
    if w4_takes_gemv(m, x2.dtype, scales, group_size, interleaved):
        return w4a16_gemv(x, qweight, scales, zeros, group_size, bias)
    if m <= W4_BATCHED_M and _w4_batched_ok(x2.dtype, scales, group_size, interleaved):
        return _w4_batched_gemm(x2, qweight, scales, zeros, group_size, bias).reshape(*lead, n)
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    if m >= DEQUANT_MIN_ROWS and group_size % 8 == 0 and (
            not capturing or _scratch_ready(x.device, x.dtype, _dequant_chunk_rows(n, k) * k)):
        return _dequant_matmul(x2, qweight, scales, zeros, group_size, bias, interleaved).reshape(*lead, n)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    b = bias if bias is not None else scales
    z = zeros if zeros is not None else scales
    bm, bn, bk = _gemm_blocks(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _w4_gemm_kernel[grid](x2, qweight, scales, z, b, y, m, n, k, x2.stride(0), qweight.stride(0),
                          scales.stride(0), y.stride(0), GROUP=group_size, HAS_ZEROS=zeros is not None,
                          HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_KH=bk // 2 if bk > 32 else 16,
                          INTERLEAVED=interleaved)
    return y.reshape(*lead, n)
