"""The generation back end of `sambay eval`: a thin protocol over the project's engine (sambay_cli.generation).

Everything the evaluation needs from the engine goes through :class:`GenerationBackend`, so tests can substitute a
scripted engine (sambay_cli.evaluation.fakes) and the pipeline can be checked without a GPU or real weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

OnFinish = Callable[[int, list[int], str], None]


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop_strings: tuple[str, ...] = ()


class GenerationBackend(Protocol):
    """Generates `num_samples` continuations per prompt, each forked from a single prefill of its prompt.

    Output index p * num_samples + k is sample k of prompt p; `on_finish(index, tokens, finish_reason)` is called as
    each sequence finishes ('eos' | 'stop' | 'length'). Returns the (tokens, finish_reasons) lists, prompt-major.
    """

    def generate(
        self,
        prompts: list[list[int]],
        *,
        settings: SamplingSettings,
        num_samples: int,
        sequence_seeds: list[int],
        batch_size: int | None,
        on_finish: OnFinish | None,
    ) -> tuple[list[list[int]], list[str]]: ...


def sequence_seed(seed: int, task: str, doc_id: int, sample: int) -> int:
    """The seed of one sampled sequence, derived from (seed, task, doc_id, sample index) only, so results do not
    depend on batching, resumption or the number of ranks."""
    digest = hashlib.sha256(f"sambay-eval:{seed}:{task}:{doc_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class EngineBackend:
    """The project's cached generation engine (`sambay_cli.generation.generate`)."""

    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: list[int]):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids

    def generate(
        self,
        prompts: list[list[int]],
        *,
        settings: SamplingSettings,
        num_samples: int,
        sequence_seeds: list[int],
        batch_size: int | None,
        on_finish: OnFinish | None,
    ) -> tuple[list[list[int]], list[str]]:
        from ..generation import generate

        result = generate(
            self.model,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=settings.min_p,
            stop_token_ids=self.stop_token_ids,
            stop_strings=list(settings.stop_strings) or None,
            tokenizer=self.tokenizer if settings.stop_strings else None,
            num_samples=num_samples,
            sequence_seeds=sequence_seeds,
            batch_size=batch_size,
            on_finish=on_finish,
        )
        return [list(t) for t in result.tokens], list(result.finish_reasons)
