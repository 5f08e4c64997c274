"""`sambay info`: what a checkpoint is — config summary, layer map, parameter counts, dtypes, file sizes."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from .config import ATTENTION_TYPES, SambaYConfig
from .loading import build_empty, find_weights, read_header, resolve_model_path

_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I8": "int8", "U8": "uint8", "I32": "int32",
              "I64": "int64", "F64": "float64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def collect_info(path: str | Path) -> dict:
    """Everything `sambay info` reports, as a JSON-serialisable dict."""
    directory = resolve_model_path(path)
    config = SambaYConfig.from_file(directory)
    model = build_empty(config)
    types = config.layer_types

    layers = []
    by_type: dict[str, int] = defaultdict(int)
    for i, layer in enumerate(model.model.layers):
        mixer = sum(p.numel() for p in layer.attn.parameters())
        total = sum(p.numel() for p in layer.parameters())
        by_type[types[i]] += mixer
        by_type["mlp+norms"] += total - mixer
        layers.append({
            "index": i,
            "type": types[i],
            "window": config.window_of(i) if types[i] in ATTENTION_TYPES else None,
            "mixer_parameters": mixer,
            "parameters": total,
        })
    embed = model.model.embed_tokens.weight.numel()
    by_type["embedding"] = embed
    if model.lm_head is not None:
        by_type["lm_head"] = model.lm_head.weight.numel()
    by_type["final_norm"] = sum(p.numel() for p in model.model.final_layernorm.parameters())
    total = sum(p.numel() for p in model.parameters())

    info: dict = {
        "path": str(directory),
        "model_type": config.model_type,
        "official_phi4_mini_flash_shape": config.is_official_phi4_mini_flash(),
        "config": {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "sliding_window": config.sliding_window,
            "mamba_d_state": config.mamba_d_state,
            "mamba_d_conv": config.mamba_d_conv,
            "mamba_expand": config.mamba_expand,
            "mamba_dt_rank": config.mamba_dt_rank,
            "norm_type": config.norm_type,
            "differential_attention": config.differential_attention,
            "tie_word_embeddings": config.tie_word_embeddings,
            "memory_layer": config.memory_layer,
            "kv_layer": config.kv_layer,
        },
        "layer_counts": dict(Counter(types)),
        "layers": layers,
        "parameters": {"total": total, "non_embedding": total - embed - by_type.get("lm_head", 0),
                       "by_block_type": dict(by_type)},
        "kv_cache_bytes_per_token": {
            # only layer N/2+1 keeps a growing cache (K and V, G heads × head_dim), at 2 bytes per value in bf16
            "bf16": 2 * config.num_key_value_heads * config.head_dim * 2,
        },
        "weights": None,
        "quantization": _quantization_info(config),
    }
    weights = find_weights(directory, require_shards=False)
    if weights is not None:
        files = []
        dtype_params: dict[str, int] = defaultdict(int)
        for f in weights.files:
            header = read_header(f)
            n_tensors = 0
            for name, t in header.items():
                if name == "__metadata__":
                    continue
                n_tensors += 1
                numel = 1
                for s in t.get("shape", []):
                    numel *= int(s)
                dtype_params[_ST_DTYPES.get(t.get("dtype"), str(t.get("dtype")))] += numel
            files.append({"name": f.name, "bytes": f.stat().st_size, "tensors": n_tensors})
        info["weights"] = {
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files),
            "sharded": len(files) > 1,
            "parameters_by_dtype": dict(dtype_params),
            "index_total_size": weights.index_total_size,
            "index_tensors": len(weights.tensor_file) or None,
            "missing_shards": weights.missing_shards,
        }
    return info


def _quantization_info(config: SambaYConfig) -> dict | None:
    """`sambay quantize` / bitsandbytes: the method in words and the quantization_config (see docs/quantize.md)."""
    qcfg = config.raw.get("quantization_config")
    if not isinstance(qcfg, dict):
        return None
    from .quant.loader import describe

    return {"method": describe(qcfg), "config": qcfg}


def run_info(path: Path, *, json_out: bool) -> None:
    info = collect_info(path)
    if json_out:
        print(json.dumps(info, indent=2))
        return
    _print_tables(info)


def _fmt(n: int) -> str:
    return f"{n:,}"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return str(n)


def _print_tables(info: dict) -> None:
    from rich.table import Table

    from .console import console

    c = info["config"]
    head = Table(title=f"SambaY model — {info['path']}", show_header=False)
    head.add_column("field", style="bold")
    head.add_column("value")
    head.add_row("model_type", info["model_type"])
    head.add_row("official Phi-4-mini-flash shape", "yes" if info["official_phi4_mini_flash_shape"] else "no")
    head.add_row("layers", f"{c['num_hidden_layers']} (memory Mamba at {c['memory_layer']}, shared KV at {c['kv_layer']})")
    head.add_row("hidden / intermediate", f"{c['hidden_size']} / {c['intermediate_size']}")
    head.add_row("heads / kv heads / head_dim", f"{c['num_attention_heads']} / {c['num_key_value_heads']} / {c['head_dim']}")
    head.add_row("vocab", _fmt(c["vocab_size"]))
    head.add_row("sliding window", str(c["sliding_window"]))
    head.add_row("mamba d_state / d_conv / expand / dt_rank",
                 f"{c['mamba_d_state']} / {c['mamba_d_conv']} / {c['mamba_expand']} / {c['mamba_dt_rank']}")
    head.add_row("norm / differential attention / tied",
                 f"{c['norm_type']} / {c['differential_attention']} / {c['tie_word_embeddings']}")
    head.add_row("parameters", f"{_fmt(info['parameters']['total'])} "
                               f"(non-embedding {_fmt(info['parameters']['non_embedding'])})")
    head.add_row("shared KV per token (bf16)", _bytes(info["kv_cache_bytes_per_token"]["bf16"]))
    if info.get("quantization"):  # sambay quantize
        head.add_row("quantization (weight-only)", info["quantization"]["method"])
    console.print(head)

    lt = Table(title="Layer map")
    for col in ("index", "type", "window", "mixer params", "layer params"):
        lt.add_column(col, justify="right" if col != "type" else "left")
    for layer in info["layers"]:
        lt.add_row(str(layer["index"]), layer["type"], "" if layer["window"] is None else str(layer["window"]),
                   _fmt(layer["mixer_parameters"]), _fmt(layer["parameters"]))
    console.print(lt)

    bt = Table(title="Parameters by block type")
    bt.add_column("block")
    bt.add_column("parameters", justify="right")
    bt.add_column("share", justify="right")
    total = info["parameters"]["total"]
    for k, v in info["parameters"]["by_block_type"].items():
        bt.add_row(k, _fmt(v), f"{100 * v / total:.1f}%")
    console.print(bt)

    w = info["weights"]
    if w is None:
        console.print("[dim]no weights in this folder (config only)[/dim]")
        return
    if w["missing_shards"]:
        console.print(f"[yellow]index lists {w['index_tensors']} tensors ({_bytes(w['index_total_size'] or 0)}) in "
                      f"{len(w['missing_shards']) + len(w['files'])} shard(s); {len(w['missing_shards'])} not present"
                      f"[/yellow]")
    ft = Table(title=f"Weights — {_bytes(w['total_bytes'])}")
    ft.add_column("file")
    ft.add_column("size", justify="right")
    ft.add_column("tensors", justify="right")
    for f in w["files"]:
        ft.add_row(f["name"], _bytes(f["bytes"]), str(f["tensors"]))
    console.print(ft)
    dt = Table(title="Stored dtypes")
    dt.add_column("dtype")
    dt.add_column("parameters", justify="right")
    for k, v in w["parameters_by_dtype"].items():
        dt.add_row(k, _fmt(v))
    console.print(dt)
