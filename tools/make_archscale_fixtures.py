#!/usr/bin/env python
"""Build the ArchScale oracle fixtures in tests/fixtures/archscale-*/ by running ArchScale's own model code on CPU.

ArchScale (github.com/microsoft/ArchScale) is imported from a local checkout given on the command line; none of its
code is copied into this project. Its CUDA-only kernels are replaced, through ``sys.modules``, by pure-PyTorch
stand-ins written here (flash_attn, mamba_ssm's selective_scan_cuda, causal_conv1d, the fused RMSNorm kernel, the
jiterator SwiGLU); each stand-in is first checked against a naive float64 loop. Only these source edits are made, on
a temporary copy: the bf16/CUDA asserts in diff_attn.py are dropped and HEAD's ``.bfloat16()`` casts of the norm
outputs become no-ops, so the reference runs in float32.

Usage:
  git -C <mirror> archive 1fbcceb lit_gpt | tar -x -C /tmp/as_2025      # v2025 (fused attn.attn)
  git -C <mirror> archive c2ec1d6 lit_gpt utils.py | tar -x -C /tmp/as_head   # HEAD (separate q/k/v)
  pip install --target /tmp/pydeps einops
  python tools/make_archscale_fixtures.py --v2025 /tmp/as_2025 [--head /tmp/as_head] --extra-path /tmp/pydeps
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

# ============================================================================================= kernel stand-ins
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm selective scan. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, 1, n, l)."""
    u, delta, A = u.float(), delta.float(), A.float()
    B = B.float().reshape(B.shape[0], B.shape[-2], B.shape[-1])
    C = C.float().reshape(C.shape[0], C.shape[-2], C.shape[-1])
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    state = torch.zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        state = torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[None, :, None] * u
    out_z = None if z is None else y * F.silu(z.float())
    return y, out_z


def selective_scan_naive(u, delta, A, B, C, D, z, delta_bias):
    """Element-by-element float64 loop (to check the stand-in)."""
    u, delta, A, B, C, D, z, delta_bias = (x.double() for x in (u, delta, A, B, C, D, z, delta_bias))
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.zeros(b, d, length, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            s = [0.0] * n
            for t in range(length):
                dt = math.log1p(math.exp(float(delta[bi, di, t] + delta_bias[di])))
                acc = 0.0
                for ni in range(n):
                    s[ni] = math.exp(dt * float(A[di, ni])) * s[ni] + dt * float(u[bi, di, t]) * float(B[bi, ni, t])
                    acc += s[ni] * float(C[bi, ni, t])
                y[bi, di, t] = acc + float(D[di]) * float(u[bi, di, t])
    return y * (z / (1 + torch.exp(-z)))


def causal_conv(x, weight, bias=None, activation=None):
    """causal_conv1d_fn: x (b, d, l), weight (d, w)."""
    d, w = weight.shape
    y = F.conv1d(F.pad(x.float(), (w - 1, 0)), weight.float().unsqueeze(1), None if bias is None else bias.float(),
                 groups=d)
    return F.silu(y) if activation in ("silu", "swish", True) else y


def causal_conv_naive(x, weight, bias):
    b, d, length = x.shape
    w = weight.shape[1]
    y = torch.zeros(b, d, length, dtype=torch.float64)
    for t in range(length):
        for j in range(w):
            src = t - (w - 1) + j
            if src >= 0:
                y[:, :, t] += weight[:, j].double() * x[:, :, src].double()
    return y + bias.double()[None, :, None]


def attention(q, k, v, softmax_scale=None, causal=True, window_size=(-1, -1), **_ignored):
    """flash_attn_func: q (b, t, h, d), k/v (b, s, hk, d); window (left, right) as flash-attn."""
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    k = k.float().repeat_interleave(rep, dim=2)
    v = v.float().repeat_interleave(rep, dim=2)
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k) * scale
    qi = torch.arange(t)[:, None]
    ki = torch.arange(k.shape[1])[None, :]
    allowed = torch.ones(t, k.shape[1], dtype=torch.bool)
    if causal:
        allowed &= ki <= qi
    left = window_size[0]
    if left is not None and left >= 0:
        allowed &= (qi - ki) <= left
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def attention_naive(q, k, v, scale, left):
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    out = torch.zeros(b, t, h, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for ti in range(t):
                keys = [s for s in range(ti + 1) if left < 0 or ti - s <= left]
                sc = torch.tensor([float(q[bi, ti, hi].double() @ k[bi, s, hi // rep].double()) * scale for s in keys],
                                  dtype=torch.float64)
                p = torch.softmax(sc, 0)
                out[bi, ti, hi] = sum(p[j] * v[bi, s, hi // rep].double() for j, s in enumerate(keys))
    return out


def rms_norm(x, weight, eps):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


class _StandInRMSNorm(torch.nn.Module):
    """Stand-in for ArchScale's (Fused)RMSNorm kernels: weight only, y = x·rsqrt(mean(x²)+eps)·w."""

    def __init__(self, size: int, eps: float = 1e-5, **_k) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(size))
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)

    def forward(self, x, *a, **k):
        return rms_norm(x, self.weight, self.eps).to(x.dtype)


def check_stand_ins() -> dict[str, float]:
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    b, d, n, length = 2, 3, 4, 6
    u, delta, B, C, z = r(b, d, length), r(b, d, length), r(b, n, length), r(b, n, length), r(b, d, length)
    A, D, db = -torch.rand(d, n, generator=g) - 0.1, r(d), r(d)
    _, got = selective_scan(u, delta, A, B, C, D, z, db, True)
    errs = {"selective_scan": float((got.double() - selective_scan_naive(u, delta, A, B, C, D, z, db)).abs().max())}
    x, w, bias = r(b, d, length), r(d, 4), r(d)
    errs["causal_conv1d"] = float((causal_conv(x, w, bias) - causal_conv_naive(x, w, bias)).abs().max())
    q, k, v = r(2, 7, 4, 5), r(2, 7, 2, 5), r(2, 7, 2, 5)
    errs["flash_attn_window"] = float((attention(q, k, v, 0.3, True, (2, 0)).double()
                                       - attention_naive(q, k, v, 0.3, 2)).abs().max())
    errs["flash_attn_full"] = float((attention(q, k, v, 0.3, True, (-1, -1)).double()
                                     - attention_naive(q, k, v, 0.3, -1)).abs().max())
    xx, ww = r(3, 8), r(8)
    naive = torch.stack([xx[i].double() / math.sqrt(float((xx[i].double() ** 2).mean()) + 1e-5) * ww.double()
                         for i in range(3)])
    errs["rms_norm"] = float((rms_norm(xx, ww, 1e-5).double() - naive).abs().max())
    for name, e in errs.items():
        assert e < 1e-5, f"stand-in {name} disagrees with the naive loop: {e}"
    return errs


# ============================================================================================= module injection
class _Permissive(types.ModuleType):
    """A module whose every missing attribute is a harmless placeholder (for imports of unused CUDA packages)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder


class _Placeholder:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Placeholder()


def _module(name: str, permissive: bool = True, **attrs) -> types.ModuleType:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            m = (_Permissive if permissive else types.ModuleType)(sub)
            m.__path__ = []
            sys.modules[sub] = m
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], m)
    mod = sys.modules[name]
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _flash_cross_attention_class():
    class FlashCrossAttention(torch.nn.Module):
        def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0, window_size=(-1, -1), **_k):
            super().__init__()
            self.causal, self.softmax_scale, self.window_size = causal, softmax_scale, window_size

        def forward(self, q, kv, causal=None, cu_seqlens=None, max_seqlen=None, cu_seqlens_k=None,
                    max_seqlen_k=None):
            assert cu_seqlens is None, "padding masks are not used by the fixtures"
            return attention(q, kv[:, :, 0], kv[:, :, 1], self.softmax_scale,
                             self.causal if causal is None else causal, self.window_size)

    return FlashCrossAttention


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    y, out_z = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    x = torch.zeros(u.shape[0], u.shape[1], 1, 2 * A.shape[1])
    return (y, x) if out_z is None else (y, x, out_z)


def install_stand_ins() -> None:
    # jiterator SwiGLU (CUDA-only) -> x*sigmoid(x)*y computed in fp32
    torch.cuda.jiterator._create_jit_fn = lambda code, **k: (lambda x, y: (F.silu(x.float()) * y.float()).to(x.dtype))
    torch.cuda.jiterator._create_multi_output_jit_fn = lambda code, num_outputs, **k: (lambda *a: None)
    _module("rotary_emb")
    _module("dropout_layer_norm")
    _module("flash_attn", flash_attn_func=attention, flash_attn_varlen_func=attention)
    _module("flash_attn.modules.mha", FlashCrossAttention=_flash_cross_attention_class())
    _module("flash_attn.bert_padding", pad_input=lambda *a, **k: None, unpad_input=lambda *a, **k: None)
    _module("flash_attn_interface", flash_attn_func=attention, flash_attn_varlen_func=attention)
    _module("causal_conv1d", causal_conv1d_fn=lambda x, weight, bias=None, seq_idx=None, activation=None, **k:
            causal_conv(x, weight, bias, activation), causal_conv1d_update=None)
    _module("causal_conv1d_cuda", causal_conv1d_fwd=lambda x, w, b, *rest: causal_conv(x, w, b, rest[-1]))
    _module("causal_conv1d.cpp_functions", causal_conv1d_fwd_function=lambda x, w, b, *rest: causal_conv(
        x, w, b, rest[-1]))
    _module("selective_scan_cuda", fwd=_scan_fwd)
    for name in ("mamba_ssm.ops.triton.selective_state_update", "mamba_ssm.ops.triton.layernorm_gated",
                 "mamba_ssm.distributed.tensor_parallel", "mamba_ssm.distributed.distributed_utils",
                 "mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.selective_scan_interface",
                 "fla.layers.utils", "fla.modules", "fla.ops.gated_delta_rule", "fla.models.utils",
                 "lightning.fabric.loggers", "lightning_utilities.core.imports",
                 "transformer_engine.pytorch", "sonicmoe", "blobfile", "lightning", "fla.ops.gla", "fla.ops.delta_rule",
                 "fla.ops.retention", "fla.ops", "fla.layers", "fla", "flash_attn.cute", "flash_attn.flash_attn_interface",
                 "flash_attn.layers.rotary", "flash_attn.ops.triton.rotary"):
        _module(name)
    sys.modules["mamba_ssm.ops.triton.selective_state_update"].selective_state_update = None
    _module("flash_attn.flash_attn_interface", flash_attn_func=attention, flash_attn_varlen_func=attention)
    torch.cuda.get_device_capability = lambda *a, **k: (8, 0)  # HEAD picks its flash-attn flavour from this


# ============================================================================================= loading ArchScale
SOURCE_EDITS = {
    # file: [(exact text, replacement)]
    "lit_gpt/diff_attn.py": [("assert q.dtype in [torch.float16, torch.bfloat16]", "pass"),
                             ("assert q.is_cuda and k.is_cuda and v.is_cuda", "pass")],
    "lit_gpt/model.py": [(".bfloat16()", "")],
}


def load_archscale(tree: Path, work: Path):
    """Import ArchScale's lit_gpt from a patched temporary copy; returns (model module, config module)."""
    for name in [m for m in sys.modules if m == "lit_gpt" or m.startswith("lit_gpt.") or m == "utils"]:
        del sys.modules[name]
    dst = work / "archscale"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(tree, dst)
    for rel, edits in SOURCE_EDITS.items():
        p = dst / rel
        if p.exists():
            text = p.read_text()
            for old, new in edits:
                text = text.replace(old, new)
            p.write_text(text)
    pkg = types.ModuleType("lit_gpt")
    pkg.__path__ = [str(dst / "lit_gpt")]
    sys.modules["lit_gpt"] = pkg
    for unused in ("triton_sequential_scan", "mamba2", "gated_deltanet", "gla", "moe", "delta_net",
                   "multiscale_retention", "mega", "relu2_attn_glu", "relu2_attn", "smoe", "smoe_functional", "s6",
                   "oss_attn", "aux_loss", "moe_utils"):
        _module(f"lit_gpt.{unused}", triton_selective_scan_sequential=None)
    if (dst / "utils.py").exists():  # HEAD: Triton rotary kernels (RoPE is unused: SambaY is NoPE)
        _module("lit_gpt.fused_rotary_embedding", apply_rotary_emb_func=None)
        _module("lit_gpt.ops.layernorm_gated")  # normalised GMU (Mamba-2/GDN only): unused
    sys.path.insert(0, str(dst))
    try:
        rms = importlib.import_module("lit_gpt.rmsnorm")
        rms.rms_norm = rms_norm  # v2025: the fused CUDA kernel entry point
    except ImportError:  # HEAD: the whole module is a Triton kernel -> a stand-in module with the same classes
        _module("lit_gpt.rmsnorm", permissive=False, FusedRMSNorm=_StandInRMSNorm, RMSNorm=_StandInRMSNorm)
    model = importlib.import_module("lit_gpt.model")
    mamba = importlib.import_module("lit_gpt.mamba_simple")
    original_init = mamba.Mamba.__init__

    def cpu_init(self, *a, **k):
        k["device"] = "cpu"
        original_init(self, *a, **k)

    mamba.Mamba.__init__ = cpu_init
    config = importlib.import_module("lit_gpt.config")
    return model, config


# ============================================================================================= fixtures
FIXTURES = {
    "archscale-2025-phi4like": dict(
        version="v2025", layout="2025", train_name="scaling", model_name="phi4miniflash_d32",
        fields=dict(name="tiny_phi4like", block_size=64, vocab_size=256, padding_multiple=64, rnn_per_layer=2,
                    rnn_type="mamba", yoco=True, gmu_yoco=True, nope=True, attn_bias=True, attn_out_bias=True,
                    n_layer=8, n_head=4, n_embd=64, use_da=True, head_dim=16, tied_embed=True,
                    _norm_class="LayerNorm", n_query_groups=2, intermediate_size=128, local_window=8),
        about="v2025 code (1fbcceb), fused grouped attn.attn with q/k/v bias, LayerNorm, DA, tied (stored twice), SP",
    ),
    "archscale-2025-mup-sambay": dict(
        version="v2025", layout="2025", train_name="scaling_mup_tie", model_name="sambay_d8",
        fields=dict(name="tiny_sambay_mup", block_size=64, vocab_size=256, padding_multiple=64, rnn_per_layer=2,
                    rnn_type="mamba", yoco=True, gmu_yoco=True, nope=True, n_layer=8, n_head=4, n_embd=64,
                    head_dim=32, n_query_groups=2, intermediate_size=128, local_window=8, tied_embed=True,
                    mup=True, mup_d0=16, mup_hd0=128, _norm_class="FusedRMSNorm"),
        about="v2025 code, μP++ (mup_d0 16: logit scale 2, residual 1/sqrt(16), attention scale sqrt(128)/32), "
              "tied, FusedRMSNorm, no biases, no DA, head_dim 32 != n_embd/n_head",
    ),
    "archscale-2026-sambayda": dict(
        version="head", layout="2026", train_name="scaling", model_name="sambayda_d8",
        fields=dict(name="tiny_sambayda", block_size=64, vocab_size=256, padding_multiple=64, rnn_per_layer=2,
                    rnn_type="mamba", yoco=True, gmu_yoco=True, nope=True, n_layer=8, n_head=8, n_embd=64,
                    head_dim=16, n_query_groups=2, intermediate_size=128, local_window=8, use_da=True,
                    _norm_class="FusedRMSNorm"),
        about="HEAD code (c2ec1d6), separate q_proj/k_proj/v_proj, H/G = 4, DA, FusedRMSNorm, untied, SP",
    ),
}


def build_fixture(name: str, spec: dict, model_mod, config_mod, out_root: Path, seed: int) -> dict:
    from make_synthetic_archscale import synthetic_state

    from sambay_cli.convert import archscale_config as asc

    cfg = config_mod.Config(**spec["fields"])
    gpt = model_mod.GPT(cfg).eval()
    mine = asc.ArchConfig(asc.finish_fields(dict(spec["fields"])), "fixture")
    state = synthetic_state(mine, spec["layout"], seed=seed)
    sd_keys = set(gpt.state_dict().keys())
    missing = sd_keys - set(state)
    extra = set(state) - sd_keys
    assert not missing and not extra, f"{name}: key mismatch missing={sorted(missing)[:5]} extra={sorted(extra)[:5]}"
    gpt.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, spec["fields"]["vocab_size"], (2, 24), generator=g)
    with torch.no_grad():
        out = gpt(ids)
    logits = (out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out).float()
    folder = out_root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    train_model, depth = spec["model_name"].rsplit("_d", 1)
    hparams = {"train_config": spec["train_name"], "train_name": spec["train_name"], "model_name": spec["model_name"],
               "train_model": train_model, "depth": int(depth), "seq_len": 64, "mup": bool(cfg.mup),
               "base_hps.d0": 16 if spec["version"] == "v2025" else 8, "base_hps.hd0": 128}
    sd = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    if cfg.tied_embed:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    torch.save({"model": sd, "hparams": hparams, "iter_num": 100, "step_count": 100}, folder / "iter-000100-ckpt.pth")
    from dataclasses import asdict

    from safetensors.torch import save_file

    save_file({"input_ids": ids, "logits": logits.contiguous()}, str(folder / "archscale_golden.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    return {"logits_std": float(logits.std()), "logits_absmax": float(logits.abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v2025", type=Path, required=True, help="ArchScale tree at 1fbcceb (holding lit_gpt/)")
    ap.add_argument("--head", type=Path, help="ArchScale tree at c2ec1d6 (holding lit_gpt/ and utils.py)")
    ap.add_argument("--extra-path", type=Path, action="append", default=[], help="extra sys.path (einops)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seed", type=int, default=2025)
    a = ap.parse_args()
    for p in a.extra_path:
        sys.path.insert(0, str(p))
    torch.manual_seed(0)
    print("stand-in checks (max |diff| vs naive float64 loops):", check_stand_ins())
    install_stand_ins()
    with tempfile.TemporaryDirectory() as tmp:
        for version, tree in (("v2025", a.v2025), ("head", a.head)):
            todo = [n for n, s in FIXTURES.items() if s["version"] == version and (not a.only or n in a.only)]
            if not todo or tree is None:
                continue
            model_mod, config_mod = load_archscale(tree, Path(tmp))
            for name in todo:
                stats = build_fixture(name, FIXTURES[name], model_mod, config_mod, a.out, a.seed)
                print(name, stats)


if __name__ == "__main__":
    main()
