"""Parity with the official Hugging Face implementation, on every golden fixture under tests/fixtures/.

Every constant (shapes, padding, window, steps) comes from the fixture folder itself, so a new fixture of the same
form runs unchanged. An incomplete fixture fails instead of being skipped.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_bf16, assert_close_fp32, cuda, fixture_params, load_inputs
from safetensors.torch import load_file

from sambay_cli import load_model
from sambay_cli.config import SambaYConfig

REQUIRED = ("ids_a", "logits_a", "hidden_a0", "hidden_a0_last_raw", "ids_pad", "mask_pad", "logits_pad",
            "gen_prompt", "gen_ids", "gen_logits")


def _golden(fixture):
    for name in ("config.json", "model.safetensors", "inputs.json", "golden.safetensors"):
        assert (fixture / name).is_file(), f"fixture {fixture.name} is incomplete: no {name}"
    g = load_file(fixture / "golden.safetensors")
    missing = [k for k in REQUIRED if k not in g]
    assert not missing, f"fixture {fixture.name} golden lacks {missing}"
    return g


def test_there_is_at_least_one_fixture():
    assert fixture_params(), "no tests/fixtures/*/golden.safetensors found"


def _check_fp32(fixture, device):
    g = _golden(fixture)
    inputs = load_inputs(fixture)
    model = load_model(fixture, dtype="float32", device=device)
    ids = g["ids_a"]
    assert ids.tolist() == inputs["ids_a"]
    out = model.run(ids.to(device), output_hidden_states=True)
    assert_close_fp32(out.logits.cpu(), g["logits_a"], "logits_a")
    hidden = torch.stack([h[0].cpu() for h in out.hidden_states])
    assert hidden.shape == g["hidden_a0"].shape
    for i in range(hidden.shape[0]):
        assert_close_fp32(hidden[i], g["hidden_a0"][i], f"hidden state {i}")
    assert_close_fp32(out.last_hidden_raw[0].cpu(), g["hidden_a0_last_raw"], "last layer output before final norm")
    # left padding: unpadded positions match
    mask = g["mask_pad"].bool()
    assert int((~mask).sum()) == inputs["pad_len"]
    logits_pad = model(g["ids_pad"].to(device), attention_mask=g["mask_pad"].to(device)).cpu()
    assert_close_fp32(logits_pad[mask], g["logits_pad"][mask], "left-padded logits")
    # logits_to_keep returns the last positions only, equal to the full result
    last = model(ids.to(device), logits_to_keep=3).cpu()
    assert last.shape[1] == 3
    assert_close_fp32(last, g["logits_a"][:, -3:], "logits_to_keep=3")
    # greedy continuation with full no-cache forwards
    prompt_len = g["gen_prompt"].numel()
    steps = int(inputs["gen_steps"])
    seq = g["gen_prompt"].tolist()
    for k in range(steps):
        logits = model(torch.tensor([seq], device=device), logits_to_keep=1)[0, -1].cpu()
        assert_close_fp32(logits, g["gen_logits"][k], f"no-cache greedy step {k}")
        seq.append(int(logits.argmax()))
    assert seq == g["gen_ids"].tolist()
    assert len(seq) == prompt_len + steps


@pytest.mark.parametrize("fixture", fixture_params())
def test_fp32_matches_official_golden(fixture):
    _check_fp32(fixture, "cpu")


def _check_bf16(fixture, device):
    g = _golden(fixture)
    model = load_model(fixture, dtype="bfloat16", device=device)
    assert model.dtype == torch.bfloat16
    logits = model(g["ids_a"].to(device)).cpu()
    assert_close_bf16(logits, g["logits_a"], "bf16 logits_a")
    mask = g["mask_pad"].bool()
    logits_pad = model(g["ids_pad"].to(device), attention_mask=g["mask_pad"].to(device)).cpu()
    assert_close_bf16(logits_pad[mask], g["logits_pad"][mask], "bf16 left-padded logits")


@pytest.mark.parametrize("fixture", fixture_params())
def test_bf16_within_project_rule(fixture):
    _check_bf16(fixture, "cpu")


@pytest.mark.parametrize("fixture", fixture_params())
def test_fixture_config_plan(fixture):
    cfg = SambaYConfig.from_file(fixture)
    n = cfg.num_hidden_layers
    assert cfg.layer_types[n // 2] == "mamba_memory" and cfg.layer_types[n // 2 + 1] == "full_attention"


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("fixture", fixture_params())
def test_gpu_fp32_matches_official_golden(fixture):
    _check_fp32(fixture, "cuda")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("fixture", fixture_params())
def test_gpu_bf16_within_project_rule(fixture):
    _check_bf16(fixture, "cuda")
