"""Decode steps without launch overhead: one CUDA graph per (model, cache, batch size).

A decode step of the eager model is ~300 small kernel launches; replaying a captured graph issues them as one. The
step is graph-safe because everything that changes from step to step lives in device tensors (the position, the key
count, the ring slot) and the Triton kernels read lengths from device memory.

Capture protocol: the first step runs eagerly (it also compiles the Triton kernels), the next is captured and replayed;
capturing executes nothing, so the host-side position counter is restored around it.
"""

from __future__ import annotations

import os

import torch

from .. import kernels


def graphs_enabled(model) -> bool:
    """CUDA graphs need a CUDA model whose decode attention is the graph-safe Triton kernel."""
    if model.device.type != "cuda" or os.environ.get("SAMBAY_CUDA_GRAPHS", "1") == "0":
        return False
    probe = torch.empty(1, device=model.device)
    return kernels.resolve("attention_decode", probe).name == "triton"


class GraphedDecodeStep:
    """Replays one captured decode step for a fixed cache and batch size."""

    def __init__(self, model, cache) -> None:
        self.model = model
        self.cache = cache
        self.batch = cache.batch_size
        self.tokens = torch.zeros(self.batch, 1, dtype=torch.long, device=model.device)
        self.graph = torch.cuda.CUDAGraph()
        seen = cache.seen
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            self.logits = model.run(self.tokens, cache=cache).logits[:, -1]
        cache.seen = seen  # capture recorded the step without running it

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.seen + 1 > self.cache.max_length:
            raise ValueError(f"cache holds {self.cache.max_length} positions; all used")
        self.tokens.copy_(tokens.view(-1, 1))
        self.graph.replay()
        self.cache.seen += 1
        return self.logits
