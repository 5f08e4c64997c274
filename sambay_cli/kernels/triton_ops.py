"""The project's own Triton kernels for SambaY (CUDA; also run by the Triton interpreter on CPU in tests).

* ``causal_conv1d_update`` — one decode step of the causal depthwise conv + SiLU, shifting the conv state in place.
* ``selective_state_update`` — one decode step of the selective SSM: softplus(dt + bias), state update in place, C·state,
  D skip and the silu(z) gate, in one pass over the state.
* ``causal_conv1d`` — the prefill conv + SiLU over a chunk, channels last, masking padding and returning the next
  conv state.
* ``selective_scan`` — the prefill scan: each program owns a block of channels and walks time in chunks, each chunk's
  recurrence solved for all states at once by a parallel associative scan, starting from a given state and returning
  the final one (and optionally gating by z); reads and writes the model's channels-last tensors in place.
* ``attention_prefill`` — flash-style (differential) attention of a chunk of queries over a SWA ring and/or
  consecutive keys, visiting only the key blocks a query block can see.
* ``diff_attention_decode`` — decode-time (differential) attention for one query per sequence: every program reads one
  KV-head pair (or KV head) once for all the query heads that use it, over a slice of the cache (split-K, lengths and
  validity from device tensors, so it is CUDA-graph safe); a combine kernel merges the slices, forms A1 − λ·A2, applies
  the sub-layer RMSNorm and the (1 − λ_init) scale, and writes heads back in order.

All math is float32 inside; inputs may be bf16/fp16/fp32.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .pdl import launch_options, pdl_mode, pdl_wait, reads_settled
from .triton_gemv import splitk_workspace

# ------------------------------------------------------------------------------------------------ Mamba decode


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, b_ptr, y_ptr, D, stride_xb, stride_sb, stride_sd, stride_yb,
                        K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr = 0,
                        SETTLED: tl.constexpr = False):
    """SETTLED (K = 4, and only where :func:`.pdl.reads_settled`): the state was written before the kernel just
    before this one, so the taps, the bias and the three state columns are read before the wait point and only x
    after it; the arithmetic is the same, in the same order."""
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = offs < D
    srow = state_ptr + pid_b * stride_sb + offs * stride_sd
    if SETTLED:
        s0 = tl.load(srow, mask=m, other=0.0)
        s1 = tl.load(srow + 1, mask=m, other=0.0)
        s2 = tl.load(srow + 2, mask=m, other=0.0)
        w0 = tl.load(w_ptr + offs * 4, mask=m, other=0.0).to(tl.float32)
        w1 = tl.load(w_ptr + offs * 4 + 1, mask=m, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + offs * 4 + 2, mask=m, other=0.0).to(tl.float32)
        w3 = tl.load(w_ptr + offs * 4 + 3, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
        pdl_wait(PDL)
        x = tl.load(x_ptr + pid_b * stride_xb + offs, mask=m, other=0.0).to(tl.float32)
        acc = x * w3
        acc += s0 * w0
        acc += s1 * w1
        acc += s2 * w2
        tl.store(srow, s1, mask=m)
        tl.store(srow + 1, s2, mask=m)
        tl.store(srow + 2, x, mask=m)
        if HAS_BIAS:
            acc += bias
    else:
        pdl_wait(PDL)
        x = tl.load(x_ptr + pid_b * stride_xb + offs, mask=m, other=0.0).to(tl.float32)
        acc = x * tl.load(w_ptr + offs * K + (K - 1), mask=m, other=0.0).to(tl.float32)
        for k in tl.static_range(K - 1):
            s = tl.load(srow + k, mask=m, other=0.0)
            acc += s * tl.load(w_ptr + offs * K + k, mask=m, other=0.0).to(tl.float32)
        # shift the state left by one and append x
        for k in tl.static_range(K - 2):
            nxt = tl.load(srow + k + 1, mask=m, other=0.0)
            tl.store(srow + k, nxt, mask=m)
        tl.store(srow + (K - 2), x, mask=m)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = acc / (1.0 + tl.exp(-acc))
    tl.store(y_ptr + pid_b * stride_yb + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def causal_conv1d_update(x, conv_state, weight, bias, out_dtype=torch.float32, settled=False):
    """Triton version of reference.causal_conv1d_update (x [B, D]; conv_state [B, D, K-1] float32, in place).
    ``settled``: the state was written before the kernel launched just before this call (under late PDL it is then
    read before the wait point; width-4 convolutions)."""
    bsz, dim = x.shape
    k = weight.shape[-1]
    assert k >= 2 and conv_state.dtype == torch.float32 and conv_state.stride(-1) == 1
    x = x.contiguous()
    weight = weight.contiguous()
    y = torch.empty(bsz, dim, device=x.device, dtype=out_dtype)
    block = 256
    grid = (bsz, triton.cdiv(dim, block))
    pdl = pdl_mode(x)
    _conv_update_kernel[grid](x, conv_state, weight, bias if bias is not None else weight, y, dim, x.stride(0),
                              conv_state.stride(0), conv_state.stride(1), y.stride(0), K=k,
                              HAS_BIAS=bias is not None, BLOCK_D=block, PDL=pdl,
                              SETTLED=k == 4 and _settled_form(settled, bsz, pdl),
                              **launch_options(pdl))
    return y


# ------------------------------------------------------------------------------------------------ Mamba prefill conv


@triton.jit
def _conv_input(x_ptr, s_ptr, v_ptr, b, src, offs_d, md, stride_xb, stride_xt, stride_sb, stride_sd, stride_vb,
                K: tl.constexpr, HAS_VALID: tl.constexpr):
    """The conv input at chunk positions ``src`` (any shape broadcasting against channels ``offs_d``): x·valid for
    src ≥ 0, the carried conv state (slot K−1+src) for src < 0."""
    inside = src >= 0
    xv = tl.load(x_ptr + b * stride_xb + src * stride_xt + offs_d, mask=md & inside, other=0.0).to(tl.float32)
    if HAS_VALID:
        xv = xv * tl.load(v_ptr + b * stride_vb + src, mask=inside, other=0).to(tl.float32)
    sv = tl.load(s_ptr + b * stride_sb + offs_d * stride_sd + (K - 1 + src), mask=md & (src < 0), other=0.0)
    return xv + sv


@triton.jit
def _conv_prefill_kernel(x_ptr, s_ptr, w_ptr, b_ptr, v_ptr, y_ptr, snew_ptr, L, D,
                         stride_xb, stride_xt, stride_sb, stride_sd, stride_vb, stride_yb, stride_yt,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_VALID: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """One [BLOCK_T positions × BLOCK_D channels] tile of y_t = silu(bias + Σ_k w_k·u_{t−K+1+k})·valid_t, channels
    contiguous (coalesced); the tile holding the chunk's end also writes the next conv state (its last K−1 inputs)."""
    b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    mt = offs_t < L
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = tl.where(mt, offs_t - (K - 1) + k, -K)[:, None]  # rows past the end read nothing
        u = _conv_input(x_ptr, s_ptr, v_ptr, b, src, offs_d[None, :], md[None, :], stride_xb, stride_xt,
                        stride_sb, stride_sd, stride_vb, K, HAS_VALID)
        acc += u * tl.load(w_ptr + offs_d * K + k, mask=md, other=0.0).to(tl.float32)[None, :]
    y = acc / (1.0 + tl.exp(-acc))
    if HAS_VALID:
        y = y * tl.load(v_ptr + b * stride_vb + offs_t, mask=mt, other=0).to(tl.float32)[:, None]
    tl.store(y_ptr + b * stride_yb + offs_t[:, None] * stride_yt + offs_d[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mt[:, None] & md[None, :])
    if pid_t == tl.num_programs(1) - 1:
        for j in tl.static_range(K - 1):
            pos = tl.zeros_like(offs_d) + (L - (K - 1) + j)  # one position, as a vector (vector masks)
            inp = _conv_input(x_ptr, s_ptr, v_ptr, b, pos, offs_d, md, stride_xb, stride_xt,
                              stride_sb, stride_sd, stride_vb, K, HAS_VALID)
            tl.store(snew_ptr + b * D * (K - 1) + offs_d * (K - 1) + j, inp, mask=md)


def causal_conv1d(x, weight, bias, conv_state, valid=None, out_dtype=torch.float32, block_t: int = 32,
                  block_d: int = 128):
    """Triton version of reference.causal_conv1d: x [B, L, D] with unit channel stride (the in_proj output's x half
    is read in place), conv_state [B, D, K-1] float32; returns (y [B, L, D] out_dtype, new state float32)."""
    bsz, length, dim = x.shape
    k = weight.shape[-1]
    assert k >= 2 and x.stride(-1) == 1
    if conv_state is None:
        conv_state = torch.zeros(bsz, dim, k - 1, device=x.device)
    assert conv_state.dtype == torch.float32 and conv_state.stride(-1) == 1
    weight = weight.contiguous()
    y = torch.empty(bsz, length, dim, device=x.device, dtype=out_dtype)
    new_state = torch.empty(bsz, dim, k - 1, device=x.device, dtype=torch.float32)
    if valid is not None and valid.dtype == torch.bool:
        valid = valid.view(torch.uint8)
    grid = (bsz, max(1, triton.cdiv(length, block_t)), triton.cdiv(dim, block_d))
    _conv_prefill_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, valid if valid is not None else weight, y,
        new_state, length, dim, x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1),
        valid.stride(0) if valid is not None else 0, y.stride(0), y.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_VALID=valid is not None, BLOCK_T=block_t, BLOCK_D=block_d,
    )
    return y, new_state


@triton.jit
def _ssm_update_kernel(state_ptr, x_ptr, dt_ptr, wdt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, dtb_ptr, y_ptr, D, R,
                       stride_sb, stride_sd, stride_xb, stride_dtb, stride_wdt, stride_bb, stride_cb, stride_zb,
                       stride_yb, N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
                       SOFTPLUS: tl.constexpr, DT_PROJ: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                       PDL: tl.constexpr = 0, CONSTANTS_FIRST: tl.constexpr = False, SETTLED: tl.constexpr = False):
    """CONSTANTS_FIRST (with PDL): A, D, the Δ bias and W_dt — parameters — are read before the wait point.
    SETTLED (with CONSTANTS_FIRST, only where :func:`.pdl.reads_settled`): so are x, z and the state, written before
    the kernel just before this one (x_proj, whose Δ / B / C are read after the wait point)."""
    if not CONSTANTS_FIRST:
        pdl_wait(PDL)
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    md = offs_d < D
    m2 = md[:, None]
    a = tl.load(a_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m2, other=0.0)
    if DT_PROJ:
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        w = tl.load(wdt_ptr + offs_d[:, None] * stride_wdt + offs_r[None, :], mask=m2 & mr[None, :], other=0.0)
    if HAS_DTB:
        dt_bias = tl.load(dtb_ptr + offs_d, mask=md, other=0.0)
    if HAS_D:
        d_skip = tl.load(d_ptr + offs_d, mask=md, other=0.0)
    if CONSTANTS_FIRST and not SETTLED:
        pdl_wait(PDL)
    sp = state_ptr + pid_b * stride_sb + offs_d[:, None] * stride_sd + offs_n[None, :]
    s = tl.load(sp, mask=m2, other=0.0)
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_zb + offs_d, mask=md, other=0.0).to(tl.float32)
    if CONSTANTS_FIRST and SETTLED:
        pdl_wait(PDL)
    if DT_PROJ:  # Δ = W_dt · δ from the low-rank δ (x_proj's first R outputs), in float32
        low = tl.load(dt_ptr + pid_b * stride_dtb + offs_r, mask=mr, other=0.0).to(tl.float32)
        dt = tl.sum(w.to(tl.float32) * low[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + pid_b * stride_dtb + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += dt_bias.to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    a = a.to(tl.float32)
    bvec = tl.load(b_ptr + pid_b * stride_bb + offs_n).to(tl.float32)
    cvec = tl.load(c_ptr + pid_b * stride_cb + offs_n).to(tl.float32)
    s = tl.exp(dt[:, None] * a) * s + (dt * x)[:, None] * bvec[None, :]
    tl.store(sp, s, mask=m2)
    y = tl.sum(s * cvec[None, :], axis=1)
    if HAS_D:
        y += d_skip.to(tl.float32) * x
    if HAS_Z:
        y = y * (z / (1.0 + tl.exp(-z)))
    tl.store(y_ptr + pid_b * stride_yb + offs_d, y.to(y_ptr.dtype.element_ty), mask=md)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_proj_weight=None,
                           out_dtype=torch.float32, settled=False):
    """Triton version of reference.selective_state_update (state [B, D, N] float32, updated in place). With
    ``dt_proj_weight`` [D, R], ``dt`` is the low-rank [B, R] input and Δ = dt · W_dtᵀ is formed in the kernel.
    Under PDL ``A`` (when already float32 and contiguous), ``D``, ``dt_bias`` and ``dt_proj_weight`` are read before
    the kernels before this one end: they must be parameters (or, for A, made before the step). ``settled``: ``x``,
    ``z`` and ``state`` were written before the kernel launched just before this call (under late PDL they are then
    read before the wait point too)."""
    bsz, dim = x.shape
    n = A.shape[-1]
    assert state.dtype == torch.float32 and state.stride(-1) == 1 and n == triton.next_power_of_2(n)
    a_ready = A.dtype == torch.float32 and A.is_contiguous()  # else converted here, by a kernel of this step
    A = A.float().contiguous()
    y = torch.empty(bsz, dim, device=x.device, dtype=out_dtype)
    block = 64
    grid = (bsz, triton.cdiv(dim, block))
    dummy = A
    rank = dt_proj_weight.shape[1] if dt_proj_weight is not None else 1
    if dt_proj_weight is not None:
        assert dt_proj_weight.stride(1) == 1 and dt.stride(-1) == 1
    pdl = pdl_mode(x)
    _ssm_update_kernel[grid](
        state, x, dt, dt_proj_weight if dt_proj_weight is not None else dummy, A, B, C,
        D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, y, dim, rank,
        state.stride(0), state.stride(1), x.stride(0), dt.stride(0),
        dt_proj_weight.stride(0) if dt_proj_weight is not None else 0, B.stride(0), C.stride(0),
        z.stride(0) if z is not None else 0, y.stride(0),
        N=n, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None, SOFTPLUS=dt_softplus,
        DT_PROJ=dt_proj_weight is not None, BLOCK_R=triton.next_power_of_2(rank), BLOCK_D=block, PDL=pdl,
        CONSTANTS_FIRST=a_ready and pdl != 0, SETTLED=a_ready and _settled_form(settled, bsz, pdl),
        **launch_options(pdl),
    )
    return y


# ---------------------------------------------------------------------------------------------- KV cache write


@triton.jit
def _kv_write_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, G, stride_kb, stride_kg, stride_vb, stride_vg,
                     stride_kcb, stride_kcg, stride_kcs, stride_vcb, stride_vcg, stride_vcs,
                     BLOCK_G: tl.constexpr, HD: tl.constexpr, PDL: tl.constexpr = 0):
    pdl_wait(PDL)
    b = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HD)
    m = (offs_g < G)[:, None]
    k = tl.load(k_ptr + b * stride_kb + offs_g[:, None] * stride_kg + offs_d[None, :], mask=m)
    v = tl.load(v_ptr + b * stride_vb + offs_g[:, None] * stride_vg + offs_d[None, :], mask=m)
    tl.store(kc_ptr + b * stride_kcb + offs_g[:, None] * stride_kcg + slot * stride_kcs + offs_d[None, :],
             k.to(kc_ptr.dtype.element_ty), mask=m)
    tl.store(vc_ptr + b * stride_vcb + offs_g[:, None] * stride_vcg + slot * stride_vcs + offs_d[None, :],
             v.to(vc_ptr.dtype.element_ty), mask=m)


def kv_write_decode(k_cache, v_cache, k, v, slots):
    """Triton version of reference.kv_write_decode: one kernel writes both K and V of every row."""
    bsz, g, d = k.shape
    assert d == triton.next_power_of_2(d) and k.stride(-1) == 1 and v.stride(-1) == 1
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1
    pdl = pdl_mode(k)
    _kv_write_kernel[(bsz,)](k, v, k_cache, v_cache, slots, g, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                             k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0),
                             v_cache.stride(1), v_cache.stride(2), BLOCK_G=triton.next_power_of_2(g), HD=d, PDL=pdl,
                             **launch_options(pdl))


@triton.jit
def _decode_positions_kernel(pos_ptr, nkeys_ptr, kvv_ptr, slot_ptr, swapos_ptr, swav_ptr, B, stride_kvv, stride_swa,
                             WINDOW, HAS_WINDOW: tl.constexpr, BLOCK_B: tl.constexpr, PDL: tl.constexpr = 0):
    pdl_wait(PDL)
    b = tl.arange(0, BLOCK_B)
    ok = b < B
    p = tl.load(pos_ptr + b, mask=ok, other=0)
    tl.store(nkeys_ptr + b, p + 1, mask=ok)
    tl.store(kvv_ptr + b.to(tl.int64) * stride_kvv + p, tl.full((BLOCK_B,), 1, tl.uint8), mask=ok)
    if HAS_WINDOW:
        slot = p % WINDOW
        tl.store(slot_ptr + b, slot, mask=ok)
        tl.store(swapos_ptr + b * stride_swa + slot, p, mask=ok)
        tl.store(swav_ptr + b * stride_swa + slot, tl.full((BLOCK_B,), 1, tl.uint8), mask=ok)


def decode_positions(pos, n_keys, kv_valid, swa_slot=None, swa_pos=None, swa_valid=None):
    """Triton version of reference.decode_positions: one kernel instead of six or seven small torch ones."""
    bsz = pos.shape[0]
    window = swa_pos is not None
    assert kv_valid.dtype == torch.bool and kv_valid.stride(1) == 1 and pos.is_contiguous()
    if window:
        assert swa_valid.dtype == torch.bool and swa_pos.stride(1) == 1 and swa_valid.stride() == swa_pos.stride()
    pdl = pdl_mode(pos)
    kvv = kv_valid.view(torch.uint8)
    _decode_positions_kernel[(1,)](
        pos, n_keys, kvv, swa_slot if window else pos, swa_pos if window else pos,
        swa_valid.view(torch.uint8) if window else kvv, bsz, kv_valid.stride(0), swa_pos.stride(0) if window else 0,
        swa_pos.shape[1] if window else 1, HAS_WINDOW=window, BLOCK_B=triton.next_power_of_2(bsz), PDL=pdl,
        **launch_options(pdl),
    )


# -------------------------------------------------------------------------------------------- Mamba prefill scan


@triton.jit
def _ssm_combine(a1, b1, a2, b2):
    """Compose two steps of s ← a·s + b (first (a1, b1), then (a2, b2))."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_kernel(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, dtb_ptr, s0_ptr, y_ptr, sout_ptr, D, L,
                    stride_ub, stride_ud, stride_ut, stride_dtb, stride_dtd, stride_dtt, stride_bb, stride_bn,
                    stride_bt, stride_cb, stride_cn, stride_ct, stride_zb, stride_zd, stride_zt, stride_yb,
                    stride_yd, stride_yt, N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_DTB: tl.constexpr, HAS_S0: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_T: tl.constexpr):
    """Selective scan over time in chunks of BLOCK_T steps for a block of BLOCK_D channels.

    A chunk is one time-major [BLOCK_T, N, BLOCK_D] tile of affine maps s ↦ exp(Δ_t·A_n)·s + Δ_t·u_t·B_t,n, composed by
    a parallel (associative) scan along time for every (channel, state) at once and applied to the carried state;
    y_t = Σ_n s_t,n·C_t,n is a reduction over the state axis (+ D·u_t), gated by silu(z_t). With time as the slowest
    tile axis, Triton's layout keeps each thread's time steps in its registers (the scan needs no shuffles) and puts
    channels (contiguous in the model's channels-last tensors) and states across lanes.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, BLOCK_T)
    md = offs_d < D
    a = tl.load(a_ptr + offs_d[None, :] * N + offs_n[:, None], mask=md[None, :], other=0.0).to(tl.float32)
    state_off = pid_b * D * N + offs_d[None, :] * N + offs_n[:, None]  # [N, BLOCK_D]
    if HAS_S0:
        s = tl.load(s0_ptr + state_off, mask=md[None, :], other=0.0)
    else:
        s = tl.zeros((N, BLOCK_D), dtype=tl.float32)
    if HAS_D:
        dvec = tl.load(d_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    u_col = u_ptr + pid_b * stride_ub + offs_d[None, :] * stride_ud
    dt_col = dt_ptr + pid_b * stride_dtb + offs_d[None, :] * stride_dtd
    y_col = y_ptr + pid_b * stride_yb + offs_d[None, :] * stride_yd
    z_col = z_ptr + pid_b * stride_zb + offs_d[None, :] * stride_zd
    b_row = b_ptr + pid_b * stride_bb + offs_n[None, :] * stride_bn
    c_row = c_ptr + pid_b * stride_cb + offs_n[None, :] * stride_cn
    last = (offs_t == BLOCK_T - 1)[:, None, None]
    for t0 in range(0, L, BLOCK_T):
        tt = t0 + offs_t
        mt = tt < L
        mtd = mt[:, None] & md[None, :]
        u = tl.load(u_col + tt[:, None] * stride_ut, mask=mtd, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_D]
        dt = tl.load(dt_col + tt[:, None] * stride_dtt, mask=mtd, other=0.0).to(tl.float32)
        if HAS_DTB:
            dt += dtb[None, :]
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        dt = tl.where(mt[:, None], dt, 0.0)  # steps past the end leave the state as it is
        bt = tl.load(b_row + tt[:, None] * stride_bt, mask=mt[:, None], other=0.0).to(tl.float32)  # [BLOCK_T, N]
        ct = tl.load(c_row + tt[:, None] * stride_ct, mask=mt[:, None], other=0.0).to(tl.float32)
        decay = tl.exp(dt[:, None, :] * a[None, :, :])  # [BLOCK_T, N, BLOCK_D]
        inp = (dt * u)[:, None, :] * bt[:, :, None]
        decay, inp = tl.associative_scan((decay, inp), axis=0, combine_fn=_ssm_combine)
        h = decay * s[None, :, :] + inp
        y = tl.sum(h * ct[:, :, None], axis=1)  # [BLOCK_T, BLOCK_D]
        s = tl.sum(tl.where(last, h, 0.0), axis=0)
        if HAS_D:
            y += dvec[None, :] * u
        if HAS_Z:
            z = tl.load(z_col + tt[:, None] * stride_zt, mask=mtd, other=0.0).to(tl.float32)
            y = y * (z / (1.0 + tl.exp(-z)))
        tl.store(y_col + tt[:, None] * stride_yt, y.to(y_ptr.dtype.element_ty), mask=mtd)
    tl.store(sout_ptr + state_off, s, mask=md[None, :])


SCAN_CONFIG = (4, 32, 1)  # block_d, block_t, num_warps: the best of tools/bench_scan.py on an H100


def scan_config() -> tuple[int, int, int]:
    """The scan's launch configuration; SAMBAY_SCAN="block_d,block_t,num_warps" overrides it (tuning)."""
    override = os.environ.get("SAMBAY_SCAN", "")
    if "," in override:
        bd, bt, nw = (int(v) for v in override.split(","))
        return bd, bt, nw
    return SCAN_CONFIG


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None,
                   out_dtype=torch.float32, block_d: int | None = None, block_t: int | None = None,
                   num_warps: int | None = None):
    """Triton version of reference.selective_scan: returns (y [B, D, L] in ``out_dtype``, final state float32
    [B, D, N]). Inputs may have any strides. y is laid out channels last in memory (a [B, L, D] tensor seen as
    [B, D, L]), so ``y.transpose(1, 2)`` feeds the output projection without a copy.
    Default tiles: the best of tools/bench_scan.py on an H100 (see docs/performance.md).
    """
    cfg = scan_config()
    block_d = block_d or cfg[0]
    block_t = block_t or cfg[1]
    num_warps = num_warps or cfg[2]
    bsz, dim, length = u.shape
    n = A.shape[-1]
    assert n == triton.next_power_of_2(n)
    A = A.float().contiguous()
    y = torch.empty(bsz, length, dim, device=u.device, dtype=out_dtype).transpose(1, 2)
    s_out = torch.empty(bsz, dim, n, device=u.device, dtype=torch.float32)
    s0 = initial_state.float().contiguous() if initial_state is not None else None
    dummy = A
    grid = (bsz, triton.cdiv(dim, block_d))
    _scan_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, s0 if s0 is not None else dummy, y, s_out, dim, length,
        u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0, z.stride(2) if z is not None else 0,
        y.stride(0), y.stride(1), y.stride(2),
        N=n, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=delta_bias is not None, HAS_S0=s0 is not None,
        SOFTPLUS=delta_softplus, BLOCK_D=block_d, BLOCK_T=block_t, num_warps=num_warps,
    )
    return y, s_out


# ------------------------------------------------------------------------------------------- attention decode


@triton.jit
def _attn_decode_partial(q_ptr, k_ptr, v_ptr, valid_ptr, len_ptr, o_ptr, m_ptr, l_ptr,
                         stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
                         stride_valb, stride_ob, stride_oh, stride_os, stride_mb, stride_mh,
                         scale, SPLIT,
                         R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr,
                         BLOCK_S: tl.constexpr, MP: tl.constexpr, IEEE: tl.constexpr,
                         cnt_ptr=None, lam_ptr=None, w_ptr=None, out_ptr=None, stride_outb=0, stride_outh=0,
                         lambda_init=0.0, eps=0.0, FUSED: tl.constexpr = False, NSPLIT: tl.constexpr = 1,
                         PDL: tl.constexpr = 0, SETTLED: tl.constexpr = 0):
    """One (batch, KV group, split) program, on tensor cores.

    A KV group is a KV-head pair (2g, 2g+1) for differential attention, or one KV head g. Its keys are read as one
    tile K̂ = [K_2g | K_2g+1] of width W = 2·HD (or K_g, W = HD), values likewise, so each byte is loaded once for
    every query head that uses it. The queries form a zero-padded [MP, W] tile Q̂: row r < R is stream 1 of pair
    p = g·R + r (query head 2p, placed in the first HD columns), row R + r is stream 2 (head 2p + 1, second HD
    columns) — so S = Q̂·K̂ᵀ gives q_2p·k_2g and q_2p+1·k_2g+1 at once, and P·V̂ gives each stream's [A(v_2g) | A(v_2g+1)].
    Non-differential: row r is query head g·R + r over all HD columns.

    The slice of keys a split owns is a share of this row's filled length (read from the device, so a CUDA graph
    replays at any length), rounded to BLOCK_S. Writes un-normalised partial outputs with their running max and sum.
    FUSED: then takes a ticket for its (batch, group); the last of the NSPLIT programs to finish merges the partials
    (``_combine_group``) and resets the counter — one kernel per layer instead of two.

    SETTLED (non-zero only where :func:`.pdl.reads_settled`): the filled lengths, the valid flags and either the keys
    and values (SETTLED_KV: cross-attention, whose shared KV an earlier layer wrote) or the queries (SETTLED_Q: the
    layer's K/V write ran in between) were written before the kernel just before this one; the program reads them
    and its first key block before the wait point, so only the other operand's round trip is left after it.
    """
    if SETTLED == 0:
        pdl_wait(PDL)
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    g = tl.program_id(1)
    sp = tl.program_id(2)
    W: tl.constexpr = 2 * HD if DIFF else HD
    NR: tl.constexpr = 2 * R if DIFF else R
    n_keys = tl.load(len_ptr + pid_b)
    per_split = _split_keys(n_keys, SPLIT, BLOCK_S)
    s_begin = sp * per_split
    s_end = tl.minimum(s_begin + per_split, n_keys)
    offs_m = tl.arange(0, MP)
    offs_w = tl.arange(0, W)
    col_head = offs_w // HD  # 0/1: which head of the pair this column belongs to (always 0 when not DIFF)
    col_d = offs_w % HD
    row_ok = offs_m < NR
    if DIFF:
        stream = offs_m // R
        qhead = 2 * (g * R + offs_m % R) + stream
        q_ok = row_ok[:, None] & (col_head[None, :] == stream[:, None])
        kv_head = 2 * g + col_head
    else:
        qhead = g * R + offs_m
        q_ok = row_ok[:, None] & (col_head[None, :] == 0)
        kv_head = g + col_head
    q_ptrs = q_ptr + pid_b * stride_qb + qhead[:, None] * stride_qh + col_d[None, :]
    k_base = k_ptr + pid_b * stride_kb + kv_head[None, :] * stride_kh + col_d[None, :]
    v_base = v_ptr + pid_b * stride_vb + kv_head[None, :] * stride_vh + col_d[None, :]
    valid_row = valid_ptr + pid_b * stride_valb
    m = tl.full((MP,), float("-inf"), tl.float32)
    lsum = tl.zeros((MP,), tl.float32)
    acc = tl.zeros((MP, W), tl.float32)
    first = s_begin
    if SETTLED != 0:  # the first key block (masked out entirely for a split without keys) around the wait point
        offs_s = s_begin + tl.arange(0, BLOCK_S)
        ms = offs_s < s_end
        ok = ms & (tl.load(valid_row + offs_s, mask=ms, other=0) != 0)
        if SETTLED == 1:  # SETTLED_KV
            k_first, v_first = _load_key_block(k_base, v_base, offs_s, ms, stride_ks, stride_vs)
        else:
            q = tl.load(q_ptrs, mask=q_ok, other=0.0)
        pdl_wait(PDL)
        if SETTLED == 1:
            q = tl.load(q_ptrs, mask=q_ok, other=0.0)
        else:
            k_first, v_first = _load_key_block(k_base, v_base, offs_s, ms, stride_ks, stride_vs)
    else:
        q = tl.load(q_ptrs, mask=q_ok, other=0.0)
    q = (q.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)  # dots in q's dtype (an fp8 cache is widened)
    if SETTLED != 0:
        m, lsum, acc = _attn_decode_block(q, k_first.to(q.dtype), v_first.to(q.dtype), ok, m, lsum, acc, IEEE)
        first += BLOCK_S
    for s0 in range(first, s_end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        ms = offs_s < s_end
        ok = ms & (tl.load(valid_row + offs_s, mask=ms, other=0) != 0)
        k, v = _load_key_block(k_base, v_base, offs_s, ms, stride_ks, stride_vs)
        m, lsum, acc = _attn_decode_block(q, k.to(q.dtype), v.to(q.dtype), ok, m, lsum, acc, IEEE)
    # row i of the tile is partial row g·NR + i (DIFF: stream 1 rows, then stream 2 rows; each row [A(v1) | A(v2)])
    rows = g * NR + offs_m
    o_base = o_ptr + pid_b * stride_ob + sp * stride_os
    tl.store(o_base + rows[:, None] * stride_oh + offs_w[None, :], acc, mask=row_ok[:, None])
    tl.store(m_ptr + pid_b * stride_mb + rows * stride_mh + sp, m, mask=row_ok)
    tl.store(l_ptr + pid_b * stride_mb + rows * stride_mh + sp, lsum, mask=row_ok)
    if FUSED:
        tl.debug_barrier()  # this program's partials are written before its ticket releases them
        counter = cnt_ptr + pid_b * tl.num_programs(1) + g
        if tl.atomic_add(counter, 1, sem="acq_rel") == NSPLIT - 1:
            tl.atomic_xchg(counter, 0, sem="relaxed")
            _combine_group(pid_b, g, tl.cdiv(n_keys, per_split), o_ptr, m_ptr, l_ptr, lam_ptr, w_ptr, out_ptr,
                           stride_ob, stride_oh, stride_os, stride_mb, stride_mh, stride_outb, stride_outh, lambda_init,
                           eps, R, HD, DIFF, NSPLIT, W, ".cg")


@triton.jit
def _load_key_block(k_base, v_base, offs_s, ms, stride_ks, stride_vs):
    """Keys and values of the positions ``offs_s`` (``ms``: inside the split), as stored."""
    k = tl.load(k_base + offs_s[:, None] * stride_ks, mask=ms[:, None], other=0.0)
    v = tl.load(v_base + offs_s[:, None] * stride_vs, mask=ms[:, None], other=0.0)
    return k, v


@triton.jit
def _attn_decode_block(q, k, v, ok, m, lsum, acc, IEEE: tl.constexpr):
    """One key block of the online softmax: scores of the [MP, W] query tile against k [BLOCK_S, W] (``ok``: the
    keys that count), the running max / sum / output rescaled, P·v added."""
    if IEEE:
        sc = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        sc = tl.dot(q, tl.trans(k))
    sc = tl.where(ok[None, :], sc, float("-inf"))
    n = tl.maximum(m, tl.max(sc, axis=1))
    ns = tl.where(n == float("-inf"), 0.0, n)
    p = tl.exp(sc - ns[:, None])
    c = tl.exp(m - ns)
    lsum = lsum * c + tl.sum(p, axis=1)
    if IEEE:
        acc = acc * c[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * c[:, None] + tl.dot(p.to(v.dtype), v)
    return n, lsum, acc


@triton.jit
def _split_keys(n_keys, SPLIT, BLOCK_S: tl.constexpr):
    """Keys per split program: an equal share of the filled length, rounded up to whole key blocks (at least one,
    so that the number of splits owning keys, cdiv(n_keys, per_split), is defined for an empty row too)."""
    return tl.maximum(tl.cdiv(tl.cdiv(n_keys, SPLIT), BLOCK_S) * BLOCK_S, BLOCK_S)


@triton.jit
def _attn_decode_combine(o_ptr, m_ptr, l_ptr, lam_ptr, w_ptr, out_ptr, len_ptr,
                         stride_ob, stride_oh, stride_os, stride_mb, stride_mh, stride_outb, stride_outh,
                         lambda_init, eps,
                         R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr, SPLIT: tl.constexpr,
                         W: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = 0):
    """Merge the split partials of one (batch, group) — the unfused second kernel (used where no ticket counters
    are available, e.g. a first call inside a CUDA-graph capture)."""
    pdl_wait(PDL)
    pid_b = tl.program_id(0).to(tl.int64)
    n_keys = tl.load(len_ptr + pid_b)
    _combine_group(pid_b, tl.program_id(1), tl.cdiv(n_keys, _split_keys(n_keys, SPLIT, BLOCK_S)), o_ptr, m_ptr, l_ptr,
                   lam_ptr, w_ptr, out_ptr, stride_ob, stride_oh, stride_os, stride_mb, stride_mh, stride_outb,
                   stride_outh, lambda_init, eps, R, HD, DIFF, SPLIT, W, "")


@triton.jit
def _combine_group(pid_b, g, active, o_ptr, m_ptr, l_ptr, lam_ptr, w_ptr, out_ptr,
                   stride_ob, stride_oh, stride_os, stride_mb, stride_mh, stride_outb, stride_outh,
                   lambda_init, eps,
                   R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr, SPLIT: tl.constexpr,
                   W: tl.constexpr, CACHE: tl.constexpr):
    """Merge the split partials of one (batch, group); for differential attention also λ-combine, RMS-normalise
    over 2·HD, scale by (1 − λ_init) and write heads (2p, 2p+1). CACHE ".cg": read the partials from L2 (other
    programs wrote them during this kernel). Only the first ``active`` splits own keys: the others' partials are
    not read (masked loads, one round trip as before), which keeps a graph captured with many splits cheap while
    the filled length is short."""
    offs_s = tl.arange(0, SPLIT)
    s_ok = offs_s < active
    offs_w = tl.arange(0, W)
    offs_r = tl.arange(0, R)
    if DIFF:
        rows1 = g * 2 * R + offs_r
        rows2 = rows1 + R
        mb = m_ptr + pid_b * stride_mb
        ms1 = tl.load(mb + rows1[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=float("-inf"), cache_modifier=CACHE)
        ms2 = tl.load(mb + rows2[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=float("-inf"), cache_modifier=CACHE)
        ls1 = tl.load(l_ptr + pid_b * stride_mb + rows1[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=0.0, cache_modifier=CACHE)
        ls2 = tl.load(l_ptr + pid_b * stride_mb + rows2[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=0.0, cache_modifier=CACHE)
        mx1 = tl.max(ms1, axis=1)
        mx2 = tl.max(ms2, axis=1)
        mx1 = tl.where(mx1 == float("-inf"), 0.0, mx1)
        mx2 = tl.where(mx2 == float("-inf"), 0.0, mx2)
        f1 = tl.exp(ms1 - mx1[:, None])  # [R, SPLIT]
        f2 = tl.exp(ms2 - mx2[:, None])
        den1 = tl.sum(ls1 * f1, axis=1)
        den2 = tl.sum(ls2 * f2, axis=1)
        den1 = tl.where(den1 == 0.0, 1.0, den1)
        den2 = tl.where(den2 == 0.0, 1.0, den2)
        ob = o_ptr + pid_b * stride_ob
        o1 = tl.load(ob + rows1[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :],
                     mask=s_ok[None, :, None], other=0.0, cache_modifier=CACHE)
        o2 = tl.load(ob + rows2[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :],
                     mask=s_ok[None, :, None], other=0.0, cache_modifier=CACHE)
        a1 = tl.sum(o1 * f1[:, :, None], axis=1) / den1[:, None]  # [R, 2HD]
        a2 = tl.sum(o2 * f2[:, :, None], axis=1) / den2[:, None]
        lam = tl.load(lam_ptr)
        o = a1 - lam * a2
        rms = tl.sqrt(tl.sum(o * o, axis=1) / W + eps)
        w = tl.load(w_ptr + offs_w).to(tl.float32)
        o = o / rms[:, None] * w[None, :] * (1.0 - lambda_init)
        # row p of stream pair -> heads 2p (first HD) and 2p+1 (second HD): contiguous 2·HD per p
        heads = g * R + offs_r
        tl.store(out_ptr + pid_b * stride_outb + heads[:, None] * stride_outh + offs_w[None, :],
                 o.to(out_ptr.dtype.element_ty))
    else:
        rows = g * R + offs_r
        ms = tl.load(m_ptr + pid_b * stride_mb + rows[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=float("-inf"), cache_modifier=CACHE)
        ls = tl.load(l_ptr + pid_b * stride_mb + rows[:, None] * stride_mh + offs_s[None, :], mask=s_ok[None, :],
                      other=0.0, cache_modifier=CACHE)
        mx = tl.max(ms, axis=1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        f = tl.exp(ms - mx[:, None])
        den = tl.sum(ls * f, axis=1)
        den = tl.where(den == 0.0, 1.0, den)
        ob = o_ptr + pid_b * stride_ob
        o = tl.load(ob + rows[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :],
                    mask=s_ok[None, :, None], other=0.0, cache_modifier=CACHE)
        a = tl.sum(o * f[:, :, None], axis=1) / den[:, None]
        tl.store(out_ptr + pid_b * stride_outb + rows[:, None] * stride_outh + offs_w[None, :],
                 a.to(out_ptr.dtype.element_ty))


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return _SM_COUNTS.setdefault(device.index or 0, torch.cuda.get_device_properties(device).multi_processor_count)


_SM_COUNTS: dict[int, int] = {}


SETTLED_KV, SETTLED_Q = 1, 2  # which operands of decode attention may be read before the PDL wait point
# Settled inputs are read before the wait point for batch-1 decode only, where the kernels around these are PDL GEMVs
# (H100, 3.8B shape, 2K: int4 607 -> 622 tok/s, int8 463 -> 469). From 16 sequences the linears are GEMMs launched
# without PDL, so nothing overlaps, and the split-off first key block compiled slower: batch 16 lost 2.5-3 %.
SETTLED_MAX_ROWS = 1


def _settled_form(wanted: bool, rows: int, pdl: int) -> bool:
    """Whether a decode kernel whose caller declares settled inputs takes the form that reads them before its wait
    point: declared, at most SETTLED_MAX_ROWS sequences, and a PDL mode that allows it."""
    return bool(wanted) and rows <= SETTLED_MAX_ROWS and reads_settled(pdl)
_SETTLED = {"": 0, "kv": SETTLED_KV, "q": SETTLED_Q}
ATTN_DECODE_MAX_SPLITS = 32  # merging more partials in one program cost more than the extra programs gained (H100)


def attention_decode_launch(programs: int, s_max: int, sm_count: int, kv_bytes: int = 2) -> tuple[int, int, int, int]:
    """(block_s, splits, num_warps, num_stages) of the decode-attention kernel for ``programs`` (batch × KV group)
    rows of work over a cache of ``s_max`` positions of ``kv_bytes`` per element, fixed per CUDA graph (the filled
    length varies inside one).

    Measured on an H100 (``tools/bench_attention_decode.py`` and whole-model decode, 3.8B shape: SWA ring of 512,
    shared KV of 4K or 34K positions filled to 2K-32K, 1 to 64 sequences), by how many rows there are:

    * about one sequence's rows (fewer than an eighth of the SMs): key blocks of 64, up to 32 splits;
    * up to four per SM: blocks of 32 and about four programs per SM (at 4 sequences over 34K positions 16 splits
      of 32 keys took 228 µs against 245 for 32 of 64; at 16 sequences on the SWA ring 4 splits took 18 µs against
      22 for 8); an fp8 cache (widened on load) keeps blocks of 128 and about eight programs per SM (blocks of 32
      took 40 % longer there);
    * more: blocks of 128, about eight programs per SM, as before this sweep.

    Never more than 32 splits (one program merges them); 4 warps, 2 stages.
    ``SAMBAY_ATTN_DECODE="block_s,splits,num_warps,num_stages"`` overrides it (tuning)."""
    override = os.environ.get("SAMBAY_ATTN_DECODE", "")
    if "," in override:
        block_s, splits, num_warps, num_stages = (int(v) for v in override.split(","))
        return block_s, splits, num_warps, num_stages
    if 8 * programs < sm_count:
        block_s, per_sm = 64, 8
    elif programs < 4 * sm_count:
        block_s, per_sm = (128, 8) if kv_bytes == 1 else (32, 4)
    else:
        block_s, per_sm = 128, 8
    want = math.ceil(per_sm * sm_count / programs)
    splits = max(1, min(ATTN_DECODE_MAX_SPLITS, triton.next_power_of_2(want),
                        triton.next_power_of_2(math.ceil(s_max / block_s))))
    return block_s, splits, 4, 2


def diff_attention_decode(q, k, v, valid, n_keys, *, scale, lambda_full, lambda_init, subln_weight, eps,
                          out_dtype=torch.float32, splits: int | None = None, block_s: int | None = None,
                          num_warps: int | None = None, num_stages: int | None = None, settled: str = ""):
    """Decode attention for one query per sequence.

    q: [B, H, d]; k, v: [B, G, S_max, d] (a cache; only the first ``n_keys`` positions are read); valid: [B, S_max]
    (bool/uint8: padding and empty slots are False); n_keys: int64 tensor [B] on the device, keys per row
    (graph-safe). Each row's filled length is shared among ``splits`` programs per KV group; launch parameters left
    as None come from :func:`attention_decode_launch`. Dots run in q's dtype (IEEE precision for
    float32); a cache in another dtype (fp8 shared KV) is widened on load.
    Returns [B, H, d] in ``out_dtype`` — for differential attention already normalised and scaled, heads in order.
    ``settled``: "kv" when ``k``, ``v``, ``valid`` and ``n_keys`` were all written before the kernel launched just
    before this call, "q" when ``q``, ``valid`` and ``n_keys`` were; under late PDL those are then read (with the
    first key block) before the kernel's wait point (:func:`.pdl.reads_settled`) — for one sequence and a cache in
    q's dtype (SETTLED_MAX_ROWS; an fp8 cache keeps the plain form).
    """
    bsz, h, d = q.shape
    g = k.shape[1]
    s_max = k.shape[2]
    diff = lambda_full is not None
    r = (h // 2) // (g // 2) if diff else h // g
    assert d == triton.next_power_of_2(d) and d >= 16 and r == triton.next_power_of_2(r), \
        "head_dim (>= 16) and H/G must be powers of 2"
    width = 2 * d if diff else d
    groups = g // 2 if diff else g
    launch = attention_decode_launch(bsz * groups, s_max, _sm_count(q.device), k.element_size())
    block_s = launch[0] if block_s is None else block_s
    splits = launch[1] if splits is None else splits
    num_warps = launch[2] if num_warps is None else num_warps
    num_stages = launch[3] if num_stages is None else num_stages
    n_rows = 2 * r if diff else r
    o = torch.empty(bsz, h, splits, width, device=q.device, dtype=torch.float32)
    m = torch.empty(bsz, h, splits, device=q.device, dtype=torch.float32)
    lsum = torch.empty(bsz, h, splits, device=q.device, dtype=torch.float32)
    if valid.dtype == torch.bool:
        valid = valid.view(torch.uint8)
    if diff:
        out = torch.empty(bsz, h // 2, 2 * d, device=q.device, dtype=out_dtype)
        lam = lambda_full.reshape(1).float()
        w = subln_weight
    else:
        out = torch.empty(bsz, h, d, device=q.device, dtype=out_dtype)
        lam = m  # unused
        w = m
    # the last split program of each (batch, group) merges: tickets shared with the split-K GEMVs (every kernel of
    # a step runs after the previous one, and each leaves its counters at zero)
    ws = splitk_workspace(q.device, 0, bsz * groups) if splits > 1 else None
    fused = ws is not None
    counters = ws[1] if fused else None
    pdl = pdl_mode(q)
    # a cache widened on load (fp8 shared KV) keeps the plain form: with the first block split off it lost 5 % at 32K
    settled_code = _SETTLED[settled] if k.dtype == q.dtype and _settled_form(settled, bsz, pdl) else 0
    _attn_decode_partial[(bsz, groups, splits)](
        q, k, v, valid, n_keys, o, m, lsum,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        valid.stride(0), o.stride(0), o.stride(1), o.stride(2), m.stride(0), m.stride(1),
        scale, splits, R=r, HD=d, DIFF=diff, BLOCK_S=block_s, MP=max(16, triton.next_power_of_2(n_rows)),
        IEEE=q.dtype == torch.float32, cnt_ptr=counters if fused else m, lam_ptr=lam, w_ptr=w, out_ptr=out,
        stride_outb=out.stride(0), stride_outh=out.stride(1), lambda_init=float(lambda_init), eps=float(eps),
        FUSED=fused, NSPLIT=splits, PDL=pdl, SETTLED=settled_code, num_warps=num_warps, num_stages=num_stages,
        **launch_options(pdl),
    )
    if not fused:
        _attn_decode_combine[(bsz, groups)](
            o, m, lsum, lam, w, out, n_keys, o.stride(0), o.stride(1), o.stride(2), m.stride(0), m.stride(1),
            out.stride(0), out.stride(1), float(lambda_init), float(eps),
            R=r, HD=d, DIFF=diff, SPLIT=splits, W=width, BLOCK_S=block_s, PDL=pdl, **launch_options(pdl),
        )
    return out.view(bsz, h, d)



# ------------------------------------------------------------------------------------------ attention prefill


@triton.jit
def _qk(q, k, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(q, tl.trans(k), input_precision="ieee")
    return tl.dot(q, tl.trans(k))


@triton.jit
def _pv(p, v, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return tl.dot(p.to(v.dtype), v)


@triton.jit
def _softmax_step(s, m, lsum):
    """One online-softmax step over a block of scores s [M, N] (−inf = masked): new max, rescale factor, P, sum."""
    n = tl.maximum(m, tl.max(s, axis=1))
    ns = tl.where(n == float("-inf"), 0.0, n)
    p = tl.exp(s - ns[:, None])
    c = tl.exp(m - ns)
    return n, c, p, lsum * c + tl.sum(p, axis=1)


@triton.jit
def _visible(k_ok, k_pos, q_pos, window, HAS_WINDOW: tl.constexpr):
    """[queries, keys] visibility (``reference.attention_mask``): a valid key, not after the query, inside its window."""
    vis = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        vis = vis & (k_pos[None, :] > q_pos[:, None] - window)
    return vis


@triton.jit
def _attn_tile(qa, qb, ka_ptrs, kb_ptrs, v_ptrs, n_ok, vis, ma, la, acca, mb, lb, accb,
               DIFF: tl.constexpr, IEEE: tl.constexpr):
    """Fold one block of keys (visibility ``vis`` [M, N]) into the online softmax of one stream (two for DIFF)."""
    v = tl.load(v_ptrs, mask=n_ok[:, None], other=0.0).to(qa.dtype)
    ka = tl.load(ka_ptrs, mask=n_ok[:, None], other=0.0).to(qa.dtype)
    sa = tl.where(vis, _qk(qa, ka, IEEE), float("-inf"))
    ma, ca, pa, la = _softmax_step(sa, ma, la)
    acca = acca * ca[:, None] + _pv(pa, v, IEEE)
    if DIFF:
        kb = tl.load(kb_ptrs, mask=n_ok[:, None], other=0.0).to(qa.dtype)
        sb = tl.where(vis, _qk(qb, kb, IEEE), float("-inf"))
        mb, cb, pb, lb = _softmax_step(sb, mb, lb)
        accb = accb * cb[:, None] + _pv(pb, v, IEEE)
    return ma, la, acca, mb, lb, accb


@triton.jit
def _attn_prefill_kernel(q_ptr, k_ptr, v_ptr, kvalid_ptr, rk_ptr, rv_ptr, rpos_ptr, rvalid_ptr, lam_ptr, w_ptr,
                         out_ptr, stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
                         stride_vb, stride_vh, stride_vl, stride_kvb, stride_rkb, stride_rkh, stride_rkl,
                         stride_rvb, stride_rvh, stride_rvl, stride_rpb, stride_rvab, stride_ob, stride_ol,
                         Lq, Lk, LR, NP, q_start, k_start, window, scale, lambda_init, eps,
                         R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         HAS_RING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    """Flash-style attention over a chunk of queries: one program per (block of queries, row, head pair or head).

    Queries sit at consecutive positions from ``q_start``, keys at consecutive positions from ``k_start`` (the chunk
    itself, or the shared KV from 0), optionally preceded by a ring of keys at arbitrary positions (the SWA cache,
    read in place). Sequential keys are visited only over the range a query block can see (causal, and inside the
    window): a sliding-window layer costs O(window) per query, not O(chunk).

    Differential (DIFF): pair p = query heads (2p, 2p+1) reads KV heads (2g, 2g+1), g = p // R; the two softmax streams
    S1 = q_2p·k_2gᵀ and S2 = q_2p+1·k_2g+1ᵀ each multiply V̂ = [v_2g | v_2g+1] (one [BLOCK_N, 2·HD] tile), and the
    epilogue forms RMSNorm(A1 − λ·A2)·(1 − λ_init) and writes heads 2p, 2p+1. Plain: head p reads KV head p // R.
    Visibility as ``reference.attention_mask``: valid, not in the future, inside the window.
    """
    pid_m = tl.program_id(0)
    pid_bp = tl.program_id(1)
    b = (pid_bp // NP).to(tl.int64)
    p = pid_bp % NP
    W: tl.constexpr = 2 * HD if DIFF else HD
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HD)
    offs_w = tl.arange(0, W)
    m_ok = offs_m < Lq
    q_pos = q_start + offs_m
    q_lo = q_start + pid_m * BLOCK_M
    q_hi = q_start + tl.minimum(pid_m * BLOCK_M + BLOCK_M, Lq) - 1
    g = p // R
    head_a = 2 * p if DIFF else p
    kv_a = 2 * g if DIFF else g
    qa = tl.load(q_ptr + b * stride_qb + head_a * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :],
                 mask=m_ok[:, None], other=0.0)
    qa = (qa.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)  # dots in q's dtype (an fp8 cache is widened)
    ma = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    la = tl.zeros((BLOCK_M,), tl.float32)
    acca = tl.zeros((BLOCK_M, W), tl.float32)
    qb, mb, lb, accb = qa, ma, la, acca
    if DIFF:
        qb = tl.load(q_ptr + b * stride_qb + (head_a + 1) * stride_qh + offs_m[:, None] * stride_ql
                     + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        qb = (qb.to(tl.float32) * scale).to(q_ptr.dtype.element_ty)
    # V̂ columns: [v_2g | v_2g+1] for differential attention, v_g otherwise
    v_cols = (kv_a + offs_w // HD)[None, :]
    if HAS_RING:  # keys at arbitrary positions (−1: empty slot); blocks nobody in this query block sees are skipped
        rk_base = rk_ptr + b * stride_rkb + kv_a * stride_rkh + offs_d[None, :]
        rv_base = rv_ptr + b * stride_rvb + v_cols * stride_rvh + (offs_w % HD)[None, :]
        for n0 in range(0, LR, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < LR
            k_pos = tl.load(rpos_ptr + b * stride_rpb + offs_n, mask=n_ok, other=-1)
            k_ok = n_ok & (k_pos >= 0) & (tl.load(rvalid_ptr + b * stride_rvab + offs_n, mask=n_ok, other=0) != 0)
            k_ok = k_ok & (k_pos <= q_hi)
            if HAS_WINDOW:
                k_ok = k_ok & (k_pos > q_lo - window)
            if tl.max(k_ok.to(tl.int32), axis=0) > 0:
                vis = _visible(k_ok, k_pos, q_pos, window, HAS_WINDOW)
                ka_ptrs = rk_base + offs_n[:, None] * stride_rkl
                ma, la, acca, mb, lb, accb = _attn_tile(qa, qb, ka_ptrs, ka_ptrs + stride_rkh,
                                                        rv_base + offs_n[:, None] * stride_rvl, n_ok, vis,
                                                        ma, la, acca, mb, lb, accb, DIFF, IEEE)
    # consecutive keys: only the blocks between the window's start and the causal end of this query block
    k_base = k_ptr + b * stride_kb + kv_a * stride_kh + offs_d[None, :]
    v_base = v_ptr + b * stride_vb + v_cols * stride_vh + (offs_w % HD)[None, :]
    hi = tl.minimum(Lk, q_hi - k_start + 1)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(q_lo - window + 1 - k_start, 0) // BLOCK_N * BLOCK_N
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        k_pos = k_start + offs_n
        k_ok = n_ok & (tl.load(kvalid_ptr + b * stride_kvb + offs_n, mask=n_ok, other=0) != 0)
        vis = _visible(k_ok, k_pos, q_pos, window, HAS_WINDOW)
        ka_ptrs = k_base + offs_n[:, None] * stride_kl
        ma, la, acca, mb, lb, accb = _attn_tile(qa, qb, ka_ptrs, ka_ptrs + stride_kh,
                                                v_base + offs_n[:, None] * stride_vl, n_ok, vis,
                                                ma, la, acca, mb, lb, accb, DIFF, IEEE)
    o = acca / tl.where(la == 0.0, 1.0, la)[:, None]  # rows with no visible key give zeros, as the reference
    if DIFF:
        o = o - tl.load(lam_ptr) * (accb / tl.where(lb == 0.0, 1.0, lb)[:, None])
        o = o * tl.rsqrt(tl.sum(o * o, axis=1) / W + eps)[:, None]
        o = o * tl.load(w_ptr + offs_w).to(tl.float32)[None, :] * (1.0 - lambda_init)
    out = out_ptr + b * stride_ob + offs_m[:, None] * stride_ol + head_a * HD + offs_w[None, :]
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=m_ok[:, None])


def attention_prefill(q, k, v, k_valid, q_start, k_start, window, *, ring=None, scale, lambda_full, lambda_init,
                      subln_weight, eps, block_m: int = 64, block_n: int = 64, num_warps: int | None = None,
                      num_stages: int = 2):
    """Attention of a chunk of queries over its keys (see ``reference.attention_prefill``).

    q: [B, H, Lq, d] at positions q_start…; k, v: [B, G, Lk, d] at positions k_start… (any strides with unit last
    stride), k_valid [B, Lk]; ring: optional (k, v [B, G, W, d], positions [B, W] (−1: empty), valid [B, W]) keys
    read before k. Returns [B, Lq, H·d] in q's dtype.
    """
    bsz, h, lq, d = q.shape
    g, lk = k.shape[1], k.shape[2]
    diff = lambda_full is not None
    n_prog = h // 2 if diff else h
    r = n_prog // (g // 2) if diff else h // g
    assert d == triton.next_power_of_2(d) and d >= 16, "head_dim must be a power of 2 (>= 16)"
    out = torch.empty(bsz, lq, h * d, device=q.device, dtype=q.dtype)

    def u8(t):
        return t.view(torch.uint8) if t.dtype == torch.bool else t

    k_valid = u8(k_valid)
    if ring is not None:
        rk, rv, rpos, rvalid = ring
        rvalid = u8(rvalid)
        lr = rk.shape[2]
    else:
        rk, rv, rpos, rvalid, lr = k, v, k_valid, k_valid, 0
    if num_warps is None:
        num_warps = 8 if diff else 4
    lam = lambda_full.reshape(1).float() if diff else k_valid
    w = subln_weight if diff else k_valid
    _attn_prefill_kernel[(triton.cdiv(lq, block_m), bsz * n_prog)](
        q, k, v, k_valid, rk, rv, rpos, rvalid, lam, w, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), k_valid.stride(0), rk.stride(0), rk.stride(1), rk.stride(2),
        rv.stride(0), rv.stride(1), rv.stride(2), rpos.stride(0), rvalid.stride(0), out.stride(0), out.stride(1),
        lq, lk, lr, n_prog, int(q_start), int(k_start), int(window or 0), float(scale), float(lambda_init), float(eps),
        R=r, HD=d, DIFF=diff, HAS_WINDOW=window is not None, HAS_RING=ring is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    return out


# --------------------------------------------------------------------------------------------- gated products


@triton.jit
def _silu_mul_kernel(a_ptr, b_ptr, out_ptr, n_cols, stride_a, stride_b, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_cols
    a = tl.load(a_ptr + row * stride_a + offs, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride_b + offs, mask=m, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def silu_mul(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """silu(a) ⊙ b computed in float32, rounded once to ``out_dtype``; one kernel (SwiGLU and the GMU gate)."""
    shape = a.shape
    a2 = a.reshape(-1, shape[-1])
    b2 = b.reshape(-1, shape[-1])
    if a2.stride(-1) != 1:
        a2 = a2.contiguous()
    if b2.stride(-1) != 1:
        b2 = b2.contiguous()
    out = torch.empty(a2.shape, device=a.device, dtype=out_dtype)
    rows, cols = a2.shape
    if rows == 0:
        return out.reshape(shape)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(cols, block))](a2, b2, out, cols, a2.stride(0), b2.stride(0), out.stride(0),
                                                       BLOCK=block)
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------- residual + norm


@triton.jit
def _add_norm_kernel(h_ptr, d_ptr, w_ptr, b_ptr, hout_ptr, x_ptr, N, eps,
                     HAS_DELTA: tl.constexpr, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr = 0, GATHER: tl.constexpr = False):
    """With PDL the norm's weight and bias (parameters) are read before the wait point. GATHER: h is row
    h_ptr[row] (token ids) of the table at d_ptr, widened to float32 and written to hout."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    w = tl.load(w_ptr + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs, mask=ok, other=0.0)
    pdl_wait(PDL)
    if GATHER:
        token = tl.load(h_ptr + row).to(tl.int64)
        h = tl.load(d_ptr + token * N + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(hout_ptr + row * N + offs, h, mask=ok)
    else:
        h = tl.load(h_ptr + row * N + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_DELTA:
        h += tl.load(d_ptr + row * N + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(hout_ptr + row * N + offs, h, mask=ok)
    x = h.to(x_ptr.dtype.element_ty).to(tl.float32)  # the residual rounded to the model dtype, as the reference
    if RMS:
        y = x * tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    else:
        xc = tl.where(ok, x - tl.sum(x, axis=0) / N, 0.0)
        y = xc * tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)
    y = y * w.to(tl.float32)
    if HAS_BIAS:
        y += b.to(tl.float32)
    tl.store(x_ptr + row * N + offs, y.to(x_ptr.dtype.element_ty), mask=ok)


def _launch_add_norm(rows, src, other, weight, bias, h_out, x, eps, rms, has_delta, gather):
    """One program per row of ``_add_norm_kernel`` (``src``/``other``: h and delta, or token ids and the table)."""
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    pdl = pdl_mode(x)
    _add_norm_kernel[(rows,)](
        src, other, weight, bias if bias is not None else weight, h_out, x, n, float(eps),
        HAS_DELTA=has_delta, HAS_BIAS=bias is not None, RMS=rms, BLOCK=block, PDL=pdl, GATHER=gather,
        num_warps=max(1, min(16, block // 256)), **launch_options(pdl),
    )


def embed_norm(ids, table, weight, bias, eps, rms):
    """Triton version of reference.embed_norm: the embedding gather, its float32 copy and the first norm in one
    kernel, one program per token."""
    assert table.is_contiguous()
    ids_flat = ids.reshape(-1).contiguous()
    h = torch.empty(*ids.shape, table.shape[-1], device=table.device, dtype=torch.float32)
    x = torch.empty(h.shape, device=table.device, dtype=weight.dtype)
    _launch_add_norm(ids_flat.numel(), ids_flat, table, weight, bias, h, x, eps, rms, False, True)
    return h, x


def add_norm(h, delta, weight, bias, eps, rms):
    """h ← h + delta (float32), normed = LayerNorm/RMSNorm(h in the weights' dtype): one pass, one program per row.
    Under PDL ``weight`` and ``bias`` are read before the kernels before it end: they must be parameters."""
    h = h.contiguous()
    x = torch.empty(h.shape, device=h.device, dtype=weight.dtype)
    h_out = torch.empty_like(h) if delta is not None else h
    d = delta.contiguous() if delta is not None else h
    _launch_add_norm(h.numel() // h.shape[-1], h, d, weight, bias, h_out, x, eps, rms, delta is not None, False)
    return h_out, x
