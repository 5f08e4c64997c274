"""bitsandbytes formats (nf4, fp4, LLM.int8) in the safetensors layout Hugging Face transformers uses.

Quantization is done by bitsandbytes itself (it runs on CPU), so the files hold exactly what ``bnb.nn.Linear4bit`` /
``bnb.nn.Linear8bitLt`` would save for the same weight. Reading them back needs no bitsandbytes (see
:mod:`.formats`); on CUDA, bitsandbytes is used for the matmul when it is installed.

Keys for a linear layer ``X`` (suffixes after ``X.``):

* 4-bit: ``weight`` uint8 [n/2, 1], ``weight.absmax`` (float32 [n/64], or uint8 when nested),
  ``weight.quant_map`` float32 [16], ``weight.nested_absmax`` / ``weight.nested_quant_map`` (nested only) and
  ``weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``): uint8 bytes of a JSON object with quant_type, blocksize,
  dtype, shape (and nested_blocksize, nested_dtype, nested_offset).
* 8-bit: ``weight`` int8 [out, in], ``SCB`` float32 [out], ``weight_format`` uint8 scalar 0 ("row").
"""

from __future__ import annotations

import json

import torch

from ..errors import SambaYError

BNB4_BLOCKSIZE = 64


def require_bitsandbytes():
    try:
        import bitsandbytes  # noqa: F401
        import bitsandbytes.functional as bnb_f
    except Exception as e:  # ImportError, or a broken native library
        raise SambaYError(f"the bitsandbytes formats need the bitsandbytes package ({type(e).__name__}: {e}); "
                          "install it with: pip install bitsandbytes") from None
    return bnb_f


def quantize_bnb4(w: torch.Tensor, quant_type: str, nested: bool, blocksize: int = BNB4_BLOCKSIZE
                  ) -> dict[str, torch.Tensor]:
    """Suffix → tensor, as Linear4bit.state_dict() has them (without bias)."""
    bnb_f = require_bitsandbytes()
    packed, state = bnb_f.quantize_4bit(w.detach().contiguous().cpu(), blocksize=blocksize,
                                        compress_statistics=nested, quant_type=quant_type)
    out = {"weight": packed}
    for key, value in state.as_dict(packed=True).items():
        out[f"weight.{key}"] = value.cpu()
    return out


def quantize_bnb_int8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Suffix → tensor, as Linear8bitLt(has_fp16_weights=False).state_dict() has them (without bias)."""
    bnb_f = require_bitsandbytes()
    cb, scb, _ = bnb_f.int8_vectorwise_quant(w.detach().contiguous().cpu().to(torch.float16))
    return {"weight": cb, "SCB": scb, "weight_format": torch.tensor(0, dtype=torch.uint8)}


def bnb4_suffixes(quant_type: str, nested: bool) -> list[str]:
    keys = ["weight", "weight.absmax", "weight.quant_map"]
    if nested:
        keys += ["weight.nested_absmax", "weight.nested_quant_map"]
    return keys + [f"weight.quant_state.bitsandbytes__{quant_type}"]


BNB8_SUFFIXES = ["weight", "SCB", "weight_format"]


def decode_quant_state(t: torch.Tensor) -> dict:
    """The JSON object held by a ``quant_state.bitsandbytes__*`` uint8 tensor."""
    try:
        return json.loads(bytes(t.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SambaYError("corrupt bitsandbytes quant_state in the checkpoint") from None


def bnb_config(method: str, nested: bool, skip_modules: list[str], compute_dtype: str = "bfloat16") -> dict:
    """config.json ``quantization_config`` as transformers writes it for bitsandbytes."""
    four = method in ("nf4", "fp4")
    return {
        "quant_method": "bitsandbytes",
        "load_in_4bit": four,
        "load_in_8bit": not four,
        "bnb_4bit_quant_type": method if four else "fp4",
        "bnb_4bit_use_double_quant": bool(nested) if four else False,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": skip_modules,
        "llm_int8_threshold": 6.0,
    }
