"""ArchScale model configurations: the subset of ArchScale's ``Config`` that the SambaY family uses.

An :class:`ArchConfig` is rebuilt the way ArchScale's pretrain script does it: a registry name (``train_model`` +
``_d{depth}``) gives the base fields, the train name and the command-line values recorded in ``hparams`` override
them (``_tie``, ``mup``/``muonh``, ``_bias``, ``--swa_len``, ``--ctx_len``, ``base_hps.d0``…). A JSON object with the
fields of ArchScale's ``Config`` (as ``dataclasses.asdict`` writes it) can be given instead, for models outside the
registry. The values below are facts about the public repository, encoded here independently (no ArchScale code).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SambaYError

# Defaults of ArchScale's Config dataclass for the fields this converter interprets (equal in v2025 and HEAD).
CONFIG_DEFAULTS: dict[str, Any] = {
    "block_size": 4096,
    "vocab_size": 50254,
    "padding_multiple": 512,
    "padded_vocab_size": None,
    "n_layer": 16,
    "n_head": 32,
    "n_embd": 4096,
    "ar": None,
    "mlp_expand": 4,
    "bias": False,
    "attn_bias": False,
    "attn_out_bias": False,
    "local_window": -1,
    "rnn_per_layer": -1,
    "rnn_type": "mamba",
    "nope": False,
    "head_dim": None,
    "use_da": False,
    "yoco": False,
    "gmu_yoco": False,
    "gmu_per_layer": 2,
    "attn_scale": None,
    "mup_d0": 16,
    "mup": False,
    "mup_hd0": 128,
    "tied_embed": False,
    "original_mup": False,
    "depth_scale": False,
    "use_muonh": False,
    "n_query_groups": None,
    "_norm_class": "FusedRMSNorm",
    "norm_eps": 1e-5,
    "intermediate_size": None,
    "eos_token_id": 2,
}

# Fields whose non-default value changes the architecture in a way the SambaY model cannot express.
# field -> (the only supported value, what it means)
UNSUPPORTED_IF_NOT: dict[str, tuple[Any, str]] = {
    "rnn_type": ("mamba", "Mamba-2/GatedDeltaNet/other RNN mixers"),
    "yoco": (True, "non-YOCO (Samba/Transformer) stacks"),
    "gmu_yoco": (True, "a cross-decoder without GMUs (plain YOCO)"),
    "gmu_per_layer": (2, "gmu_per_layer other than 2"),
    "gmu_attn": (False, "gmu_attn (attention-output memory)"),
    "gmu_mlp": (False, "gmu_mlp (MLP memory)"),
    "nope": (True, "RoPE"),
    "yoco_nope": (False, "yoco_nope (RoPE in SWA layers)"),
    "yoco_window": (False, "yoco_window"),
    "ada_rope": (False, "ada_rope"),
    "sink_attn": (False, "sink_attn"),
    "add_sink": (False, "add_sink"),
    "sc_attn": (False, "sc_attn (short conv in attention)"),
    "jamba_norm": (False, "jamba_norm"),
    "scale_embed": (False, "scale_embed"),
    "mlp": (True, "blocks without MLP"),
    "mlp_relu2": (False, "mlp_relu2"),
    "relu2": (False, "relu2"),
    "oss_swiglu": (False, "oss_swiglu"),
    "qk_norm": (False, "qk_norm"),
    "attn_norm": (False, "attn_norm"),
    "ffn_norm": (False, "ffn_norm"),
    "gated_attn": (False, "gated_attn"),
    "use_sigmoid": (False, "sigmoid attention"),
    "fa2": (True, "legacy sqrt attention (fa2=False)"),
    "da_const_lamb": (False, "da_const_lamb"),
    "moe": (False, "MoE MLPs"),
    "post_norm": (False, "post_norm"),
    "decouple_postnorm": (False, "decouple_postnorm"),
    "skip_gain": (False, "skip_gain"),
    "skip_weight_per_layer": (-1, "skip_weight_per_layer"),
    "no_skip": (False, "no_skip"),
    "sum_skip": (False, "sum_skip"),
    "lc": (False, "lc (layer configurator)"),
    "share_per_layer": (-1, "share_per_layer"),
    "attn_layer_pos": (None, "attn_layer_pos"),
    "full_per_layer": (1000000, "full_per_layer"),
    "bias": (False, "bias=True (MLP and GMU biases)"),
    "super_mup": (False, "super_mup"),
    "sparsity": (1, "width sparsity"),
}

NORM_TYPES = {"LayerNorm": "layernorm", "FusedRMSNorm": "rmsnorm", "RMSNorm": "rmsnorm"}

_SCALING_DEPTHS = (8, 12, 16, 20, 24)


def _registry() -> dict[str, dict[str, Any]]:
    """Registry entries of the supported SambaY-family model names."""
    reg: dict[str, dict[str, Any]] = {
        "phi4miniflash_d32": dict(
            block_size=8192, vocab_size=200064, padding_multiple=64, rnn_per_layer=2, rnn_type="mamba", yoco=True,
            gmu_yoco=True, nope=True, attn_bias=True, attn_out_bias=True, n_layer=32, n_head=40, use_da=True,
            head_dim=64, ar=80, tied_embed=True, _norm_class="LayerNorm", n_query_groups=20, mlp_expand=4,
            local_window=512,
        ),
        "mambay_d16": dict(
            block_size=4096, vocab_size=32000, padding_multiple=64, rnn_per_layer=1, rnn_type="mamba", yoco=True,
            gmu_yoco=True, nope=True, n_layer=16, n_head=16, head_dim=128, ar=120, n_query_groups=4, mlp_expand=4,
            local_window=128,
        ),
    }
    for d in _SCALING_DEPTHS:
        base = dict(
            block_size=4096, vocab_size=32000, padding_multiple=64, rnn_per_layer=2, rnn_type="mamba", yoco=True,
            gmu_yoco=True, nope=True, n_layer=d, n_head=d, head_dim=128, ar=124, n_query_groups=d // 4, mlp_expand=4,
            local_window=128,
        )
        reg[f"sambay_d{d}"] = dict(base)
        reg[f"sambayda_d{d}"] = dict(base, use_da=True)
    return reg


REGISTRY = _registry()

# Names ArchScale knows that this converter refuses, with the reason (prefix match on the part before _d<depth>).
KNOWN_UNSUPPORTED: dict[str, str] = {
    "sambayoco": "plain YOCO cross-decoder without GMUs",
    "sambay2": "Mamba-2 layers and normalised GMUs",
    "mambay2": "Mamba-2 layers and normalised GMUs",
    "gdny": "GatedDeltaNet layers and normalised GMUs",
    "sgdny": "GatedDeltaNet layers and normalised GMUs",
    "sambayattnall": "attention-output GMU memory, GMU-only cross-decoder",
    "sambayattn": "attention-output GMU memory (gmu_attn)",
    "sambaymlp": "MLP GMU memory (gmu_mlp)",
    "sambaywsa": "yoco_window and sink attention",
    "sambaywdr": "yoco_window and ada_rope RoPE",
    "sambaywr": "yoco_window and RoPE",
    "sambayw": "yoco_window",
    "sambay_gqa4_moe": "MoE MLPs",
    "swayoco": "an all-SWA self-decoder with RoPE",
    "samba": "a Samba stack (no YOCO cross-decoder, RoPE)",
    "transformer": "a Transformer (RoPE, no Mamba)",
}

SUPPORTED_NAME_PATTERNS = ("phi4miniflash_d32", "sambay_d{8,12,16,20,24}", "sambayda_d{8,12,16,20,24}", "mambay_d16")


@dataclass
class ArchConfig:
    """The ArchScale configuration of one checkpoint, plus how it was resolved."""

    fields: dict[str, Any]
    source: str  # "hparams", "checkpoint", "file"
    model_name: str | None = None
    train_name: str | None = None
    notes: list[str] = field(default_factory=list)
    given: frozenset[str] = frozenset()  # the keys stated explicitly (JSON configs)

    def __getitem__(self, key: str) -> Any:
        return self.fields.get(key, CONFIG_DEFAULTS.get(key))

    # derived quantities (ArchScale's __post_init__ and properties)
    @property
    def n_layer(self) -> int:
        return int(self["n_layer"])

    @property
    def n_embd(self) -> int:
        return int(self["n_embd"])

    @property
    def n_head(self) -> int:
        return int(self["n_head"])

    @property
    def n_query_groups(self) -> int:
        return int(self["n_query_groups"] or self["n_head"])

    @property
    def head_size(self) -> int:
        hd = self["head_dim"]
        return int(hd) if hd is not None else self.n_embd // self.n_head

    @property
    def intermediate_size(self) -> int:
        return int(self["intermediate_size"])

    @property
    def padded_vocab_size(self) -> int:
        return int(self["padded_vocab_size"])

    @property
    def norm_type(self) -> str:
        return NORM_TYPES[self["_norm_class"]]

    @property
    def d_inner(self) -> int:
        return 2 * self.n_embd

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.n_embd / 16)

    def to_json_dict(self) -> dict[str, Any]:
        d = dict(CONFIG_DEFAULTS)
        d.update(self.fields)
        return d


def finish_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Apply ArchScale's ``Config.__post_init__`` derivations (padded vocab, n_query_groups, intermediate, ar)."""
    d = dict(CONFIG_DEFAULTS)
    d.update(fields)
    if d.get("padded_vocab_size") is None:
        m = int(d["padding_multiple"])
        d["padded_vocab_size"] = ((int(d["vocab_size"]) + m - 1) // m) * m
    if d.get("n_query_groups") is None:
        d["n_query_groups"] = d["n_head"]
    if d.get("intermediate_size") is None:
        d["intermediate_size"] = int(d["mlp_expand"]) * int(d["n_embd"])
    if d.get("ar") is not None:
        d["n_embd"] = int(d["ar"]) * int(d["n_layer"])
        d["intermediate_size"] = int(d["mlp_expand"]) * d["n_embd"]
    return d


def resolve_registry_name(name: str) -> dict[str, Any]:
    if name in REGISTRY:
        return dict(REGISTRY[name])
    stem = name.rsplit("_d", 1)[0] if "_d" in name else name
    for prefix in sorted(KNOWN_UNSUPPORTED, key=len, reverse=True):
        if stem == prefix or stem.startswith(prefix + "_") or (prefix == "transformer" and stem.startswith(prefix)):
            raise SambaYError(
                f"ArchScale model {name!r} is not supported: {KNOWN_UNSUPPORTED[prefix]} cannot be expressed by the "
                f"SambaY model (supported: {', '.join(SUPPORTED_NAME_PATTERNS)})"
            )
    raise SambaYError(
        f"unknown ArchScale model name {name!r} (supported: {', '.join(SUPPORTED_NAME_PATTERNS)}); "
        "for other models pass --archscale-config FILE"
    )


def _hp_int(hparams: dict[str, Any], key: str) -> int | None:
    v = hparams.get(key)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def from_hparams(hparams: dict[str, Any], layout: str) -> ArchConfig:
    """Rebuild the Config from a checkpoint's ``hparams`` as ArchScale's pretrain ``setup`` does."""
    train_name = str(hparams.get("train_config") or hparams.get("train_name") or "")
    model_name = hparams.get("model_name")
    depth = _hp_int(hparams, "depth")
    if not (isinstance(model_name, str) and model_name in REGISTRY):
        train_model = hparams.get("train_model") or model_name
        if not isinstance(train_model, str) or not train_model:
            raise SambaYError("checkpoint hparams name no model (no 'model_name'/'train_model'); "
                              "pass --archscale-config FILE")
        model_name = train_model if depth is None or train_model.endswith(f"_d{depth}") else f"{train_model}_d{depth}"
    fields = resolve_registry_name(model_name)
    notes = [f"model {model_name} from ArchScale's registry"]
    overrides = train_name_overrides(train_name, hparams, layout)
    seq_len = _hp_int(hparams, "seq_len") or _hp_int(hparams, "ctx_len")
    if seq_len:
        overrides["block_size"] = seq_len
    swa = _hp_int(hparams, "swa_len") or _hp_int(hparams, "local_window")
    if swa:
        overrides["local_window"] = swa
        notes.append(f"local_window {swa} from hparams")
    ar = _hp_int(hparams, "ar")
    if ar:
        overrides["ar"] = ar
    norm_class = hparams.get("norm_class")
    if isinstance(norm_class, str) and norm_class:
        overrides["_norm_class"] = norm_class
    fields.update(overrides)
    cfg = ArchConfig(finish_fields(fields), "hparams", model_name=model_name, train_name=train_name, notes=notes)
    return cfg


def train_name_overrides(train_name: str, hparams: dict[str, Any], layout: str) -> dict[str, Any]:
    """Config overrides implied by the train name and base hyperparameters (ArchScale pretrain ``setup``)."""
    mup = "mup" in train_name or "muonh" in train_name
    original_mup = "_ori_mup" in train_name
    if isinstance(hparams.get("mup"), bool):
        mup = hparams["mup"]
    out: dict[str, Any] = {"mup": mup, "original_mup": original_mup}
    d0 = _hp_int(hparams, "base_hps.d0")
    out["mup_d0"] = d0 if d0 else (16 if layout == "2025" else 8)
    hd0 = _hp_int(hparams, "base_hps.hd0")
    out["mup_hd0"] = hd0 if hd0 else 128
    if layout == "2025":
        out["depth_scale"] = mup and not original_mup
    else:
        ds = hparams.get("depth_scale")
        out["depth_scale"] = bool(ds) if isinstance(ds, bool) else ((mup and not original_mup) or "_dsca_" in train_name)
        out["use_muonh"] = "muonh" in train_name
    if "_tie" in train_name:
        out["tied_embed"] = True
    if "_bias" in train_name:
        out.update(attn_bias=True, attn_out_bias=True, bias=True)
    unsupported = [flag for flag in ("_qknorm", "_anorm", "_fnorm", "_ga_", "_noskip", "postnorm_decouple",
                                     "_skipgain", "super_mup") if flag in train_name]
    if "_lc" in train_name:
        unsupported.append("_lc")
    if unsupported:
        raise SambaYError(f"train name {train_name!r} uses features the SambaY model cannot express: "
                          + ", ".join(unsupported))
    return out


def from_json_file(path: Path) -> ArchConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SambaYError(f"--archscale-config: no such file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SambaYError(f"--archscale-config {path} is not valid JSON: {e}") from None
    return from_json_dict(data, source=f"--archscale-config {path}", kind="file")


def from_json_dict(data: Any, source: str, kind: str) -> ArchConfig:
    if not isinstance(data, dict):
        raise SambaYError(f"{source} does not hold a JSON object")
    for key in ("n_layer", "n_embd", "n_head"):
        if not isinstance(data.get(key), int) or isinstance(data.get(key), bool):
            raise SambaYError(f"{source}: field {key!r} must be an integer, got {data.get(key)!r}")
    fields = dict(data)
    # asdict output already holds the __post_init__ results; do not re-apply ar on top of an explicit n_embd.
    if "n_embd" in data and data.get("ar") is not None and data["n_embd"] != data["ar"] * data["n_layer"]:
        raise SambaYError(f"{source}: n_embd {data['n_embd']} disagrees with ar*n_layer {data['ar'] * data['n_layer']}")
    fields["ar"] = None
    name = data.get("name") if isinstance(data.get("name"), str) else None
    return ArchConfig(finish_fields(fields), kind, model_name=name, notes=[f"config from {source}"],
                      given=frozenset(data))


def check_supported(cfg: ArchConfig) -> None:
    """Refuse ArchScale variants the SambaY model cannot express, listing all of them in one line."""
    problems = []
    for key, (ok, meaning) in UNSUPPORTED_IF_NOT.items():
        if key in cfg.fields and cfg.fields[key] != ok:
            if key == "full_per_layer" and int(cfg.fields[key]) > cfg.n_layer:
                continue
            problems.append(meaning)
    if cfg["_norm_class"] not in NORM_TYPES:
        problems.append(f"norm class {cfg['_norm_class']}")
    if cfg["rnn_per_layer"] not in (1, 2):
        problems.append(f"rnn_per_layer {cfg['rnn_per_layer']}")
    if cfg.n_layer % 4:
        problems.append(f"n_layer {cfg.n_layer} (must be a multiple of 4)")
    if cfg["rnn_per_layer"] == 2 and int(cfg["local_window"]) < 1:
        problems.append("SWA layers without a window (local_window -1)")
    if problems:
        raise SambaYError("unsupported ArchScale configuration: " + "; ".join(problems))
