"""Batch-1 decode linears in Triton: y = x·Wᵀ (+ b) for one activation row, with fused epilogues (bf16/fp16/fp32
weights, and int8 codes with a scale per row for W8A16).

At batch 1 a decode step is a chain of matrix-vector products bound by reading the weights; what cuBLAS leaves on
the table is (a) the small kernels between them and (b) a few per cent of bandwidth on the mid-sized shapes. These
kernels read each weight row once, keep a [BLOCK_N, BLOCK_K] float32 partial product per program and reduce it
across the row only at the end, and fold the element-wise op that follows the product into the store:

* ``EPILOGUE_NONE``    y = x·Wᵀ + b
* ``EPILOGUE_SWIGLU``  W = [W_gate | W_up] (the MLP's fc1): y = silu(x·W_gateᵀ + b_g) ⊙ (x·W_upᵀ + b_u) — the
  intermediate [gate | up] vector is never written (paper's MLP, SwiGLU)
* ``EPILOGUE_GATE``    y = silu(x·Wᵀ + b) ⊙ m — the GMU (paper eq. 4) with memory m

Rows of W beyond N are clamped rather than masked so that the loads of the hot loop need no mask when K is a multiple
of BLOCK_K (every shape of the official model). Runs under TRITON_INTERPRET=1 for CPU tests.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .pdl import launch_options, pdl_mode, pdl_wait

EPILOGUE_NONE = 0
EPILOGUE_SWIGLU = 1
EPILOGUE_GATE = 2
_EPILOGUES = {"none": EPILOGUE_NONE, "swiglu": EPILOGUE_SWIGLU, "gate": EPILOGUE_GATE}

MAX_ROWS = 1  # one activation row: with more, this kernel reads W once per row and cuBLAS (once for all) wins
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _to_float(w, INT8: tl.constexpr):
    """A weight tile as float32. int8 codes go through the bits of 2²³ + 128 + v minus 2²³ + 128 (exact), an integer
    add and a float subtract instead of the quarter-rate int→float conversion instruction."""
    if INT8:
        return (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    return w.to(tl.float32)


@triton.jit
def _i8_words_dot(words, x_row, ks4, acc, x_sum):
    """Partial products of int8 codes read as 32-bit words (code i of word j is column 4j + i): each byte goes into
    bits 15–22 of the float 1.0 with its sign bit flipped, f = 1 + (v + 128)/256 in [1, 2) — a shift and one logic
    op, no conversion — and Σ f·x is corrected once per row: Σ v·x = 256·Σ f·x − 384·Σ x."""
    for i in tl.static_range(4):
        xi = tl.load(x_row + ks4 * 4 + i).to(tl.float32)
        if i == 0:
            bits = words << 15
        elif i == 1:
            bits = words << 7
        elif i == 2:
            bits = words >> 1
        else:
            bits = words >> 9
        f = ((bits & 0x7F8000) ^ 0x3FC00000).to(tl.float32, bitcast=True)
        acc += f * xi[None, :]
        x_sum += xi
    return acc, x_sum


@triton.jit
def _load_w(ptrs, ks, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(ptrs + ks[None, :])
    return tl.load(ptrs + ks[None, :], mask=(ks < K)[None, :], other=0.0)


@triton.jit
def _load_x(x_row, ks, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(x_row + ks).to(tl.float32)
    return tl.load(x_row + ks, mask=ks < K, other=0.0).to(tl.float32)


@triton.jit
def splitk_range(K, STEP: tl.constexpr, SPLIT, ATOMIC: tl.constexpr):
    """[start, stop) of this program's share (program_id(2) of SPLIT) of a K loop in steps of STEP. Without ATOMIC the
    whole of it from a constant 0, so an unsplit loop compiles as it would without split-K."""
    if ATOMIC:
        per_split = tl.cdiv(tl.cdiv(K, STEP), SPLIT)
        start = tl.program_id(2) * per_split * STEP
        stop = tl.minimum(start + per_split * STEP, K)
    else:
        start = 0
        stop = K
    return start, stop


@triton.jit
def splitk_total(out, up, ws_ptr, cnt_ptr, offs_n, mask_n, row, N, SPLIT, DUAL: tl.constexpr):
    """Split-K reduction of a GEMV row block: every program adds its float32 partial sums (``out``, and ``up`` for a
    [gate | up] weight, DUAL) into the workspace and takes a ticket; returns (last, out, up) where ``last`` is true for
    the program that arrived last — it got the totals back and has zeroed the workspace entries and the counter, so
    the next call (or graph replay) finds them clean. The workspace holds N (2N with DUAL) floats per activation row;
    the counters one int32 per (activation row, row block)."""
    n_ws = N * 2 if DUAL else N
    ws_row = ws_ptr + row * n_ws + offs_n
    tl.atomic_add(ws_row, out, mask=mask_n, sem="relaxed")
    if DUAL:
        tl.atomic_add(ws_row + N, up, mask=mask_n, sem="relaxed")
    tl.debug_barrier()  # every thread's partial sums are issued before the ticket releases them
    counter = cnt_ptr + row * tl.num_programs(0) + tl.program_id(0)
    ticket = tl.atomic_add(counter, 1, sem="acq_rel")
    if ticket == SPLIT - 1:
        out = tl.atomic_add(ws_row, tl.zeros_like(out), mask=mask_n, sem="relaxed")
        tl.store(ws_row, tl.zeros_like(out), mask=mask_n)
        if DUAL:
            up = tl.atomic_add(ws_row + N, tl.zeros_like(up), mask=mask_n, sem="relaxed")
            tl.store(ws_row + N, tl.zeros_like(up), mask=mask_n)
        tl.atomic_xchg(counter, 0, sem="relaxed")
    return ticket == SPLIT - 1, out, up


@triton.jit
def splitk_tile_total(acc, ws_tile, tile_ok, counter, SPLIT):
    """Split-K reduction of a GEMM output tile (the batched-decode int8 / int4 GEMMs): every program adds its float32
    partial tile into the workspace (``ws_tile``: the tile's addresses in an [M, N] float32 buffer) and takes a ticket
    from ``counter`` (one per tile); returns (last, acc) where ``last`` is true for the program that arrived last — it
    got the totals back and has zeroed the workspace entries and the counter, so the next call (or graph replay)
    finds them clean."""
    tl.atomic_add(ws_tile, acc, mask=tile_ok, sem="relaxed")
    tl.debug_barrier()  # every thread's partial sums are issued before the ticket releases them
    ticket = tl.atomic_add(counter, 1, sem="acq_rel")
    if ticket == SPLIT - 1:
        acc = tl.atomic_add(ws_tile, tl.zeros_like(acc), mask=tile_ok, sem="relaxed")
        tl.store(ws_tile, tl.zeros_like(acc), mask=tile_ok)
        tl.atomic_xchg(counter, 0, sem="relaxed")
    return ticket == SPLIT - 1, acc


_WORKSPACES: dict = {}


def splitk_workspace(device: torch.device, floats: int, counters: int):
    """The float32 partial-sum buffer and int32 tickets of split-K GEMVs on this device (zero between calls: the
    last program of each row block cleans up). One per device, shared by every layer: the kernels of a decode step
    run one after another on one stream (graph capture uses its own stream, hence no per-stream buffers), so two
    split GEMVs never overlap. Allocated outside CUDA-graph capture only; None during a capture that finds none big
    enough (the caller then runs unsplit)."""
    key = str(device)
    ws = _WORKSPACES.get(key)
    if ws is None or ws[0].numel() < floats or ws[1].numel() < counters:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        old_f, old_c = (ws[0].numel(), ws[1].numel()) if ws else (0, 0)
        ws = (torch.zeros(max(floats, old_f, 1 << 18), device=device, dtype=torch.float32),
              torch.zeros(max(counters, old_c, 1 << 13), device=device, dtype=torch.int32))
        _WORKSPACES[key] = ws
    return ws


def split_buffers(device: torch.device, split: int, floats: int, counters: int, placeholder: torch.Tensor):
    """(split, partial-sum buffer, tickets) for a GEMV launch: the shared workspace when split > 1, else — or inside
    a capture that finds no workspace, where the launch runs unsplit — ``placeholder`` for both (never touched)."""
    ws = splitk_workspace(device, floats, counters) if split > 1 else None
    if ws is None:
        return 1, placeholder, placeholder
    return split, ws[0], ws[1]


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, m_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, stride_xm, stride_wn, stride_mm,
                 stride_ym, SPLIT, INT8: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORDS: tl.constexpr = False,
                 ATOMIC: tl.constexpr = False, PDL: tl.constexpr = 0):
    """Program (row block, activation row, k-split): BLOCK_N rows over its share of the K steps; with SPLIT > 1
    (ATOMIC) the partial sums meet in the split-K workspace and the last program of the row block runs the
    epilogue. With PDL (:mod:`.pdl`) the first step's weights are read before the wait point."""
    k_start, k_stop = splitk_range(K, BLOCK_K, SPLIT, ATOMIC)
    if WORDS:  # int8 codes as 32-bit words (K a multiple of BLOCK_K, itself of 4)
        out, up = _gemv_words(x_ptr, w_ptr, N, K, k_start, k_stop, stride_xm, stride_wn, EPILOGUE, BLOCK_N,
                              BLOCK_K // 4, PDL)
    else:
        out, up = _gemv_elements(x_ptr, w_ptr, N, K, k_start, k_stop, stride_xm, stride_wn, INT8, EPILOGUE, EVEN_K,
                                 BLOCK_N, BLOCK_K, PDL)
    row = tl.program_id(1)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    if ATOMIC:
        last, out, up = splitk_total(out, up, ws_ptr, cnt_ptr, offs_n, offs_n < N, row, N, SPLIT, EPILOGUE == 1)
        if last:
            _epilogue_store(out, up, s_ptr, b_ptr, m_ptr, y_ptr, rows, offs_n, row, N, stride_mm, stride_ym, INT8,
                            HAS_BIAS, EPILOGUE)
    else:
        _epilogue_store(out, up, s_ptr, b_ptr, m_ptr, y_ptr, rows, offs_n, row, N, stride_mm, stride_ym, INT8,
                        HAS_BIAS, EPILOGUE)


@triton.jit
def _epilogue_store(out, up, s_ptr, b_ptr, m_ptr, y_ptr, rows, offs_n, row, N, stride_mm, stride_ym,
                    INT8: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr):
    if INT8:  # per-output-row scale
        out *= tl.load(s_ptr + rows).to(tl.float32)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows).to(tl.float32)
    if EPILOGUE == 1:
        if INT8:
            up *= tl.load(s_ptr + rows + N).to(tl.float32)
        if HAS_BIAS:
            up += tl.load(b_ptr + rows + N).to(tl.float32)
        out = out / (1.0 + tl.exp(-out)) * up
    if EPILOGUE == 2:
        mem = tl.load(m_ptr + row * stride_mm + rows).to(tl.float32)
        out = out / (1.0 + tl.exp(-out)) * mem
    tl.store(y_ptr + row * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _gemv_words(x_ptr, w_ptr, N, K, k_start, k_stop, stride_xm, stride_wn, EPILOGUE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, PDL: tl.constexpr):
    """Σ over columns [k_start, k_stop) of int8 codes (read as words) · x, unscaled: (rows, "up" rows). With PDL the
    first step's words are read, then the kernel waits (:func:`.pdl.pdl_wait`), then the steps run."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_w = tl.arange(0, BLOCK_W)
    x_row = x_ptr + row * stride_xm
    w_rows = w_ptr + rows[:, None] * stride_wn  # stride in words
    w2_rows = w_ptr + (rows + N)[:, None] * stride_wn
    acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
    x_sum = tl.zeros((BLOCK_W,), dtype=tl.float32)
    x_sum2 = tl.zeros((BLOCK_W,), dtype=tl.float32)
    first = k_start // 4
    if PDL != 0:
        ks4 = tl.minimum(first, (K - 1) // 4 // BLOCK_W * BLOCK_W) + offs_w  # in bounds for an empty split
        words = tl.load(w_rows + ks4[None, :])
        if EPILOGUE == 1:
            words2 = tl.load(w2_rows + ks4[None, :])
        pdl_wait(PDL)
        if k_start < k_stop:
            acc, x_sum = _i8_words_dot(words, x_row, ks4, acc, x_sum)
            if EPILOGUE == 1:
                acc2, x_sum2 = _i8_words_dot(words2, x_row, ks4, acc2, x_sum2)
        first += BLOCK_W
    for w0 in range(first, k_stop // 4, BLOCK_W):
        ks4 = w0 + offs_w
        acc, x_sum = _i8_words_dot(tl.load(w_rows + ks4[None, :]), x_row, ks4, acc, x_sum)
        if EPILOGUE == 1:
            acc2, x_sum2 = _i8_words_dot(tl.load(w2_rows + ks4[None, :]), x_row, ks4, acc2, x_sum2)
    xs = tl.sum(x_sum, axis=0)
    out = 256.0 * tl.sum(acc, axis=1) - 384.0 * xs
    up = out
    if EPILOGUE == 1:
        up = 256.0 * tl.sum(acc2, axis=1) - 384.0 * xs
    return out, up


@triton.jit
def _gemv_elements(x_ptr, w_ptr, N, K, k_start, k_stop, stride_xm, stride_wn, INT8: tl.constexpr,
                   EPILOGUE: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   PDL: tl.constexpr):
    """Σ over columns [k_start, k_stop) of W · x, unscaled: (rows, "up" rows). With PDL the first step's weights are
    read, then the kernel waits (:func:`.pdl.pdl_wait`), then the steps run."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)  # clamped: the loads stay in bounds without a mask
    offs_k = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    w_rows = w_ptr + rows[:, None] * stride_wn
    w2_rows = w_ptr + (rows + N)[:, None] * stride_wn  # the "up" half of a SwiGLU fc1
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    first = k_start
    if PDL != 0:
        ks = tl.minimum(first, (K - 1) // BLOCK_K * BLOCK_K) + offs_k  # in bounds for an empty split
        w = _load_w(w_rows, ks, K, EVEN_K)
        if EPILOGUE == 1:
            w2 = _load_w(w2_rows, ks, K, EVEN_K)
        pdl_wait(PDL)
        if k_start < k_stop:
            x = _load_x(x_row, ks, K, EVEN_K)
            acc += _to_float(w, INT8) * x[None, :]
            if EPILOGUE == 1:
                acc2 += _to_float(w2, INT8) * x[None, :]
        first += BLOCK_K
    for k0 in range(first, k_stop, BLOCK_K):
        ks = k0 + offs_k
        x = _load_x(x_row, ks, K, EVEN_K)
        acc += _to_float(_load_w(w_rows, ks, K, EVEN_K), INT8) * x[None, :]
        if EPILOGUE == 1:
            acc2 += _to_float(_load_w(w2_rows, ks, K, EVEN_K), INT8) * x[None, :]
    out = tl.sum(acc, axis=1)
    up = out
    if EPILOGUE == 1:
        up = tl.sum(acc2, axis=1)
    return out, up


# (block_n, block_k, num_warps) by shape: the best of tools/bench_gemv.py's sweep on an H100 (CUDA-graph device time)
DEFAULT_CONFIG = (2, 1024, 4)
CONFIGS: dict[tuple[int, int], tuple[int, int, int]] = {
    (20480, 2560): (1, 256, 4),  # MLP fc1 (+ SwiGLU)
    (2560, 10240): (1, 2048, 4),  # MLP fc2
    (10240, 2560): (1, 512, 4),  # Mamba in_proj
    (192, 5120): (1, 2048, 8),  # Mamba x_proj
    (5120, 160): (8, 256, 4),  # Mamba dt_proj (when not fused into the state update)
}


def gemv_config(n: int, k: int) -> tuple[int, ...]:
    """Launch parameters for an [n, k] weight; SAMBAY_GEMV_BF16="block_n,block_k,num_warps[,split]" overrides
    (tuning)."""
    override = os.environ.get("SAMBAY_GEMV_BF16", "")
    if "," in override:
        return tuple(int(v) for v in override.split(","))
    if _INTERPRET:
        return 4, 32, 1
    return CONFIGS.get((n, k), DEFAULT_CONFIG)


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the GEMV serves this call: few rows, a contiguous row-major weight of a floating dtype
    (SAMBAY_GEMV_BF16=off: never, for A/B runs against cuBLAS)."""
    if os.environ.get("SAMBAY_GEMV_BF16", "").lower() == "off":  # A/B against cuBLAS
        return False
    rows = x.numel() // max(x.shape[-1], 1)
    return (0 < rows <= MAX_ROWS and weight.dim() == 2 and weight.stride(1) == 1 and x.dtype == weight.dtype
            and weight.dtype in (torch.bfloat16, torch.float16, torch.float32))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, epilogue: str = "none",
         memory: torch.Tensor | None = None, scales: torch.Tensor | None = None,
         config: tuple[int, ...] | None = None, int8_words: bool = False,
         out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [..., K] · weight [N', K]ᵀ with the named epilogue; out [..., N] in x's dtype, where N = N'/2 for ``swiglu``
    and N' otherwise. ``memory`` [..., N] is the gate's other operand for ``gate``. With ``scales`` [N'], ``weight``
    holds int8 codes and row r is scaled by scales[r] (W8A16). ``config``: (block_n, block_k, num_warps[, split])
    instead of the table; split > 1 divides the K steps among that many programs per row block (split-K through
    :func:`splitk_workspace`; unsplit during a CUDA-graph capture that finds no workspace). ``int8_words``: read int8
    codes as 32-bit words (whole steps only). Each activation row is its own pass over the weight (the seam sends one
    row; W8A16 up to four). ``out_dtype``: the output's dtype (default x's). Under PDL (:mod:`.pdl`) the kernel
    reads part of ``weight`` before waiting for the kernels before it, so ``weight`` must not be written by them
    (model parameters never are)."""
    kind = _EPILOGUES[epilogue]
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m_rows = x2.shape[0]
    n = weight.shape[0] // 2 if kind == EPILOGUE_SWIGLU else weight.shape[0]
    y = torch.empty(m_rows, n, device=x.device, dtype=out_dtype or x.dtype)
    if kind == EPILOGUE_GATE:
        mem = memory.reshape(-1, n)
        if mem.stride(-1) != 1:
            mem = mem.contiguous()
    else:
        mem = y
    cfg = tuple(config or gemv_config(weight.shape[0], k))
    block_n, block_k, warps = cfg[:3]
    block_k = min(block_k, triton.next_power_of_2(k))
    split = max(1, min(cfg[3] if len(cfg) > 3 else 1, triton.cdiv(k, block_k)))
    words = int8_words and scales is not None and k % block_k == 0 and block_k >= 4 and weight.is_contiguous()
    w = weight.view(torch.int32) if words else weight
    blocks = triton.cdiv(n, block_n)
    split, partials, tickets = split_buffers(x.device, split, m_rows * weight.shape[0], m_rows * blocks, y)
    grid = (blocks, m_rows, split)
    pdl = pdl_mode(x)
    _gemv_kernel[grid](x2, w, scales if scales is not None else y, bias if bias is not None else y, mem, y, partials,
                       tickets, n, k, x2.stride(0), w.stride(0), mem.stride(0), y.stride(0), split,
                       INT8=scales is not None, HAS_BIAS=bias is not None, EPILOGUE=kind, EVEN_K=k % block_k == 0,
                       BLOCK_N=block_n, BLOCK_K=block_k, WORDS=words, ATOMIC=split > 1, PDL=pdl, num_warps=warps,
                       **launch_options(pdl))
    return y.reshape(*lead, n)
