"""`sambay generate`: text in, text out, on top of the cached engine (:mod:`sambay_cli.generation`).

Prompt → (chat template) → token ids → engine → streamed text, with the reasoning part (``<think>…</think>``) dimmed,
a stats line, ``--json`` output, and a JSONL batch mode that writes rows as they finish and resumes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import SambaYError

# Phi-4-mini-flash-reasoning's model card: temperature 0.6, top-p 0.95, up to 32,768 new tokens.
PHI4_FLASH_CARD_DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768}
FALLBACK_MAX_NEW_TOKENS = 1024
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass
class SamplingChoice:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_new_tokens: int
    source: str  # where the defaults came from


def default_model_dir() -> Path:
    """The embedded demo model shipped in the package."""
    path = Path(__file__).resolve().parent / "assets" / "demo-model"
    if not (path / "config.json").is_file():
        raise SambaYError("no MODEL given and this installation has no embedded demo model; pass a model directory "
                          "or a Hub id (see `sambay pull`)")
    return path


def model_revision(model_dir: Path) -> dict[str, Any]:
    """What identifies the model's version: the Hub snapshot (when in the HF cache) and a hash of config.json."""
    parts = model_dir.resolve().parts
    revision = parts[-1] if len(parts) >= 2 and parts[-2] == "snapshots" else None
    repo = None
    if revision and len(parts) >= 3 and parts[-3].startswith("models--"):
        repo = parts[-3][len("models--"):].replace("--", "/")
    cfg = model_dir / "config.json"
    digest = hashlib.sha256(cfg.read_bytes()).hexdigest()[:16] if cfg.is_file() else None
    return {"path": str(model_dir), "repo_id": repo, "revision": revision, "config_sha256": digest}


def choose_sampling(model_dir: Path, config, *, temperature, top_p, top_k, min_p, max_new_tokens) -> SamplingChoice:
    """User options first; then the model's generation_config.json sampling fields; then, for the official
    Phi-4-mini-flash shape, its model card (temperature 0.6, top-p 0.95, 32,768 tokens); then greedy."""
    from .tokenizer import load_generation_config

    gen = load_generation_config(model_dir)
    base: dict[str, Any] = {}
    source = "greedy (no sampling defaults in the model)"
    has_sampling = gen is not None and any(
        v is not None for v in (gen.temperature, gen.top_p, gen.top_k, gen.min_p)
    )
    if has_sampling:
        source = "generation_config.json"
        if gen.do_sample is False:
            base["temperature"] = 0.0
        for k in ("temperature", "top_p", "top_k", "min_p", "max_new_tokens"):
            v = getattr(gen, k)
            if v is not None and k not in base:
                base[k] = v
    elif config.is_official_phi4_mini_flash():
        source = "Phi-4-mini-flash-reasoning model card"
        base.update(PHI4_FLASH_CARD_DEFAULTS)
    elif gen is not None and gen.max_new_tokens is not None:
        base["max_new_tokens"] = gen.max_new_tokens
    user = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
            "max_new_tokens": max_new_tokens}
    merged = {**base, **{k: v for k, v in user.items() if v is not None}}
    if not any(user[k] is None for k in base):  # every default was overridden (or there were none)
        source = "command line" if temperature is not None else source
    return SamplingChoice(
        temperature=float(merged.get("temperature", 0.0)),
        top_p=float(merged.get("top_p", 1.0)),
        top_k=int(merged.get("top_k", 0) or 0),
        min_p=float(merged.get("min_p", 0.0) or 0.0),
        max_new_tokens=int(merged.get("max_new_tokens", FALLBACK_MAX_NEW_TOKENS)),
        source=source,
    )


def load_tokenizer(model_dir: Path, tokenizer_dir: Path | None):
    from .tokenizer import Tokenizer

    where = tokenizer_dir or model_dir
    if not (Path(where) / "tokenizer.json").is_file():
        hint = "" if tokenizer_dir else "; pass --tokenizer DIR"
        raise SambaYError(f"no tokenizer.json in {where}{hint}")
    return Tokenizer.from_dir(where)


def encode_prompt(tokenizer, text: str, *, raw: bool, system: str | None) -> list[int]:
    if not text.strip():
        raise SambaYError("the prompt is empty")
    if raw or not tokenizer.chat_template:
        if system:
            raise SambaYError("--system needs the chat template (do not combine it with --raw)")
        ids = tokenizer.encode(text, add_special_tokens=True)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not ids:
        raise SambaYError("the prompt encodes to no tokens")
    return list(ids)


def split_reasoning(text: str) -> tuple[str | None, str, bool]:
    """(reasoning, answer, reasoning_closed) of a completion that may open with <think>."""
    start = text.find(THINK_OPEN)
    if start == -1:
        return None, text, True
    end = text.find(THINK_CLOSE, start)
    if end == -1:
        return text[start + len(THINK_OPEN):], "", False
    return text[start + len(THINK_OPEN):end], text[end + len(THINK_CLOSE):], True


class ThinkStyler:
    """Streams text to the terminal with the reasoning part dimmed; tags split over tokens are handled."""

    def __init__(self, console) -> None:
        self.console = console
        self.inside = False
        self.pending = ""

    def _emit(self, text: str) -> None:
        if text:
            self.console.print(text, style="dim" if self.inside else None, end="", markup=False, highlight=False,
                               soft_wrap=True)

    def feed(self, text: str) -> None:
        self.pending += text
        while True:
            tag = THINK_CLOSE if self.inside else THINK_OPEN
            pos = self.pending.find(tag)
            if pos == -1:
                break
            self._emit(self.pending[:pos])
            self.console.print(tag, style="dim", end="", markup=False, highlight=False)
            self.inside = not self.inside
            self.pending = self.pending[pos + len(tag):]
        # hold back a tail that could be the start of a tag
        hold = 0
        tag = THINK_CLOSE if self.inside else THINK_OPEN
        for n in range(min(len(tag) - 1, len(self.pending)), 0, -1):
            if tag.startswith(self.pending[-n:]):
                hold = n
                break
        self._emit(self.pending[: len(self.pending) - hold])
        self.pending = self.pending[len(self.pending) - hold:]

    def close(self) -> None:
        self._emit(self.pending)
        self.pending = ""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def stats_line(stats: dict, finish_reason: str) -> str:
    return (f"prompt {stats['prompt_tokens']} tok, prefill {stats['prefill_tokens_per_s']:.1f} tok/s | "
            f"generated {stats['generated_tokens']} tok, decode {stats['decode_tokens_per_s']:.1f} tok/s | "
            f"peak memory {_fmt_bytes(stats['peak_memory_bytes'])} | stop: {finish_reason}")


@dataclass
class GenerateOptions:
    model: str | None
    prompt: str | None
    prompt_file: Path | None
    input_path: Path | None
    output_path: Path | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    seed: int | None
    stop: list[str]
    raw: bool
    system: str | None
    tokenizer: Path | None
    device: str | None
    dtype: str | None
    batch_size: int
    max_context: int | None
    json_out: bool
    kv_cache_dtype: str = "auto"


def _read_prompt(opts: GenerateOptions) -> str:
    if opts.prompt is not None and opts.prompt_file is not None:
        raise SambaYError("give either --prompt or --prompt-file, not both")
    if opts.prompt is not None:
        return opts.prompt
    if opts.prompt_file is not None:
        try:
            return opts.prompt_file.read_text(encoding="utf-8")
        except OSError as e:
            raise SambaYError(f"cannot read prompt file {opts.prompt_file}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise SambaYError(f"prompt file {opts.prompt_file} is not UTF-8 text") from None
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise SambaYError("no prompt: use --prompt TEXT, --prompt-file FILE, stdin, or --input FILE.jsonl")


def kv_cache_dtype(name: str):
    """`--kv-cache-dtype`: auto (None: the model dtype) or fp8 (torch.float8_e4m3fn)."""
    import torch

    choices = {"auto": None, "fp8": torch.float8_e4m3fn}
    if name not in choices:
        raise SambaYError(f"--kv-cache-dtype must be auto or fp8, not {name!r}")
    return choices[name]


def _setup(opts: GenerateOptions):
    import torch

    from .loading import configure_cpu_threads, load_model, resolve_model_path

    model_dir = default_model_dir() if opts.model is None else resolve_model_path(opts.model)
    from .config import SambaYConfig

    config = SambaYConfig.from_file(model_dir)
    tokenizer = load_tokenizer(model_dir, opts.tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise SambaYError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    sampling = choose_sampling(model_dir, config, temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                               min_p=opts.min_p, max_new_tokens=opts.max_tokens)
    if sampling.max_new_tokens < 1:
        raise SambaYError("--max-tokens must be at least 1")
    model = load_model(model_dir, dtype=opts.dtype, device=opts.device)
    model.kv_cache_dtype = kv_cache_dtype(opts.kv_cache_dtype)
    configure_cpu_threads(model)
    torch.set_grad_enabled(False)
    return model_dir, model, tokenizer, sampling


def run_generate(opts: GenerateOptions) -> int:
    """Run `sambay generate`; returns the exit code."""
    if opts.input_path is not None or opts.output_path is not None:
        return _run_batch(opts)
    text = _read_prompt(opts)
    if not text.strip():
        raise SambaYError("the prompt is empty")
    model_dir, model, tokenizer, sampling = _setup(opts)
    ids = encode_prompt(tokenizer, text, raw=opts.raw, system=opts.system)
    _check_context(len(ids), sampling.max_new_tokens, opts.max_context)

    from .console import console, err_console
    from .generation import generate, model_eos_ids

    if not opts.json_out and sampling.source not in ("command line",):
        err_console.print(f"[dim]sampling: temperature {sampling.temperature}, top-p {sampling.top_p}, top-k "
                          f"{sampling.top_k}, min-p {sampling.min_p}, max {sampling.max_new_tokens} tokens "
                          f"(defaults from {sampling.source})[/dim]")
    decoder = tokenizer.stream_decoder(skip_special_tokens=True)
    styler = None if opts.json_out else ThinkStyler(console)
    pieces: list[str] = []

    def on_token(_i: int, tok: int) -> None:
        piece = decoder.push(tok)
        pieces.append(piece)
        if styler is not None:
            styler.feed(piece)

    eos = model_eos_ids(model)
    out = generate(model, [ids], max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                   top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p, seed=opts.seed,
                   stop_token_ids=eos, stop_strings=opts.stop or None, tokenizer=tokenizer, on_token=on_token)
    tail = decoder.flush()
    pieces.append(tail)
    completion = "".join(pieces)
    if styler is not None:
        styler.feed(tail)
        styler.close()
    reason = out.finish_reasons[0]
    if opts.stop and reason == "stop":
        completion = _cut_at_stop(completion, opts.stop)
    reasoning, answer, closed = split_reasoning(completion)
    if opts.json_out:
        print(json.dumps({
            "sambay_version": __version__,
            "model": model_revision(model_dir),
            "prompt": text,
            "prompt_token_ids": ids,
            "completion": completion,
            "reasoning": reasoning,
            "answer": answer,
            "reasoning_closed": closed,
            "token_ids": out.tokens[0],
            "finish_reason": reason,
            "truncated": reason == "length",
            "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                         "min_p": sampling.min_p, "max_new_tokens": sampling.max_new_tokens, "seed": opts.seed,
                         "sequence_seed": out.seeds[0] if out.seeds else None, "defaults_from": sampling.source},
            "device": str(model.device),
            "dtype": str(model.dtype).replace("torch.", ""),
            "kv_cache_dtype": str(model.kv_cache_dtype or model.dtype).replace("torch.", ""),
            "stats": out.stats,
        }, ensure_ascii=False))
    else:
        console.print()
        err_console.print(f"[dim]{stats_line(out.stats, reason)}[/dim]")
        if reason == "length":
            err_console.print(f"[yellow]warning: stopped at the token limit ({sampling.max_new_tokens}); the answer "
                              f"may be cut off — raise --max-tokens[/yellow]")
        elif reason == "interrupted":
            err_console.print("[yellow]interrupted: kept what was generated[/yellow]")
    return 130 if out.interrupted else 0


def _check_context(prompt_len: int, max_new: int, max_context: int | None) -> None:
    if max_context is not None and prompt_len + max_new > max_context:
        raise SambaYError(f"the prompt has {prompt_len} tokens; with --max-tokens {max_new} it exceeds the allowed "
                          f"context of {max_context} (--max-context)")


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) + len(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]


# ------------------------------------------------------------------------------------------------- batch mode


def _read_jsonl_prompts(path: Path) -> tuple[list[dict], list[str]]:
    """Rows {"key", "line", "prompt" | "messages", ...} and error lines for lines that are not usable JSON."""
    rows, errors = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SambaYError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SambaYError(f"{path} is not UTF-8 text") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{path}:{n}: not JSON ({e.msg})")
            continue
        if isinstance(obj, str):
            obj = {"prompt": obj}
        if not isinstance(obj, dict) or not (isinstance(obj.get("prompt"), str) or isinstance(obj.get("messages"),
                                                                                               list)):
            errors.append(f"{path}:{n}: needs a \"prompt\" string or a \"messages\" list")
            continue
        key = str(obj.get("id", f"line-{n}"))
        rows.append({**obj, "key": key, "line": n})
    return rows, errors


def _done_keys(output: Path) -> set[str]:
    """Keys of rows already written; a torn last line (killed mid-write) is dropped from the file."""
    if not output.exists():
        return set()
    done, good = set(), []
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
            done.add(str(obj["id"]))
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    output.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    return done


def _run_batch(opts: GenerateOptions) -> int:
    if opts.input_path is None or opts.output_path is None:
        raise SambaYError("batch mode needs both --input FILE.jsonl and --output FILE.jsonl")
    if opts.prompt is not None or opts.prompt_file is not None:
        raise SambaYError("give either --prompt/--prompt-file or --input, not both")
    rows, errors = _read_jsonl_prompts(opts.input_path)
    from .console import err_console

    for e in errors:
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
    done = _done_keys(opts.output_path)
    todo = [r for r in rows if r["key"] not in done]
    if done:
        err_console.print(f"[dim]{len(done)} row(s) already in {opts.output_path}; {len(todo)} to go[/dim]")
    if not todo:
        return 2 if errors else 0
    model_dir, model, tokenizer, sampling = _setup(opts)
    encoded = []
    for r in todo:
        try:
            if "messages" in r:
                ids = tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True)
            else:
                ids = encode_prompt(tokenizer, r["prompt"], raw=opts.raw, system=opts.system)
            _check_context(len(ids), sampling.max_new_tokens, opts.max_context)
        except SambaYError as e:
            errors.append(f"{opts.input_path}:{r['line']}: {e}")
            err_console.print(f"[red]error:[/red] {errors[-1]}", highlight=False)
            continue
        encoded.append((r, list(ids)))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .generation import generate, model_eos_ids

    eos = model_eos_ids(model)
    interrupted = False
    with open(opts.output_path, "a", encoding="utf-8") as fout, Progress(
        TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
        disable=opts.json_out,
    ) as progress:
        task = progress.add_task("rows", total=len(encoded))
        for start in range(0, len(encoded), opts.batch_size):
            chunk = encoded[start:start + opts.batch_size]

            def on_finish(i: int, tokens: list[int], reason: str, chunk=chunk) -> None:
                row, ids = chunk[i]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                if opts.stop and reason == "stop":
                    text = _cut_at_stop(text, opts.stop)
                reasoning, answer, closed = split_reasoning(text)
                record = {"id": row["key"], "line": row["line"], "completion": text, "answer": answer,
                          "reasoning_closed": closed, "finish_reason": reason, "prompt_tokens": len(ids),
                          "generated_tokens": len(tokens)}
                fout.write(json.dumps(record, ensure_ascii=False) + "\n")
                fout.flush()
                progress.advance(task)

            out = generate(model, [ids for _, ids in chunk], max_new_tokens=sampling.max_new_tokens,
                           temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                           min_p=sampling.min_p, seed=opts.seed, stop_token_ids=eos, stop_strings=opts.stop or None,
                           tokenizer=tokenizer, on_finish=on_finish,
                           sequence_seeds=None if opts.seed is None or sampling.temperature == 0 else [
                               _row_seed(opts.seed, row["key"]) for row, _ in chunk])
            if out.interrupted:
                interrupted = True
                break
    if opts.json_out:
        print(json.dumps({"output": str(opts.output_path), "rows_written": len(encoded) if not interrupted else None,
                          "errors": errors, "interrupted": interrupted}))
    if interrupted:
        err_console.print("[yellow]interrupted: finished rows are saved; rerun the same command to continue[/yellow]")
        return 130
    if errors:
        err_console.print(f"[red]error:[/red] {len(errors)} input line(s) could not be used (see above); the rest "
                          f"was generated", highlight=False)
        return 2
    return 0


def _row_seed(seed: int, key: str) -> int:
    """A row's sampling seed depends only on (seed, row id), so reruns and batch sizes do not change samples."""
    from .generation import sequence_seed

    return sequence_seed(seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1)
