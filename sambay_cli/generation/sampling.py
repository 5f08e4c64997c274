"""Next-token selection: greedy, or sampling with temperature, top-k, top-p and min-p.

Each sequence draws from its own ``torch.Generator`` seeded from (seed, sequence index), so what a sequence samples
does not depend on which other sequences share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sequence_seed(seed: int, index: int) -> int:
    """A 63-bit seed for output sequence ``index`` of a run seeded with ``seed`` (SplitMix64 mixing)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, then top-k, top-p and min-p (in that order) to float32 logits [B, V].
    Tokens outside the allowed set get −inf."""
    logits = logits.float() / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, _MASK)
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token is always kept)
        drop_sorted = (cum - probs) >= params.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, _MASK)
    if params.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        threshold = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, _MASK)
    return logits


def select_tokens(
    logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """Pick one token per row of ``logits`` [B, V]. Greedy takes the first maximum."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    for row in range(probs.shape[0]):
        out[row] = torch.multinomial(probs[row], 1, generator=generators[row])[0]
    return out


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
