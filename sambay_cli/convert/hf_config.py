"""Hugging Face config.json / generation_config.json from an ArchScale configuration, and back."""

from __future__ import annotations

from typing import Any

from ..config import SambaYConfig
from ..errors import SambaYError
from .archscale_config import ArchConfig, finish_fields

PHI4_TOKENIZER_VOCAB = 200064  # Phi-4-mini-flash tokenizer (o200k-based): bos/eos/pad 199999, <|end|> 200020
LLAMA2_VOCAB = 32000


def is_phi4flash_expressible(cfg: ArchConfig) -> bool:
    """True when the official phi4flash remote code can express the model exactly."""
    return (cfg.norm_type == "layernorm" and bool(cfg["attn_bias"]) and bool(cfg["attn_out_bias"])
            and cfg.head_size * cfg.n_head == cfg.n_embd and bool(cfg["use_da"]) and int(cfg["rnn_per_layer"]) == 2
            and bool(cfg["tied_embed"]) and not cfg["bias"])


def token_ids(cfg: ArchConfig) -> dict[str, Any]:
    vocab = int(cfg["vocab_size"])
    if vocab == PHI4_TOKENIZER_VOCAB:
        return {"bos_token_id": 199999, "eos_token_id": 199999, "pad_token_id": 199999,
                "generation_eos": [200020, 199999]}
    eos = int(cfg["eos_token_id"])
    bos = 1 if vocab == LLAMA2_VOCAB else None
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None, "generation_eos": eos}


def hf_config_dict(cfg: ArchConfig, conversion: dict[str, Any], dtype_name: str) -> dict[str, Any]:
    ids = token_ids(cfg)
    C, H = cfg.n_embd, cfg.n_head
    common = {
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": C,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": H,
        "num_key_value_heads": cfg.n_query_groups,
        "sliding_window": int(cfg["local_window"]),
        "layer_norm_eps": float(cfg["norm_eps"]),
        "hidden_act": "silu",
        "tie_word_embeddings": bool(cfg["tied_embed"]),
        "max_position_embeddings": int(cfg["block_size"]),
        "mamba_d_state": 16,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": cfg.dt_rank,
        "mamba_conv_bias": True,
        "mamba_proj_bias": False,
        "mlp_bias": False,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    if is_phi4flash_expressible(cfg):
        d = {"architectures": ["Phi4FlashForCausalLM"], "model_type": "phi4flash", **common, "mb_per_layer": 2,
             "lm_head_bias": False, "attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
             "initializer_range": 0.02, "use_cache": True}
    else:
        d = {"architectures": ["SambaYForCausalLM"], "model_type": "sambay", **common,
             "head_dim": cfg.head_size, "mamba_per_layer": int(cfg["rnn_per_layer"]), "norm_type": cfg.norm_type,
             "attention_bias": bool(cfg["attn_bias"]), "attention_out_bias": bool(cfg["attn_out_bias"]),
             "differential_attention": bool(cfg["use_da"])}
    d["torch_dtype"] = dtype_name
    d["sambay_conversion"] = conversion
    SambaYConfig.from_dict(d, source="converted config")  # validates what we write
    return d


def generation_config_dict(cfg: ArchConfig) -> dict[str, Any]:
    ids = token_ids(cfg)
    out: dict[str, Any] = {"_from_model_config": True}
    if ids["bos_token_id"] is not None:
        out["bos_token_id"] = ids["bos_token_id"]
    out["eos_token_id"] = ids["generation_eos"]
    if ids["pad_token_id"] is not None:
        out["pad_token_id"] = ids["pad_token_id"]
    return out


def archscale_fields_from_hf(hf: SambaYConfig) -> dict[str, Any]:
    """An ArchScale Config (as asdict would write it) for a Hugging Face SambaY config."""
    if hf.mlp_bias:
        raise SambaYError("ArchScale has no MLP-only bias (its 'bias' flag also adds GMU biases); mlp_bias unsupported")
    if (hf.mamba_d_state, hf.mamba_d_conv, hf.mamba_expand, hf.mamba_conv_bias, hf.mamba_proj_bias) != (16, 4, 2, True,
                                                                                                       False):
        raise SambaYError("ArchScale's Mamba uses d_state 16, d_conv 4, expand 2, conv bias, no proj bias; "
                          "this model differs")
    if hf.mamba_dt_rank != -(-hf.hidden_size // 16):
        raise SambaYError(f"ArchScale's Mamba uses dt_rank ceil(hidden/16); this model has {hf.mamba_dt_rank}")
    eos = hf.eos_token_ids[0] if hf.eos_token_ids else 2
    fields = {
        "name": "custom", "block_size": int(hf.max_position_embeddings or 4096),
        "vocab_size": hf.vocab_size, "padding_multiple": 64, "padded_vocab_size": hf.vocab_size,
        "n_layer": hf.num_hidden_layers, "n_head": hf.num_attention_heads, "n_embd": hf.hidden_size, "ar": None,
        "mlp_expand": 4, "intermediate_size": hf.intermediate_size, "bias": False, "attn_bias": hf.attention_bias,
        "attn_out_bias": hf.attention_out_bias, "local_window": hf.sliding_window,
        "rnn_per_layer": hf.mamba_per_layer, "rnn_type": "mamba", "nope": True, "head_dim": hf.head_dim,
        "use_da": hf.differential_attention, "yoco": True, "gmu_yoco": True, "gmu_per_layer": 2,
        "tied_embed": hf.tie_word_embeddings, "n_query_groups": hf.num_key_value_heads, "mup": False,
        "_norm_class": "LayerNorm" if hf.norm_type == "layernorm" else "FusedRMSNorm",
        "norm_eps": hf.layer_norm_eps, "eos_token_id": eos,
    }
    return finish_fields(fields)
