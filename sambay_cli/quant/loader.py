"""Loading quantized checkpoints (own int8/int4 and bitsandbytes nf4/fp4/LLM.int8) with the weights kept packed.

``sambay_cli.loading.load_model`` delegates here when config.json has a ``quantization_config``. The model is built
on the meta device; every quantized linear layer is replaced by a :class:`~.modules.QuantLinear` holding its packed
tensors (moved to the target device as they are), everything else is loaded as ``load_model`` does (converted to
the target dtype; ``A_log``, ``D`` and λ in float32). The key set is checked strictly against the config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import SambaYConfig
from ..errors import CheckpointError, SambaYError
from ..loading import _convert, build_empty, check_tensor_names, check_tensor_shapes, find_weights, tensor_locations
from ..model.modeling import SambaYForCausalLM
from . import bnb
from .embedding import QuantEmbeddingWeight
from .modules import QuantLinear
from .policy import EMBEDDING

OWN_SUFFIXES = {"int8": ("qweight", "scales"), "int4": ("qweight", "scales", "zeros")}


def describe(qcfg: dict) -> str:
    if qcfg.get("quant_method") == "bitsandbytes":
        if qcfg.get("load_in_4bit"):
            nested = " (nested)" if qcfg.get("bnb_4bit_use_double_quant") else ""
            return f"bitsandbytes {qcfg.get('bnb_4bit_quant_type', 'fp4')}{nested}"
        return "bitsandbytes LLM.int8"
    fmt = qcfg.get("format", "?")
    if fmt == "int4":
        sym = "symmetric" if qcfg.get("symmetric") else "asymmetric"
        return f"int4 g{qcfg.get('group_size')} {sym}"
    return str(fmt)


def module_formats(qcfg: dict, names: set[str], linear: list[str]) -> dict[str, str]:
    """Module name → stored format, from the quantization_config and the keys present."""
    method = qcfg.get("quant_method")
    if method == "sambay":
        fmt = qcfg.get("format")
        if fmt not in OWN_SUFFIXES:
            raise CheckpointError(f"quantization_config: unknown format {fmt!r}")
        if int(qcfg.get("version", 1)) > 1:
            raise CheckpointError("quantized checkpoint written by a newer sambay (format version "
                                  f"{qcfg.get('version')}); upgrade sambay")
        modules = qcfg.get("modules")
        if not isinstance(modules, list):
            raise CheckpointError("quantization_config has no module list")
        return {m: fmt for m in modules}
    if method == "bitsandbytes":
        out = {}
        for m in linear:
            if f"{m}.weight.quant_state.bitsandbytes__nf4" in names:
                out[m] = "nf4"
            elif f"{m}.weight.quant_state.bitsandbytes__fp4" in names:
                out[m] = "fp4"
            elif f"{m}.SCB" in names:
                out[m] = "bnb-int8"
        return out
    raise SambaYError(f"unsupported quantization_config quant_method {method!r} (sambay reads 'sambay' and "
                      "'bitsandbytes')")


def expected_keys(fmt: str, module: str, names: set[str]) -> list[str]:
    if fmt in OWN_SUFFIXES:
        keys = [f"{module}.qweight", f"{module}.scales"]
        if fmt == "int4" and f"{module}.zeros" in names:
            keys.append(f"{module}.zeros")
        return keys
    if fmt == "bnb-int8":
        return [f"{module}.{s}" for s in bnb.BNB8_SUFFIXES]
    nested = f"{module}.weight.nested_absmax" in names
    return [f"{module}.{s}" for s in bnb.bnb4_suffixes(fmt, nested)]


def load_quantized_model(directory: Path, config: SambaYConfig, *, dtype: torch.dtype, device: torch.device,
                         progress: bool = False) -> SambaYForCausalLM:
    qcfg = config.raw.get("quantization_config")
    if not isinstance(qcfg, dict):
        raise CheckpointError("quantization_config in config.json is not an object")
    weights = find_weights(directory)
    if weights is None:
        raise CheckpointError(f"{directory} has a config.json but no safetensors weights")
    model = build_empty(config)
    found = tensor_locations(weights)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    fmts = module_formats(qcfg, set(found), linear)
    dense_expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    quant_keys: dict[str, str] = {}  # file key → module
    for module, fmt in fmts.items():
        if module != EMBEDDING and module not in linear:
            raise CheckpointError(f"quantization_config names {module}, which is not a linear layer of this model")
        dense_expected.pop(f"{module}.weight", None)
        for k in expected_keys(fmt, module, set(found)):
            quant_keys[k] = module
    names_found = set(found)
    if config.tie_word_embeddings and "lm_head.weight" in names_found and "lm_head.weight" not in dense_expected:
        names_found.discard("lm_head.weight")
    check_tensor_names(set(dense_expected) | set(quant_keys), names_found, "quantized checkpoint")
    check_tensor_shapes(dense_expected, found)

    dense, packed = _read_all(found, dense_expected, quant_keys, dtype, device, progress)
    modules = dict(model.named_modules())
    for module, fmt in fmts.items():
        parts = packed[module]
        if module == EMBEDDING:
            emb = modules[EMBEDDING]
            weight = QuantEmbeddingWeight.from_parts(fmt, parts, emb.num_embeddings, emb.embedding_dim, dtype)
            emb.weight = nn.Parameter(weight, requires_grad=False)
            continue
        old = modules[module]
        bias = dense.pop(f"{module}.bias", None)
        layer = build_layer(fmt, module, parts, old.in_features, old.out_features, bias, dtype)
        if device.type == "cuda":  # int4: the decode kernel's byte order, once, before any CUDA graph is captured
            layer.interleave_for_gpu_()
        parent_name, _, child = module.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, layer)
        dense_expected.pop(f"{module}.bias", None)
    result = model.load_state_dict(dense, strict=False, assign=True)
    leftover = [k for k in result.missing_keys if k in dense_expected]
    if leftover or result.unexpected_keys:
        raise CheckpointError(f"internal: could not place tensors {leftover[:4]} {result.unexpected_keys[:4]}")
    model.eval()
    model.requires_grad_(False)
    model.source_dir = directory  # type: ignore[attr-defined]
    model.quantization = describe(qcfg)  # type: ignore[attr-defined]
    return model


def build_layer(fmt: str, module: str, parts: dict[str, torch.Tensor], in_f: int, out_f: int,
                bias: torch.Tensor | None, dtype: torch.dtype) -> QuantLinear:
    prefix = f"{module}."
    p = {k[len(prefix):]: v for k, v in parts.items()}
    if fmt in OWN_SUFFIXES:
        q, s = p["qweight"], p["scales"]
        if fmt == "int8":
            if tuple(q.shape) != (out_f, in_f) or tuple(s.shape) != (out_f,) or q.dtype != torch.int8:
                raise CheckpointError(f"{module}: int8 tensors have the wrong shape or dtype")
            return QuantLinear("int8", in_f, out_f, {"qweight": q, "scales": s}, bias, dtype)
        if tuple(q.shape) != (out_f, in_f // 2) or q.dtype != torch.uint8 or s.dim() != 2 or s.shape[0] != out_f:
            raise CheckpointError(f"{module}: int4 tensors have the wrong shape or dtype")
        group = in_f // s.shape[1] if s.shape[1] else 0
        if group < 2 or group * s.shape[1] != in_f:
            raise CheckpointError(f"{module}: int4 scales {list(s.shape)} do not fit input width {in_f}")
        tensors = {"qweight": q, "scales": s}
        if "zeros" in p:
            if tuple(p["zeros"].shape) != tuple(s.shape):
                raise CheckpointError(f"{module}: int4 zeros do not match the scales")
            tensors["zeros"] = p["zeros"]
        return QuantLinear("int4", in_f, out_f, tensors, bias, dtype, group_size=group)
    if fmt == "bnb-int8":
        fmt_code = int(p["weight_format"].reshape(-1)[0]) if p["weight_format"].numel() else 0
        if fmt_code != 0:
            raise CheckpointError(f"{module}: only the LLM.int8 'row' weight format is supported")
        return QuantLinear("bnb-int8", in_f, out_f, {"qweight": p["weight"], "SCB": p["SCB"]}, bias, dtype)
    state = bnb.decode_quant_state(p[f"weight.quant_state.bitsandbytes__{fmt}"])
    if list(state.get("shape", [])) != [out_f, in_f]:
        raise CheckpointError(f"{module}: bitsandbytes quant_state shape {state.get('shape')} != {[out_f, in_f]}")
    tensors = {"qweight": p["weight"], "absmax": p["weight.absmax"], "quant_map": p["weight.quant_map"]}
    if "weight.nested_absmax" in p:
        tensors["nested_absmax"] = p["weight.nested_absmax"]
        tensors["nested_quant_map"] = p["weight.nested_quant_map"]
    return QuantLinear(fmt, in_f, out_f, tensors, bias, dtype, bnb_state=state)


def _read_all(found, dense_expected, quant_keys, dtype, device, progress):
    from safetensors import SafetensorError, safe_open

    from ..loading import _progress

    by_file: dict[Path, list[str]] = {}
    for name in list(dense_expected) + list(quant_keys):
        by_file.setdefault(found[name][0], []).append(name)
    dense: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    bar = _progress(progress, sum(len(v) for v in by_file.values()))
    try:
        for f, names in by_file.items():
            try:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    for name in names:
                        t = sf.get_tensor(name)
                        if name in quant_keys:
                            packed.setdefault(quant_keys[name], {})[name] = t.to(device)
                        else:
                            dense[name] = _convert(name, t, dtype, device, False)
                        if bar is not None:
                            bar[0].update(bar[1], advance=1)
            except SafetensorError as e:
                raise CheckpointError(f"{f.name} is corrupt: {e}") from None
    finally:
        if bar is not None:
            bar[0].stop()
    return dense, packed
