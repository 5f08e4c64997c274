"""Synthetic arithmetic problems with compact step-by-step reasoning, in Phi-4-mini-flash-reasoning's style.

A problem is ``(op, a, b)`` with ``op`` one of ``add`` (operands 0-999), ``sub`` (0-999, a >= b so the result is
never negative) or ``mul`` (a two-digit number times a one-digit number 2-9, in either order). The reasoning works
column by column from the right and writes out every carry and borrow::

    <think>457+386: ones 7+6=13, write 3 carry 1; tens 5+8+1=14, write 4 carry 1; hundreds 4+3+1=8, write 8.
    So 457+386=843.</think>The answer is \\boxed{843}.

Questions come in several phrasings. ``TRAIN_PHRASINGS`` are used for training; ``UNSEEN_PHRASINGS`` appear only in
the eval set, to measure how far the model generalises beyond the exact wordings it was trained on. Some training
questions carry the eval framework's math instruction in front (``MATH_INSTRUCTION``), so ``sambay eval`` prompts
are in-distribution.

The eval set is drawn first with its own seed; the training sampler rejects every eval problem (both operand orders
for the commutative ``add`` and ``mul``), so the two are disjoint by construction.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OPS = ("add", "sub", "mul")
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
COLUMN_NAMES = ("ones", "tens", "hundreds", "thousands")
# The eval framework's math prompt prefix (sambay_cli/evaluation/tasks.py MATH_INSTRUCTION), kept in sync by a test.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
INSTRUCTION_RATE = 0.3  # share of training questions that carry MATH_INSTRUCTION in front
# Share of training questions whose wording is replaced by 1-3 random letter "words" around the bare expression
# ("Qzt lop 12 + 7?"): it trains every letter's embedding and teaches the model to read the numbers and the operator
# whatever the surrounding words.
NOISE_RATE = 0.2

TRAIN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("What is {a} + {b}?", "Compute {a} + {b}.", "Calculate {a} plus {b}.", "Find the sum of {a} and {b}.",
            "{a} + {b} = ?"),
    "sub": ("What is {a} - {b}?", "Compute {a} - {b}.", "Calculate {a} minus {b}.",
            "Find the difference {a} - {b}.", "{a} - {b} = ?"),
    "mul": ("What is {a} * {b}?", "What is {a} × {b}?", "Compute {a} times {b}.", "Find the product of {a} and {b}.",
            "{a} * {b} = ?"),
}
UNSEEN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": ("Evaluate {a} + {b}.", "What is {a} plus {b}?", "Work out the sum {a} + {b}."),
    "sub": ("Evaluate {a} - {b}.", "What is {a} minus {b}?", "Work out {a} - {b}."),
    "mul": ("Evaluate {a} × {b}.", "What is {a} times {b}?", "Work out {a} * {b}."),
}

EVAL_SEED = 20250709
EVAL_PER_OP_SEEN = 140
EVAL_PER_OP_UNSEEN = 60  # 3 ops x 200 = 600 problems


@dataclass(frozen=True)
class Problem:
    op: str
    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "add" else self.a - self.b if self.op == "sub" else self.a * self.b

    @property
    def key(self) -> tuple[str, int, int]:
        """Identity for disjointness: operand order does not matter for add and mul."""
        if self.op in ("add", "mul"):
            return (self.op, min(self.a, self.b), max(self.a, self.b))
        return (self.op, self.a, self.b)


# ------------------------------------------------------------------------------------------------ sampling
def _operand(rng: random.Random) -> int:
    """0-999, three-digit numbers most often (weights 1:2:5 for 1, 2 and 3 digits)."""
    digits = rng.choices((1, 2, 3), weights=(1, 2, 5))[0]
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1)


def sample_problem(rng: random.Random, op: str | None = None) -> Problem:
    op = op or rng.choice(OPS)
    if op == "mul":
        two, one = rng.randint(10, 99), rng.randint(2, 9)
        return Problem("mul", two, one) if rng.random() < 0.75 else Problem("mul", one, two)
    a, b = _operand(rng), _operand(rng)
    if op == "sub" and a < b:
        a, b = b, a
    return Problem(op, a, b)


# ----------------------------------------------------------------------------------------------- reasoning
def _digits_right_to_left(n: int, width: int) -> list[int]:
    return [(n // 10 ** i) % 10 for i in range(width)]


def _add_steps(a: int, b: int) -> list[str]:
    width = max(len(str(a)), len(str(b)))
    da, db = _digits_right_to_left(a, width), _digits_right_to_left(b, width)
    steps, carry = [], 0
    for i in range(width):
        total = da[i] + db[i] + carry
        expr = f"{da[i]}+{db[i]}" + (f"+{carry}" if carry else "")
        carry = total // 10
        if carry and i < width - 1:
            steps.append(f"{COLUMN_NAMES[i]} {expr}={total}, write {total % 10} carry 1")
        else:
            steps.append(f"{COLUMN_NAMES[i]} {expr}={total}, write {total}")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    width = len(str(a))
    da, db = _digits_right_to_left(a, width), _digits_right_to_left(b, width)
    steps, borrow = [], 0
    for i in range(width):
        expr = f"{da[i]}-{db[i]}" + (f"-{borrow}" if borrow else "")
        diff = da[i] - db[i] - borrow
        if diff < 0:
            steps.append(f"{COLUMN_NAMES[i]} {expr}<0, borrow: 1{expr}={diff + 10}, write {diff + 10}")
            borrow = 1
        else:
            steps.append(f"{COLUMN_NAMES[i]} {expr}={diff}, write {diff}")
            borrow = 0
    return steps


def _mul_steps(a: int, b: int) -> list[str]:
    """Two-digit × one-digit: a times-table fact per digit, then the carry added in a separate step."""
    two, one = (a, b) if a >= 10 else (b, a)
    tens, ones = divmod(two, 10)
    first = ones * one
    carry = first // 10
    steps = [f"ones {ones}*{one}={first}" + (f", write {first % 10} carry {carry}" if carry else f", write {first}")]
    product = tens * one
    if carry:
        steps.append(f"tens {tens}*{one}={product}, {product}+{carry}={product + carry}, write {product + carry}")
    else:
        steps.append(f"tens {tens}*{one}={product}, write {product}")
    return steps


def reasoning(p: Problem) -> str:
    """The thinking part (without the tags)."""
    sym = SYMBOL[p.op]
    steps = {"add": _add_steps, "sub": _sub_steps, "mul": _mul_steps}[p.op](p.a, p.b)
    return f"{p.a}{sym}{p.b}: " + "; ".join(steps) + f". So {p.a}{sym}{p.b}={p.answer}."


def completion(p: Problem) -> str:
    """The assistant's full reply: reasoning in <think> tags, then the boxed answer."""
    return f"<think>{reasoning(p)}</think>The answer is \\boxed{{{p.answer}}}."


def question(p: Problem, template: str) -> str:
    return template.format(a=p.a, b=p.b)


def chat_prompt(user_text: str) -> str:
    """The Phi-4 chat template's rendering of one user message with the generation prompt."""
    return f"<|user|>{user_text}<|end|><|assistant|>"


def _random_word(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))


def noise_question(p: Problem, rng: random.Random) -> str:
    """The bare expression (symbol operator) wrapped in 1-3 random words: '{w} {a} + {b}.' and similar."""
    words = " ".join(_random_word(rng) for _ in range(rng.randint(1, 3)))
    sym = "×" if p.op == "mul" and rng.random() < 0.3 else SYMBOL[p.op]
    return f"{words.capitalize()} {p.a} {sym} {p.b}{rng.choice(('.', '?', ':', ''))}"


def training_sample(p: Problem, rng: random.Random) -> tuple[str, str]:
    """(prompt, reply) strings of one training sample; the loss covers the reply and its closing <|end|>."""
    if rng.random() < NOISE_RATE:
        text = noise_question(p, rng)
    else:
        text = question(p, rng.choice(TRAIN_PHRASINGS[p.op]))
    if rng.random() < INSTRUCTION_RATE:
        text = f"{MATH_INSTRUCTION} {text}"
    return chat_prompt(text), completion(p) + "<|end|>"


# ------------------------------------------------------------------------------------------------ eval set
def eval_problems(seed: int = EVAL_SEED) -> list[dict]:
    """The embedded ``arith`` eval records: id, problem, answer, op, phrasing ('seen' / 'unseen'), template."""
    rng = random.Random(seed)
    records: list[dict] = []
    used: set[tuple[str, int, int]] = set()
    for op in OPS:
        for phrasing, count, templates in (("seen", EVAL_PER_OP_SEEN, TRAIN_PHRASINGS[op]),
                                          ("unseen", EVAL_PER_OP_UNSEEN, UNSEEN_PHRASINGS[op])):
            made = 0
            while made < count:
                p = sample_problem(rng, op)
                if p.key in used:
                    continue
                used.add(p.key)
                template = templates[made % len(templates)]
                records.append({
                    "id": f"arith-{op}-{phrasing}-{made:03d}",
                    "problem": question(p, template),
                    "answer": str(p.answer),
                    "op": op,
                    "a": p.a,
                    "b": p.b,
                    "phrasing": phrasing,
                    "split": "test",
                    "template": template,
                })
                made += 1
    return records


def eval_keys(records: list[dict]) -> set[tuple[str, int, int]]:
    return {Problem(r["op"], int(r["a"]), int(r["b"])).key for r in records}


def training_stream(seed: int, exclude: set[tuple[str, int, int]]) -> Iterator[tuple[str, str, Problem]]:
    """An endless, seeded stream of (prompt, reply, problem) training samples with no eval problem in it."""
    rng = random.Random(seed)
    while True:
        p = sample_problem(rng)
        if p.key in exclude:
            continue
        prompt, reply = training_sample(p, rng)
        yield prompt, reply, p


def write_jsonl(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


ASSET_EVAL_PATH = Path(__file__).resolve().parents[1] / "assets" / "arith" / "arith.jsonl"
