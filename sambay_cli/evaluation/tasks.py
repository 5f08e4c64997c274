"""The four reasoning benchmarks of the paper and their protocol (prompt, sampling, samples per problem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SambaYError

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Please reason step by step, and put your final choice of one letter from A/B/C/D within \\boxed{}."

# The paper's protocol (arXiv 2507.06607 §3.4): lighteval + Math-Verify, chat template, no system prompt.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 32768


@dataclass(frozen=True)
class HubSource:
    """A Hub dataset commonly used for a benchmark (revision unpinned: it cannot be checked from here)."""

    repo: str
    config: str | None
    split: str
    gated: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the short name used in samples.jsonl and on the command line (aime24)
    kind: str  # 'math' or 'choice'
    default_samples: int
    published_phi4_mini_flash: float | None  # Table 4 of the paper, Pass@1 in percent (None: not a paper task)
    hub_sources: tuple[HubSource, ...]
    description: str
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS
    bundled: str | None = None  # data shipped in the package (relative to sambay_cli/), used without --data-dir
    group_field: str | None = None  # a record field whose values get their own metrics (arith: seen/unseen phrasing)

    @property
    def paper(self) -> bool:
        return self.published_phi4_mini_flash is not None

    @property
    def lm_eval_name(self) -> str:
        return f"sambay_{self.name}"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "aime24",
            "math",
            64,
            52.29,
            (HubSource("HuggingFaceH4/aime_2024", None, "train"), HubSource("Maxwell-Jia/AIME_2024", None, "train")),
            "AIME 2024 (30 problems, integer answers)",
        ),
        TaskSpec(
            "aime25",
            "math",
            64,
            33.59,
            (HubSource("yentinglin/aime_2025", None, "train"), HubSource("math-ai/aime25", None, "test")),
            "AIME 2025 (30 problems, integer answers)",
        ),
        TaskSpec(
            "math500",
            "math",
            8,
            92.45,
            (HubSource("HuggingFaceH4/MATH-500", None, "test"),),
            "MATH-500 (500 competition problems)",
        ),
        TaskSpec(
            "gpqa_diamond",
            "choice",
            8,
            45.08,
            (HubSource("Idavidrein/gpqa", "gpqa_diamond", "train", gated=True),),
            "GPQA Diamond (198 graduate-level multiple-choice questions; gated on the Hub)",
        ),
        TaskSpec(
            "arith",
            "math",
            1,
            None,
            (),
            "Embedded arithmetic reasoning set of the demo model (600 problems, disjoint from its training data; "
            "phrasings seen and unseen in training); greedy, 1 sample, 256 tokens",
            temperature=0.0,
            top_p=1.0,
            max_tokens=256,
            bundled="assets/arith/arith.jsonl",
            group_field="phrasing",
        ),
    )
}

ALIASES = {
    "aime2024": "aime24",
    "aime_2024": "aime24",
    "aime2025": "aime25",
    "aime_2025": "aime25",
    "math_500": "math500",
    "math-500": "math500",
    "gpqa": "gpqa_diamond",
    "gpqa-diamond": "gpqa_diamond",
    "gpqa_d": "gpqa_diamond",
}


def canonical_task(name: str) -> str | None:
    """The short name of one of our tasks (accepts sambay_aime24, aime24 and a few spellings), else None."""
    key = name.strip().lower()
    if key.startswith("sambay_"):
        key = key[len("sambay_") :]
    key = ALIASES.get(key, key)
    return key if key in TASKS else None


def resolve_tasks(names: list[str]) -> tuple[list[str], list[str]]:
    """Split the requested task names into (our tasks, lm-eval pass-through tasks); `all` means our four."""
    ours: list[str] = []
    passthrough: list[str] = []
    for raw in names:
        for name in (part for part in raw.split(",") if part.strip()):
            if name.strip().lower() == "all":  # the paper's four benchmarks
                ours.extend(t for t, spec in TASKS.items() if spec.paper and t not in ours)
                continue
            short = canonical_task(name)
            if short is not None:
                if short not in ours:
                    ours.append(short)
            elif name.strip() not in passthrough:
                passthrough.append(name.strip())
    if not ours and not passthrough:
        raise SambaYError("no task given: use --task aime24|aime25|math500|gpqa_diamond|all or an lm-eval task name")
    return ours, passthrough


def math_prompt(problem: str) -> str:
    """The paper's math prompt: instruction first, then the problem."""
    return f"{MATH_INSTRUCTION} {problem}"


def choice_prompt(question: str, choices: list[str]) -> str:
    """The paper's GPQA prompt: instruction and question, a blank line, then `A) ...` to `D) ...` lines."""
    lines = [f"{letter}) {choice}" for letter, choice in zip("ABCD", choices, strict=True)]
    return f"{CHOICE_INSTRUCTION} {question}\n\n" + "\n".join(lines)


def published_scores() -> dict[str, float]:
    return {name: spec.published_phi4_mini_flash for name, spec in TASKS.items() if spec.paper}


def generation_kwargs(*, temperature: float, top_p: float, max_tokens: int) -> dict[str, Any]:
    """lm-eval generation kwargs for our tasks (do_sample must be explicit or lm-eval forces greedy)."""
    return {
        "until": [],
        "do_sample": temperature > 0,
        "temperature": temperature,
        "top_p": top_p,
        "max_gen_toks": max_tokens,
    }
