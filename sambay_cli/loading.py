"""Loading Hugging Face SambaY checkpoints (single ``model.safetensors`` or sharded with an index).

The model is built on the meta device (no random initialisation, no memory), then every tensor is read from the
memory-mapped safetensors file, converted to its target dtype and assigned in place — so the peak anonymous memory
is the loaded weights plus one tensor in flight.

Precision: ``A_log``, ``D`` and the four differential-attention λ vectors stay float32 whatever the model dtype.
They enter exponentials (A = −exp(A_log), λ = exp(λq·λk) − …), where bf16's 8-bit mantissa would move every decay
rate and the λ mix by up to 0.4 %; the official checkpoint stores A_log and λ in float32 for that reason and vLLM
keeps them in float32. The official Hugging Face GPU load (``from_pretrained(torch_dtype=bfloat16)``) instead holds
bf16-rounded values: ``official_bf16_rounding=True`` reproduces that for bit-level comparisons with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import SambaYConfig
from .errors import CheckpointError, SambaYError
from .model.modeling import FLOAT32_PARAMS, SambaYForCausalLM

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None → bfloat16 on CUDA, float32 elsewhere."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise SambaYError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from None


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SambaYError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SambaYError("--device cuda was asked for but no CUDA GPU is available")
    return dev


@dataclass
class CheckpointFiles:
    """The safetensors files of a model directory and which tensor lives where."""

    directory: Path
    files: list[Path] = field(default_factory=list)
    tensor_file: dict[str, Path] = field(default_factory=dict)
    index_total_size: int | None = None
    missing_shards: list[str] = field(default_factory=list)


def find_weights(directory: Path, *, require_shards: bool = True) -> CheckpointFiles | None:
    """Locate the weights of a model directory; None when it holds only a config. Raises on an incomplete index
    (unless ``require_shards=False``: then ``files`` lists only the shards present)."""
    index = directory / INDEX_NAME
    single = directory / SINGLE_NAME
    out = CheckpointFiles(directory)
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{index} is not a valid safetensors index") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing and require_shards:
            raise CheckpointError(f"missing shard(s) listed in {INDEX_NAME}: {', '.join(missing)}")
        out.files = [directory / s for s in shards if (directory / s).is_file()]
        out.missing_shards = missing
        out.tensor_file = {k: directory / v for k, v in weight_map.items()}
        out.index_total_size = (data.get("metadata") or {}).get("total_size")
        return out
    if single.is_file():
        out.files = [single]
        return out
    loose = sorted(directory.glob("*.safetensors"))
    if loose:
        out.files = loose
        return out
    return None


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file, validated against the file size (catches truncation)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is not a safetensors file (too short)")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > min(size - 8, 100_000_000):
                raise CheckpointError(f"{path.name} is not a valid safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path.name} is corrupt: its header is not valid JSON") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} is corrupt: bad header")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name} is corrupt: bad entry for tensor {name}") from None
        end = max(end, int(stop))
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path.name} is truncated or corrupt: header describes {8 + n + end} bytes, file has {size}"
        )
    return header


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hub repo id resolved from the local Hugging Face cache (no download)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise SambaYError(f"{p} is a file; give the model directory that holds config.json")
    text = str(path)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_repo:
        try:
            from .pull import resolve_model_dir
        except ImportError:  # pragma: no cover - pull is part of the package
            resolve_model_dir = None
        if resolve_model_dir is not None:
            return Path(resolve_model_dir(text))
    raise SambaYError(f"no such model directory: {path}")


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    official_bf16_rounding: bool = False,
    progress: bool = False,
) -> SambaYForCausalLM:
    """Load a SambaY checkpoint directory (or a Hub id already in the local cache).

    dtype: float32 / bfloat16 / float16 (default: bfloat16 on CUDA, float32 on CPU).
    device: cpu / cuda (default: cuda when available).
    official_bf16_rounding: round A_log, D and λ to bf16 as the official bf16 GPU load does (kept as float32 tensors).
    """
    directory = resolve_model_path(path)
    dev = parse_device(device)
    target = parse_dtype(dtype, dev)
    config = SambaYConfig.from_file(directory)
    # --- quantized checkpoints (`sambay quantize`, bitsandbytes): delegated to sambay_cli.quant.loader ---------
    if config.raw.get("quantization_config"):
        from .quant.loader import load_quantized_model

        return load_quantized_model(directory, config, dtype=target, device=dev, progress=progress)
    # -------------------------------------------------------------------------------------------------------------
    weights = find_weights(directory)
    if weights is None:
        raise CheckpointError(f"{directory} has a config.json but no safetensors weights")
    with torch.device("meta"), _no_init():
        model = SambaYForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = _read_tensors(weights, expected, config, target, dev, official_bf16_rounding, progress)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    model.source_dir = directory  # type: ignore[attr-defined]
    return model


def _read_tensors(weights, expected, config, target, device, bf16_round, progress) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    found = tensor_locations(weights)
    tied_extra = "lm_head.weight" in found and "lm_head.weight" not in expected and config.tie_word_embeddings
    names_found = set(found) - ({"lm_head.weight"} if tied_extra else set())
    check_tensor_names(set(expected), names_found, "checkpoint")
    check_tensor_shapes(expected, found)
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(found[name][0], []).append(name)
    total = sum(len(v) for v in by_file.values())
    bar = _progress(progress, total)
    try:
        for f, names in by_file.items():
            try:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    for name in names:
                        t = sf.get_tensor(name)
                        state[name] = _convert(name, t, target, device, bf16_round)
                        del t
                        if bar is not None:
                            bar[0].update(bar[1], advance=1)
            except SafetensorError as e:
                raise CheckpointError(f"{f.name} is corrupt: {e}") from None
            if tied_extra and f == found["lm_head.weight"][0]:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    head = sf.get_tensor("lm_head.weight")
                emb = state.get("model.embed_tokens.weight")
                if emb is not None and not torch.equal(head.to(emb.dtype).to(emb.device), emb):
                    raise CheckpointError("config ties the embeddings but lm_head.weight differs from embed_tokens")
    finally:
        if bar is not None:
            bar[0].stop()
    return state


def tensor_locations(weights: CheckpointFiles) -> dict[str, tuple[Path, list[int]]]:
    """Every stored tensor's file and shape, read from the (validated) safetensors headers."""
    found: dict[str, tuple[Path, list[int]]] = {}
    for f in weights.files:
        for name, info in read_header(f).items():
            if name != "__metadata__":
                found[name] = (f, info.get("shape", []))
    return found


def check_tensor_names(expected: set[str], found: set[str], label: str) -> None:
    """One line naming the missing and unexpected tensors, if any."""
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_short(unexpected)}")
        raise CheckpointError(f"{label} does not match its config.json: {'; '.join(parts)}")


def check_tensor_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[Path, list[int]]]) -> None:
    for name, shape in expected.items():
        got = tuple(found[name][1])
        if got != shape:
            raise CheckpointError(f"tensor {name} has shape {list(got)}, the config implies {list(shape)}")


def _convert(name: str, t: torch.Tensor, target: torch.dtype, device: torch.device, bf16_round: bool) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in FLOAT32_PARAMS:
        t = t.to(torch.bfloat16).to(torch.float32) if bf16_round else t.to(torch.float32)
    elif t.is_floating_point():
        t = t.to(target)
    return t.to(device)


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f", … (+{len(names) - n} more)" if len(names) > n else "")


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .console import err_console

    p = Progress(TextColumn("loading weights"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=err_console, transient=True)
    p.start()
    return p, p.add_task("load", total=total)


def configure_cpu_threads(model: SambaYForCausalLM, small: int = 100_000_000) -> None:
    """Use one CPU thread for small models (unless OMP_NUM_THREADS says otherwise): their per-op work is tiny, and
    intra-op threads then cost more than they save (the demo model decodes ~10× faster on one thread of a busy
    2-core machine)."""
    if model.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    if sum(p.numel() for p in model.parameters()) < small:
        torch.set_num_threads(1)


def build_empty(config: SambaYConfig, device: str = "meta") -> SambaYForCausalLM:
    """A model with the config's shapes and no data (meta device) — for inspecting names, shapes and counts."""
    with torch.device(device), _no_init():
        return SambaYForCausalLM(config)


@contextlib.contextmanager
def _no_init():
    """Skip parameter initialisation while building a model whose weights will be assigned (on the meta device the
    random init does nothing, but its first call costs seconds of torch imports)."""
    classes = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.Conv1d)
    saved = [c.reset_parameters for c in classes]
    try:
        for c in classes:
            c.reset_parameters = lambda self: None
        yield
    finally:
        for c, fn in zip(classes, saved, strict=True):
            c.reset_parameters = fn
