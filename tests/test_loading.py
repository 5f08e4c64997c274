from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from sambay_cli import load_model
from sambay_cli.cli import main
from sambay_cli.errors import CheckpointError, ConfigError, SambaYError


@pytest.fixture
def tiny_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(TINY, dst)
    return dst


def test_float32_params_kept_and_dtype_applied():
    m = load_model(TINY, dtype="bfloat16", device="cpu")
    mamba = m.model.layers[0].attn
    assert m.dtype == torch.bfloat16
    assert mamba.A_log.dtype == torch.float32 and mamba.D.dtype == torch.float32
    assert m.model.layers[1].attn.inner_cross_attn.lambda_q1.dtype == torch.float32
    assert mamba.in_proj.weight.dtype == torch.bfloat16
    stored = load_file(TINY / "model.safetensors")
    assert torch.equal(mamba.A_log, stored["model.layers.0.attn.A_log"].float())
    # tied: lm_head is the embedding, no separate tensor
    assert m.lm_head is None and m.lm_head_weight() is m.model.embed_tokens.weight


def test_official_bf16_rounding_option():
    exact = load_model(TINY, dtype="bfloat16", device="cpu")
    rounded = load_model(TINY, dtype="bfloat16", device="cpu", official_bf16_rounding=True)
    a, b = exact.model.layers[0].attn.A_log, rounded.model.layers[0].attn.A_log
    assert b.dtype == torch.float32
    assert torch.equal(b, a.to(torch.bfloat16).float())
    assert not torch.equal(a, b)  # the fixture's A_log has fp32-only bits


def test_sharded_checkpoint_loads_identically(tiny_copy):
    sd = load_file(tiny_copy / "model.safetensors")
    names = sorted(sd)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, tiny_copy / fname)
        weight_map.update({k: fname for k in keys})
    (tiny_copy / "model.safetensors").unlink()
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    a = load_model(TINY, dtype="float32")
    b = load_model(tiny_copy, dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(a(ids), b(ids))


def _corrupt_cases(d):
    st = d / "model.safetensors"
    return st


def test_missing_tensor_named(tiny_copy):
    sd = load_file(tiny_copy / "model.safetensors")
    del sd["model.layers.3.attn.out_proj.bias"]
    save_file(sd, tiny_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model.layers.3.attn.out_proj.bias"):
        load_model(tiny_copy)


def test_unexpected_tensor_named(tiny_copy):
    sd = load_file(tiny_copy / "model.safetensors")
    sd["model.layers.0.attn.extra"] = torch.zeros(2)
    save_file(sd, tiny_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): model.layers.0.attn.extra"):
        load_model(tiny_copy)


def test_shape_mismatch_named(tiny_copy):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.fc1.weight has shape \[256, 64\]"):
        load_model(tiny_copy)


def test_truncated_file(tiny_copy):
    st = tiny_copy / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tiny_copy)


def test_garbage_file(tiny_copy):
    (tiny_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tiny_copy)


def test_missing_shard(tiny_copy):
    (tiny_copy / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing shard"):
        load_model(tiny_copy)


def test_config_only_folder_has_no_weights(tmp_path):
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        load_model(tmp_path)


def test_not_sambay(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="not a SambaY model"):
        load_model(tmp_path)


def test_missing_path():
    with pytest.raises(SambaYError, match="no such model directory"):
        load_model("/definitely/not/here")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: shutil.rmtree(d), "no such model directory"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}'), "not a SambaY model"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 5), "not a safetensors file"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tiny_copy, capsys, make, message):
    make(tiny_copy)
    with pytest.raises(SystemExit) as e:
        main(["info", str(tiny_copy)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
