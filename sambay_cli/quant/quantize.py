"""`sambay quantize SRC OUT --method ...`: stream a checkpoint into a weight-only quantized one.

Tensors are read one at a time from the memory-mapped source shards, quantized and written straight into the output
shard (the header is planned from shapes first), so peak memory is about one tensor plus its quantized form. The
output directory is built as a temporary sibling and renamed at the end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import SambaYConfig
from ..convert.writer import SAFETENSORS_DTYPES, TensorSpec, atomic_output_dir, write_safetensors_model
from ..errors import SambaYError
from ..loading import build_empty, find_weights, read_header, resolve_model_path
from . import bnb, formats
from .modules import FORMATS
from .policy import EMBEDDING, select_modules

ST_DTYPE_NAMES = SAFETENSORS_DTYPES
TORCH_OF_ST = {v: k for k, v in ST_DTYPE_NAMES.items()}
QUANT_VERSION = 1


@dataclass
class QuantizeOptions:
    method: str
    group_size: int = 128
    symmetric: bool = False
    strict_group: bool = False
    include: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    quantize_embeddings: bool = False
    nested: bool = False
    clip_search: bool = False
    max_shard_bytes: int = 4 << 30
    force: bool = False
    calibration: dict[str, object] | None = None  # module name → precomputed Int8Weight/Int4Weight (API hook)


@dataclass
class QuantizeResult:
    out: Path
    method: str
    files: list[str]
    quantized_modules: int
    kept_linear_modules: list[str]
    group_size_overrides: dict[str, int]
    source_bytes: int
    output_bytes: int
    warnings: list[str]


@dataclass
class SourceTensor:
    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    begin: int


def check_method(method: str) -> str:
    m = method.strip().lower()
    if m not in FORMATS:
        raise SambaYError(f"unknown --method {method!r} (use one of: {', '.join(FORMATS)})")
    return m


def read_raw_config(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SambaYError(f"no config.json in {directory}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SambaYError(f"{path} is not valid JSON: {e}") from None


def source_tensors(directory: Path) -> list[SourceTensor]:
    weights = find_weights(directory)
    if weights is None:
        raise SambaYError(f"{directory} has a config.json but no safetensors weights")
    out: list[SourceTensor] = []
    for f in weights.files:
        header = read_header(f)
        items = [(k, v) for k, v in header.items() if k != "__metadata__"]
        items.sort(key=lambda kv: kv[1]["data_offsets"][0])  # file order: sequential reads
        for name, info in items:
            dtype = TORCH_OF_ST.get(info["dtype"])
            if dtype is None:
                raise SambaYError(f"{f.name}: tensor {name} has unsupported dtype {info['dtype']}")
            out.append(SourceTensor(name, f, tuple(info["shape"]), dtype, info["data_offsets"][0]))
    return out


# ------------------------------------------------------------------------------------------------------ planning


@dataclass
class ModulePlan:
    name: str
    out_features: int
    in_features: int
    group_size: int | None = None


def plan_modules(config: SambaYConfig, tensors: dict[str, SourceTensor], opts: QuantizeOptions,
                 warn: Callable[[str], None]) -> tuple[list[ModulePlan], dict[str, int], list[str]]:
    model = build_empty(config)
    selection = select_modules(model, include=opts.include, skip=opts.skip,
                               quantize_embeddings=opts.quantize_embeddings)
    for w in selection.warnings:
        warn(w)
    if opts.method in bnb_methods() and any(n in (EMBEDDING, "lm_head") for n in selection.modules):
        raise SambaYError("bitsandbytes formats cannot hold the embedding; drop --quantize-embeddings")
    plans: list[ModulePlan] = []
    overrides: dict[str, int] = {}
    kept: list[str] = []
    for name in selection.modules:
        src = tensors.get(f"{name}.weight")
        if src is None or len(src.shape) != 2:
            raise SambaYError(f"checkpoint has no 2-D tensor {name}.weight")
        out_f, in_f = src.shape
        plan = ModulePlan(name, out_f, in_f)
        if opts.method == "int4":
            g = opts.group_size
            if in_f % g:
                fb = formats.fallback_group_size(in_f, g)
                if opts.strict_group:
                    raise SambaYError(f"--strict-group: group size {g} does not divide the input width {in_f} of "
                                      f"{name} (largest power-of-two group that would: {fb})")
                if fb < 2:
                    warn(f"{name}: input width {in_f} is odd; int4 needs an even width, keeping it in high precision")
                    kept.append(name)
                    continue
                overrides[name] = fb
                g = fb
            plan.group_size = g
        plans.append(plan)
    by_width: dict[tuple[int, int], list[str]] = {}
    for name, fb in overrides.items():
        by_width.setdefault((tensors[f"{name}.weight"].shape[1], fb), []).append(name)
    for (width, fb), names in by_width.items():
        shown = ", ".join(names[:3]) + (f", … (+{len(names) - 3} more)" if len(names) > 3 else "")
        warn(f"group size {opts.group_size} does not divide input width {width} of {len(names)} tensor(s) ({shown}); "
             f"using group {fb} for them (recorded in config.json)")
    if not plans:
        raise SambaYError("no tensor selected for quantization (check --skip / --include)")
    return plans, overrides, kept


def bnb_methods() -> tuple[str, ...]:
    return ("nf4", "fp4", "bnb-int8")


def output_layout(plan: ModulePlan, method: str, symmetric: bool, nested: bool, src_dtype: torch.dtype
                  ) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(suffix, shape, dtype) of every tensor the quantized form of one weight is stored as."""
    o, i = plan.out_features, plan.in_features
    if method == "int8":
        return [("qweight", (o, i), torch.int8), ("scales", (o,), torch.float32)]
    if method == "int4":
        groups = i // plan.group_size
        layout = [("qweight", (o, i // 2), torch.uint8), ("scales", (o, groups), torch.bfloat16)]
        if not symmetric:
            layout.append(("zeros", (o, groups), torch.uint8))
        return layout
    if method == "bnb-int8":
        return [("weight", (o, i), torch.int8), ("SCB", (o,), torch.float32), ("weight_format", (), torch.uint8)]
    n = o * i
    blocks = -(-n // bnb.BNB4_BLOCKSIZE)
    layout = [("weight", ((n + 1) // 2, 1), torch.uint8)]
    if nested:
        layout += [("weight.absmax", (blocks,), torch.uint8), ("weight.quant_map", (16,), torch.float32),
                   ("weight.nested_absmax", (-(-blocks // 256),), torch.float32),
                   ("weight.nested_quant_map", (256,), torch.float32)]
    else:
        layout += [("weight.absmax", (blocks,), torch.float32), ("weight.quant_map", (16,), torch.float32)]
    layout.append((f"weight.quant_state.bitsandbytes__{method}", (_quant_state_len(method, nested, src_dtype, o, i),),
                   torch.uint8))
    return layout


def _quant_state_len(method: str, nested: bool, dtype: torch.dtype, o: int, i: int) -> int:
    """Bytes of the JSON quant_state bitsandbytes writes; nested states reserve room for the float offset (the JSON
    is padded with spaces when shorter — still the same JSON object)."""
    d: dict[str, object] = {"quant_type": method, "blocksize": bnb.BNB4_BLOCKSIZE,
                            "dtype": str(dtype).strip("torch."), "shape": [o, i]}
    if nested:
        d.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": -1.2345678901234567e-300})
    return len(json.dumps(d).encode("utf-8"))


# ------------------------------------------------------------------------------------------------ quantization


class LazyQuantizer:
    """Quantizes a module's weight on first request and hands out its parts; forgets it after the last part."""

    def __init__(self, read: Callable[[str], torch.Tensor], opts: QuantizeOptions) -> None:
        self.read = read
        self.opts = opts
        self.cache: dict[str, dict[str, torch.Tensor]] = {}

    def part(self, plan: ModulePlan, suffix: str, n_parts: int) -> torch.Tensor:
        parts = self.cache.get(plan.name)
        if parts is None:
            parts = self.quantize(plan)
            parts["_left"] = torch.tensor(n_parts)
            self.cache[plan.name] = parts
        t = parts[suffix]
        left = int(parts["_left"]) - 1
        parts["_left"] = torch.tensor(left)
        if left == 0:
            del self.cache[plan.name]
        return t

    def quantize(self, plan: ModulePlan) -> dict[str, torch.Tensor]:
        w = self.read(f"{plan.name}.weight")
        m = self.opts.method
        calibrated = (self.opts.calibration or {}).get(plan.name)
        if m == "int8":
            q = calibrated if calibrated is not None else formats.quantize_int8(w)
            return {"qweight": q.qweight, "scales": q.scales}
        if m == "int4":
            q = calibrated if calibrated is not None else formats.quantize_int4(
                w, plan.group_size, self.opts.symmetric, clip_search=self.opts.clip_search)
            out = {"qweight": q.qweight, "scales": q.scales}
            if q.zeros is not None:
                out["zeros"] = q.zeros
            return out
        if m == "bnb-int8":
            return bnb.quantize_bnb_int8(w)
        return bnb.quantize_bnb4(w, m, self.opts.nested)


def _producer(quantizer: LazyQuantizer, plan: ModulePlan, suffix: str, n_parts: int,
              shape: tuple[int, ...]) -> Callable[[], torch.Tensor]:
    if "quant_state" in suffix:
        return lambda: _fit_quant_state(quantizer.part(plan, suffix, n_parts), shape[0])
    return lambda: quantizer.part(plan, suffix, n_parts)


def _fit_quant_state(t: torch.Tensor, length: int) -> torch.Tensor:
    if t.numel() > length:
        raise SambaYError("internal: bitsandbytes quant_state longer than planned")
    pad = torch.full((length - t.numel(),), ord(" "), dtype=torch.uint8)
    return torch.cat([t.reshape(-1).to(torch.uint8), pad])


# --------------------------------------------------------------------------------------------------------- writing




# ------------------------------------------------------------------------------------------------------- driver


def quantization_config(opts: QuantizeOptions, plans: list[ModulePlan], overrides: dict[str, int],
                        kept_linear: list[str], src_dtype: torch.dtype) -> dict:
    if opts.method in bnb_methods():
        return bnb.bnb_config(opts.method, opts.nested, kept_linear)
    cfg: dict[str, object] = {
        "quant_method": "sambay",
        "format": opts.method,
        "version": QUANT_VERSION,
        "bits": 8 if opts.method == "int8" else 4,
        "modules": [p.name for p in plans],
        "modules_not_quantized": kept_linear,
        "quantize_embeddings": any(p.name == EMBEDDING for p in plans),
        "compute_dtype": str(src_dtype).replace("torch.", ""),
        "rounding": "gptq" if opts.calibration else ("rtn-clip-search" if opts.clip_search else "rtn"),
    }
    if opts.method == "int8":
        cfg["scheme"] = "symmetric per-output-channel; W = qweight * scales[:, None]"
    else:
        cfg.update({
            "group_size": opts.group_size,
            "group_size_overrides": overrides,
            "symmetric": opts.symmetric,
            "packing": "uint8 [out, in/2]: element 2j in the low nibble, 2j+1 in the high nibble; "
                       "W = (code - zero) * scale per group of group_size input columns (zero = 8 when symmetric)",
        })
    return cfg


def quantize_checkpoint(src: str | Path, out: str | Path, opts: QuantizeOptions, *, progress: bool = False,
                        warn: Callable[[str], None] | None = None) -> QuantizeResult:
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    opts.method = check_method(opts.method)
    if opts.method == "int4" and (opts.group_size < 2 or opts.group_size & (opts.group_size - 1)):
        raise SambaYError(f"--group-size must be a power of two ≥ 2 (got {opts.group_size})")
    if opts.method in bnb_methods():
        bnb.require_bitsandbytes()
    src_dir = resolve_model_path(src)
    raw = read_raw_config(src_dir)
    if raw.get("quantization_config"):
        qm = raw["quantization_config"].get("quant_method", "?") if isinstance(raw["quantization_config"], dict) else "?"
        raise SambaYError(f"{src_dir} is already quantized (quant_method {qm!r}); quantize the original checkpoint")
    config = SambaYConfig.from_file(src_dir)
    out_dir = Path(out).expanduser()
    if out_dir.resolve() == src_dir.resolve():
        raise SambaYError("OUT must differ from SRC")
    tensors_list = source_tensors(src_dir)
    tensors = {t.name: t for t in tensors_list}
    plans, overrides, kept = plan_modules(config, tensors, opts, _warn)
    by_weight = {f"{p.name}.weight": p for p in plans}
    all_linear = [n for n, m in build_empty(config).named_modules() if isinstance(m, torch.nn.Linear)]
    kept_linear = [n for n in all_linear if n not in {p.name for p in plans}]
    weight_dtype = tensors[f"{plans[0].name}.weight"].dtype

    handles: dict[Path, object] = {}

    def read(name: str) -> torch.Tensor:
        from safetensors import safe_open

        t = tensors[name]
        if t.file not in handles:
            handles.clear()  # one source shard open at a time
            handles[t.file] = safe_open(str(t.file), framework="pt", device="cpu")
        return handles[t.file].get_tensor(name)

    quantizer = LazyQuantizer(read, opts)
    specs: list[TensorSpec] = []
    for t in tensors_list:
        if t.name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a duplicate of the tied embedding
        plan = by_weight.get(t.name)
        if plan is None:
            specs.append(TensorSpec(t.name, t.shape, t.dtype, _reader(read, t.name)))
            continue
        layout = output_layout(plan, opts.method, opts.symmetric, opts.nested, t.dtype)
        for suffix, shape, dtype in layout:
            specs.append(TensorSpec(f"{plan.name}.{suffix}", shape, dtype,
                                    _producer(quantizer, plan, suffix, len(layout), shape)))
    qcfg = quantization_config(opts, plans, overrides, kept_linear, weight_dtype)
    total = sum(s.nbytes for s in specs)
    bar = _progress(progress, total, opts.method)
    try:
        with atomic_output_dir(out_dir, opts.force) as tmp:
            files = write_safetensors_model(tmp, specs, opts.max_shard_bytes,
                                 (lambda n: bar[0].update(bar[1], advance=n)) if bar else None)
            handles.clear()
            _copy_side_files(src_dir, tmp)
            raw["quantization_config"] = qcfg
            (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    finally:
        handles.clear()
        if bar is not None:
            bar[0].stop()
    source_bytes = sum(f.stat().st_size for f in {t.file for t in tensors_list})
    output_bytes = sum((out_dir / f).stat().st_size for f in files)
    return QuantizeResult(out_dir, opts.method, files, len(plans), kept_linear, overrides, source_bytes,
                          output_bytes, warnings)


def _reader(read: Callable[[str], torch.Tensor], name: str) -> Callable[[], torch.Tensor]:
    return lambda: read(name)


def _copy_side_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix == ".safetensors" or f.name in ("model.safetensors.index.json", "config.json"):
            continue
        shutil.copy2(f, dst / f.name)


def _progress(enabled: bool, total: int, method: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from ..console import err_console

    p = Progress(TextColumn(f"quantizing ({method})"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                 console=err_console, transient=True)
    p.start()
    return p, p.add_task("quantize", total=total)
