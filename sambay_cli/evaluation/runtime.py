"""What `sambay eval` evaluates: the model, its tokenizer and the generation back end, loaded from a directory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SambaYError
from .engine import EngineBackend, GenerationBackend


@dataclass
class Runtime:
    backend: GenerationBackend
    tokenizer: Any
    model: Any = None  # needed by loglikelihood tasks only
    info: dict[str, Any] = field(default_factory=dict)  # name, path, config_sha256, is_phi4_mini_flash


def resolve_model(name_or_path: str) -> Path:
    from ..loading import resolve_model_path

    return resolve_model_path(name_or_path)


def describe_model(directory: Path) -> dict[str, Any]:
    """Model identity for results.json; refuses a directory that is not a SambaY checkpoint."""
    from ..config import SambaYConfig
    from ..errors import ConfigError

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise SambaYError(f"{directory} has no config.json: not a SambaY model directory")
    try:
        config = SambaYConfig.from_file(directory)
    except ConfigError as e:
        raise SambaYError(f"not a SambaY model: {e}") from None
    return {
        "path": str(directory),
        "name": directory.name,
        "model_type": config.model_type,
        "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "is_phi4_mini_flash": bool(config.is_official_phi4_mini_flash()),
        "eos_token_ids": config.eos_token_ids,
    }


def load_tokenizer(directory: Path) -> Any:
    from ..tokenizer import Tokenizer

    return Tokenizer.from_dir(directory)


def load_runtime(
    name_or_path: str,
    *,
    tokenizer_dir: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> Runtime:
    """Load model + tokenizer and wrap the project's engine."""
    from ..loading import configure_cpu_threads, load_model

    directory = resolve_model(name_or_path)
    info = describe_model(directory)
    tokenizer = load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else directory)
    model = load_model(directory, dtype=dtype, device=device)
    from ..generation import model_eos_ids

    # generation_config.json's EOS ids (Phi-4: <|end|>, <|endoftext|>) first, then config.json's and the tokenizer's
    eos = [*model_eos_ids(model), *info["eos_token_ids"]]
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    stop_ids = list(dict.fromkeys(eos))
    configure_cpu_threads(model)
    return Runtime(backend=EngineBackend(model, tokenizer, stop_ids), tokenizer=tokenizer, model=model, info=info)
