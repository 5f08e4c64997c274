"""`sambay convert`: ArchScale training checkpoints ⇄ Hugging Face SambaY / phi4flash directories."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SambaYError
from . import archscale_config as asc
from .hf_config import archscale_fields_from_hf, generation_config_dict, hf_config_dict
from .mapping import (
    CROSS,
    FULL,
    SWA,
    Folding,
    archscale_from_hf,
    check_tensors_match,
    folding_for,
    hf_plan,
    layer_plan,
    out_dtype_for,
)
from .reader import read_archscale, resolve_source
from .writer import TensorSpec, atomic_output_dir, write_safetensors_model

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
VERIFY_RTOL = 1e-4  # |diff| <= VERIFY_RTOL * max(1, max|reference logits|)


@dataclass
class ConvertResult:
    direction: str
    source: str
    output: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m:
        raise SambaYError(f"cannot parse size {text!r} (examples: 5GB, 500MB, 2GiB)")
    value, unit = float(m.group(1)), m.group(2)
    mult = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}.get(unit)
    if mult is None or value <= 0:
        raise SambaYError(f"cannot parse size {text!r} (examples: 5GB, 500MB, 2GiB)")
    return int(value * mult)


def _check_out_not_in_src(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or (s.is_dir() and s in o.parents):
        raise SambaYError(f"output {out} is inside the source {src}; choose another location")


# ================================================================================================ ArchScale -> HF
def convert_archscale_to_hf(src: Path, out: Path, *, archscale_config: Path | None = None, dtype: str = "bf16",
                            max_shard_size: str = "5GB", tokenizer: str | None = None, verify: bool = False,
                            force: bool = False, show_progress: bool = True) -> ConvertResult:
    src, out = Path(src), Path(out)
    torch_dtype = DTYPES.get(str(dtype).lower())
    if torch_dtype is None:
        raise SambaYError(f"--dtype must be one of bf16, fp16, fp32; got {dtype!r}")
    shard_bytes = parse_size(max_shard_size)
    _check_out_not_in_src(src, out)
    tok_dir = _resolve_tokenizer(tokenizer) if tokenizer else None
    path, pick_note = resolve_source(src)
    ckpt = read_archscale(path)
    result = ConvertResult("archscale->hf", str(path), str(out))
    if pick_note:
        result.notes.append(pick_note)
    cfg = _archscale_config_for(ckpt, archscale_config)
    asc.check_supported(cfg)
    check_tensors_match(cfg, ckpt.layout, ckpt.tensors, f"{path.name} vs {_config_origin(cfg)}")
    _check_tied(cfg, ckpt.tensors, result)
    fold = folding_for(cfg)
    plan = hf_plan(cfg, ckpt.layout, ckpt.tensors, fold, torch_dtype)
    conversion = _conversion_record(cfg, ckpt, fold)
    hf_cfg = hf_config_dict(cfg, conversion, DTYPE_NAMES[torch_dtype])
    specs = [TensorSpec(e.name, e.shape, e.dtype, e.produce) for e in plan]
    total = sum(s.nbytes for s in specs)
    if ckpt.dropped:
        result.notes.append(f"dropped {len(ckpt.dropped)} non-parameter entries (e.g. {ckpt.dropped[0]})")
    t0 = time.time()
    with atomic_output_dir(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config_dict(cfg), indent=2) + "\n",
                                                    encoding="utf-8")
        with _byte_progress(total, f"writing {out.name}", show_progress) as advance:
            files = write_safetensors_model(tmp, specs, shard_bytes, advance)
        if tok_dir is not None:
            files += _copy_tokenizer(tok_dir, tmp)
        if verify:
            result.details["verify"] = verify_conversion(tmp, ckpt.tensors, cfg, ckpt.layout, fold, torch_dtype)
    result.details.update({
        "model_type": hf_cfg["model_type"], "archscale_model": cfg.model_name, "layout": ckpt.layout,
        "config_source": cfg.source, "dtype": DTYPE_NAMES[torch_dtype], "files": files, "bytes_written": total,
        "seconds": round(time.time() - t0, 2), "folded": conversion["folded"],
        "num_parameters": sum(math.prod(s.shape) for s in specs),
    })
    result.notes.extend(cfg.notes)
    return result


def _archscale_config_for(ckpt, archscale_config: Path | None) -> asc.ArchConfig:
    if archscale_config is not None:
        cfg = asc.from_json_file(archscale_config)
    elif ckpt.model_config is not None:
        cfg = asc.from_json_dict(ckpt.model_config, source=f"{ckpt.path.name} model_config", kind="checkpoint")
    elif not ckpt.hparams:
        raise SambaYError(f"{ckpt.path} has no hparams to rebuild the model configuration; pass --archscale-config")
    else:
        return asc.from_hparams(ckpt.hparams, ckpt.layout)
    if "depth_scale" not in cfg.given:
        # v2025 Configs have no depth_scale field: μP++ implied 1/sqrt(2L) residual scaling (unless original_mup)
        cfg.fields["depth_scale"] = bool(cfg["mup"]) and not bool(cfg["original_mup"])
    return cfg


def _config_origin(cfg: asc.ArchConfig) -> str:
    return {"hparams": f"config {cfg.model_name}", "file": "--archscale-config",
            "checkpoint": "embedded model_config"}.get(cfg.source, cfg.source)


def _check_tied(cfg: asc.ArchConfig, t: dict[str, torch.Tensor], result: ConvertResult) -> None:
    if not cfg["tied_embed"] or "lm_head.weight" not in t:
        return
    if not torch.equal(t["lm_head.weight"], t["transformer.wte.weight"]):
        raise SambaYError("config says tied embeddings but lm_head.weight differs from transformer.wte.weight")
    result.notes.append("tied embeddings stored twice in the checkpoint (identical); written once")


def _conversion_record(cfg: asc.ArchConfig, ckpt, fold: Folding) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "tool": "sambay convert",
        "source": ckpt.path.name,
        "archscale_layout": ckpt.layout,
        "archscale_model": cfg.model_name,
        "train_name": cfg.train_name,
        "config_source": cfg.source,
        "mup": bool(cfg["mup"]),
        "folded": {} if fold.is_identity else fold.as_dict(),
    }
    if not fold.is_identity:
        rec["folded_how"] = ("logit_scale multiplies final_layernorm weight/bias; residual_scale multiplies every "
                             "residual-branch output projection (Mamba/GMU/attention out_proj, mlp.fc2); q_scale "
                             "multiplies the query rows of Wqkv so 1/sqrt(head_dim) gives the trained scale")
    if ckpt.layout == "2026" and cfg["attn_bias"]:
        rec["k_bias"] = "zero (the 2026 layout has none; exact, it cancels in the softmax)"
    return rec


# ================================================================================================ verification
def reference_tensors(t: dict[str, torch.Tensor], cfg: asc.ArchConfig, layout: str, fold: Folding,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Source tensors as the output holds them: w_ref = round_dtype(w·f)/f (f = the folded factor), in float32.

    The reference forward applies f at run time, so it sees exactly the output's effective weights while still
    evaluating the original names, layout and scales.
    """
    L, H, G, hs = cfg.n_layer, cfg.n_head, cfg.n_query_groups, cfg.head_size
    plan = layer_plan(L, int(cfg["rnn_per_layer"]))
    out: dict[str, torch.Tensor] = {}
    for name, w in t.items():
        f: float | torch.Tensor = 1.0
        m = re.match(r"^transformer\.h\.(\d+)\.(.*)$", name)
        if name.startswith("transformer.ln_f."):
            f = fold.logit_scale
        elif m:
            kind, rest = plan[int(m.group(1))], m.group(2)
            if rest in ("attn.out_proj.weight", "attn.gmu.out_proj.weight", "mlp.w3.weight", "attn.proj.weight",
                        "attn.proj.bias"):
                f = fold.residual_scale
            elif kind in (SWA, FULL, CROSS) and fold.q_scale != 1.0 and rest.split(".")[-2] in ("attn", "q_proj"):
                f = _q_row_factor(w.shape[0], H, G, hs, fold.q_scale, fused=(layout == "2025" and kind != CROSS
                                                                               and rest.startswith("attn.attn")))
        od = out_dtype_for(name.replace(".da.", ".inner_cross_attn."), dtype)
        wf = w.float()
        if isinstance(f, torch.Tensor):
            f = f.reshape(-1, *([1] * (wf.dim() - 1)))
            out[name] = (wf * f).to(od).float() / f
        elif f != 1.0:
            out[name] = (wf * f).to(od).float() / f
        else:
            out[name] = wf.to(od).float()
    return out


def _q_row_factor(rows: int, H: int, G: int, hs: int, qs: float, fused: bool) -> torch.Tensor:
    f = torch.ones(rows)
    if fused:
        per = H // G
        f = f.reshape(G, per + 2, hs)
        f[:, :per] = qs
        return f.reshape(-1)
    f[: H * hs] = qs
    return f


def verify_conversion(out_dir: Path, source: dict[str, torch.Tensor], cfg: asc.ArchConfig, layout: str,
                      fold: Folding, dtype: torch.dtype, seq_len: int = 24, seed: int = 0) -> dict[str, Any]:
    """Compare the written model's logits with the independent ArchScale-semantics forward; raise beyond tolerance."""
    from .archscale_forward import archscale_logits

    try:
        from ..loading import load_model
    except ImportError:
        raise SambaYError("--verify needs sambay_cli.loading.load_model, which is not available in this build"
                          ) from None
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(cfg["vocab_size"]), (2, seq_len), generator=g)
    with torch.no_grad():
        ref = archscale_logits(reference_tensors(source, cfg, layout, fold, dtype), cfg, layout, ids)
        model = load_model(out_dir, dtype="float32")
        got = _logits_of(model(ids))
    diff = float((got.float() - ref).abs().max())
    tol = VERIFY_RTOL * max(1.0, float(ref.abs().max()))
    report = {"max_abs_diff": diff, "tolerance": tol, "tokens": list(ids.shape), "ok": diff <= tol}
    if not diff <= tol:
        raise SambaYError(f"verification failed: converted logits differ from the ArchScale reference by {diff:.3g} "
                          f"(tolerance {tol:.3g}); nothing was written")
    return report


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise SambaYError("the loaded model returned no logits")


# ================================================================================================ HF -> ArchScale
def convert_hf_to_archscale(src: Path, out: Path, *, layout: str = "2025", force: bool = False,
                            show_progress: bool = True) -> ConvertResult:
    from safetensors.torch import load_file

    from ..config import SambaYConfig

    src, out = Path(src), Path(out)
    if layout not in ("2025", "2026"):
        raise SambaYError(f"--layout must be 2025 or 2026, got {layout!r}")
    if not src.is_dir():
        raise SambaYError(f"--to archscale expects a Hugging Face model directory, got {src}")
    _check_out_not_in_src(src, out)
    hf_cfg = SambaYConfig.from_file(src)
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SambaYError(f"{src} holds no .safetensors weights")
    hf: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            hf.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types
            raise SambaYError(f"cannot read {f.name}: {str(e).splitlines()[0][:200]}") from None
    cfg = asc.ArchConfig(archscale_fields_from_hf(hf_cfg), "hf")
    asc.check_supported(cfg)
    model_name = _registry_name_for(cfg)
    sd, warnings = archscale_from_hf(hf, cfg, layout)
    check_tensors_match(cfg, layout, {k: v for k, v in sd.items() if not (k == "lm_head.weight" and cfg["tied_embed"])},
                        "converted state dict")
    train_name = "converted" + ("_tie" if cfg["tied_embed"] else "")
    seq = int(cfg["block_size"])
    run_name = f"{train_name}_{model_name}_ctx{seq}_swa{int(cfg['local_window'])}"
    depth = cfg.n_layer
    hparams = {"train_config": train_name, "train_name": train_name, "model_name": model_name,
               "train_model": model_name.rsplit("_d", 1)[0], "depth": depth, "seq_len": seq, "ctx_len": seq,
               "swa_len": int(cfg["local_window"]), "local_window": int(cfg["local_window"]), "mup": False,
               "base_hps.d0": 16 if layout == "2025" else 8, "base_hps.hd0": 128, "converted_from": str(src.name)}
    state = {"model": sd, "hparams": hparams, "iter_num": 0, "step_count": 0}
    if model_name.startswith("custom"):
        state["model_config"] = cfg.to_json_dict() | {"name": model_name}
    result = ConvertResult("hf->archscale", str(src), str(out), warnings=warnings)
    with atomic_output_dir(out, force) as tmp:
        run_dir = tmp / run_name
        run_dir.mkdir()
        target = run_dir / "iter-000000-ckpt.pth"
        try:
            torch.save(state, target)
        except OSError as e:
            raise SambaYError(f"cannot write {target.name}: {e}") from None
    result.details.update({"layout": layout, "archscale_model": model_name, "run_dir": run_name,
                           "checkpoint": str(out / run_name / "iter-000000-ckpt.pth"),
                           "embedded_model_config": "model_config" in state})
    return result


def _registry_name_for(cfg: asc.ArchConfig) -> str:
    """The registry name whose shapes equal this model, or custom_d{L} (then the Config is embedded)."""
    keys = ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "padded_vocab_size")
    for name, base in asc.REGISTRY.items():
        ref = asc.ArchConfig(asc.finish_fields(base), "registry")
        same_shape = all(getattr(ref, k) == getattr(cfg, k) for k in keys)
        same_flags = all(ref[k] == cfg[k] for k in ("attn_bias", "attn_out_bias", "use_da", "rnn_per_layer",
                                                     "local_window")) and ref.norm_type == cfg.norm_type
        if same_shape and same_flags and (ref["tied_embed"] is False or cfg["tied_embed"]):
            return name
    return f"custom_d{cfg.n_layer}"


# ================================================================================================ helpers
def _resolve_tokenizer(spec: str) -> Path:
    p = Path(spec).expanduser()
    if p.is_dir():
        if not any((p / f).is_file() for f in TOKENIZER_FILES):
            raise SambaYError(f"--tokenizer {p} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
        return p
    if p.exists() or "/" not in spec or spec.count("/") != 1:
        raise SambaYError(f"--tokenizer {spec!r} is neither a local directory nor a Hugging Face repo id")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, allow_patterns=list(TOKENIZER_FILES), local_files_only=True)
    except Exception:
        raise SambaYError(f"--tokenizer {spec}: not in the local Hugging Face cache (no download is attempted); "
                          "give a local directory") from None
    return Path(local)


def _copy_tokenizer(tok_dir: Path, dest: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        f = tok_dir / name
        if f.is_file():
            shutil.copyfile(f, dest / name)
            copied.append(name)
    return copied


class _byte_progress:
    """A rich progress bar by bytes on stderr (no-op when disabled)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled and sys.stderr.isatty()
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.progress.start()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda n: self.progress.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# ================================================================================================ CLI entry
def run_convert(src: Path, out: Path, *, to: str = "hf", layout: str = "2025", archscale_config: Path | None = None,
                dtype: str = "bf16", max_shard_size: str = "5GB", tokenizer: str | None = None, verify: bool = False,
                force: bool = False, json_out: bool = False) -> None:
    """Run one conversion and print the outcome (one JSON object with --json)."""
    from rich.console import Console

    to = to.lower()
    if to in ("hf", "huggingface"):
        res = convert_archscale_to_hf(src, out, archscale_config=archscale_config, dtype=dtype,
                                      max_shard_size=max_shard_size, tokenizer=tokenizer, verify=verify, force=force,
                                      show_progress=not json_out)
    elif to == "archscale":
        if verify:
            raise SambaYError("--verify applies to ArchScale -> Hugging Face conversions")
        res = convert_hf_to_archscale(src, out, layout=layout, force=force, show_progress=not json_out)
    else:
        raise SambaYError(f"--to must be 'hf' or 'archscale', got {to!r}")
    if json_out:
        print(json.dumps({"direction": res.direction, "source": res.source, "output": res.output,
                          "notes": res.notes, "warnings": res.warnings, **res.details}))
        return
    err = Console(stderr=True)
    for w in res.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    con = Console()
    for n in res.notes:
        con.print(f"  {n}")
    d = res.details
    if res.direction == "archscale->hf":
        folded = ", ".join(f"{k}={v:.6g}" for k, v in d["folded"].items()) or "nothing (standard parametrization)"
        con.print(f"converted {res.source} ({d['layout']} layout, {d['archscale_model'] or 'custom'}) -> "
                  f"{res.output} [model_type {d['model_type']}, {d['dtype']}, {d['num_parameters']:,} parameters, "
                  f"{d['bytes_written'] / 1e9:.2f} GB in {len(d['files'])} files, {d['seconds']} s]")
        con.print(f"  μP++ folded: {folded}")
        if "verify" in d:
            v = d["verify"]
            con.print(f"  verify: max |logit diff| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:.3g}) OK")
    else:
        con.print(f"converted {res.source} -> {d['checkpoint']} ({d['layout']} layout, {d['archscale_model']})")
