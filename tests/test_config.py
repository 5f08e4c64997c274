from __future__ import annotations

import copy
import json

import pytest
from conftest import HUB_METADATA, TINY

from sambay_cli.config import SambaYConfig, lambda_init, official_config, official_config_dir
from sambay_cli.errors import ConfigError
from sambay_cli.loading import build_empty


def _real() -> dict:
    return json.loads((HUB_METADATA / "config.json").read_text())


def test_real_config_layer_plan():
    cfg = SambaYConfig.from_dict(_real())
    t = cfg.layer_types
    assert t[:16] == ["mamba", "swa"] * 8
    assert t[16] == "mamba_memory" and t[17] == "full_attention"
    assert t[18:] == ["gmu", "cross_attention"] * 7
    assert cfg.sliding_window == 512 and cfg.head_dim == 64 and cfg.mamba_dt_rank == 160
    assert [cfg.window_of(i) for i in (1, 15, 17, 19)] == [512, 512, None, None]
    assert cfg.eos_token_ids == [199999]
    assert cfg.is_official_phi4_mini_flash()


def test_bundled_official_config_is_the_hub_one():
    assert json.loads((official_config_dir() / "config.json").read_text()) == _real()
    assert official_config().is_official_phi4_mini_flash()


def test_official_class_defaults_apply_to_absent_fields():
    d = {"model_type": "phi4flash", "num_hidden_layers": 8, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2}
    cfg = SambaYConfig.from_dict(d)
    assert cfg.sliding_window == 2047  # class default, not the real model's 512
    assert cfg.vocab_size == 51200 and cfg.intermediate_size == 9216
    assert cfg.mamba_dt_rank == 4  # ceil(64 / 16)
    assert not cfg.is_official_phi4_mini_flash()


def test_round_trip_unchanged():
    real = _real()
    assert SambaYConfig.from_dict(copy.deepcopy(real)).to_dict() == real
    tiny = json.loads((TINY / "config.json").read_text())
    assert SambaYConfig.from_file(TINY).to_dict() == tiny


def test_meta_model_has_exactly_the_index_tensor_names_and_count():
    cfg = SambaYConfig.from_dict(_real())
    model = build_empty(cfg)
    index = json.loads((HUB_METADATA / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(model.state_dict()) == set(index)
    assert sum(p.numel() for p in model.parameters()) == 3_852_562_944


def _with_layer_types(types, window=512):
    d = _real()
    d["layer_types"] = types
    d["sliding_window"] = window
    return d


def test_layer_types_revision_accepted_when_it_agrees():
    types = ["sliding_attention" if (i < 16 and i % 2) else "full_attention" for i in range(32)]
    cfg = SambaYConfig.from_dict(_with_layer_types(types))
    assert cfg.layer_types[1] == "swa" and cfg.layer_types[17] == "full_attention"


def test_layer_types_disagreement_refused():
    types = ["sliding_attention" if (i < 16 and i % 2) else "full_attention" for i in range(32)]
    types[17] = "sliding_attention"
    with pytest.raises(ConfigError, match=r"layer_types\[17\]"):
        SambaYConfig.from_dict(_with_layer_types(types))
    types = ["sliding_attention" if (i < 16 and i % 2) else "full_attention" for i in range(32)]
    types[3] = "full_attention"
    with pytest.raises(ConfigError, match=r"layer_types\[3\]"):
        SambaYConfig.from_dict(_with_layer_types(types))
    with pytest.raises(ConfigError, match="one entry per layer"):
        SambaYConfig.from_dict(_with_layer_types(types[:5]))


def test_sliding_window_list_form_of_the_original_class():
    d = _real()
    d["sliding_window"] = [512 if (i < 16 and i % 2) else None for i in range(32)]
    assert SambaYConfig.from_dict(d).sliding_window == 512
    d["sliding_window"][17] = 512
    with pytest.raises(ConfigError, match="disagrees"):
        SambaYConfig.from_dict(d)


def test_lambda_init_table():
    assert lambda_init(1) == pytest.approx(0.355509, abs=1e-6)
    assert lambda_init(17) == pytest.approx(0.796342, abs=1e-6)
    assert lambda_init(31) == pytest.approx(0.799945, abs=1e-6)


def _sambay(**kw):
    d = {"model_type": "sambay", "vocab_size": 256, "hidden_size": 96, "intermediate_size": 192,
         "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
         "sliding_window": 6, "norm_type": "rmsnorm", "attention_bias": False, "attention_out_bias": False,
         "differential_attention": True, "tie_word_embeddings": False}
    d.update(kw)
    return d


def test_sambay_variant_fields():
    cfg = SambaYConfig.from_dict(_sambay())
    assert cfg.head_dim == 16 and cfg.hidden_size // cfg.num_attention_heads == 12
    assert cfg.norm_type == "rmsnorm" and not cfg.attention_bias and not cfg.tie_word_embeddings
    names = set(build_empty(cfg).state_dict())
    assert "lm_head.weight" in names
    assert "model.layers.1.attn.Wqkv.bias" not in names
    assert "model.layers.0.input_layernorm.bias" not in names
    assert SambaYConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    plain = SambaYConfig.from_dict(_sambay(differential_attention=False))
    assert not any("lambda" in n for n in build_empty(plain).state_dict())
    allmamba = SambaYConfig.from_dict(_sambay(mamba_per_layer=1))
    assert allmamba.layer_types[:4] == ["mamba"] * 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama"}, "not a SambaY model"),
        ({"num_hidden_layers": 6}, "multiple of 4"),
        ({"num_attention_heads": 40, "num_key_value_heads": 3}, "not a multiple"),
        ({"mb_per_layer": 3}, "mb_per_layer"),
        ({"sliding_window": 0}, "sliding_window"),
        ({"hidden_size": "big"}, "hidden_size"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_bad_configs_refused(change, message):
    d = _real()
    d.update(change)
    with pytest.raises(ConfigError, match=message):
        SambaYConfig.from_dict(d)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        SambaYConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SambaYConfig.from_file(tmp_path)
