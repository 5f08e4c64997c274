"""The project's own Triton kernels for SambaY (CUDA; also run by the Triton interpreter on CPU in tests).

* ``mamba_decode_conv`` — one decode step of the causal depthwise conv + SiLU, shifting the conv state in place.
* ``mamba_decode_ssm`` — one decode step of the selective SSM: softplus(dt + bias), state update in place, C·state,
  D skip and the silu(z) gate, in one pass over the state.
* ``selective_scan`` — the prefill scan: each program owns a block of channels and walks time sequentially with its
  SSM state in registers, starting from a given state and returning the final one (and optionally gating by z).
* ``diff_attention_decode`` — decode-time (differential) attention for one query per sequence: every program reads one
  KV-head pair (or KV head) once for all the query heads that use it, over a slice of the cache (split-K, lengths and
  validity from device tensors, so it is CUDA-graph safe); a combine kernel merges the slices, forms A1 − λ·A2, applies
  the sub-layer RMSNorm and the (1 − λ_init) scale, and writes heads back in order.

All math is float32 inside; inputs may be bf16/fp16/fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

# ------------------------------------------------------------------------------------------------ Mamba decode


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, b_ptr, y_ptr, D, stride_xb, stride_sb, stride_sd, stride_yb,
                        K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = offs < D
    x = tl.load(x_ptr + pid_b * stride_xb + offs, mask=m, other=0.0).to(tl.float32)
    acc = x * tl.load(w_ptr + offs * K + (K - 1), mask=m, other=0.0).to(tl.float32)
    srow = state_ptr + pid_b * stride_sb + offs * stride_sd
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
    tl.store(y_ptr + pid_b * stride_yb + offs, y, mask=m)


def causal_conv1d_update(x, conv_state, weight, bias):
    """Triton version of reference.causal_conv1d_update (x [B, D]; conv_state [B, D, K-1] float32, in place)."""
    bsz, dim = x.shape
    k = weight.shape[-1]
    assert k >= 2 and conv_state.dtype == torch.float32 and conv_state.stride(-1) == 1
    x = x.contiguous()
    weight = weight.contiguous()
    y = torch.empty(bsz, dim, device=x.device, dtype=torch.float32)
    block = 256
    grid = (bsz, triton.cdiv(dim, block))
    _conv_update_kernel[grid](x, conv_state, weight, bias if bias is not None else weight, y, dim, x.stride(0),
                              conv_state.stride(0), conv_state.stride(1), y.stride(0), K=k,
                              HAS_BIAS=bias is not None, BLOCK_D=block)
    return y


@triton.jit
def _ssm_update_kernel(state_ptr, x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, dtb_ptr, y_ptr, D,
                       stride_sb, stride_sd, stride_xb, stride_dtb, stride_bb, stride_cb, stride_zb, stride_yb,
                       N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
                       SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    md = offs_d < D
    m2 = md[:, None]
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * stride_dtb + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    a = tl.load(a_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    bvec = tl.load(b_ptr + pid_b * stride_bb + offs_n).to(tl.float32)
    cvec = tl.load(c_ptr + pid_b * stride_cb + offs_n).to(tl.float32)
    sp = state_ptr + pid_b * stride_sb + offs_d[:, None] * stride_sd + offs_n[None, :]
    s = tl.load(sp, mask=m2, other=0.0)
    s = tl.exp(dt[:, None] * a) * s + (dt * x)[:, None] * bvec[None, :]
    tl.store(sp, s, mask=m2)
    y = tl.sum(s * cvec[None, :], axis=1)
    if HAS_D:
        y += tl.load(d_ptr + offs_d, mask=md, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_zb + offs_d, mask=md, other=0.0).to(tl.float32)
        y = y * (z / (1.0 + tl.exp(-z)))
    tl.store(y_ptr + pid_b * stride_yb + offs_d, y, mask=md)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True):
    """Triton version of reference.selective_state_update (state [B, D, N] float32, updated in place)."""
    bsz, dim = x.shape
    n = A.shape[-1]
    assert state.dtype == torch.float32 and state.stride(-1) == 1 and n == triton.next_power_of_2(n)
    A = A.float().contiguous()
    y = torch.empty(bsz, dim, device=x.device, dtype=torch.float32)
    block = 64
    grid = (bsz, triton.cdiv(dim, block))
    dummy = A
    _ssm_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, y, dim,
        state.stride(0), state.stride(1), x.stride(0), dt.stride(0), B.stride(0), C.stride(0),
        z.stride(0) if z is not None else 0, y.stride(0),
        N=n, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=block,
    )
    return y


# -------------------------------------------------------------------------------------------- Mamba prefill scan


@triton.jit
def _scan_kernel(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, dtb_ptr, s0_ptr, y_ptr, sout_ptr, D, L,
                 stride_ub, stride_ud, stride_ut, stride_dtb, stride_dtd, stride_dtt, stride_bb, stride_bn, stride_bt,
                 stride_cb, stride_cn, stride_ct, stride_zb, stride_zd, stride_zt, stride_yb, stride_yd,
                 N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
                 HAS_S0: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    md = offs_d < D
    m2 = md[:, None]
    a = tl.load(a_ptr + offs_d[:, None] * N + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    state_off = pid_b * D * N + offs_d[:, None] * N + offs_n[None, :]
    if HAS_S0:
        s = tl.load(s0_ptr + state_off, mask=m2, other=0.0)
    else:
        s = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    if HAS_D:
        dvec = tl.load(d_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * stride_ub + offs_d * stride_ud
    dt_row = dt_ptr + pid_b * stride_dtb + offs_d * stride_dtd
    y_row = y_ptr + pid_b * stride_yb + offs_d * stride_yd
    z_row = z_ptr + pid_b * stride_zb + offs_d * stride_zd
    b_col = b_ptr + pid_b * stride_bb + offs_n * stride_bn
    c_col = c_ptr + pid_b * stride_cb + offs_n * stride_cn
    for t in range(L):
        u = tl.load(u_row + t * stride_ut, mask=md, other=0.0).to(tl.float32)
        dt = tl.load(dt_row + t * stride_dtt, mask=md, other=0.0).to(tl.float32)
        if HAS_DTB:
            dt += dtb
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        bv = tl.load(b_col + t * stride_bt).to(tl.float32)
        cv = tl.load(c_col + t * stride_ct).to(tl.float32)
        s = tl.exp(dt[:, None] * a) * s + (dt * u)[:, None] * bv[None, :]
        y = tl.sum(s * cv[None, :], axis=1)
        if HAS_D:
            y += dvec * u
        if HAS_Z:
            z = tl.load(z_row + t * stride_zt, mask=md, other=0.0).to(tl.float32)
            y = y * (z / (1.0 + tl.exp(-z)))
        tl.store(y_row + t, y, mask=md)
    tl.store(sout_ptr + state_off, s, mask=m2)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None):
    """Triton version of reference.selective_scan: returns (y float32 [B, D, L], final state float32 [B, D, N])."""
    bsz, dim, length = u.shape
    n = A.shape[-1]
    assert n == triton.next_power_of_2(n)
    A = A.float().contiguous()
    y = torch.empty(bsz, dim, length, device=u.device, dtype=torch.float32)
    s_out = torch.empty(bsz, dim, n, device=u.device, dtype=torch.float32)
    s0 = initial_state.float().contiguous() if initial_state is not None else None
    dummy = A
    block = 32
    grid = (bsz, triton.cdiv(dim, block))
    _scan_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, s0 if s0 is not None else dummy, y, s_out, dim, length,
        u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
        B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0, z.stride(2) if z is not None else 0,
        y.stride(0), y.stride(1),
        N=n, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=delta_bias is not None, HAS_S0=s0 is not None,
        SOFTPLUS=delta_softplus, BLOCK_D=block,
    )
    return y, s_out


# ------------------------------------------------------------------------------------------- attention decode


@triton.jit
def _attn_decode_partial(q_ptr, k_ptr, v_ptr, valid_ptr, len_ptr, o_ptr, m_ptr, l_ptr,
                         stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
                         stride_valb, stride_ob, stride_oh, stride_os, stride_mb, stride_mh,
                         S_MAX, scale,
                         R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr, SPLIT: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    """One (batch, KV group, split) program. A KV group is a KV-head pair (2g, 2g+1) for differential attention
    (query heads 2p / 2p+1 for p in [g·R, (g+1)·R)), or one KV head g (query heads g·R … (g+1)·R − 1).
    Writes un-normalised partial outputs with their running max and sum."""
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    g = tl.program_id(1)
    sp = tl.program_id(2)
    n_keys = tl.load(len_ptr + pid_b)
    per_split = tl.cdiv(S_MAX, SPLIT)
    s_begin = sp * per_split
    s_end = tl.minimum(s_begin + per_split, n_keys)
    offs_r = tl.arange(0, R)
    offs_d = tl.arange(0, HD)
    if DIFF:
        q1 = tl.load(q_ptr + pid_b * stride_qb + (2 * (g * R + offs_r))[:, None] * stride_qh + offs_d[None, :])
        q2 = tl.load(q_ptr + pid_b * stride_qb + (2 * (g * R + offs_r) + 1)[:, None] * stride_qh + offs_d[None, :])
        q1 = q1.to(tl.float32) * scale
        q2 = q2.to(tl.float32) * scale
        k1_base = k_ptr + pid_b * stride_kb + (2 * g) * stride_kh
        k2_base = k_ptr + pid_b * stride_kb + (2 * g + 1) * stride_kh
        v1_base = v_ptr + pid_b * stride_vb + (2 * g) * stride_vh
        v2_base = v_ptr + pid_b * stride_vb + (2 * g + 1) * stride_vh
        m1 = tl.full((R,), float("-inf"), tl.float32)
        m2 = tl.full((R,), float("-inf"), tl.float32)
        l1 = tl.zeros((R,), tl.float32)
        l2 = tl.zeros((R,), tl.float32)
        a1a = tl.zeros((R, HD), tl.float32)
        a1b = tl.zeros((R, HD), tl.float32)
        a2a = tl.zeros((R, HD), tl.float32)
        a2b = tl.zeros((R, HD), tl.float32)
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            ms = offs_s < s_end
            ok = ms & (tl.load(valid_ptr + pid_b * stride_valb + offs_s, mask=ms, other=0) != 0)
            k1 = tl.load(k1_base + offs_s[:, None] * stride_ks + offs_d[None, :], mask=ms[:, None], other=0.0)
            k2 = tl.load(k2_base + offs_s[:, None] * stride_ks + offs_d[None, :], mask=ms[:, None], other=0.0)
            v1 = tl.load(v1_base + offs_s[:, None] * stride_vs + offs_d[None, :], mask=ms[:, None], other=0.0)
            v2 = tl.load(v2_base + offs_s[:, None] * stride_vs + offs_d[None, :], mask=ms[:, None], other=0.0)
            k1 = k1.to(tl.float32)
            k2 = k2.to(tl.float32)
            v1 = v1.to(tl.float32)
            v2 = v2.to(tl.float32)
            sc1 = tl.sum(q1[:, None, :] * k1[None, :, :], axis=2)
            sc2 = tl.sum(q2[:, None, :] * k2[None, :, :], axis=2)
            sc1 = tl.where(ok[None, :], sc1, float("-inf"))
            sc2 = tl.where(ok[None, :], sc2, float("-inf"))
            n1 = tl.maximum(m1, tl.max(sc1, axis=1))
            n2 = tl.maximum(m2, tl.max(sc2, axis=1))
            n1s = tl.where(n1 == float("-inf"), 0.0, n1)
            n2s = tl.where(n2 == float("-inf"), 0.0, n2)
            p1 = tl.exp(sc1 - n1s[:, None])
            p2 = tl.exp(sc2 - n2s[:, None])
            c1 = tl.exp(m1 - n1s)
            c2 = tl.exp(m2 - n2s)
            l1 = l1 * c1 + tl.sum(p1, axis=1)
            l2 = l2 * c2 + tl.sum(p2, axis=1)
            a1a = a1a * c1[:, None] + tl.sum(p1[:, :, None] * v1[None, :, :], axis=1)
            a1b = a1b * c1[:, None] + tl.sum(p1[:, :, None] * v2[None, :, :], axis=1)
            a2a = a2a * c2[:, None] + tl.sum(p2[:, :, None] * v1[None, :, :], axis=1)
            a2b = a2b * c2[:, None] + tl.sum(p2[:, :, None] * v2[None, :, :], axis=1)
            m1 = n1
            m2 = n2
        # stream 1 rows go to slots [0, R), stream 2 rows to [R, 2R); each row holds [A(v1) | A(v2)]
        o_base = o_ptr + pid_b * stride_ob + sp * stride_os
        rows1 = g * 2 * R + offs_r
        rows2 = g * 2 * R + R + offs_r
        tl.store(o_base + rows1[:, None] * stride_oh + offs_d[None, :], a1a)
        tl.store(o_base + rows1[:, None] * stride_oh + HD + offs_d[None, :], a1b)
        tl.store(o_base + rows2[:, None] * stride_oh + offs_d[None, :], a2a)
        tl.store(o_base + rows2[:, None] * stride_oh + HD + offs_d[None, :], a2b)
        tl.store(m_ptr + pid_b * stride_mb + rows1 * stride_mh + sp, m1)
        tl.store(m_ptr + pid_b * stride_mb + rows2 * stride_mh + sp, m2)
        tl.store(l_ptr + pid_b * stride_mb + rows1 * stride_mh + sp, l1)
        tl.store(l_ptr + pid_b * stride_mb + rows2 * stride_mh + sp, l2)
    else:
        q = tl.load(q_ptr + pid_b * stride_qb + (g * R + offs_r)[:, None] * stride_qh + offs_d[None, :])
        q = q.to(tl.float32) * scale
        k_base = k_ptr + pid_b * stride_kb + g * stride_kh
        v_base = v_ptr + pid_b * stride_vb + g * stride_vh
        m = tl.full((R,), float("-inf"), tl.float32)
        lsum = tl.zeros((R,), tl.float32)
        acc = tl.zeros((R, HD), tl.float32)
        for s0 in range(s_begin, s_end, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            ms = offs_s < s_end
            ok = ms & (tl.load(valid_ptr + pid_b * stride_valb + offs_s, mask=ms, other=0) != 0)
            k = tl.load(k_base + offs_s[:, None] * stride_ks + offs_d[None, :], mask=ms[:, None], other=0.0)
            v = tl.load(v_base + offs_s[:, None] * stride_vs + offs_d[None, :], mask=ms[:, None], other=0.0)
            sc = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
            sc = tl.where(ok[None, :], sc, float("-inf"))
            n = tl.maximum(m, tl.max(sc, axis=1))
            ns = tl.where(n == float("-inf"), 0.0, n)
            p = tl.exp(sc - ns[:, None])
            c = tl.exp(m - ns)
            lsum = lsum * c + tl.sum(p, axis=1)
            acc = acc * c[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
            m = n
        rows = g * R + offs_r
        o_base = o_ptr + pid_b * stride_ob + sp * stride_os
        tl.store(o_base + rows[:, None] * stride_oh + offs_d[None, :], acc)
        tl.store(m_ptr + pid_b * stride_mb + rows * stride_mh + sp, m)
        tl.store(l_ptr + pid_b * stride_mb + rows * stride_mh + sp, lsum)


@triton.jit
def _attn_decode_combine(o_ptr, m_ptr, l_ptr, lam_ptr, w_ptr, out_ptr,
                         stride_ob, stride_oh, stride_os, stride_mb, stride_mh, stride_outb, stride_outh,
                         lambda_init, eps,
                         R: tl.constexpr, HD: tl.constexpr, DIFF: tl.constexpr, SPLIT: tl.constexpr,
                         W: tl.constexpr):
    """Merge the split partials of one (batch, group); for differential attention also λ-combine, RMS-normalise
    over 2·HD, scale by (1 − λ_init) and write heads (2p, 2p+1)."""
    pid_b = tl.program_id(0).to(tl.int64)  # large caches: batch offsets overflow int32
    g = tl.program_id(1)
    offs_s = tl.arange(0, SPLIT)
    offs_w = tl.arange(0, W)
    offs_r = tl.arange(0, R)
    if DIFF:
        rows1 = g * 2 * R + offs_r
        rows2 = rows1 + R
        mb = m_ptr + pid_b * stride_mb
        ms1 = tl.load(mb + rows1[:, None] * stride_mh + offs_s[None, :])
        ms2 = tl.load(mb + rows2[:, None] * stride_mh + offs_s[None, :])
        ls1 = tl.load(l_ptr + pid_b * stride_mb + rows1[:, None] * stride_mh + offs_s[None, :])
        ls2 = tl.load(l_ptr + pid_b * stride_mb + rows2[:, None] * stride_mh + offs_s[None, :])
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
        o1 = tl.load(ob + rows1[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :])
        o2 = tl.load(ob + rows2[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :])
        a1 = tl.sum(o1 * f1[:, :, None], axis=1) / den1[:, None]  # [R, 2HD]
        a2 = tl.sum(o2 * f2[:, :, None], axis=1) / den2[:, None]
        lam = tl.load(lam_ptr)
        o = a1 - lam * a2
        rms = tl.sqrt(tl.sum(o * o, axis=1) / W + eps)
        w = tl.load(w_ptr + offs_w).to(tl.float32)
        o = o / rms[:, None] * w[None, :] * (1.0 - lambda_init)
        # row p of stream pair -> heads 2p (first HD) and 2p+1 (second HD): contiguous 2·HD per p
        heads = g * R + offs_r
        tl.store(out_ptr + pid_b * stride_outb + heads[:, None] * stride_outh + offs_w[None, :], o)
    else:
        rows = g * R + offs_r
        ms = tl.load(m_ptr + pid_b * stride_mb + rows[:, None] * stride_mh + offs_s[None, :])
        ls = tl.load(l_ptr + pid_b * stride_mb + rows[:, None] * stride_mh + offs_s[None, :])
        mx = tl.max(ms, axis=1)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        f = tl.exp(ms - mx[:, None])
        den = tl.sum(ls * f, axis=1)
        den = tl.where(den == 0.0, 1.0, den)
        ob = o_ptr + pid_b * stride_ob
        o = tl.load(ob + rows[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os + offs_w[None, None, :])
        a = tl.sum(o * f[:, :, None], axis=1) / den[:, None]
        tl.store(out_ptr + pid_b * stride_outb + rows[:, None] * stride_outh + offs_w[None, :], a)


def diff_attention_decode(q, k, v, valid, n_keys, *, scale, lambda_full, lambda_init, subln_weight, eps,
                          splits: int | None = None, block_s: int = 32, num_warps: int | None = None,
                          keys_per_split: int = 512):
    """Decode attention for one query per sequence.

    q: [B, H, d]; k, v: [B, G, S_max, d] (a cache; only the first ``n_keys`` positions are read); valid: [B, S_max]
    (bool/uint8: padding and empty slots are False); n_keys: int64 tensor [B] on the device, keys per row
    (graph-safe).
    Returns float32 [B, H, d] — for differential attention already normalised and scaled, heads in order.
    """
    bsz, h, d = q.shape
    g = k.shape[1]
    s_max = k.shape[2]
    diff = lambda_full is not None
    r = (h // 2) // (g // 2) if diff else h // g
    assert d == triton.next_power_of_2(d) and r == triton.next_power_of_2(r), "head_dim and H/G must be powers of 2"
    if splits is None:
        splits = max(1, min(64, triton.next_power_of_2(math.ceil(s_max / keys_per_split))))
    if num_warps is None:  # tuned on H100 (tools/bench_attention_decode.py): 4 warps for few rows, 2 for many
        num_warps = 4 if bsz <= 4 else 2
    width = 2 * d if diff else d
    groups = g // 2 if diff else g
    o = torch.empty(bsz, h, splits, width, device=q.device, dtype=torch.float32)
    m = torch.empty(bsz, h, splits, device=q.device, dtype=torch.float32)
    lsum = torch.empty(bsz, h, splits, device=q.device, dtype=torch.float32)
    if valid.dtype == torch.bool:
        valid = valid.view(torch.uint8)
    _attn_decode_partial[(bsz, groups, splits)](
        q, k, v, valid, n_keys, o, m, lsum,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        valid.stride(0), o.stride(0), o.stride(1), o.stride(2), m.stride(0), m.stride(1),
        s_max, scale, R=r, HD=d, DIFF=diff, SPLIT=splits, BLOCK_S=block_s, num_warps=num_warps,
    )
    if diff:
        out = torch.empty(bsz, h // 2, 2 * d, device=q.device, dtype=torch.float32)
        lam = lambda_full.reshape(1).float()
        w = subln_weight
    else:
        out = torch.empty(bsz, h, d, device=q.device, dtype=torch.float32)
        lam = m  # unused
        w = m
    _attn_decode_combine[(bsz, groups)](
        o, m, lsum, lam, w, out, o.stride(0), o.stride(1), o.stride(2), m.stride(0), m.stride(1),
        out.stride(0), out.stride(1), float(lambda_init), float(eps),
        R=r, HD=d, DIFF=diff, SPLIT=splits, W=width,
    )
    return out.view(bsz, h, d)


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
