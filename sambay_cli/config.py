"""SambaY configuration and the layer plan.

Two on-disk forms are understood:

* ``model_type: phi4flash`` — the official Hugging Face format of Phi-4-mini-flash-reasoning. Every field of the
  official ``Phi4FlashConfig`` is read, with that class's defaults for absent fields (they are *not* the real
  model's values: e.g. ``sliding_window`` defaults to 2047 while the real config says 512). The architecture knobs
  the official code hard-codes (LayerNorm with bias, attention biases on, head_dim = hidden/heads, differential
  attention on) are fixed for this type. A config read from disk is written back unchanged.
* ``model_type: sambay`` — the SambaY family as ArchScale trains it, with explicit fields for what the official code
  cannot express: RMSNorm, attention biases off, head_dim ≠ hidden/heads, untied embeddings, no differential
  attention, other windows, an all-Mamba self-decoder (``mamba_per_layer: 1``).

The layer plan (paper §2, ArchScale ``Block``) for N layers, r = mamba_per_layer:

====================  ============================================================
index i               layer
====================  ============================================================
i < N/2, i % r == 0   Mamba (self-decoder)
i < N/2, i % r != 0   sliding-window attention (SWA)
i == N/2              Mamba whose scan output is the GMU memory (``mamba_memory``)
i == N/2 + 1          full attention, the single KV producer (``full_attention``)
i > N/2 + 1, even     Gated Memory Unit (``gmu``)
i > N/2 + 1, odd      cross-attention on the shared KV (``cross_attention``)
====================  ============================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAMBA = "mamba"
SWA = "swa"
MAMBA_MEMORY = "mamba_memory"
FULL_ATTENTION = "full_attention"
GMU = "gmu"
CROSS_ATTENTION = "cross_attention"

LAYER_TYPES = (MAMBA, SWA, MAMBA_MEMORY, FULL_ATTENTION, GMU, CROSS_ATTENTION)
ATTENTION_TYPES = (SWA, FULL_ATTENTION, CROSS_ATTENTION)
MAMBA_TYPES = (MAMBA, MAMBA_MEMORY)

# Defaults of the official Phi4FlashConfig class (configuration_phi4flash.py, original upload).
PHI4FLASH_DEFAULTS: dict[str, Any] = {
    "vocab_size": 51200,
    "hidden_size": 2560,
    "intermediate_size": 9216,
    "num_hidden_layers": 32,
    "num_attention_heads": 40,
    "num_key_value_heads": 4,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "use_cache": True,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": None,
    "sliding_window": 2047,
    "mb_per_layer": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": "auto",
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "mlp_bias": False,
    "lm_head_bias": False,
}

# Extra explicit fields of model_type "sambay" (with their defaults; everything in PHI4FLASH_DEFAULTS also applies).
SAMBAY_DEFAULTS: dict[str, Any] = {
    "head_dim": None,  # None: hidden_size // num_attention_heads
    "norm_type": "layernorm",  # "layernorm" (weight + bias) or "rmsnorm" (weight only)
    "attention_bias": True,  # bias on the q/k/v projection
    "attention_out_bias": True,  # bias on the attention output projection
    "differential_attention": True,
    "mamba_per_layer": 2,
    "sliding_window": 512,
}

SUPPORTED_MODEL_TYPES = ("phi4flash", "sambay")


def lambda_init(depth: int) -> float:
    """λ_init of differential attention at global layer index ``depth`` (0.8 − 0.6·exp(−0.3·depth))."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


@dataclass
class SambaYConfig:
    """Architecture of a SambaY model. Build it with :meth:`from_dict` / :meth:`from_file`."""

    model_type: str = "phi4flash"
    vocab_size: int = 51200
    hidden_size: int = 2560
    intermediate_size: int = 9216
    num_hidden_layers: int = 32
    num_attention_heads: int = 40
    num_key_value_heads: int = 4
    head_dim: int = 64
    sliding_window: int = 2047
    mamba_per_layer: int = 2
    norm_type: str = "layernorm"
    layer_norm_eps: float = 1e-5
    attention_bias: bool = True
    attention_out_bias: bool = True
    differential_attention: bool = True
    tie_word_embeddings: bool = True
    mlp_bias: bool = False
    hidden_act: str = "silu"
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int = 160
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    max_position_embeddings: int = 4096
    # The source dict (for an unchanged round trip) and fields we carry but do not interpret.
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived quantities
    @property
    def d_inner(self) -> int:
        """Mamba inner width (expand × hidden); also the width of the GMU memory."""
        return self.mamba_expand * self.hidden_size

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def memory_layer(self) -> int:
        return self.num_hidden_layers // 2

    @property
    def kv_layer(self) -> int:
        return self.num_hidden_layers // 2 + 1

    @property
    def layer_types(self) -> list[str]:
        n, r = self.num_hidden_layers, self.mamba_per_layer
        plan = []
        for i in range(n):
            if i < n // 2:
                plan.append(MAMBA if i % r == 0 else SWA)
            elif i == n // 2:
                plan.append(MAMBA_MEMORY)
            elif i == n // 2 + 1:
                plan.append(FULL_ATTENTION)
            else:
                plan.append(GMU if i % 2 == 0 else CROSS_ATTENTION)
        return plan

    def window_of(self, layer_idx: int) -> int | None:
        """Keys a query of this layer sees, itself included (None: full causal)."""
        return self.sliding_window if self.layer_types[layer_idx] == SWA else None

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        if e is None:
            return []
        return [int(x) for x in e] if isinstance(e, (list, tuple)) else [int(e)]

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_file(cls, path: str | Path) -> SambaYConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path.parent}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a JSON object")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SambaYConfig:
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not a SambaY model (expected one of {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        d = dict(PHI4FLASH_DEFAULTS)
        if model_type == "sambay":
            d.update(SAMBAY_DEFAULTS)
        d.update({k: v for k, v in data.items()})

        def num(key: str, kind=int) -> Any:
            v = d.get(key)
            if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{source}: field {key!r} must be an integer, got {v!r}")
            if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{source}: field {key!r} must be a number, got {v!r}")
            return v

        hidden = num("hidden_size")
        heads = num("num_attention_heads")
        kv_heads = d.get("num_key_value_heads")
        kv_heads = heads if kv_heads is None else kv_heads
        d["num_key_value_heads"] = kv_heads
        num("num_key_value_heads")
        n_layers = num("num_hidden_layers")
        dt_rank = d.get("mamba_dt_rank")
        if dt_rank == "auto":
            dt_rank = math.ceil(hidden / 16)
        if model_type == "phi4flash":
            if heads <= 0 or hidden % heads:
                raise ConfigError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
            head_dim = hidden // heads
            mamba_per_layer = num("mb_per_layer")
            if mamba_per_layer != 2:
                raise ConfigError(f"{source}: phi4flash models have mb_per_layer 2, got {mamba_per_layer}")
            norm_type, attn_bias, attn_out_bias, diff = "layernorm", True, True, True
            window = _phi4flash_window(d, n_layers, source)
        else:
            head_dim = d.get("head_dim")
            if head_dim is None:
                if heads <= 0 or hidden % heads:
                    raise ConfigError(f"{source}: give head_dim: hidden_size {hidden} is not divisible by {heads} heads")
                head_dim = hidden // heads
            mamba_per_layer = d.get("mamba_per_layer", 2)
            norm_type = str(d.get("norm_type", "layernorm")).lower()
            if norm_type not in ("layernorm", "rmsnorm"):
                raise ConfigError(f"{source}: norm_type must be 'layernorm' or 'rmsnorm', got {norm_type!r}")
            attn_bias = bool(d.get("attention_bias"))
            attn_out_bias = bool(d.get("attention_out_bias"))
            diff = bool(d.get("differential_attention"))
            window = d.get("sliding_window")
            if isinstance(window, list):
                window = _phi4flash_window(d, n_layers, source)
        cfg = cls(
            model_type=model_type,
            vocab_size=num("vocab_size"),
            hidden_size=hidden,
            intermediate_size=num("intermediate_size"),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(head_dim),
            sliding_window=window,
            mamba_per_layer=int(mamba_per_layer),
            norm_type=norm_type,
            layer_norm_eps=float(num("layer_norm_eps", float)),
            attention_bias=attn_bias,
            attention_out_bias=attn_out_bias,
            differential_attention=diff,
            tie_word_embeddings=bool(d.get("tie_word_embeddings")),
            mlp_bias=bool(d.get("mlp_bias")) if model_type == "sambay" else False,
            hidden_act=str(d.get("hidden_act")),
            mamba_d_state=num("mamba_d_state"),
            mamba_d_conv=num("mamba_d_conv"),
            mamba_expand=num("mamba_expand"),
            mamba_dt_rank=int(dt_rank) if isinstance(dt_rank, int) else dt_rank,
            mamba_conv_bias=bool(d.get("mamba_conv_bias")),
            mamba_proj_bias=bool(d.get("mamba_proj_bias")),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            max_position_embeddings=d.get("max_position_embeddings") or 0,
            raw=dict(data),
        )
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        n = self.num_hidden_layers
        if n < 4 or n % 4:
            raise ConfigError(f"{source}: num_hidden_layers must be a positive multiple of 4, got {n}")
        if not isinstance(self.mamba_dt_rank, int) or self.mamba_dt_rank <= 0:
            raise ConfigError(f"{source}: mamba_dt_rank must be 'auto' or a positive integer, got {self.mamba_dt_rank!r}")
        if self.mamba_per_layer not in (1, 2):
            raise ConfigError(f"{source}: mamba_per_layer must be 1 or 2, got {self.mamba_per_layer}")
        if self.hidden_act != "silu":
            raise ConfigError(f"{source}: hidden_act must be 'silu' (SwiGLU MLP), got {self.hidden_act!r}")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "mamba_d_state", "mamba_d_conv", "mamba_expand"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{source}: {k} must be positive, got {getattr(self, k)}")
        h, g = self.num_attention_heads, self.num_key_value_heads
        if h % g:
            raise ConfigError(f"{source}: num_attention_heads {h} is not a multiple of num_key_value_heads {g}")
        if self.differential_attention and (h % 2 or g % 2):
            raise ConfigError(f"{source}: differential attention needs an even number of query and KV heads ({h}/{g})")
        has_swa = SWA in self.layer_types
        if has_swa and (not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool)
                        or self.sliding_window < 1):
            raise ConfigError(f"{source}: sliding_window must be a positive integer, got {self.sliding_window!r}")
        lt = self.raw.get("layer_types")
        if lt is not None:
            _check_layer_types(lt, self.layer_types, source)

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The config.json form. A config read from disk comes back unchanged."""
        if self.raw:
            return dict(self.raw)
        if self.model_type == "phi4flash":
            out = {
                "architectures": ["Phi4FlashForCausalLM"],
                "model_type": "phi4flash",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "sliding_window": self.sliding_window,
                "mb_per_layer": 2,
                "layer_norm_eps": self.layer_norm_eps,
                "hidden_act": self.hidden_act,
                "tie_word_embeddings": self.tie_word_embeddings,
                "max_position_embeddings": self.max_position_embeddings,
                "mamba_d_state": self.mamba_d_state,
                "mamba_d_conv": self.mamba_d_conv,
                "mamba_expand": self.mamba_expand,
                "mamba_dt_rank": self.mamba_dt_rank,
                "mamba_conv_bias": self.mamba_conv_bias,
                "mamba_proj_bias": self.mamba_proj_bias,
                "mlp_bias": False,
                "lm_head_bias": False,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id,
                "torch_dtype": "bfloat16",
            }
            return out
        return {
            "architectures": ["SambaYForCausalLM"],
            "model_type": "sambay",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "sliding_window": self.sliding_window,
            "mamba_per_layer": self.mamba_per_layer,
            "norm_type": self.norm_type,
            "layer_norm_eps": self.layer_norm_eps,
            "attention_bias": self.attention_bias,
            "attention_out_bias": self.attention_out_bias,
            "differential_attention": self.differential_attention,
            "tie_word_embeddings": self.tie_word_embeddings,
            "mlp_bias": self.mlp_bias,
            "hidden_act": self.hidden_act,
            "mamba_d_state": self.mamba_d_state,
            "mamba_d_conv": self.mamba_d_conv,
            "mamba_expand": self.mamba_expand,
            "mamba_dt_rank": self.mamba_dt_rank,
            "mamba_conv_bias": self.mamba_conv_bias,
            "mamba_proj_bias": self.mamba_proj_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "max_position_embeddings": self.max_position_embeddings,
        }

    def save(self, directory: str | Path) -> Path:
        p = Path(directory) / "config.json"
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p

    # ------------------------------------------------------------------ official shape
    def is_official_phi4_mini_flash(self) -> bool:
        """True when the architecture equals microsoft/Phi-4-mini-flash-reasoning's."""
        ref = official_config()
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "mamba_per_layer", "norm_type", "attention_bias",
                "attention_out_bias", "differential_attention", "tie_word_embeddings", "mamba_d_state",
                "mamba_d_conv", "mamba_expand", "mamba_dt_rank", "mamba_conv_bias", "mamba_proj_bias", "mlp_bias")
        return all(getattr(self, k) == getattr(ref, k) for k in keys)


def _phi4flash_window(d: dict[str, Any], n_layers: int, source: str) -> int:
    """The SWA window of a phi4flash config: an int, or the per-layer list the original config class builds."""
    sw = d.get("sliding_window")
    if isinstance(sw, list):
        if len(sw) != n_layers:
            raise ConfigError(f"{source}: sliding_window list has {len(sw)} entries for {n_layers} layers")
        values = {v for v in sw if v is not None}
        expected = [i for i in range(n_layers) if i < n_layers // 2 and i % 2 == 1]
        actual = [i for i, v in enumerate(sw) if v is not None]
        if len(values) != 1 or actual != expected:
            raise ConfigError(f"{source}: sliding_window list disagrees with the SambaY plan (SWA on layers {expected})")
        sw = values.pop()
    if isinstance(sw, bool) or not isinstance(sw, int) or sw < 1:
        raise ConfigError(f"{source}: sliding_window must be a positive integer, got {sw!r}")
    return sw


def _check_layer_types(layer_types: Any, plan: list[str], source: str) -> None:
    """Cross-check a standard ``layer_types`` list against the structural plan; refuse any disagreement."""
    if not isinstance(layer_types, list) or len(layer_types) != len(plan):
        raise ConfigError(f"{source}: layer_types must list one entry per layer ({len(plan)})")
    for i, (given, planned) in enumerate(zip(layer_types, plan, strict=True)):
        if (given == "sliding_attention") != (planned == SWA):
            raise ConfigError(
                f"{source}: layer_types[{i}] is {given!r} but the SambaY plan makes layer {i} {planned}"
            )


_OFFICIAL_DIR = Path(__file__).resolve().parent / "configs" / "phi4-mini-flash"


def official_config_dir() -> Path:
    """Directory of the bundled official Phi-4-mini-flash-reasoning config files (no weights)."""
    return _OFFICIAL_DIR


def official_config() -> SambaYConfig:
    """The official Phi-4-mini-flash-reasoning configuration (3.8B), shipped inside the package."""
    return SambaYConfig.from_file(_OFFICIAL_DIR / "config.json")
