"""bitsandbytes formats: files hold what bitsandbytes itself saves for a Linear4bit / Linear8bitLt of the same
weight, and our loader dequantizes them exactly as bitsandbytes does (all on CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY
from safetensors import safe_open

from sambay_cli.loading import load_model
from sambay_cli.quant.modules import QuantLinear
from sambay_cli.quant.quantize import QuantizeOptions, quantize_checkpoint

bnb = pytest.importorskip("bitsandbytes")
NAME = "model.layers.0.mlp.fc1"


def _orig(name: str) -> torch.Tensor:
    with safe_open(str(TINY / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name)


def _file_tensors(out, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        return {k[len(prefix) + 1:]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix + ".")}


@pytest.mark.parametrize("quant_type,nested", [("nf4", False), ("nf4", True), ("fp4", False)])
def test_4bit_matches_bitsandbytes_linear4bit(tmp_path, quant_type, nested):
    out = tmp_path / "q"
    quantize_checkpoint(TINY, out, QuantizeOptions(method=quant_type, nested=nested))
    w = _orig(f"{NAME}.weight")
    layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, quant_type=quant_type,
                              compress_statistics=nested, compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=quant_type,
                                     compress_statistics=nested)
    layer.weight = layer.weight._quantize("cpu")
    theirs = {k: v for k, v in layer.state_dict().items() if k != "bias"}
    ours = _file_tensors(out, NAME)
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if "quant_state" in k:
            assert json.loads(bytes(ours[k].tolist())) == json.loads(bytes(v.tolist()))
        else:
            assert torch.equal(ours[k], v.cpu()), k
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["load_in_4bit"] and cfg["bnb_4bit_quant_type"] == quant_type
    assert cfg["bnb_4bit_use_double_quant"] == nested
    # our dequantization == bitsandbytes' own
    model = load_model(out)
    mine = dict(model.named_modules())[NAME]
    assert isinstance(mine, QuantLinear)
    qs = bnb.functional.QuantState.from_dict({k[len("weight."):]: v for k, v in theirs.items() if k != "weight"},
                                             device=torch.device("cpu"))
    ref = bnb.functional.dequantize_4bit(theirs["weight"], qs)  # in the quantized weight's dtype (bf16)
    assert ref.dtype == torch.bfloat16
    assert torch.allclose(mine.dequantize(torch.float32), ref.float(), rtol=2 ** -8, atol=1e-6)


def test_int8_matches_bitsandbytes_linear8bitlt(tmp_path):
    out = tmp_path / "q8"
    quantize_checkpoint(TINY, out, QuantizeOptions(method="bnb-int8"))
    w = _orig(f"{NAME}.weight")
    layer = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")
    theirs = layer.state_dict()
    ours = _file_tensors(out, NAME)
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    model = load_model(out)
    mine = dict(model.named_modules())[NAME]
    expected = theirs["weight"].float() * theirs["SCB"][:, None] / 127
    assert torch.allclose(mine.dequantize(torch.float32), expected, atol=1e-7)
    x = torch.randn(3, w.shape[1])
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()
    assert mine(x).shape == (3, w.shape[0])


def test_bnb_rejects_embeddings(tmp_path):
    from sambay_cli.errors import SambaYError

    with pytest.raises(SambaYError, match="embedding"):
        quantize_checkpoint(TINY, tmp_path / "e", QuantizeOptions(method="nf4", quantize_embeddings=True))
