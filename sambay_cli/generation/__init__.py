"""Cached generation: the engine (prefill, fork, decode), sampling, and generation defaults."""

from .engine import GenerationOutput, generate, model_eos_ids, prefill
from .sampling import SamplingParams, filter_logits, sequence_seed

__all__ = ["generate", "prefill", "GenerationOutput", "SamplingParams", "filter_logits", "sequence_seed",
           "model_eos_ids"]
