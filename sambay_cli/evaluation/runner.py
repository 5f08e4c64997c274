"""`sambay eval`: run lm-eval with the `sambay` model on our tasks (and any lm-eval task), resumably.

Output folder:
  run_config.json  the configuration that produced the samples (a rerun with another one is refused without --force)
  samples.jsonl    one line per sample (journal while running; sorted and scored at the end)
  results.json     lm-eval's results, our metrics per task, configuration, versions, datasets
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SambaYError
from . import distributed
from .metrics import SampleOutcome, aggregate
from .scoring import prompt_opens_think, score
from .store import (
    RESULTS_FILE,
    RUN_CONFIG_FILE,
    SAMPLES_FILE,
    journal_files,
    load_journal,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_samples,
)
from .tasks import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    TASKS,
    canonical_task,
    generation_kwargs,
    published_scores,
    resolve_tasks,
)

LM_TASKS_DIR = Path(__file__).parent / "lm_tasks"


@dataclass
class EvalOptions:
    model: str | None
    tasks: list[str]
    samples: int | None = None  # per problem; None: the task's protocol (64 AIME, 8 MATH-500/GPQA)
    temperature: float | None = None  # None: the task's protocol (0.6 for the paper's tasks, greedy for arith)
    top_p: float | None = None
    max_tokens: int | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int | None = None
    output: Path | None = None
    tokenizer: str | None = None
    device: str | None = None
    dtype: str | None = None
    data_dir: str | None = None
    force: bool = False
    json_out: bool = False
    gpus: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- configuration
def samples_for(task: str, options: EvalOptions) -> int:
    return options.samples if options.samples is not None else TASKS[task].default_samples


def sampling_for(task: str, options: EvalOptions) -> dict[str, Any]:
    """Temperature, top-p and max tokens of one task: the options where given, else the task's protocol."""
    spec = TASKS.get(task)
    return {
        "temperature": options.temperature if options.temperature is not None else
        (spec.temperature if spec else DEFAULT_TEMPERATURE),
        "top_p": options.top_p if options.top_p is not None else (spec.top_p if spec else DEFAULT_TOP_P),
        "max_tokens": options.max_tokens if options.max_tokens is not None else
        (spec.max_tokens if spec else DEFAULT_MAX_TOKENS),
    }


def run_config(options: EvalOptions, ours: list[str], passthrough: list[str], model_info: dict[str, Any],
               datasets: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines the samples (not batch size, device or number of GPUs)."""
    return {
        "model": {"path": model_info.get("path"), "config_sha256": model_info.get("config_sha256")},
        "tokenizer": options.tokenizer,
        "dtype": options.dtype,
        "tasks": ours + passthrough,
        "samples_per_problem": {t: samples_for(t, options) for t in ours},
        "sampling": {t: sampling_for(t, options) for t in ours},
        "temperature": options.temperature,
        "top_p": options.top_p,
        "max_tokens": options.max_tokens,
        "limit": options.limit,
        "seed": options.seed,
        "data_dir": str(Path(options.data_dir).resolve()) if options.data_dir else None,
        "datasets_sha256": {t: info.get("sha256") for t, info in datasets.items()},
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare_output(output: Path, config: dict[str, Any], *, force: bool, rank: int) -> None:
    """Create the output folder or check that it belongs to the same configuration (resume)."""
    previous = read_json(output / RUN_CONFIG_FILE)
    has_samples = bool(journal_files(output))
    if output.exists() and not output.is_dir():
        raise SambaYError(f"--output {output} is a file")
    if previous is not None and previous != config:
        if not force:
            raise SambaYError(
                f"{output} holds a run with another configuration (differs in: {', '.join(_differences(previous, config))}); "
                "use another --output, or --force to discard it"
            )
    elif previous is None and (has_samples or (output / RESULTS_FILE).exists()) and not force:
        raise SambaYError(f"{output} already holds results of an unknown configuration; use --force to replace them")
    distributed.barrier()
    if rank == 0:
        if force and (previous != config or previous is None):
            for path in [*journal_files(output), output / RESULTS_FILE]:
                path.unlink(missing_ok=True)
        write_json_atomic(output / RUN_CONFIG_FILE, config)
    distributed.barrier()


def _default_output(model: str) -> Path:
    return Path("sambay-eval") / Path(model.rstrip("/")).name


# --------------------------------------------------------------------------------------------- scoring & metrics
def score_record(record: dict[str, Any]) -> dict[str, Any]:
    """(Re)score one samples.jsonl line of our tasks with the current scorer."""
    task = canonical_task(str(record["task"]))
    if task is None:
        return record
    verdict = score(TASKS[task].kind, str(record.get("completion", "")), str(record["target"]),
                    think_opened_in_prompt=prompt_opens_think(str(record.get("prompt", ""))))
    updated = dict(record, task=task, extracted=verdict.extracted, correct=verdict.correct)
    updated["truncated"] = verdict.unfinished or record.get("finish_reason") == "length"
    return updated


def task_metrics(records: list[dict[str, Any]], samples_per_problem: dict[str, int] | None = None) -> dict[str, Any]:
    by_task: dict[str, list[SampleOutcome]] = {}
    by_group: dict[str, dict[str, list[SampleOutcome]]] = {}
    for r in sorted(records, key=lambda r: (str(r["task"]), int(r["doc_id"]), int(r.get("sample", 0)))):
        task = canonical_task(str(r["task"]))
        if task is None or r.get("correct") is None:
            continue
        outcome = SampleOutcome(doc_id=int(r["doc_id"]), sample=int(r.get("sample", 0)), correct=bool(r["correct"]),
                                extracted=r.get("extracted"), truncated=bool(r.get("truncated")),
                                tokens=r.get("tokens"))
        by_task.setdefault(task, []).append(outcome)
        if r.get("group") is not None:  # e.g. arith: phrasings seen / unseen in training
            by_group.setdefault(task, {}).setdefault(str(r["group"]), []).append(outcome)
    spp = samples_per_problem or {}
    metrics = {t: aggregate(v, spp.get(t)) for t, v in by_task.items()}
    for t, groups in by_group.items():
        metrics[t]["by_group"] = {g: aggregate(v, spp.get(t)) for g, v in sorted(groups.items())}
    return metrics


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version()}
    for package in ("sambay-cli", "lm-eval", "math-verify", "torch", "datasets"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


# --------------------------------------------------------------------------------------------- lm-eval
def _quiet_lm_eval(verbose: bool) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's request-building bars; ours is the generation bar
    level = logging.INFO if verbose else logging.ERROR
    for name in ("lm_eval", "lm-eval", "datasets"):
        logging.getLogger(name).setLevel(level)


_DEFAULT_MANAGER: list[Any] = []


def _task_manager(include_ours: bool, metadata: dict[str, Any]) -> Any:
    """Our task folder alone (fast), or lm-eval's full registry (indexing it takes ~20 s; built once)."""
    from lm_eval.tasks import TaskManager

    if include_ours:
        return TaskManager(include_path=str(LM_TASKS_DIR), include_defaults=False, metadata=metadata)
    if not _DEFAULT_MANAGER:
        _DEFAULT_MANAGER.append(TaskManager())
    return _DEFAULT_MANAGER[0]


def _load_lm_eval_tasks(names: list[str], *, include_ours: bool, metadata: dict[str, Any]) -> dict[str, Any]:
    manager = _task_manager(include_ours, metadata)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise SambaYError(
            f"unknown task {', '.join(unknown)}: use aime24, aime25, math500, gpqa_diamond, all, or an lm-eval task name"
        )
    return manager.load(names)


def _evaluate(lm: Any, task_dict: dict[str, Any], *, limit: int | None, chat: bool) -> dict[str, Any]:
    from lm_eval.evaluator import evaluate

    lm.chat_template_applied = chat
    result = evaluate(lm, task_dict, limit=limit, log_samples=False, apply_chat_template=chat, bootstrap_iters=100,
                      verbosity="ERROR")
    return result or {}


def run_lm_eval(lm: Any, options: EvalOptions, ours: list[str], passthrough: list[str]) -> dict[str, Any]:
    """lm-eval results of our tasks (chat template, the protocol's sampling) and of the pass-through tasks."""
    merged: dict[str, Any] = {}
    metadata = {"sambay_data_dir": options.data_dir, "sambay_seed": options.seed}
    if ours:
        task_dict = _load_lm_eval_tasks([TASKS[t].lm_eval_name for t in ours], include_ours=True, metadata=metadata)
        for name in ours:
            task = task_dict["tasks"][TASKS[name].lm_eval_name]
            task.set_config("repeats", samples_for(name, options))
            task.set_config("generation_kwargs", generation_kwargs(**sampling_for(name, options)))
        _merge(merged, _evaluate(lm, task_dict, limit=options.limit, chat=True))
    if passthrough:
        task_dict = _load_lm_eval_tasks(passthrough, include_ours=False, metadata={})
        _merge(merged, _evaluate(lm, task_dict, limit=options.limit, chat=False))
    return merged


def _merge(into: dict[str, Any], result: dict[str, Any]) -> None:
    for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "groups"):
        if key in result:
            into.setdefault(key, {}).update(result[key])


# --------------------------------------------------------------------------------------------- the command
def run_eval(options: EvalOptions, *, runtime_factory: Callable[[], Any] | None = None,
             argv: list[str] | None = None) -> dict[str, Any]:
    """The `sambay eval` command. `runtime_factory` (tests) replaces loading the model from options.model."""
    if options.gpus and options.gpus > 1 and not distributed.launched_by_torchrun():
        code = distributed.launch_torchrun(options.gpus, _strip_gpus(argv or []))
        if code != 0:
            raise SambaYError(f"torchrun exited with code {code}")
        return {}
    if not options.model and runtime_factory is None:
        from ..textgen import default_model_dir

        options.model = str(default_model_dir())  # the embedded demo model
    _quiet_lm_eval(verbose=False)
    distributed.init_if_needed(options.device)
    rank, world = distributed.rank_and_world()
    started = time.time()

    ours, passthrough = resolve_tasks(options.tasks)
    if options.limit is not None and options.limit < 1:
        raise SambaYError("--limit must be at least 1")
    if options.samples is not None and options.samples < 1:
        raise SambaYError("--samples must be at least 1")
    if passthrough:  # unknown names fail before a model is loaded
        unknown = [n for n in passthrough if n not in _task_manager(False, {}).all_tasks]
        if unknown:
            raise SambaYError(f"unknown task {', '.join(unknown)}: use aime24, aime25, math500, gpqa_diamond, all, "
                              "or an lm-eval task name")

    from .data import load_task_docs

    datasets = {t: load_task_docs(t, data_dir=options.data_dir, seed=options.seed)[1] for t in ours}
    if runtime_factory is not None:
        runtime = runtime_factory()
    else:
        from .runtime import describe_model, load_runtime, resolve_model

        describe_model(resolve_model(str(options.model)))  # refuse a non-SambaY directory before loading weights
        runtime = load_runtime(str(options.model), tokenizer_dir=options.tokenizer, dtype=options.dtype,
                               device=distributed.local_device(options.device))
    output = options.output or _default_output(options.model or "model")
    config = run_config(options, ours, passthrough, runtime.info, datasets)
    prepare_output(output, config, force=options.force, rank=rank)

    from .lm import SambayLM

    lm = SambayLM(backend=runtime.backend, tokenizer=runtime.tokenizer, model=runtime.model,
                  batch_size=options.batch_size, seed=options.seed, output=output,
                  show_progress=not options.json_out)
    try:
        lm_results = run_lm_eval(lm, options, ours, passthrough)
    finally:
        if lm.journal is not None:
            lm.journal.close()
    distributed.barrier()
    summary: dict[str, Any] = {}
    if rank == 0:
        summary = finalize(output, config, options, ours, runtime.info, datasets, lm_results,
                           generated=lm.generated_count, reused=lm.reused_count, seconds=time.time() - started,
                           world_size=world)
    distributed.barrier()
    return summary


def _strip_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out


def finalize(output: Path, config: dict[str, Any], options: EvalOptions, ours: list[str], model_info: dict[str, Any],
             datasets: dict[str, Any], lm_results: dict[str, Any], *, generated: int, reused: int, seconds: float,
             world_size: int) -> dict[str, Any]:
    """Merge the journals into samples.jsonl, compute our metrics, write results.json (rank 0)."""
    records = [score_record(r) for r in load_journal(output).values()]
    write_samples(output, records)
    metrics = task_metrics(records, {t: samples_for(t, options) for t in ours})
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "run": {"batch_size": options.batch_size, "device": options.device, "world_size": world_size,
                "generated_samples": generated, "reused_samples": reused, "seconds": round(seconds, 3)},
        "model": model_info,
        "versions": versions(),
        "datasets": datasets,
        "metrics": metrics,
        "published_phi4_mini_flash_reasoning": published_scores() if model_info.get("is_phi4_mini_flash") else None,
        "lm_eval": lm_results,
    }
    write_json_atomic(output / RESULTS_FILE, results)
    from .report import print_report

    print_report(results, output, json_out=options.json_out)
    return results


# --------------------------------------------------------------------------------------------- rescore
def rescore(directory: Path, *, json_out: bool = False) -> dict[str, Any]:
    """Re-score samples.jsonl in `directory` with the current scorer; rewrite it and results.json's metrics."""
    path = directory / SAMPLES_FILE
    if not path.is_file():
        raise SambaYError(f"{directory} has no {SAMPLES_FILE} to re-score")
    try:
        raw = read_jsonl(path, strict=True)
    except ValueError as e:
        raise SambaYError(str(e)) from None
    records = []
    next_sample: dict[tuple[str, int], int] = {}
    for number, record in enumerate(raw, 1):
        missing = [k for k in ("task", "doc_id", "completion", "target") if k not in record]
        if missing:
            raise SambaYError(f"{path}:{number}: missing {', '.join(missing)}")
        task = canonical_task(str(record["task"]))
        if task is None:
            raise SambaYError(f"{path}:{number}: unknown task {record['task']!r} (aime24, aime25, math500, gpqa_diamond)")
        try:
            doc_id = int(record["doc_id"])
        except (TypeError, ValueError):
            raise SambaYError(f"{path}:{number}: doc_id must be an integer") from None
        if "sample" not in record:
            record["sample"] = next_sample.get((task, doc_id), 0)
        next_sample[(task, doc_id)] = int(record["sample"]) + 1
        records.append(score_record(dict(record, task=task, doc_id=doc_id)))
    previous = read_json(directory / RESULTS_FILE) or {}
    spp = (previous.get("config") or {}).get("samples_per_problem") or None
    metrics = task_metrics(records, spp)
    write_samples(directory, records, remove_rank_journals=False)
    results = dict(previous)
    results.update(metrics=metrics, rescored=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   versions=versions())
    results.setdefault("config", {})
    write_json_atomic(directory / RESULTS_FILE, results)
    from .report import print_report

    print_report(results, directory, json_out=json_out)
    return results


def options_dict(options: EvalOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


__all__ = ["EvalOptions", "run_eval", "rescore", "finalize", "task_metrics", "score_record"]
