"""Test doubles for `sambay eval`: a character-level tokenizer and a scripted generation engine.

They let the whole evaluation pipeline (lm-eval, resumption, sharding, scoring, reports) run on CPU in a fraction of a
second. A completion is chosen by a user function of (prompt text, sequence seed), so outputs are reproducible and
independent of batching, exactly as the real engine's per-sequence seeding promises.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .engine import OnFinish, SamplingSettings

EOS_ID = 3


class CharTokenizer:
    """One token per character (code point + 16); ids below 16 are special. Enough for pipeline tests."""

    eos_token_id = EOS_ID
    chat_template = "<|user|>{content}<|end|><|assistant|>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(ch) + 16 for ch in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i - 16) for i in ids if i >= 16)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False):
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        if add_generation_prompt:
            text += "<|assistant|>"
        return self.encode(text) if tokenize else text


def default_script(prompt: str, rng: random.Random) -> str:
    """A plausible reasoning completion: right or wrong at random, sometimes unfinished."""
    roll = rng.random()
    if roll < 0.15:
        return "<think>Let me think about this for a long time \\boxed{7}"
    answer = "24" if roll < 0.6 else str(rng.randint(0, 999))
    return f"<think>Working it out.</think>The answer is $\\boxed{{{answer}}}$."


class ScriptedEngine:
    """Implements GenerationBackend: completion text = script(prompt text, random.Random(sequence seed))."""

    def __init__(
        self,
        tokenizer: CharTokenizer,
        script: Callable[[str, random.Random], str] = default_script,
        fail_after: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.script = script
        self.fail_after = fail_after  # raise after this many finished sequences (simulates a crash)
        self.finished = 0
        self.calls: list[dict] = []

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
        self.calls.append({"prompts": len(prompts), "num_samples": num_samples, "settings": settings})
        tokens_out: list[list[int]] = []
        reasons: list[str] = []
        for p, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt)
            for k in range(num_samples):
                index = p * num_samples + k
                if self.fail_after is not None and self.finished >= self.fail_after:
                    raise RuntimeError("scripted engine crash")
                completion = self.script(text, random.Random(sequence_seeds[index]))
                ids = self.tokenizer.encode(completion)
                reason = "eos"
                if len(ids) > settings.max_new_tokens:
                    ids, reason = ids[: settings.max_new_tokens], "length"
                tokens_out.append(ids)
                reasons.append(reason)
                self.finished += 1
                if on_finish is not None:
                    on_finish(index, ids, reason)
        return tokens_out, reasons
