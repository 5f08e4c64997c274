"""An independent float32 forward pass with ArchScale's semantics, on ArchScale tensor names.

Written from the architecture description (docs/research: ArchScale §1), not from ArchScale's code, and used as the
reference side of ``sambay convert --verify``: it evaluates the *source* checkpoint as trained — μP++ logit scale,
1/sqrt(2L) residual scaling and the μP++ attention scale applied at run time, never folded — so comparing it with the
converted Hugging Face model checks the mapping and the folding. Naive and slow (sequential scan); for short inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .archscale_config import ArchConfig
from .mapping import CROSS, FULL, GMU, MAMBA, MAMBA_MEMORY, SWA, layer_plan


def _norm(x: torch.Tensor, t: dict[str, torch.Tensor], prefix: str, kind: str, eps: float) -> torch.Tensor:
    w = t[prefix + ".weight"].float()
    if kind == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), w, t[prefix + ".bias"].float(), eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _linear(x: torch.Tensor, t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    b = t.get(prefix + ".bias")
    return F.linear(x, t[prefix + ".weight"].float(), None if b is None else b.float())


def mamba_forward(u: torch.Tensor, t: dict[str, torch.Tensor], p: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 mixer; returns (output, scan output y incl. D·x before the z gate = the GMU memory)."""
    B, T, _ = u.shape
    xz = F.linear(u, t[p + "in_proj.weight"].float())
    d_inner = xz.shape[-1] // 2
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    w = t[p + "conv1d.weight"].float()  # (d_inner, 1, k)
    k = w.shape[-1]
    xp = F.pad(x.transpose(1, 2), (k - 1, 0))
    x = F.conv1d(xp, w, t[p + "conv1d.bias"].float(), groups=d_inner).transpose(1, 2)
    x = F.silu(x)
    A = -torch.exp(t[p + "A_log"].float())  # (d_inner, N)
    n_state = A.shape[1]
    dbc = F.linear(x, t[p + "x_proj.weight"].float())
    rank = dbc.shape[-1] - 2 * n_state
    delta, Bm, Cm = dbc[..., :rank], dbc[..., rank:rank + n_state], dbc[..., rank + n_state:]
    dt = F.softplus(F.linear(delta, t[p + "dt_proj.weight"].float()) + t[p + "dt_proj.bias"].float())
    s = torch.zeros(B, d_inner, n_state, dtype=torch.float32)
    ys = []
    for i in range(T):
        s = torch.exp(dt[:, i, :, None] * A) * s + (dt[:, i, :, None] * x[:, i, :, None]) * Bm[:, i, None, :]
        ys.append((s * Cm[:, i, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) + t[p + "D"].float() * x
    return F.linear(y * F.silu(z), t[p + "out_proj.weight"].float()), y


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None) -> torch.Tensor:
    """Causal (optionally windowed: `window` keys incl. self) GQA attention. q (B,T,Hq,D), k/v (B,T,Hk,D)."""
    T = q.shape[1]
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale
    pos = torch.arange(T)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed &= (pos[:, None] - pos[None, :]) < window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def lambda_init(depth: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


def _diff_attend(q, k, v, scale, window, t, p, layer_idx, eps=1e-5) -> torch.Tensor:
    q1, q2 = q[:, :, 0::2], q[:, :, 1::2]
    k1, k2 = k[:, :, 0::2], k[:, :, 1::2]
    v12 = torch.cat([v[:, :, 0::2], v[:, :, 1::2]], dim=-1)
    a1 = _attend(q1, k1, v12, scale, window)
    a2 = _attend(q2, k2, v12, scale, window)
    lam0 = lambda_init(layer_idx)
    lam = (torch.exp((t[p + "da.lambda_q1"].float() * t[p + "da.lambda_k1"].float()).sum())
           - torch.exp((t[p + "da.lambda_q2"].float() * t[p + "da.lambda_k2"].float()).sum()) + lam0)
    a = a1 - lam * a2
    a = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps) * t[p + "da.subln.weight"].float()
    a = a * (1 - lam0)
    B, T, half, two_d = a.shape
    return a.reshape(B, T, half * 2, two_d // 2)


def archscale_logits(t: dict[str, torch.Tensor], cfg: ArchConfig, layout: str, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] (float32) of an ArchScale SambaY checkpoint, as trained."""
    L, H, G, hs = cfg.n_layer, cfg.n_head, cfg.n_query_groups, cfg.head_size
    norm, eps = cfg.norm_type, float(cfg["norm_eps"])
    mup = bool(cfg["mup"])
    logit_scale = float(cfg["mup_d0"]) / L if mup and not cfg["use_muonh"] else 1.0
    residual = 1.0 / math.sqrt(2 * L) if cfg["depth_scale"] else 1.0
    scale = float(cfg["attn_scale"]) if cfg["attn_scale"] is not None else 1.0 / math.sqrt(hs)
    if mup:
        scale *= math.sqrt(float(cfg["mup_hd0"])) / math.sqrt(hs)
    x = F.embedding(ids, t["transformer.wte.weight"].float())
    B, T = ids.shape
    kv = mem = None
    for i, kind in enumerate(layer_plan(L, int(cfg["rnn_per_layer"]))):
        p = f"transformer.h.{i}."
        n1 = _norm(x, t, p + "norm_1", norm, eps)
        a = p + "attn."
        if kind in (MAMBA, MAMBA_MEMORY):
            h, y = mamba_forward(n1, t, a)
            if kind == MAMBA_MEMORY:
                mem = y
        elif kind == GMU:
            h = F.linear(F.silu(F.linear(n1, t[a + "gmu.in_proj.weight"].float())) * mem,
                         t[a + "gmu.out_proj.weight"].float())
        else:
            if kind == CROSS:
                q = _linear(n1, t, a + ("attn" if layout == "2025" else "q_proj")).reshape(B, T, H, hs)
                k, v = kv
            elif layout == "2025":
                per = H // G
                qkv = _linear(n1, t, a + "attn").reshape(B, T, G, per + 2, hs)
                q = qkv[:, :, :, :per].reshape(B, T, H, hs)
                k, v = qkv[:, :, :, per], qkv[:, :, :, per + 1]
            else:
                q = _linear(n1, t, a + "q_proj").reshape(B, T, H, hs)
                k = _linear(n1, t, a + "k_proj").reshape(B, T, G, hs)
                v = _linear(n1, t, a + "v_proj").reshape(B, T, G, hs)
            if kind == FULL:
                kv = (k, v)
            window = int(cfg["local_window"]) if kind == SWA else None
            if cfg["use_da"]:
                o = _diff_attend(q, k, v, scale, window, t, a, i)
            else:
                o = _attend(q, k, v, scale, window)
            h = _linear(o.reshape(B, T, H * hs), t, a + "proj")
        x = x + h * residual
        n2 = _norm(x, t, p + "norm_2", norm, eps)
        g, u = F.linear(n2, t[p + "mlp.w1.weight"].float()).chunk(2, dim=-1)
        x = x + F.linear(F.silu(g) * u, t[p + "mlp.w3.weight"].float()) * residual
    x = _norm(x, t, "transformer.ln_f", norm, eps) * logit_scale
    head = t["lm_head.weight"] if "lm_head.weight" in t else t["transformer.wte.weight"]
    return F.linear(x, head.float())
