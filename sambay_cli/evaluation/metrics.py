"""Sampling metrics over k samples per problem: avg@k, unbiased pass@k, maj@k, truncation rate, generated tokens.

Every metric is first computed per problem, then averaged over problems; its standard error is the standard error
of that mean over problems (sample standard deviation / sqrt(number of problems)), as lm-eval reports for mean
metrics. Mean generated tokens is averaged over samples, with the standard error over samples.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SampleOutcome:
    """What the metrics need to know about one scored sample."""

    doc_id: int
    sample: int
    correct: bool
    extracted: str | None = None
    truncated: bool = False
    tokens: int | None = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c are correct."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _normalise_answer(answer: str) -> str:
    return "".join(answer.split())


def majority_correct(extracted: Sequence[str | None], correct: Sequence[bool]) -> float:
    """1.0 when the most frequent extracted answer is correct (ties: the answer seen first); samples without an
    answer do not vote. 0.0 when no sample has an answer."""
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    is_correct: dict[str, bool] = {}
    for index, (answer, ok) in enumerate(zip(extracted, correct, strict=True)):
        if answer is None:
            continue
        key = _normalise_answer(answer)
        votes[key] += 1
        first_seen.setdefault(key, index)
        is_correct[key] = is_correct.get(key, False) or ok
    if not votes:
        return 0.0
    best = max(votes, key=lambda key: (votes[key], -first_seen[key]))
    return 1.0 if is_correct[best] else 0.0


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for fewer than two values)."""
    if not values:
        return float("nan"), None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def pass_k_values(k: int) -> list[int]:
    """The k values reported for pass@k: powers of two below k, and k itself."""
    values = [1 << i for i in range(k.bit_length()) if (1 << i) < k]
    return values + [k]


def per_problem_metrics(outcomes: Sequence[SampleOutcome], k: int) -> dict[str, float]:
    """Metrics of one problem from its first k samples (ordered by sample index)."""
    chosen = sorted(outcomes, key=lambda o: o.sample)[:k]
    n = len(chosen)
    c = sum(o.correct for o in chosen)
    metrics = {
        "avg@k": c / n,
        "maj@k": majority_correct([o.extracted for o in chosen], [o.correct for o in chosen]),
        "truncation_rate": sum(o.truncated for o in chosen) / n,
    }
    for kk in pass_k_values(n):
        metrics[f"pass@{kk}"] = pass_at_k(n, c, kk)
    return metrics


def aggregate(outcomes: Iterable[SampleOutcome], samples_per_problem: int | None = None) -> dict[str, Any]:
    """Aggregate the samples of one task. k is `samples_per_problem`, or the smallest number of samples any problem
    has. Returns {metric: value, metric_stderr: se, ...} plus 'k', 'num_problems', 'num_samples'."""
    by_doc: dict[int, list[SampleOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_doc[outcome.doc_id].append(outcome)
    if not by_doc:
        return {"k": 0, "num_problems": 0, "num_samples": 0}
    available = min(len(v) for v in by_doc.values())
    k = min(samples_per_problem, available) if samples_per_problem else available
    per_doc = [per_problem_metrics(v, k) for _, v in sorted(by_doc.items())]
    result: dict[str, Any] = {"k": k, "num_problems": len(per_doc), "num_samples": k * len(per_doc)}
    for name in per_doc[0]:
        mean, se = mean_and_stderr([m[name] for m in per_doc])
        result[name] = mean
        result[f"{name}_stderr"] = se
    result["pass@k"] = result[f"pass@{k}"]
    result["pass@k_stderr"] = result[f"pass@{k}_stderr"]
    tokens = [
        o.tokens for v in by_doc.values() for o in sorted(v, key=lambda o: o.sample)[:k] if o.tokens is not None
    ]
    if tokens:
        mean, se = mean_and_stderr([float(t) for t in tokens])
        result["mean_tokens"] = mean
        result["mean_tokens_stderr"] = se
    return result
