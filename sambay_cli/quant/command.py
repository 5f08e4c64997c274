"""The `sambay quantize` command body (cli.py only parses options)."""

from __future__ import annotations

import json
import re

from ..errors import SambaYError


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise SambaYError(f"cannot read size {text!r} (examples: 4GB, 500MB)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def run_quantize(src: str | None, out: str | None, *, method: str | None, group_size: int, symmetric: bool,
                 strict_group: bool, skip: list[str], include: list[str], quantize_embeddings: bool, nested: bool,
                 clip_search: bool, calibrate: bool, calib_tokens: int, calib_text: str | None,
                 max_shard_size: str, force: bool,
                 report: bool, compare_only: bool, text: str | None, task: str | None, task_limit: int, sample_tokens: int,
                 device: str | None, json_out: bool) -> None:
    from ..console import console, err_console

    if src is None or out is None:
        raise SambaYError("give SRC and OUT (the original and the quantized model directories)")
    result: dict = {}
    if not compare_only:
        if method is None:
            raise SambaYError("--method is required (int8, int4, nf4, fp4 or bnb-int8)")
        from .quantize import QuantizeOptions, check_method, quantize_checkpoint

        opts = QuantizeOptions(method=check_method(method), group_size=group_size, symmetric=symmetric,
                               strict_group=strict_group, include=list(include), skip=list(skip),
                               quantize_embeddings=quantize_embeddings, nested=nested, clip_search=clip_search,
                               max_shard_bytes=parse_size(max_shard_size), force=force)
        if calibrate:
            if opts.method not in ("int4", "int8"):
                raise SambaYError("--calibrate (GPTQ) applies to the int4 and int8 methods")
            from .gptq import calibrate_checkpoint

            if not json_out:
                err_console.print("calibrating (GPTQ): collecting input statistics and quantizing layer by layer …")
            opts.calibration = calibrate_checkpoint(src, opts, text_file=calib_text, max_tokens=calib_tokens,
                                                    progress=not json_out)

        def warn(msg: str) -> None:
            if not json_out:
                err_console.print(f"[yellow]warning:[/yellow] {msg}")

        res = quantize_checkpoint(src, out, opts, progress=not json_out, warn=warn)
        result = {"out": str(res.out), "method": res.method, "files": res.files,
                  "quantized_modules": res.quantized_modules, "kept_linear_modules": res.kept_linear_modules,
                  "group_size_overrides": res.group_size_overrides, "source_bytes": res.source_bytes,
                  "output_bytes": res.output_bytes, "warnings": res.warnings}
        if not json_out:
            console.print(f"wrote {res.out} ({res.method}): {res.quantized_modules} layers quantized, "
                          f"{res.output_bytes / 1e9:.3f} GB (source {res.source_bytes / 1e9:.3f} GB, "
                          f"{res.output_bytes / max(1, res.source_bytes):.1%})")
    if report or compare_only:
        from .report import compare, print_report

        rep = compare(src, out, text_file=text, device=device, task=task, task_limit=task_limit,
                      max_tokens=sample_tokens)
        result["report"] = rep
        if not json_out:
            print_report(rep, console)
        if calibrate and not compare_only:
            result["report_rtn"] = _rtn_report(src, out, opts, text, device, task, task_limit, sample_tokens)
            if not json_out:
                console.print("[bold]round-to-nearest, for comparison:[/bold]")
                print_report(result["report_rtn"], console)
    if json_out:
        print(json.dumps(result, indent=2))


def _rtn_report(src, out, opts, text, device, task, task_limit, sample_tokens) -> dict:
    """The same report for plain round-to-nearest (quantized into a temporary sibling directory, then removed)."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from .quantize import quantize_checkpoint
    from .report import compare

    tmp = Path(tempfile.mkdtemp(prefix=".rtn-", dir=Path(out).expanduser().absolute().parent))
    try:
        rtn_opts = dataclasses.replace(opts, calibration=None, force=True)
        quantize_checkpoint(src, tmp / "rtn", rtn_opts)
        return compare(src, tmp / "rtn", text_file=text, device=device, task=task, task_limit=task_limit,
                       max_tokens=sample_tokens)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
