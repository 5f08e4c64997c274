"""Hooks of the sambay_* lm-eval task YAMLs (resolved by lm-eval relative to this folder).

Data options reach `custom_dataset` through lm-eval task metadata: `sambay_data_dir` (a local folder, else the Hub)
and `sambay_seed` (the GPQA choice order).
"""

from __future__ import annotations

from typing import Any

from sambay_cli.evaluation.data import load_task_docs
from sambay_cli.evaluation.metrics import SampleOutcome, per_problem_metrics
from sambay_cli.evaluation.scoring import score


def _dataset(task: str, **metadata: Any) -> dict[str, Any]:
    import datasets

    docs, _ = load_task_docs(task, data_dir=metadata.get("sambay_data_dir"), seed=int(metadata.get("sambay_seed", 0)))
    return {"test": datasets.Dataset.from_list(docs)}


def load_aime24(**metadata: Any) -> dict[str, Any]:
    return _dataset("aime24", **metadata)


def load_aime25(**metadata: Any) -> dict[str, Any]:
    return _dataset("aime25", **metadata)


def load_math500(**metadata: Any) -> dict[str, Any]:
    return _dataset("math500", **metadata)


def load_gpqa_diamond(**metadata: Any) -> dict[str, Any]:
    return _dataset("gpqa_diamond", **metadata)


def load_arith(**metadata: Any) -> dict[str, Any]:
    return _dataset("arith", **metadata)


def keep_all(resps: Any, docs: Any) -> list:
    """Filter that keeps every one of the k samples (lm-eval's default keeps only the first)."""
    return [list(r) for r in resps]


def _process(kind: str, doc: dict[str, Any], results: list) -> dict[str, float]:
    completions = results[0]
    outcomes = []
    for index, completion in enumerate(completions):
        verdict = score(kind, completion, doc["target"])
        outcomes.append(
            SampleOutcome(doc_id=0, sample=index, correct=verdict.correct, extracted=verdict.extracted,
                          truncated=verdict.unfinished)
        )
    metrics = per_problem_metrics(outcomes, len(outcomes))
    return {
        "avg_at_k": metrics["avg@k"],
        "pass_at_k": metrics[f"pass@{len(outcomes)}"],
        "maj_at_k": metrics["maj@k"],
        "truncation_rate": metrics["truncation_rate"],
    }


def process_results_math(doc: dict[str, Any], results: list) -> dict[str, float]:
    return _process("math", doc, results)


def process_results_choice(doc: dict[str, Any], results: list) -> dict[str, float]:
    return _process("choice", doc, results)
