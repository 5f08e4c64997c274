"""The `sambay` command line: a thin Typer app. Each command parses its options and delegates to the module that
owns the capability; user errors (SambaYError) become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .errors import SambaYError

app = typer.Typer(
    name="sambay",
    help="Toolkit for SambaY models (Phi-4-mini-flash-reasoning): inspect, generate, convert, evaluate, quantize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"sambay {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """Toolkit for SambaY models."""


# ---------------------------------------------------------------------------------------------------------- info
@app.command()
def info(
    path: Path | None = typer.Argument(None, help="Model directory (config.json, optionally safetensors weights), "
                                       "or a Hub id in the local cache. Default: the embedded demo model."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Inspect a checkpoint: config summary, layer map, parameter counts, dtypes, file sizes.

    Works on a folder that holds only config.json (no weights).
    """
    from .info import run_info

    if path is None:
        from .textgen import default_model_dir

        path = default_model_dir()
    run_info(path, json_out=json_out)


# ------------------------------------------------------------------------------------------------------ generate
@app.command()
def generate(
    model: str | None = typer.Argument(
        None, help="Model directory, or a Hub repo id already in the local Hugging Face cache (no download: use "
                   "`sambay pull`). Default: the embedded demo model."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The prompt text (else --prompt-file or stdin)."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", "-f", help="Read the prompt from a file."),
    input_path: Path | None = typer.Option(None, "--input", help="Batch mode: JSONL of {\"id\", \"prompt\"} or "
                                              "{\"id\", \"messages\"} rows."),
    output_path: Path | None = typer.Option(None, "--output", help="Batch mode: JSONL results, appended as rows "
                                               "finish; rerunning skips rows already there."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", "-n", help="Most new tokens (32768 allowed). "
                                             "Default: the model's generation config or card, else 1024."),
    temperature: float | None = typer.Option(None, "--temperature", "-t", help="0 = greedy. Default: the model's "
                                                "generation config; Phi-4-mini-flash-reasoning: 0.6 (model card)."),
    top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling (Phi-4-mini-flash card: 0.95)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Keep the k most likely tokens (0 = off)."),
    min_p: float | None = typer.Option(None, "--min-p", help="Drop tokens below min_p × the top probability."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (reproducible output)."),
    stop: list[str] = typer.Option([], "--stop", help="Stop when this string appears (repeatable)."),
    raw: bool = typer.Option(False, "--raw", help="Send the text as is, without the chat template."),
    system: str | None = typer.Option(None, "--system", help="A system message (Phi-4-mini-flash's card "
                                         "recommends none)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer directory, when MODEL has none."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 / bfloat16 (default: bf16 on GPU, fp32 on "
                                        "CPU)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch mode: prompts decoded together."),
    max_context: int | None = typer.Option(None, "--max-context", help="Refuse prompts whose length plus "
                                              "--max-tokens exceeds this many tokens."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="Storage of the shared KV cache: auto (the "
                                       "model dtype) or fp8 (float8 e4m3: half the long-context memory traffic)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (text, tokens, stats, versions)."),
) -> None:
    """Generate text with exact cached decoding, streaming the answer (reasoning shown dimmed).

    Examples: `sambay generate MODEL -p "What is 37 + 48?"`;
    `sambay generate MODEL --input prompts.jsonl --output out.jsonl`.
    """
    from .textgen import GenerateOptions, run_generate

    code = run_generate(GenerateOptions(
        model=model, prompt=prompt, prompt_file=prompt_file, input_path=input_path, output_path=output_path,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
        stop=list(stop), raw=raw, system=system, tokenizer=tokenizer, device=device, dtype=dtype,
        batch_size=batch_size, max_context=max_context, kv_cache_dtype=kv_cache_dtype, json_out=json_out,
    ))
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------------------------------------------------- pull
@app.command()
def pull(
    repo_id: str = typer.Argument(
        "microsoft/Phi-4-mini-flash-reasoning", help="Hugging Face model repo id (namespace/name)."
    ),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit hash (default: main)."),
    local_dir: Path | None = typer.Option(
        None, "--local-dir", help="Put the files in this folder instead of the Hugging Face cache."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Hugging Face cache (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)."
    ),
    remote_code: bool = typer.Option(
        False, "--include-remote-code", help="Also download the repo's *.py files (never executed by sambay)."
    ),
    include: list[str] = typer.Option(
        [], "--include", help="Extra glob of repo files to download (repeatable), e.g. --include 'README.md'."
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Use the cache only, no network (same as HF_HUB_OFFLINE=1)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --local-dir."),
    force_download: bool = typer.Option(False, "--force-download", help="Download again even if cached."),
    no_verify_hash: bool = typer.Option(
        False, "--no-verify-hash", help="Skip the sha256 check of the weights (headers and index are still checked)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (path, revision, commit, files, bytes)."),
) -> None:
    """Download a model from the Hugging Face Hub: config, generation config, safetensors weights + index and
    tokenizer files only, then verify them; prints the local path.

    Resumes after an interruption (finished files are kept).
    HF_TOKEN authenticates (gated repos); HF_ENDPOINT picks the Hub; HF_HUB_OFFLINE=1 resolves from the cache only.
    """
    from .pull import run_pull

    run_pull(
        repo_id,
        revision=revision,
        local_dir=local_dir,
        cache_dir=cache_dir,
        include_remote_code=remote_code,
        include=include,
        offline=offline,
        force=force,
        force_download=force_download,
        check_hashes=not no_verify_hash,
        json_out=json_out,
    )


# ---------------------------------------------------------------------------------------------------------- convert
@app.command()
def convert(
    src: Path = typer.Argument(..., help="ArchScale iter-*-ckpt.pth or run folder (default direction), or a Hugging "
                                         "Face model directory (with --to archscale)."),
    out: Path = typer.Argument(..., help="Output directory (created atomically; must not exist unless --force)."),
    to: str = typer.Option("hf", "--to", help="Target format: 'hf' (Hugging Face) or 'archscale'."),
    layout: str = typer.Option("2025", "--layout", help="ArchScale layout for --to archscale: 2025 (fused grouped "
                                                         "attn.attn, exact) or 2026 (separate q/k/v, no k bias)."),
    archscale_config: Path | None = typer.Option(None, "--archscale-config", help="JSON of ArchScale's Config "
                                                 "fields, for models outside ArchScale's registry."),
    dtype: str = typer.Option("bf16", "--dtype", help="Output dtype: bf16, fp16 or fp32 (A_log and the λ vectors "
                                                      "stay float32)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer directory to copy (or a Hub id "
                                                                   "already in the local HF cache)."),
    verify: bool = typer.Option(False, "--verify", help="Compare the output's logits with an independent ArchScale "
                                                        "forward on random ids; fail beyond tolerance."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Convert ArchScale training checkpoints (.pth) to Hugging Face format, or back with --to archscale.

    Reads the checkpoint safely (weights_only, memory-mapped; the optimizer state is never loaded), rebuilds the
    configuration from its hparams, folds μP++ scales into standard weights and writes config.json,
    generation_config.json and safetensors shards. See docs/convert.md.
    """
    from .convert import run_convert

    run_convert(src, out, to=to, layout=layout, archscale_config=archscale_config, dtype=dtype,
                max_shard_size=max_shard_size, tokenizer=tokenizer, verify=verify, force=force, json_out=json_out)


# ---------------------------------------------------------------------------------------------------------- eval
@app.command("eval")
def eval_command(
    model: str | None = typer.Argument(None, help="Model directory, or a Hub id already in the local HF cache "
                                                  "(not needed with --rescore)."),
    task: list[str] = typer.Option(["all"], "--task", "-t", help="aime24, aime25, math500, gpqa_diamond, all (the "
                                   "paper's four), arith (the demo model's embedded set, offline), or any lm-eval "
                                   "task name (repeat the option or separate with commas)."),
    samples: int | None = typer.Option(None, "--samples", help="Samples per problem (default: the paper's, 64 for "
                                       "AIME, 8 for MATH-500 and GPQA Diamond)."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (0: greedy). "
                                             "Default: the task's protocol (0.6 for the paper's tasks, 0 for arith)."),
    top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling threshold (default: 0.95; arith 1)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Maximum new tokens per sample (default "
                                          "32,768; arith 256); the prompt is never truncated."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N problems of each task."),
    seed: int = typer.Option(0, "--seed", help="Seed: each sample's seed derives from (seed, task, problem, "
                             "sample); also orders the GPQA choices."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Sequences decoded together (default: the "
                                          "engine's choice)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder (default sambay-eval/<model>); "
                                       "rerunning with the same folder resumes."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer directory (default: the model's)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on "
                                     "CUDA, float32 on CPU)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local benchmark files (<task>.jsonl/.json/"
                                         ".parquet/.csv or <task>/); fully offline. Default: the Hub (cached)."),
    gpus: int | None = typer.Option(None, "--gpus", help="Launch N processes with torchrun (one per GPU)."),
    rescore_dir: Path | None = typer.Option(None, "--rescore", help="Re-score DIR/samples.jsonl with the current "
                                            "scorer and rewrite the metrics; generates nothing."),
    force: bool = typer.Option(False, "--force", help="Discard an existing output made with another configuration."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Evaluate on AIME24, AIME25, MATH-500 and GPQA Diamond with the paper's protocol (through lm-eval).

    Reports avg@k (the paper's Pass@1), pass@k, maj@k, truncation rate and mean generated tokens with standard
    errors; writes results.json and samples.jsonl. Resumable; see docs/eval.md.
    """
    from .evaluation.runner import EvalOptions, rescore, run_eval

    if rescore_dir is not None:
        rescore(rescore_dir, json_out=json_out)
        return
    run_eval(
        EvalOptions(model=model, tasks=task, samples=samples, temperature=temperature, top_p=top_p,
                    max_tokens=max_tokens, limit=limit, seed=seed, batch_size=batch_size, output=output,
                    tokenizer=tokenizer, device=device, dtype=dtype, data_dir=str(data_dir) if data_dir else None,
                    force=force, json_out=json_out, gpus=gpus),
        argv=sys.argv[1:],
    )


# --------------------------------------------------------------------------------------------------------- bench
@app.command()
def bench(
    model: str | None = typer.Argument(None, help="Model directory or cached Hub id (default: --config "
                                       "phi4-mini-flash with random weights)."),
    config: str | None = typer.Option(None, "--config", help="Build a shape with random weights instead: "
                                      "'phi4-mini-flash' (the official 3.8B) or a config.json path. No download."),
    prompt_len: list[str] = typer.Option(["2048"], "--prompt-len", help="Prompt length(s) prefill is timed at "
                                         "(comma-separated or repeated); the cache is sized for the longest."),
    gen_len: int = typer.Option(32768, "--gen-len", help="Generated tokens the cache is sized for."),
    batch: list[str] = typer.Option(["1"], "--batch", help="Batch size(s): repeat or comma-separate, e.g. 1,8,16."),
    contexts: list[int] = typer.Option([], "--context", help="Context length(s) to time decode at (default: 2K, 4K, "
                                       "8K, 16K, 32K within prompt+gen)."),
    steps: int = typer.Option(100, "--steps", help="Decode steps timed at each context."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 / bfloat16 (default: bf16 on GPU, fp32 on CPU)."),
    baseline: str | None = typer.Option(None, "--baseline", help="'dense': also run a dense Phi-4-mini-shaped "
                                        "transformer in Hugging Face transformers on the same device."),
    no_graphs: bool = typer.Option(False, "--no-graphs", help="Decode eagerly instead of replaying CUDA graphs."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="Storage of the shared KV cache: auto (the "
                                       "model dtype) or fp8 (float8 e4m3)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure prefill and decode throughput, memory and bandwidth against the roofline (and a dense baseline).

    Decode at long context is measured by filling the caches synthetically to each context length and timing
    decode steps there; full-generation times are integrated over the measured contexts (said in the output).
    """
    from .bench import parse_batches, run_bench

    if baseline not in (None, "dense"):
        raise SambaYError("--baseline takes 'dense'")
    run_bench(model, config=config, prompt_len=parse_batches(prompt_len), gen_len=gen_len, batches=parse_batches(batch),
              contexts=list(contexts) or None, steps=steps, device=device, dtype=dtype, baseline=baseline,
              graphs=not no_graphs, json_out=json_out, kv_cache_dtype=kv_cache_dtype)


# ------------------------------------------------------------------------------------------------------ quantize
@app.command()
def quantize(
    src: str | None = typer.Argument(None, help="Original model directory (or cached Hub id)."),
    out: str | None = typer.Argument(None, help="Output directory for the quantized model (with --compare: an "
                                     "existing quantized model)."),
    method: str | None = typer.Option(None, "--method", "-m", help="int8 (per-channel), int4 (group-wise), nf4, "
                                      "fp4 (bitsandbytes 4-bit, blocksize 64) or bnb-int8 (LLM.int8)."),
    group_size: int = typer.Option(128, "--group-size", help="int4 group size along the input dimension (power of "
                                   "two); tensors it does not divide fall back to the largest power of two that does."),
    symmetric: bool = typer.Option(False, "--symmetric", help="int4: symmetric (no zero points) instead of "
                                   "asymmetric."),
    strict_group: bool = typer.Option(False, "--strict-group", help="int4: fail instead of falling back to a smaller "
                                      "group."),
    skip: list[str] = typer.Option([], "--skip", help="Keep modules matching this glob in high precision "
                                   "(repeatable), e.g. 'model.layers.16.*'."),
    include: list[str] = typer.Option([], "--include", help="Also quantize modules matching this glob "
                                      "(repeatable), e.g. '*.x_proj'."),
    quantize_embeddings: bool = typer.Option(False, "--quantize-embeddings", help="Also quantize the embedding / "
                                             "tied lm_head (int8/int4 only)."),
    nested: bool = typer.Option(False, "--double-quant", help="nf4/fp4: nested (double) quantization of the "
                                "absmax statistics."),
    clip_search: bool = typer.Option(False, "--clip-search/--no-clip-search", help="int4: shrink each group's "
                                     "range to minimise its squared weight error (off by default: on the demo "
                                     "model it lowered weight error but raised KL; see docs)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="int4/int8: GPTQ error-compensating rounding, "
                                   "calibrated on --calib-text or a built-in sample (loads the model; not streaming). "
                                   "With --report, round-to-nearest is reported too."),
    calib_tokens: int = typer.Option(4096, "--calib-tokens", help="Tokens of calibration text for --calibrate."),
    calib_text: str | None = typer.Option(None, "--calib-text", help="Calibration text file for --calibrate "
                                          "(default: a built-in sample disjoint from the report's)."),
    max_shard_size: str = typer.Option("4GB", "--max-shard-size", help="Largest output shard, e.g. 4GB."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    report: bool = typer.Option(False, "--report", help="After quantizing, compare with the original (KL, top-1 "
                                "agreement, perplexity, per-layer weight error)."),
    compare_only: bool = typer.Option(False, "--compare", help="Only compare SRC with the already quantized OUT."),
    text: str | None = typer.Option(None, "--text", help="Text file for the report's sample (default: built-in)."),
    task: str | None = typer.Option(None, "--task", help="Report task accuracy too: 'arith' (demo arithmetic, "
                                    "greedy)."),
    task_limit: int = typer.Option(150, "--task-limit", help="Problems used by --task."),
    sample_tokens: int = typer.Option(2048, "--sample-tokens", help="Tokens of the text sample the report uses."),
    device: str | None = typer.Option(None, "--device", help="Device for the report (default: cuda when available)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (no progress bars)."),
) -> None:
    """Weight-only quantization of a checkpoint (streaming, atomic), and its quality report.

    Quantized by default: the linear layers of the MLPs, attention, GMUs and Mamba in/out projections. Kept in high
    precision: embeddings/lm_head, norms, A_log, D, conv1d, x_proj, dt_proj, λ and subln. The result loads
    everywhere a model is accepted (generate, eval, bench, info) with the weights kept packed.
    """
    from .quant.command import run_quantize

    run_quantize(src, out, method=method, group_size=group_size, symmetric=symmetric, strict_group=strict_group,
                 skip=skip, include=include, quantize_embeddings=quantize_embeddings, nested=nested,
                 clip_search=clip_search, calibrate=calibrate, calib_tokens=calib_tokens, calib_text=calib_text,
                 max_shard_size=max_shard_size, force=force, report=report, compare_only=compare_only, text=text,
                 task=task, task_limit=task_limit, sample_tokens=sample_tokens, device=device, json_out=json_out)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sambay` console script."""
    try:
        code = app(args=argv, standalone_mode=False)  # non-standalone click returns typer.Exit's code
    except SambaYError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
