"""samples.jsonl: the append-only journal of finished samples, and its final (sorted, atomic) form.

While a run is in progress each finished sample is appended as one JSON line and flushed, so a crash or `kill -9`
loses at most the samples in flight. A single process appends to `samples.jsonl`; rank r of a multi-GPU run appends
to `samples.rank<r>.jsonl`. Rank 0 merges them into `samples.jsonl` (sorted by task, doc_id, sample) at the end.
A torn last line (the process died mid-write) is ignored when read and cut off before appending.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
RUN_CONFIG_FILE = "run_config.json"

SampleKey = tuple[str, int, int]  # (task, doc_id, sample index)


def sample_key(record: dict[str, Any]) -> SampleKey:
    return (str(record["task"]), int(record["doc_id"]), int(record.get("sample", 0)))


def journal_path(output: Path, rank: int, world_size: int) -> Path:
    return output / (SAMPLES_FILE if world_size <= 1 else f"samples.rank{rank}.jsonl")


def journal_files(output: Path) -> list[Path]:
    files = [output / SAMPLES_FILE] if (output / SAMPLES_FILE).is_file() else []
    return files + sorted(output.glob("samples.rank*.jsonl"))


def read_jsonl(path: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn or corrupt line is skipped (or raises ValueError when strict)."""
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if strict:
                    raise ValueError(f"{path}:{number}: not a JSON line") from None
                continue
            if isinstance(record, dict):
                records.append(record)
            elif strict:
                raise ValueError(f"{path}:{number}: not a JSON object")
    return records


def load_journal(output: Path) -> dict[SampleKey, dict[str, Any]]:
    """Every finished sample recorded under `output` (all journal files; later lines win)."""
    done: dict[SampleKey, dict[str, Any]] = {}
    for path in journal_files(output):
        for record in read_jsonl(path):
            try:
                done[sample_key(record)] = record
            except (KeyError, TypeError, ValueError):
                continue
    return done


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (left by a process killed mid-write)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


class Journal:
    """Appends finished samples to one journal file, one flushed line each."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(path)
        self._file = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_atomic(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_samples(output: Path, records: Iterable[dict[str, Any]], *, remove_rank_journals: bool = True) -> Path:
    """The final samples.jsonl, sorted by (task, doc_id, sample), written atomically."""
    ordered = sorted(records, key=sample_key)
    path = output / SAMPLES_FILE
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    if remove_rank_journals:
        for part in output.glob("samples.rank*.jsonl"):
            part.unlink()
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
