"""avg@k, unbiased pass@k, maj@k and their standard errors, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sambay_cli.evaluation.metrics import (
    SampleOutcome,
    aggregate,
    majority_correct,
    mean_and_stderr,
    pass_at_k,
    pass_k_values,
)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(64, 3, 8) == pytest.approx(1 - math.comb(61, 8) / math.comb(64, 8))
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote() -> None:
    assert majority_correct(["5", "7", "7", None], [True, False, False, False]) == 0.0
    assert majority_correct(["5", "5", "7", None], [True, True, False, False]) == 1.0
    assert majority_correct(["7", "5"], [False, True]) == 0.0  # tie: the answer seen first
    assert majority_correct([" 1 /2", "1/2", "3"], [True, True, False]) == 1.0  # whitespace-insensitive
    assert majority_correct([None, None], [False, False]) == 0.0


def test_aggregate_hand_computed() -> None:
    # problem 0: 1 of 4 correct; problem 1: 3 of 4 correct (majority right); problem 2: none
    outcomes = []
    plan = {0: [("24", True), ("7", False), ("7", False), (None, False)],
            1: [("5", True), ("5", True), ("6", False), ("5", True)],
            2: [("1", False), ("2", False), ("3", False), ("4", False)]}
    for doc, samples in plan.items():
        for i, (answer, ok) in enumerate(samples):
            outcomes.append(SampleOutcome(doc, i, ok, answer, truncated=answer is None, tokens=100 * (i + 1)))
    m = aggregate(outcomes)
    assert m["k"] == 4 and m["num_problems"] == 3 and m["num_samples"] == 12
    assert m["avg@k"] == pytest.approx((0.25 + 0.75 + 0) / 3)
    per_doc = [0.25, 0.75, 0.0]
    mean = sum(per_doc) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in per_doc) / 2 / 3)
    assert m["avg@k_stderr"] == pytest.approx(se)
    assert m["pass@4"] == pytest.approx(2 / 3) and m["pass@k"] == m["pass@4"]
    assert m["pass@1"] == pytest.approx(m["avg@k"])  # pass@1 estimator equals avg@k
    assert m["pass@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # 1-C(3,2)/C(4,2)=0.5; 1-C(1,2)/..=1
    assert m["maj@k"] == pytest.approx(1 / 3)
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert m["mean_tokens"] == pytest.approx(250.0)


def test_aggregate_uses_first_k_samples() -> None:
    outcomes = [SampleOutcome(0, i, i == 3) for i in range(4)]
    assert aggregate(outcomes, samples_per_problem=2)["avg@k"] == 0.0
    assert aggregate(outcomes)["avg@k"] == 0.25


def test_helpers() -> None:
    assert pass_k_values(64) == [1, 2, 4, 8, 16, 32, 64]
    assert pass_k_values(6) == [1, 2, 4, 6]
    assert mean_and_stderr([1.0]) == (1.0, None)
    assert aggregate([]) == {"k": 0, "num_problems": 0, "num_samples": 0}
