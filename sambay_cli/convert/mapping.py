"""Name and layout mapping between ArchScale state dicts and the Hugging Face SambaY / phi4flash format.

ArchScale layer plan (L layers, r = rnn_per_layer): i < L/2 Mamba when i % r == 0 else sliding-window attention;
L/2 Mamba (GMU memory); L/2+1 full attention (shared KV); then GMU (even i) / cross-attention (odd i).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from .archscale_config import ArchConfig

MAMBA, SWA, MAMBA_MEMORY, FULL, GMU, CROSS = "mamba", "swa", "mamba_memory", "full_attention", "gmu", "cross_attention"
MAMBA_PARAMS = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
                "A_log", "D", "out_proj.weight")
LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
FLOAT32_SUFFIXES = (".A_log",) + tuple("." + n for n in LAMBDAS)


def layer_plan(n_layer: int, rnn_per_layer: int) -> list[str]:
    plan = []
    for i in range(n_layer):
        if i < n_layer // 2:
            plan.append(MAMBA if i % rnn_per_layer == 0 else SWA)
        elif i == n_layer // 2:
            plan.append(MAMBA_MEMORY)
        elif i == n_layer // 2 + 1:
            plan.append(FULL)
        else:
            plan.append(GMU if i % 2 == 0 else CROSS)
    return plan


@dataclass
class Folding:
    """μP++ factors folded into standard weights (1.0 = nothing to fold)."""

    logit_scale: float = 1.0  # multiplies the final norm's weight and bias
    residual_scale: float = 1.0  # multiplies every residual-branch output projection (and its bias)
    q_scale: float = 1.0  # multiplies the query rows (and bias) so that 1/sqrt(head_dim) becomes the trained scale

    @property
    def is_identity(self) -> bool:
        return self.logit_scale == 1.0 and self.residual_scale == 1.0 and self.q_scale == 1.0

    def as_dict(self) -> dict[str, float]:
        return {"logit_scale": self.logit_scale, "residual_scale": self.residual_scale, "q_scale": self.q_scale}


def folding_for(cfg: ArchConfig) -> Folding:
    """What the model was trained with (ArchScale Block/GPT/attention for the checkpoint's version)."""
    mup = bool(cfg["mup"])
    logit = float(cfg["mup_d0"]) / cfg.n_layer if mup and not cfg["use_muonh"] else 1.0
    residual = 1.0 / math.sqrt(2 * cfg.n_layer) if cfg["depth_scale"] else 1.0
    hs = cfg.head_size
    scale = float(cfg["attn_scale"]) if cfg["attn_scale"] is not None else 1.0 / math.sqrt(hs)
    if mup:
        scale *= math.sqrt(float(cfg["mup_hd0"])) / math.sqrt(hs)
    q_scale = scale * math.sqrt(hs)
    if abs(q_scale - 1.0) < 1e-12:
        q_scale = 1.0
    return Folding(logit, residual, q_scale)


# ------------------------------------------------------------------------------------------------ expected shapes
def expected_archscale_shapes(cfg: ArchConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """Every ArchScale tensor name the configuration implies, with its shape (lm_head only when untied)."""
    C, H, G, hs = cfg.n_embd, cfg.n_head, cfg.n_query_groups, cfg.head_size
    di, R, N = cfg.d_inner, cfg.dt_rank, 16
    V, inter = cfg.padded_vocab_size, cfg.intermediate_size
    ln = cfg.norm_type == "layernorm"
    out: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, C), "transformer.ln_f.weight": (C,)}
    if ln:
        out["transformer.ln_f.bias"] = (C,)
    if not cfg["tied_embed"]:
        out["lm_head.weight"] = (V, C)
    for i, kind in enumerate(layer_plan(cfg.n_layer, int(cfg["rnn_per_layer"]))):
        p = f"transformer.h.{i}."
        for norm in ("norm_1", "norm_2"):
            out[p + norm + ".weight"] = (C,)
            if ln:
                out[p + norm + ".bias"] = (C,)
        out[p + "mlp.w1.weight"] = (2 * inter, C)
        out[p + "mlp.w3.weight"] = (C, inter)
        if kind in (MAMBA, MAMBA_MEMORY):
            shapes = {"in_proj.weight": (2 * di, C), "conv1d.weight": (di, 1, 4), "conv1d.bias": (di,),
                      "x_proj.weight": (R + 2 * N, di), "dt_proj.weight": (di, R), "dt_proj.bias": (di,),
                      "A_log": (di, N), "D": (di,), "out_proj.weight": (C, di)}
            out.update({p + "attn." + k: v for k, v in shapes.items()})
        elif kind == GMU:
            out[p + "attn.gmu.in_proj.weight"] = (di, C)
            out[p + "attn.gmu.out_proj.weight"] = (C, di)
        else:
            cross = kind == CROSS
            if layout == "2025":
                rows = H * hs if cross else (H + 2 * G) * hs
                out[p + "attn.attn.weight"] = (rows, C)
                if cfg["attn_bias"]:
                    out[p + "attn.attn.bias"] = (rows,)
            else:
                out[p + "attn.q_proj.weight"] = (H * hs, C)
                if cfg["attn_bias"]:
                    out[p + "attn.q_proj.bias"] = (H * hs,)
                if not cross:
                    out[p + "attn.k_proj.weight"] = (G * hs, C)
                    out[p + "attn.v_proj.weight"] = (G * hs, C)
                    if cfg["attn_bias"]:
                        out[p + "attn.v_proj.bias"] = (G * hs,)
            out[p + "attn.proj.weight"] = (C, H * hs)
            if cfg["attn_out_bias"]:
                out[p + "attn.proj.bias"] = (C,)
            if cfg["use_da"]:
                for lam in LAMBDAS:
                    out[p + "attn.da." + lam] = (hs,)
                out[p + "attn.da.subln.weight"] = (2 * hs,)
    return out


def check_tensors_match(cfg: ArchConfig, layout: str, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise naming the first disagreement between the configuration and the tensors."""
    expected = expected_archscale_shapes(cfg, layout)
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{what}: tensor {name} {list(shape)} is missing from the checkpoint")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{what}: {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")
    for name in tensors:
        if name not in expected and not (name == "lm_head.weight" and cfg["tied_embed"]):
            raise CheckpointError(f"{what}: unexpected tensor {name} {list(tensors[name].shape)}")


# ------------------------------------------------------------------------------------------------ ArchScale -> HF
def fused_to_qkv(w: torch.Tensor, n_head: int, n_groups: int, hs: int) -> torch.Tensor:
    """De-interleave LitGPT's grouped rows [q.. | k | v] per KV group into contiguous [Q | K | V]."""
    per = n_head // n_groups
    rest = w.shape[1:]
    g = w.reshape(n_groups, per + 2, hs, *rest)
    q = g[:, :per].reshape(n_head * hs, *rest)
    k = g[:, per].reshape(n_groups * hs, *rest)
    v = g[:, per + 1].reshape(n_groups * hs, *rest)
    return torch.cat([q, k, v], dim=0)


def qkv_to_fused(w: torch.Tensor, n_head: int, n_groups: int, hs: int) -> torch.Tensor:
    """Inverse of :func:`fused_to_qkv`."""
    per = n_head // n_groups
    rest = w.shape[1:]
    q = w[: n_head * hs].reshape(n_groups, per, hs, *rest)
    k = w[n_head * hs: (n_head + n_groups) * hs].reshape(n_groups, 1, hs, *rest)
    v = w[(n_head + n_groups) * hs:].reshape(n_groups, 1, hs, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


@dataclass
class PlanEntry:
    """One output tensor: its name, shape, dtype and a function producing it (float32 math, then cast)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]
    sources: tuple[str, ...]


def out_dtype_for(name: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if name.endswith(FLOAT32_SUFFIXES) else dtype


def hf_plan(cfg: ArchConfig, layout: str, t: dict[str, torch.Tensor], fold: Folding, dtype: torch.dtype
            ) -> list[PlanEntry]:
    """The ordered list of HF tensors to write; nothing is computed until ``produce`` is called."""
    C, H, G, hs = cfg.n_embd, cfg.n_head, cfg.n_query_groups, cfg.head_size
    plan: list[PlanEntry] = []

    def add(name: str, shape: tuple[int, ...], sources: tuple[str, ...], fn: Callable[[], torch.Tensor]) -> None:
        od = out_dtype_for(name, dtype)
        plan.append(PlanEntry(name, shape, od, lambda: fn().to(od).contiguous(), sources))

    def scaled(src: str, factor: float) -> Callable[[], torch.Tensor]:
        if factor == 1.0:
            return lambda: t[src]
        return lambda: t[src].float() * factor

    add("model.embed_tokens.weight", tuple(t["transformer.wte.weight"].shape), ("transformer.wte.weight",),
        scaled("transformer.wte.weight", 1.0))
    res = fold.residual_scale
    for i, kind in enumerate(layer_plan(cfg.n_layer, int(cfg["rnn_per_layer"]))):
        a, h = f"transformer.h.{i}.", f"model.layers.{i}."
        suffixes = ("weight", "bias") if cfg.norm_type == "layernorm" else ("weight",)
        for s in suffixes:
            add(h + "input_layernorm." + s, (C,), (a + "norm_1." + s,), scaled(a + "norm_1." + s, 1.0))
        if kind in (MAMBA, MAMBA_MEMORY):
            for p in MAMBA_PARAMS:
                src = a + "attn." + p
                add(h + "attn." + p, tuple(t[src].shape), (src,), scaled(src, res if p == "out_proj.weight" else 1.0))
        elif kind == GMU:
            for p, f in (("in_proj.weight", 1.0), ("out_proj.weight", res)):
                src = a + "attn.gmu." + p
                add(h + "attn." + p, tuple(t[src].shape), (src,), scaled(src, f))
        else:
            _add_attention(add, scaled, t, a, h, kind == CROSS, layout, cfg, fold, C, H, G, hs)
        for s in suffixes:
            add(h + "post_attention_layernorm." + s, (C,), (a + "norm_2." + s,), scaled(a + "norm_2." + s, 1.0))
        inter = cfg.intermediate_size
        add(h + "mlp.fc1.weight", (2 * inter, C), (a + "mlp.w1.weight",), scaled(a + "mlp.w1.weight", 1.0))
        add(h + "mlp.fc2.weight", (C, inter), (a + "mlp.w3.weight",), scaled(a + "mlp.w3.weight", res))
    for s in ("weight", "bias") if cfg.norm_type == "layernorm" else ("weight",):
        src = "transformer.ln_f." + s
        add("model.final_layernorm." + s, (C,), (src,), scaled(src, fold.logit_scale))
    if not cfg["tied_embed"]:
        add("lm_head.weight", tuple(t["lm_head.weight"].shape), ("lm_head.weight",), scaled("lm_head.weight", 1.0))
    return plan


def _add_attention(add, scaled, t, a, h, cross, layout, cfg, fold: Folding, C, H, G, hs) -> None:
    qs = fold.q_scale
    rows = H * hs if cross else (H + 2 * G) * hs

    def with_q_scale(x: torch.Tensor) -> torch.Tensor:
        if qs == 1.0:
            return x
        x = x.float().clone()
        x[: H * hs] *= qs
        return x

    if layout == "2025":
        def qkv_weight() -> torch.Tensor:
            w = t[a + "attn.attn.weight"]
            return with_q_scale(w if cross else fused_to_qkv(w, H, G, hs))

        def qkv_bias() -> torch.Tensor:
            b = t[a + "attn.attn.bias"]
            return with_q_scale(b if cross else fused_to_qkv(b, H, G, hs))

        w_src: tuple[str, ...] = (a + "attn.attn.weight",)
        b_src: tuple[str, ...] = (a + "attn.attn.bias",)
    else:
        names = ("q_proj",) if cross else ("q_proj", "k_proj", "v_proj")

        def qkv_weight() -> torch.Tensor:
            return with_q_scale(torch.cat([t[a + f"attn.{n}.weight"] for n in names], dim=0))

        def qkv_bias() -> torch.Tensor:
            q = t[a + "attn.q_proj.bias"]
            if cross:
                return with_q_scale(q)
            # k_proj never has a bias in the 2026 layout; a zero k bias is exact (it cancels in the softmax).
            k = torch.zeros(G * hs, dtype=q.dtype)
            return with_q_scale(torch.cat([q, k, t[a + "attn.v_proj.bias"]], dim=0))

        w_src = tuple(a + f"attn.{n}.weight" for n in names)
        b_src = (a + "attn.q_proj.bias",) + (() if cross else (a + "attn.v_proj.bias",))
    add(h + "attn.Wqkv.weight", (rows, C), w_src, qkv_weight)
    if cfg["attn_bias"]:
        add(h + "attn.Wqkv.bias", (rows,), b_src, qkv_bias)
    add(h + "attn.out_proj.weight", (C, H * hs), (a + "attn.proj.weight",), scaled(a + "attn.proj.weight",
                                                                                     fold.residual_scale))
    if cfg["attn_out_bias"]:
        add(h + "attn.out_proj.bias", (C,), (a + "attn.proj.bias",), scaled(a + "attn.proj.bias", fold.residual_scale))
    if cfg["use_da"]:
        for lam in LAMBDAS:
            add(h + "attn.inner_cross_attn." + lam, (hs,), (a + "attn.da." + lam,), scaled(a + "attn.da." + lam, 1.0))
        add(h + "attn.inner_cross_attn.subln.weight", (2 * hs,), (a + "attn.da.subln.weight",),
            scaled(a + "attn.da.subln.weight", 1.0))


# ------------------------------------------------------------------------------------------------ HF -> ArchScale
def archscale_from_hf(hf: dict[str, torch.Tensor], cfg: ArchConfig, layout: str) -> tuple[dict[str, torch.Tensor],
                                                                                          list[str]]:
    """ArchScale state dict (float32 masters) from HF tensors; returns (state dict, warnings)."""
    H, G, hs = cfg.n_head, cfg.n_query_groups, cfg.head_size
    out: dict[str, torch.Tensor] = {}
    warnings: list[str] = []
    dropped_k_bias = 0.0

    def get(name: str) -> torch.Tensor:
        if name not in hf:
            raise CheckpointError(f"Hugging Face checkpoint lacks {name}")
        return hf[name].float()

    out["transformer.wte.weight"] = get("model.embed_tokens.weight")
    suffixes = ("weight", "bias") if cfg.norm_type == "layernorm" else ("weight",)
    for s in suffixes:
        out["transformer.ln_f." + s] = get("model.final_layernorm." + s)
    for i, kind in enumerate(layer_plan(cfg.n_layer, int(cfg["rnn_per_layer"]))):
        a, h = f"transformer.h.{i}.", f"model.layers.{i}."
        for s in suffixes:
            out[a + "norm_1." + s] = get(h + "input_layernorm." + s)
            out[a + "norm_2." + s] = get(h + "post_attention_layernorm." + s)
        out[a + "mlp.w1.weight"] = get(h + "mlp.fc1.weight")
        out[a + "mlp.w3.weight"] = get(h + "mlp.fc2.weight")
        if kind in (MAMBA, MAMBA_MEMORY):
            for p in MAMBA_PARAMS:
                out[a + "attn." + p] = get(h + "attn." + p)
        elif kind == GMU:
            out[a + "attn.gmu.in_proj.weight"] = get(h + "attn.in_proj.weight")
            out[a + "attn.gmu.out_proj.weight"] = get(h + "attn.out_proj.weight")
        else:
            cross = kind == CROSS
            w = get(h + "attn.Wqkv.weight")
            b = get(h + "attn.Wqkv.bias") if cfg["attn_bias"] else None
            if layout == "2025":
                out[a + "attn.attn.weight"] = w if cross else qkv_to_fused(w, H, G, hs)
                if b is not None:
                    out[a + "attn.attn.bias"] = b if cross else qkv_to_fused(b, H, G, hs)
            else:
                q_end, k_end = H * hs, (H + G) * hs
                out[a + "attn.q_proj.weight"] = w[:q_end].clone()
                if b is not None:
                    out[a + "attn.q_proj.bias"] = b[:q_end].clone()
                if not cross:
                    out[a + "attn.k_proj.weight"] = w[q_end:k_end].clone()
                    out[a + "attn.v_proj.weight"] = w[k_end:].clone()
                    if b is not None:
                        dropped_k_bias = max(dropped_k_bias, float(b[q_end:k_end].abs().max()))
                        out[a + "attn.v_proj.bias"] = b[k_end:].clone()
            out[a + "attn.proj.weight"] = get(h + "attn.out_proj.weight")
            if cfg["attn_out_bias"]:
                out[a + "attn.proj.bias"] = get(h + "attn.out_proj.bias")
            if cfg["use_da"]:
                for lam in LAMBDAS:
                    out[a + "attn.da." + lam] = get(h + "attn.inner_cross_attn." + lam)
                out[a + "attn.da.subln.weight"] = get(h + "attn.inner_cross_attn.subln.weight")
    if cfg["tied_embed"]:
        out["lm_head.weight"] = out["transformer.wte.weight"]  # ArchScale state dicts hold both (same storage)
    else:
        out["lm_head.weight"] = get("lm_head.weight")
    if dropped_k_bias > 0:
        warnings.append(f"the 2026 layout has no k bias: dropped k biases (max |b| {dropped_k_bias:.3g}); "
                        "they cancel in the softmax, so logits change only within float32 rounding")
    return out, warnings
