"""GPU checks of the engine (run by `make test-gpu` on a CUDA machine)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_fp32, cuda, fixture_params
from safetensors.torch import load_file

from sambay_cli import generate, load_model

pytestmark = [pytest.mark.gpu, cuda]


@pytest.mark.parametrize("fixture", fixture_params())
def test_gpu_cached_greedy_equals_gpu_no_cache_forward_fp32(fixture):
    model = load_model(fixture, dtype="float32", device="cuda")
    g = load_file(fixture / "golden.safetensors")
    prompt = g["gen_prompt"].tolist()
    steps = g["gen_logits"].shape[0]
    out = generate(model, [prompt], max_new_tokens=steps, stop_token_ids=[], return_logits=True)
    seq = prompt + out.tokens[0]
    full = model(torch.tensor([seq], device="cuda"))[0].cpu()
    assert_close_fp32(out.logits[0], full[len(prompt) - 1: len(seq) - 1], "GPU cached vs GPU no-cache")
    assert seq == g["gen_ids"].tolist()


@pytest.mark.parametrize("fixture", fixture_params())
def test_gpu_bf16_generation_runs_and_mostly_agrees(fixture):
    model = load_model(fixture, dtype="bfloat16", device="cuda")
    g = load_file(fixture / "golden.safetensors")
    out = generate(model, [g["gen_prompt"].tolist()], max_new_tokens=8, stop_token_ids=[], return_logits=True)
    ref = g["gen_logits"][:1]
    rel = ((out.logits[0][:1] - ref).norm() / ref.norm()).item()
    assert rel <= 2e-2
