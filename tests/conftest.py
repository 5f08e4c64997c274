from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # CPU machines run the project's Triton kernels under the interpreter; this must precede any triton import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HUB_METADATA = FIXTURES / "phi4flash-hub-metadata"
TINY = FIXTURES / "phi4flash-tiny-a"
TOKENIZER_TINY = FIXTURES / "tokenizer-tiny"


def golden_fixture_dirs() -> list[Path]:
    """Every tests/fixtures/*/ folder holding a golden.safetensors (parity fixtures)."""
    return sorted(p.parent for p in FIXTURES.glob("*/golden.safetensors"))


def fixture_params():
    return [pytest.param(p, id=p.name) for p in golden_fixture_dirs()]


def load_inputs(fixture: Path) -> dict:
    return json.loads((fixture / "inputs.json").read_text())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def max_abs(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref.double()).abs().max().item()


def assert_close_fp32(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """The project's float32 rule: relative error and max abs error both within 1e-4."""
    r, m = rel_err(out, ref), max_abs(out, ref)
    assert r <= 1e-4 and m <= 1e-4, f"{what}: rel {r:.2e}, max abs {m:.2e} (limit 1e-4)"


def assert_close_bf16(out: torch.Tensor, ref_fp32: torch.Tensor, what: str) -> None:
    """The project's bfloat16 rule: relative error within 2e-2 of the float32 golden."""
    r = rel_err(out, ref_fp32)
    assert r <= 2e-2, f"{what}: rel {r:.2e} (limit 2e-2)"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
