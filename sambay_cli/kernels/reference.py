"""Pure-PyTorch reference implementations of every device-specific SambaY operation.

These are the semantics every faster backend must match. They run on any device and in any dtype; internally they
compute in float32 and return float32 unless stated otherwise. Shapes follow the mamba_ssm conventions where one
exists (channels before time for the Mamba ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------- Mamba-1


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution followed by SiLU over a chunk, continuing from ``conv_state``.

    x: [B, L, D] raw (pre-conv) inputs, channels last as the input projection produces them (any strides);
    weight: [D, K]; bias: [D] or None; conv_state: [B, D, K-1] the inputs of the K-1 positions before x (None:
    zeros); valid: [B, L] bool, False at padding — padded inputs count as zeros and padded outputs are zeros.
    Returns (silu(conv(x)) [B, L, D] in ``out_dtype``, the new conv state [B, D, K-1] float32).
    ``weight[:, K-1]`` multiplies the current position.
    """
    bsz, length, dim = x.shape
    k = weight.shape[-1]
    u = x.float().transpose(1, 2)  # [B, D, L]
    if valid is not None:
        u = u * valid[:, None, :].float()
    if conv_state is None:
        conv_state = u.new_zeros(bsz, dim, k - 1)
    full = torch.cat([conv_state.float(), u], dim=-1)  # [B, D, K-1+L]
    y = F.silu(F.conv1d(full, weight.float().unsqueeze(1), bias.float() if bias is not None else None, groups=dim))
    if valid is not None:
        y = y * valid[:, None, :].float()
    new_state = full[:, :, full.shape[-1] - (k - 1):].contiguous() if k > 1 else full[:, :, :0]
    return y.transpose(1, 2).to(out_dtype), new_state


def causal_conv1d_update(
    x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    out_dtype: torch.dtype = torch.float32, settled: bool = False,
) -> torch.Tensor:
    """One decode step of :func:`causal_conv1d`. x: [B, D]; conv_state [B, D, K-1] is updated in place. Returns
    silu(conv) [B, D] in ``out_dtype``. ``settled`` is a scheduling hint for the Triton kernel (ignored here)."""
    k = weight.shape[-1]
    window = torch.cat([conv_state.float(), x.float().unsqueeze(-1)], dim=-1)  # [B, D, K]
    y = (window * weight.float().unsqueeze(0)).sum(-1)
    if bias is not None:
        y = y + bias.float()
    if k > 1:
        conv_state.copy_(window[:, :, 1:])
    return F.silu(y).to(out_dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    time_chunk: int = 64,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan (paper eq. 2a/2b, discretised as in mamba_ssm).

    u, delta, z: [B, D, L]; A: [D, N] (already −exp(A_log)); B, C: [B, N, L]; D: [D]; delta_bias: [D].
      Δ_t = softplus(delta_t + delta_bias)
      s_t = exp(Δ_t·A) ⊙ s_{t−1} + (Δ_t·u_t) ⊗ B_t
      y_t = s_t · C_t + D ⊙ u_t            (then ⊙ silu(z_t) when z is given)
    Returns (y [B, D, L] in ``out_dtype``, final state float32 [B, D, N]).
    """
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.float()
    B = B.float()
    C = C.float()
    bsz, dim, length = u.shape
    state = (
        initial_state.float().clone()
        if initial_state is not None
        else u.new_zeros(bsz, dim, A.shape[-1])
    )
    ys = []
    for t0 in range(0, length, time_chunk):
        t1 = min(t0 + time_chunk, length)
        d = delta[:, :, t0:t1]  # [B, D, c]
        decay = torch.exp(d.unsqueeze(-1) * A[None, :, None, :])  # [B, D, c, N]
        inject = (d * u[:, :, t0:t1]).unsqueeze(-1) * B[:, None, :, t0:t1].transpose(-1, -2)  # [B, D, c, N]
        c_chunk = C[:, :, t0:t1]  # [B, N, c]
        for t in range(t1 - t0):
            state = decay[:, :, t] * state + inject[:, :, t]
            ys.append(torch.einsum("bdn,bn->bd", state, c_chunk[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(bsz, dim, 0)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype), state


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_proj_weight: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    settled: bool = False,
) -> torch.Tensor:
    """One decode step of :func:`selective_scan`. state [B, D, N] float32 is updated in place.

    x, dt, z: [B, D]; B, C: [B, N]. With ``dt_proj_weight`` [D, R], ``dt`` is the low-rank [B, R] input and
    Δ = dt · W_dtᵀ (Mamba's dt_proj without its bias, which is ``dt_bias``). Returns y [B, D] in ``out_dtype``.
    ``settled`` is a scheduling hint for the Triton kernel (ignored here).
    """
    if dt_proj_weight is not None:
        dt = F.linear(dt, dt_proj_weight)
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    x = x.float()
    decay = torch.exp(dt.unsqueeze(-1) * A.float())  # [B, D, N]
    new_state = decay * state + (dt * x).unsqueeze(-1) * B.float().unsqueeze(1)
    state.copy_(new_state)
    y = torch.einsum("bdn,bn->bd", new_state, C.float())
    if D is not None:
        y = y + D.float() * x
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


# ------------------------------------------------------------------------------------------------- elementwise


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up ⊙ silu(gate), computed in float32 and rounded once to the input dtype."""
    return (F.silu(gate.float()) * up.float()).to(up.dtype)


def gmu_gate(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Gated Memory Unit core: silu(x) ⊙ m, computed in float32, rounded once to x's dtype."""
    return (F.silu(x.float()) * memory.float()).to(x.dtype)


def kv_write_decode(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    slots: torch.Tensor) -> None:
    """One decode step's keys and values k, v [B, G, d] into slot ``slots[b]`` of each row b of the caches
    [B, G, S, d] (converted to the cache dtype)."""
    rows = torch.arange(k.shape[0], device=k.device)
    k_cache[rows, :, slots] = k.to(k_cache.dtype)
    v_cache[rows, :, slots] = v.to(v_cache.dtype)


def decode_positions(pos: torch.Tensor, n_keys: torch.Tensor, kv_valid: torch.Tensor,
                     swa_slot: torch.Tensor | None = None, swa_pos: torch.Tensor | None = None,
                     swa_valid: torch.Tensor | None = None) -> None:
    """The bookkeeping of a one-token decode step, in place: row b's position p = pos[b] becomes its n_keys[b] = p + 1
    keys of the shared KV (kv_valid[b, p] = True) and, with a sliding window of W = swa_pos.shape[1], takes ring slot
    swa_slot[b] = p mod W (swa_pos[b, slot] = p, swa_valid[b, slot] = True)."""
    rows = torch.arange(pos.shape[0], device=pos.device)
    true = torch.ones_like(pos, dtype=torch.bool)  # device tensors only: a CUDA-graph capture forbids host copies
    n_keys.copy_(pos + 1)
    kv_valid.index_put_((rows, pos), true)
    if swa_pos is not None:
        torch.remainder(pos, swa_pos.shape[1], out=swa_slot)
        swa_pos.index_put_((rows, swa_slot), pos)
        swa_valid.index_put_((rows, swa_slot), true)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x·Wᵀ + b (cuBLAS on CUDA), in ``out_dtype`` when given."""
    y = F.linear(x, weight, bias)
    return y if out_dtype is None else y.to(out_dtype)


def linear_swiglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The MLP's first half: [gate | up] = x·Wᵀ + b, then up ⊙ silu(gate)."""
    gate, up = F.linear(x, weight, bias).chunk(2, dim=-1)
    return swiglu(gate, up)


def linear_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, memory: torch.Tensor) -> torch.Tensor:
    """silu(x·Wᵀ + b) ⊙ memory: the GMU's gated memory (paper eq. 4) before its output projection."""
    return gmu_gate(F.linear(x, weight, bias), memory)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in float32 (returns float32)."""
    x = x.float()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * weight.float() if weight is not None else y


def add_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None,
             eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual step: h ← h + delta (float32 residual stream; skipped when delta is None), then the next
    sub-layer's input norm(h) — LayerNorm (weight, bias) or RMSNorm — of h rounded to the weights' dtype, as the
    official model rounds the residual before each norm. Returns (h, normed) with normed in the weights' dtype."""
    if delta is not None:
        h = h + delta.float()
    x = h.to(weight.dtype)
    if rms:
        return h, rms_norm(x, weight, eps).to(weight.dtype)
    return h, F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def embed_norm(ids: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
               rms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream's start and the first sub-layer's input: h = table[ids] in float32, and
    :func:`add_norm` (h, None, …)'s normed h. Returns (h, normed)."""
    return add_norm(F.embedding(ids, table).float(), None, weight, bias, eps, rms)


# --------------------------------------------------------------------------------------------------- attention


def attention_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Boolean mask [B, Lq, Lk]: key j is visible to query i when it is valid, not in the future, and (for
    sliding-window layers) among the ``window`` most recent positions including the query itself.
    ``k_pos`` is [Lk] (shared by all rows) or [B, Lk]."""
    qp = q_pos.view(1, -1, 1)
    kp = k_pos.view(1, 1, -1) if k_pos.dim() == 1 else k_pos[:, None, :]
    mask = (kp <= qp) & (kp >= 0) & k_valid.unsqueeze(1)
    if window is not None:
        mask = mask & (kp > qp - window)
    return mask


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float):
    """Softmax attention with grouped KV heads, in float32.

    q: [B, Hq, Lq, d]; k: [B, Hk, Lk, d]; v: [B, Hk, Lk, dv]; mask: [B, Lq, Lk] (True = visible).
    Query head h reads KV head h // (Hq / Hk). Rows with no visible key return zeros.
    """
    bsz, hq, lq, d = q.shape
    hk = k.shape[1]
    group = hq // hk
    qg = q.float().reshape(bsz, hk, group, lq, d)
    scores = torch.einsum("bkgqd,bksd->bkgqs", qg, k.float()) * scale
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bkgqs,bksd->bkgqd", probs, v.float())
    return out.reshape(bsz, hq, lq, v.shape[-1])


def differential_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    lambda_full: torch.Tensor | None,
    lambda_init: float,
    subln_weight: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Differential attention (Ye et al.) with SambaY's even/odd head striping, or plain GQA.

    q: [B, H, Lq, d]; k, v: [B, G, Lk, d]; mask: [B, Lq, Lk]. Returns float32 [B, H, Lq, d].

    With ``lambda_full`` (a 0-dim tensor λ), the even heads form stream 1 and the odd heads stream 2 (for q, k and v);
    each stream is GQA with ratio H/G, so query head h reads KV head 2·⌊h/(2H/G)⌋ + (h mod 2):
        A1 = softmax(q1 k1ᵀ)·[v1 | v2],   A2 = softmax(q2 k2ᵀ)·[v1 | v2]
        O  = RMSNorm_{2d}(A1 − λ·A2) · (1 − λ_init)
    and O's two d-wide halves go back to heads 2p and 2p+1.
    Without ``lambda_full``: plain GQA, query head h reads KV head ⌊h/(H/G)⌋.
    """
    if lambda_full is None:
        return _masked_attention(q, k, v, mask, scale)
    bsz, h, lq, d = q.shape
    q1, q2 = q[:, 0::2], q[:, 1::2]
    k1, k2 = k[:, 0::2], k[:, 1::2]
    v12 = torch.cat([v[:, 0::2], v[:, 1::2]], dim=-1)  # [B, G/2, Lk, 2d]
    a1 = _masked_attention(q1, k1, v12, mask, scale)  # [B, H/2, Lq, 2d]
    a2 = _masked_attention(q2, k2, v12, mask, scale)
    o = rms_norm(a1 - lambda_full.float() * a2, subln_weight, eps) * (1.0 - lambda_init)
    # [B, H/2, Lq, 2d] -> [B, H/2, 2, Lq, d] -> heads (2p, 2p+1)
    o = o.reshape(bsz, h // 2, lq, 2, d).permute(0, 1, 3, 2, 4).reshape(bsz, h, lq, d)
    return o


def attention_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    n_keys_t: torch.Tensor,
    n_keys: int,
    *,
    scale: float,
    lambda_full: torch.Tensor | None,
    lambda_init: float,
    subln_weight: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype = torch.float32,
    settled: str = "",
) -> torch.Tensor:
    """Decode-time attention of one query per row over a cache: q [B, H, d]; k, v [B, G, S_max, d]; only the first
    ``n_keys`` positions (also given as the device tensor ``n_keys_t``) are read, masked by ``valid`` [B, S_max].
    Returns [B, H, d] in ``out_dtype``. ``settled`` is a scheduling hint for the Triton kernel (ignored here)."""
    mask = valid[:, None, :n_keys]
    out = differential_attention(q.unsqueeze(2), k[:, :, :n_keys], v[:, :, :n_keys], mask, scale=scale,
                                 lambda_full=lambda_full, lambda_init=lambda_init, subln_weight=subln_weight, eps=eps)
    return out[:, :, 0].to(out_dtype)


def attention_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_valid: torch.Tensor,
    q_start: int,
    k_start: int,
    window: int | None,
    *,
    ring: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    scale: float,
    lambda_full: torch.Tensor | None,
    lambda_init: float,
    subln_weight: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Attention of a chunk of queries at consecutive positions from ``q_start`` over keys at consecutive positions
    from ``k_start`` with validity ``k_valid`` [B, Lk] (``attention_mask`` rules; ``window`` for sliding-window
    layers). ``ring`` = (k, v [B, G, W, d], positions [B, W] (−1: empty slot), valid [B, W]) adds keys at arbitrary
    positions — the sliding-window cache of the positions before the chunk.
    q: [B, H, Lq, d]; k, v: [B, G, Lk, d]. Returns [B, Lq, H·d] in q's dtype."""
    dtype = q.dtype
    q_pos = torch.arange(q_start, q_start + q.shape[2], device=q.device)
    k_pos = torch.arange(k_start, k_start + k.shape[2], device=q.device).expand(k.shape[0], -1)
    k, v = k.to(dtype), v.to(dtype)
    if ring is not None:
        rk, rv, rpos, rvalid = ring
        k, v = torch.cat([rk.to(dtype), k], dim=2), torch.cat([rv.to(dtype), v], dim=2)
        k_pos, k_valid = torch.cat([rpos, k_pos], dim=1), torch.cat([rvalid, k_valid], dim=1)
    mask = attention_mask(q_pos, k_pos, k_valid, window)
    out = differential_attention(q, k, v, mask, scale=scale, lambda_full=lambda_full, lambda_init=lambda_init,
                                 subln_weight=subln_weight, eps=eps)  # [B, H, Lq, d]
    bsz, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(bsz, lq, h * d).to(dtype)
