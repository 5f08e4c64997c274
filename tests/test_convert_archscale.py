"""`sambay convert` against ArchScale's own forward (oracle fixtures) and round trips HF ⇄ ArchScale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sambay_cli.convert.archscale_forward import archscale_logits
from sambay_cli.convert.convert import (
    _archscale_config_for,
    convert_archscale_to_hf,
    convert_hf_to_archscale,
)
from sambay_cli.convert.reader import read_archscale, resolve_source

FIXTURES = Path(__file__).parent / "fixtures"
ARCHSCALE_FIXTURES = sorted(p for p in FIXTURES.glob("archscale-*") if (p / "archscale_golden.safetensors").is_file())
TINY_A = FIXTURES / "phi4flash-tiny-a"


def _load_model():
    loading = pytest.importorskip("sambay_cli.loading")
    return loading.load_model


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def test_fixture_folders_present() -> None:
    names = {p.name for p in ARCHSCALE_FIXTURES}
    assert {"archscale-2025-phi4like", "archscale-2025-mup-sambay", "archscale-2026-sambayda"} <= names
    for p in ARCHSCALE_FIXTURES:
        assert not (p / "golden.safetensors").exists()  # keeps the HF parity tests off these folders
        assert sum(f.stat().st_size for f in p.iterdir()) < 2_000_000


@pytest.mark.parametrize("fixture", ARCHSCALE_FIXTURES, ids=lambda p: p.name)
def test_converted_logits_match_archscale(fixture: Path, tmp_path: Path) -> None:
    load_model = _load_model()
    golden = load_file(str(fixture / "archscale_golden.safetensors"))
    out = tmp_path / "hf"
    res = convert_archscale_to_hf(fixture, out, archscale_config=fixture / "model_config.json", dtype="fp32",
                                  show_progress=False)
    model = load_model(out, dtype="float32")
    with torch.no_grad():
        got = _logits(model(golden["input_ids"])).float()
    diff = float((got - golden["logits"]).abs().max())
    assert diff < 1e-4, f"{fixture.name}: converted logits differ from ArchScale's by {diff}"
    if "mup" in fixture.name:
        assert res.details["folded"] == {"logit_scale": 2.0, "residual_scale": 0.25, "q_scale": 2.0}


@pytest.mark.parametrize("fixture", ARCHSCALE_FIXTURES, ids=lambda p: p.name)
def test_reference_forward_matches_archscale(fixture: Path) -> None:
    """The --verify reference (our own ArchScale-semantics forward) against ArchScale itself."""
    golden = load_file(str(fixture / "archscale_golden.safetensors"))
    path, _ = resolve_source(fixture)
    ckpt = read_archscale(path)
    cfg = _archscale_config_for(ckpt, fixture / "model_config.json")
    with torch.no_grad():
        got = archscale_logits(ckpt.tensors, cfg, ckpt.layout, golden["input_ids"])
    assert float((got - golden["logits"]).abs().max()) < 1e-4


def test_reference_forward_matches_official_hf_golden(tmp_path: Path) -> None:
    """tiny-a (official HF code's golden) -> ArchScale 2025: our reference forward reproduces the official logits."""
    convert_hf_to_archscale(TINY_A, tmp_path / "as", layout="2025", show_progress=False)
    path, _ = resolve_source(tmp_path / "as")
    ckpt = read_archscale(path)
    cfg = _archscale_config_for(ckpt, None)
    golden = load_file(str(TINY_A / "golden.safetensors"))
    with torch.no_grad():
        got = archscale_logits(ckpt.tensors, cfg, ckpt.layout, golden["ids_a"])
    assert float((got - golden["logits_a"]).abs().max()) < 1e-4


def _tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name.startswith("golden"):
            continue
        out.update(load_file(str(f)))
    return out


def test_hf_to_archscale_2025_and_back_is_bit_exact(tmp_path: Path) -> None:
    res = convert_hf_to_archscale(TINY_A, tmp_path / "as", layout="2025", show_progress=False)
    assert res.warnings == []
    ckpt_path = Path(res.details["checkpoint"])
    assert ckpt_path.name == "iter-000000-ckpt.pth" and ckpt_path.parent.name.startswith("converted_tie_")
    state = torch.load(ckpt_path, weights_only=True)
    assert any(k.endswith(".attn.attn.weight") for k in state["model"])  # fused grouped layout
    assert torch.equal(state["model"]["lm_head.weight"], state["model"]["transformer.wte.weight"])
    convert_archscale_to_hf(tmp_path / "as", tmp_path / "hf", show_progress=False)
    a, b = _tensors_of(TINY_A), _tensors_of(tmp_path / "hf")
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_hf_to_archscale_2026_drops_k_bias_with_warning(tmp_path: Path) -> None:
    load_model = _load_model()
    res = convert_hf_to_archscale(TINY_A, tmp_path / "as", layout="2026", show_progress=False)
    assert any("k bias" in w for w in res.warnings)
    state = torch.load(res.details["checkpoint"], weights_only=True)["model"]
    assert "transformer.h.1.attn.k_proj.weight" in state and "transformer.h.1.attn.k_proj.bias" not in state
    convert_archscale_to_hf(tmp_path / "as", tmp_path / "hf", dtype="fp32", show_progress=False)
    a, b = _tensors_of(TINY_A), _tensors_of(tmp_path / "hf")
    for k in a:
        if k.endswith("Wqkv.bias"):
            continue
        assert torch.equal(a[k].float(), b[k].float()), k
    golden = load_file(str(TINY_A / "golden.safetensors"))
    with torch.no_grad():
        got = _logits(load_model(tmp_path / "hf", dtype="float32")(golden["ids_a"]))
    assert float((got - golden["logits_a"]).abs().max()) < 1e-4


@pytest.mark.parametrize("fixture", ARCHSCALE_FIXTURES, ids=lambda p: p.name)
def test_archscale_fixture_round_trip(fixture: Path, tmp_path: Path) -> None:
    """ArchScale -> HF (fp32) -> ArchScale (same layout) -> HF: the two HF outputs are identical."""
    layout = "2026" if "2026" in fixture.name else "2025"
    convert_archscale_to_hf(fixture, tmp_path / "hf1", archscale_config=fixture / "model_config.json", dtype="fp32",
                            show_progress=False)
    convert_hf_to_archscale(tmp_path / "hf1", tmp_path / "as", layout=layout, show_progress=False)
    convert_archscale_to_hf(tmp_path / "as", tmp_path / "hf2", dtype="fp32", show_progress=False)
    a, b = _tensors_of(tmp_path / "hf1"), _tensors_of(tmp_path / "hf2")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
