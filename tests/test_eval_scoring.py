"""Scorer of `sambay eval`: think handling, last \\boxed{}, Math-Verify equivalence, GPQA letters."""

from __future__ import annotations

import pytest
from math_verify import parse, verify

from sambay_cli.evaluation.scoring import (
    extract_choice_letter,
    last_boxed,
    prompt_opens_think,
    score_choice,
    score_math,
    split_reasoning,
)

# (completion, gold, expected verdict) -- realistic endings of reasoning traces
MATH_CASES = [
    (r"<think>so x=4</think>Thus $\boxed{\frac{14}{3}}$.", r"\frac{14}{3}", True),
    (r"<think>..</think>The answer is $\boxed{\dfrac{14}{3}}$", r"\frac{14}{3}", True),
    (r"</think>$x = \boxed{\frac{1}{\sqrt{2}}}$", r"\frac{\sqrt{2}}{2}", True),  # nested braces
    (r"</think>\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"</think>The point is \boxed{(3,\frac{\pi}{2})}.", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"</think>\boxed{\text{(C)}}", r"\text{(C)}", True),
    (r"</think>Each angle is \boxed{120^\circ}.", "120", True),  # degrees
    (r"</think>The length is \boxed{10\text{ cm}}.", "10", True),  # units
    (r"</think>\boxed{[-2, 7]}", "[-2,7]", True),  # interval
    (r"</think>\boxed{(-2, 7]}", "[-2,7]", False),
    (r"</think>First \boxed{12}, but correcting: \boxed{24}", "24", True),  # the last box counts
    (r"</think>First \boxed{24}, but correcting: \boxed{12}", "24", False),
    (r"</think>\boxed{0204}", "204", True),  # numeric equivalence (string match would say no)
    ("<think>long reasoning</think>The remainder is 24.", "24", True),  # no box: Math-Verify's extraction
    ("No boxed answer and no number here.", "24", False),
    (r"<think>I guess \boxed{24} but let me double-check the case n = 3", "24", False),  # truncated trace
    (r"<think>maybe \boxed{24}</think>Final: \boxed{25}", "24", False),  # box inside the finished trace is ignored
]


@pytest.mark.parametrize(("completion", "gold", "expected"), MATH_CASES)
def test_math_verdicts(completion: str, gold: str, expected: bool) -> None:
    assert score_math(completion, gold).correct is expected


@pytest.mark.parametrize(("completion", "gold", "expected"), [c for c in MATH_CASES if "<think>" not in c[0]
                                                              and c[0].count(r"\boxed") == 1])
def test_single_box_verdicts_agree_with_math_verify(completion: str, gold: str, expected: bool) -> None:
    """With one box and no unfinished trace our verdict is Math-Verify's own on the scored text."""
    answer_text = completion.split("</think>")[-1]
    assert verify(parse(f"${gold}$"), parse(answer_text)) == score_math(completion, gold).correct


def test_math_verify_alone_would_count_a_truncated_trace() -> None:
    """The reason for the unfinished-trace rule: Math-Verify happily extracts a box from an unfinished trace."""
    trace = r"<think>I guess \boxed{24} but let me double-check"
    assert verify(parse("$24$"), parse(trace))
    verdict = score_math(trace, "24")
    assert verdict.unfinished and not verdict.correct and verdict.extracted is None


def test_split_reasoning_rules() -> None:
    assert split_reasoning("<think>a</think>b") == ("b", False)
    assert split_reasoning("<think>a") == (None, True)
    assert split_reasoning("plain") == ("plain", False)
    assert split_reasoning("no tags, prompt opened it", think_opened_in_prompt=True) == (None, True)
    assert prompt_opens_think("<|assistant|><think>\n") and not prompt_opens_think("<|assistant|>")


def test_last_boxed_parsing() -> None:
    assert last_boxed(r"\boxed{\frac{a}{b}} and \boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed 5.") == "5."
    assert last_boxed(r"\boxed{12} then \boxed{unclosed") == "12"
    assert last_boxed("nothing") is None


@pytest.mark.parametrize(
    ("completion", "letter"),
    [
        (r"</think>\boxed{B}", "B"),
        (r"</think>\boxed{(C)}", "C"),
        (r"</think>The answer is $\boxed{\text{D}}$.", "D"),
        (r"</think>\boxed{\textbf{(A)}}", "A"),
        (r"</think>\boxed{b}", "B"),
        (r"</think>\boxed{C) 4.5 eV}", "C"),
        (r"</think>\boxed{A. photon}", "A"),
        ("</think>Answer: C", "C"),
        ("</think>The correct answer is (D).", "D"),
        (r"</think>\boxed{E}", None),
        (r"</think>\boxed{4.5 eV}", None),
        ("</think>I cannot decide.", None),
    ],
)
def test_choice_letters(completion: str, letter: str | None) -> None:
    text = completion.split("</think>")[-1]
    assert extract_choice_letter(text) == letter


def test_choice_verdicts() -> None:
    assert score_choice(r"<think>hmm</think>\boxed{B}", "B").correct
    assert not score_choice(r"<think>hmm</think>\boxed{B}", "C").correct
    unfinished = score_choice(r"<think>it must be \boxed{B}", "B")
    assert unfinished.unfinished and not unfinished.correct
