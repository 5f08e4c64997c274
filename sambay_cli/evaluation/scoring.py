"""Answer extraction and scoring for reasoning completions.

Rules (the paper's protocol, made explicit):

* A completion that opened ``<think>`` (or whose prompt ended in ``<think>``) and never closed it is *unfinished*:
  it is wrong, whatever ``\\boxed{}`` the unfinished reasoning contains.
* When ``</think>`` is present, only the text after the last ``</think>`` is scored.
* Without think tags the whole text is scored.
* The last ``\\boxed{...}`` (or ``\\fbox{...}``) of the scored text is the answer. Math answers are compared with
  the gold answer by Math-Verify (gold first); when no box is present, Math-Verify's own extraction of the scored text
  is used, as lighteval's extractive match does. GPQA answers are one letter A-D, in its usual boxed forms.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
GPQA_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Verdict:
    """The score of one completion."""

    extracted: str | None  # the answer as extracted (None: no answer found or unfinished reasoning)
    correct: bool
    unfinished: bool  # opened <think> and never closed it


def split_reasoning(completion: str, *, think_opened_in_prompt: bool = False) -> tuple[str | None, bool]:
    """Return (text to score, unfinished). The text is None when the reasoning never finished."""
    close = completion.rfind(THINK_CLOSE)
    if close >= 0:
        return completion[close + len(THINK_CLOSE) :], False
    if think_opened_in_prompt or THINK_OPEN in completion:
        return None, True
    return completion, False


def prompt_opens_think(prompt: str) -> bool:
    """True when a prompt (e.g. a chat template's generation prefix) leaves a ``<think>`` block open."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def _read_braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at text[start] == '{', honouring nesting and escaped braces (\\{ \\});
    None when the group never closes."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\, or the first letter of a command)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (nested braces allowed), or ``\\boxed 5``."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        pos = match.end()
        if pos < len(text) and text[pos] == "{":
            content = _read_braced(text, pos)
            if content is not None:
                return content.strip()
        elif match.group(0).endswith(" ") or match.group(0).endswith("\t"):
            word = re.match(r"[^\s$]+", text[pos:])
            if word:
                return word.group(0).strip()
    return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _math_verify_timeouts() -> dict[str, int | None]:
    # Math-Verify's timeouts use signal.alarm, which only works on the main thread.
    return {"parsing_timeout": 5} if _on_main_thread() else {"parsing_timeout": None}


def parse_gold(answer: str) -> list:
    """Parse a gold math answer with Math-Verify (wrapped in $...$ unless it already carries delimiters)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = answer.strip()
    if "$" not in text and "\\boxed" not in text:
        text = f"${text}$"
    return parse(text, [LatexExtractionConfig(), ExprExtractionConfig()], **_math_verify_timeouts())


def _parse_prediction(text: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        text,
        [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        **_math_verify_timeouts(),
    )


def _verify(gold: list, prediction: list) -> bool:
    from math_verify import verify

    timeout = 5 if _on_main_thread() else None
    try:
        return bool(verify(gold, prediction, timeout_seconds=timeout))
    except Exception:  # a pathological expression: count as wrong rather than abort a long run
        return False


def score_math(completion: str, gold: str, *, think_opened_in_prompt: bool = False) -> Verdict:
    """Score a math completion against its gold answer (AIME, MATH-500)."""
    text, unfinished = split_reasoning(completion, think_opened_in_prompt=think_opened_in_prompt)
    if text is None:
        return Verdict(extracted=None, correct=False, unfinished=unfinished)
    boxed = last_boxed(text)
    if boxed is not None:
        prediction = _parse_prediction("\\boxed{" + boxed + "}")
        extracted: str | None = boxed
    else:
        prediction = _parse_prediction(text)
        extracted = str(prediction[-1]) if prediction else None
    if not prediction:
        return Verdict(extracted=extracted, correct=False, unfinished=False)
    return Verdict(extracted=extracted, correct=_verify(parse_gold(str(gold)), prediction), unfinished=False)


_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname)\s*\{([^{}]*)\}")
_LETTER_ONLY = re.compile(r"^[\s(\[{]*([A-Da-d])[\s)\]}]*(?:$|[.:)\s])")
_ANSWER_IS = re.compile(
    r"(?:answer|choice|option)\s*(?:is|:)?\s*:?\s*(?:\*\*)?\s*\(?\s*([A-D])\s*\)?(?![A-Za-z])", re.IGNORECASE
)


def extract_choice_letter(text: str) -> str | None:
    """The chosen letter A-D: from the last \\boxed{} (``B``, ``(B)``, ``\\text{B}``, ``B) text``, ``b``), else from a
    final "answer is (B)" / "Answer: B" phrase. None when there is none."""
    boxed = last_boxed(text)
    if boxed is not None:
        inner = boxed
        for _ in range(3):  # unwrap nested \text{\textbf{B}}
            inner = _LATEX_WRAPPERS.sub(r"\1", inner)
        inner = inner.replace("$", "").strip()
        match = _LETTER_ONLY.match(inner)
        if match:
            return match.group(1).upper()
        return None
    matches = list(_ANSWER_IS.finditer(text))
    return matches[-1].group(1).upper() if matches else None


def score_choice(completion: str, gold_letter: str, *, think_opened_in_prompt: bool = False) -> Verdict:
    """Score a multiple-choice (GPQA) completion against the gold letter."""
    text, unfinished = split_reasoning(completion, think_opened_in_prompt=think_opened_in_prompt)
    if text is None:
        return Verdict(extracted=None, correct=False, unfinished=unfinished)
    letter = extract_choice_letter(text)
    return Verdict(extracted=letter, correct=letter is not None and letter == gold_letter.strip().upper(), unfinished=False)


def score(kind: str, completion: str, gold: str, *, think_opened_in_prompt: bool = False) -> Verdict:
    """Dispatch on the task kind: 'math' or 'choice'."""
    if kind == "choice":
        return score_choice(completion, gold, think_opened_in_prompt=think_opened_in_prompt)
    return score_math(completion, gold, think_opened_in_prompt=think_opened_in_prompt)
