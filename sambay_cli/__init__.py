"""sambay: a toolkit for SambaY models (Phi-4-mini-flash-reasoning).

Public Python API (see docs/python-api.md)::

    import sambay_cli
    model = sambay_cli.load_model("path/to/model", dtype="float32", device="cpu")
    logits = model(input_ids, attention_mask=None, logits_to_keep=None)
    out = sambay_cli.generate(model, [[1, 2, 3]], max_new_tokens=16)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "generate", "SambaYConfig", "SambaYError"]


def __getattr__(name: str):  # lazy: `sambay --help` must not pay for importing torch
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name == "generate":
        from .generation import generate

        return generate
    if name == "SambaYConfig":
        from .config import SambaYConfig

        return SambaYConfig
    if name == "SambaYError":
        from .errors import SambaYError

        return SambaYError
    raise AttributeError(name)
