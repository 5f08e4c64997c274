"""Benchmark data: the project's record schema, local readers and small adapters for the usual Hub layouts.

Record schema (one JSON object per line, see docs/eval.md):

* math tasks (aime24, aime25, math500): ``{"id": str, "problem": str, "answer": str}``
* gpqa_diamond: ``{"id": str, "question": str, "choices": [4 strings], "answer": str}`` where ``answer`` is the
  correct choice's text (or its letter A-D, an index into ``choices``).

GPQA choices are always re-ordered by a permutation seeded by (seed, id); the gold letter is recorded in the
prepared document (``target``) and in every line of samples.jsonl.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from ..errors import SambaYError
from .tasks import TASKS, choice_prompt, math_prompt

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

# Field names of the common Hub layouts, tried in order (the project's own names first).
_ID_FIELDS = ("id", "ID", "unique_id", "Record ID", "problem_id", "idx", "index")
_PROBLEM_FIELDS = ("problem", "Problem", "question", "Question")
_ANSWER_FIELDS = ("answer", "Answer", "Correct Answer", "expected_answer")
_GPQA_INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _first(row: dict[str, Any], fields: tuple[str, ...]) -> Any:
    for name in fields:
        if name in row and row[name] is not None and str(row[name]).strip() != "":
            return row[name]
    return None


def normalise_record(task: str, row: dict[str, Any], position: int, source: str) -> dict[str, Any]:
    """Map one row (project schema or a supported Hub layout) onto the project schema."""
    kind = TASKS[task].kind
    record_id = _first(row, _ID_FIELDS)
    text = _first(row, _PROBLEM_FIELDS)
    answer = _first(row, _ANSWER_FIELDS)
    if text is None or answer is None:
        raise SambaYError(
            f"{source}: row {position} has no {'question' if kind == 'choice' else 'problem'}/answer field "
            f"(fields: {', '.join(sorted(row)) or 'none'}); see docs/eval.md for the record schema"
        )
    record: dict[str, Any] = {"id": str(record_id if record_id is not None else position), "answer": str(answer).strip()}
    group_field = TASKS[task].group_field
    if group_field and row.get(group_field) is not None:
        record[group_field] = str(row[group_field])
    if kind == "math":
        record["problem"] = str(text).strip()
        return record
    choices = row.get("choices")
    if choices is None and all(f in row for f in _GPQA_INCORRECT):
        choices = [row["Correct Answer"], *(row[f] for f in _GPQA_INCORRECT)]
    if not isinstance(choices, (list, tuple)) or len(choices) != 4:
        raise SambaYError(f"{source}: row {position} needs 'choices' with 4 entries (or the GPQA Hub columns)")
    choices = [str(c).strip() for c in choices]
    gold = record["answer"]
    if gold.upper() in "ABCD" and len(gold) == 1 and gold not in choices:
        gold = choices["ABCD".index(gold.upper())]
    if gold not in choices:
        raise SambaYError(f"{source}: row {position}: the answer is not one of its 4 choices")
    record.update(question=str(text).strip(), choices=choices, answer=gold)
    return record


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), None)
            if not isinstance(data, list):
                raise SambaYError(f"{path}: expected a JSON list of records")
            return data
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SambaYError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    except SambaYError:
        raise
    except Exception as e:  # pyarrow errors on a corrupt file
        raise SambaYError(f"{path}: cannot read: {e}") from None
    raise SambaYError(f"{path}: unsupported file type (use {', '.join(DATA_SUFFIXES)})")


def _task_file_names(task: str) -> list[str]:
    names = {task, task.replace("_", "-"), f"sambay_{task}"}
    if task == "gpqa_diamond":
        names |= {"gpqa"}
    if task == "math500":
        names |= {"math_500", "MATH-500"}
    return sorted(names)


def find_task_files(data_dir: Path, task: str) -> list[Path]:
    """`DIR/<task>.(jsonl|json|parquet|csv)`, or the data files inside `DIR/<task>/` (e.g. a Hub snapshot)."""
    for name in _task_file_names(task):
        for suffix in DATA_SUFFIXES:
            candidate = data_dir / f"{name}{suffix}"
            if candidate.is_file():
                return [candidate]
        folder = data_dir / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
            if task == "gpqa_diamond":
                files = [p for p in files if "diamond" in p.name.lower()] or files
            if files:
                return files
    return []


def load_local_records(data_dir: Path, task: str) -> list[dict[str, Any]]:
    if not data_dir.is_dir():
        raise SambaYError(f"--data-dir {data_dir} is not a directory")
    files = find_task_files(data_dir, task)
    if not files:
        raise SambaYError(
            f"--data-dir {data_dir} has no data for {task}: expected {task}.jsonl (or .json/.parquet/.csv) "
            f"or a folder {task}/ holding such files"
        )
    rows: list[tuple[dict[str, Any], str]] = []
    for path in files:
        rows.extend((row, str(path)) for row in _read_rows(path))
    if not rows:
        raise SambaYError(f"{files[0]}: no records for {task}")
    return [normalise_record(task, row, i, source) for i, (row, source) in enumerate(rows)]


def _gated_message(repo: str) -> str:
    return (
        f"{repo} is gated: accept its terms at https://huggingface.co/datasets/{repo}, then log in with "
        "`huggingface-cli login` (or set HF_TOKEN), or export it once and pass --data-dir (see docs/eval.md)"
    )


def load_hub_records(task: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load a benchmark from the first usable Hub source (through `datasets`, honouring HF_*_OFFLINE)."""
    spec = TASKS[task]
    errors: list[str] = []
    for source in spec.hub_sources:
        if source.gated:
            from huggingface_hub import get_token

            if get_token() is None and not os.environ.get("HF_DATASETS_OFFLINE"):
                raise SambaYError(_gated_message(source.repo))
        try:
            import datasets

            dataset = datasets.load_dataset(source.repo, source.config, split=source.split)
        except Exception as e:  # network down, gated, missing from the cache, renamed upstream
            text = str(e)
            if source.gated and any(s in text.lower() for s in ("gated", "401", "403", "unauthorized", "access")):
                raise SambaYError(_gated_message(source.repo)) from None
            errors.append(f"{source.repo}: {text.splitlines()[0] if text else type(e).__name__}")
            continue
        origin = f"hf://{source.repo}" + (f"/{source.config}" if source.config else "")
        records = [normalise_record(task, dict(row), i, origin) for i, row in enumerate(dataset)]
        info = {"source": origin, "split": source.split, "fingerprint": getattr(dataset, "_fingerprint", None)}
        return records, info
    raise SambaYError(
        f"cannot load {task} from the Hub ({'; '.join(errors)}); pass --data-dir with {task}.jsonl to run offline"
    )


def shuffled_choices(record: dict[str, Any], seed: int) -> tuple[list[str], str]:
    """The choices in an order seeded by (seed, record id), and the gold letter."""
    digest = hashlib.sha256(f"gpqa-order:{seed}:{record['id']}".encode()).digest()
    order = list(range(4))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    choices = [record["choices"][i] for i in order]
    return choices, "ABCD"[choices.index(record["answer"])]


def prepare_docs(task: str, records: list[dict[str, Any]], *, seed: int) -> list[dict[str, Any]]:
    """Documents as the lm-eval tasks see them: the record plus `prompt` (the user message) and `target`."""
    docs = []
    for record in records:
        doc = dict(record)
        if TASKS[task].kind == "choice":
            choices, letter = shuffled_choices(record, seed)
            doc.update(choices=choices, target=letter, prompt=choice_prompt(record["question"], choices))
        else:
            doc.update(target=record["answer"], prompt=math_prompt(record["problem"]))
        docs.append(doc)
    return docs


_DOCS_CACHE: dict[tuple[str, str | None, int], tuple[list[dict[str, Any]], dict[str, Any]]] = {}


def load_task_docs(task: str, *, data_dir: str | None, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prepared documents of one task and where they came from (for results.json); cached per process."""
    key = (task, str(data_dir) if data_dir else None, seed)
    if key not in _DOCS_CACHE:
        _DOCS_CACHE[key] = _load_task_docs(task, data_dir=data_dir, seed=seed)
    docs, info = _DOCS_CACHE[key]
    return [dict(d) for d in docs], dict(info)


def _load_task_docs(task: str, *, data_dir: str | None, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    bundled = TASKS[task].bundled
    if data_dir:
        records = load_local_records(Path(data_dir), task)
        files = find_task_files(Path(data_dir), task)
        info: dict[str, Any] = {"source": [str(p) for p in files]}
    elif bundled:
        path = Path(__file__).resolve().parent.parent / bundled
        records = [normalise_record(task, row, i, str(path)) for i, row in enumerate(_read_rows(path))]
        info = {"source": [f"sambay_cli/{bundled} (bundled)"]}
    else:
        records, info = load_hub_records(task)
    docs = prepare_docs(task, records, seed=seed)
    digest = hashlib.sha256(json.dumps([(d["id"], d["prompt"], d["target"]) for d in docs]).encode()).hexdigest()
    info.update(num_docs=len(docs), sha256=digest)
    return docs, info
