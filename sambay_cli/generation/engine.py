"""The cached generation engine: batched chunked prefill, forking, and one-token decode steps.

Work is organised in waves of at most ``batch_size`` sequences. A wave left-pads its prompts, prefills them in chunks
of ``prefill_chunk`` positions (all but the last chunk skip the cross-decoder, which keeps no state), forks each
prompt's state into ``num_samples`` sequences (the shared-KV rows of the prompt are copied, the small Mamba/SWA
state too), then decodes one token per step. Sequences that finish are dropped from the batch (their cache rows
are compacted away), so they stop costing compute.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..model.cache import SambaYCache
from ..model.modeling import SambaYForCausalLM
from .cuda_graphs import GraphedDecodeStep, graphs_enabled
from .sampling import SamplingParams, make_generator, select_tokens, sequence_seed


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated ids per output sequence (prompt-major: p * num_samples + k)
    finish_reasons: list[str]  # 'eos' | 'stop' | 'length' | 'interrupted'
    logits: list[torch.Tensor] | None = None  # per sequence, float32 [steps, vocab]
    prompt_tokens: list[int] = field(default_factory=list)  # real prompt length per output sequence
    seeds: list[int] | None = None
    stats: dict = field(default_factory=dict)
    interrupted: bool = False


def model_eos_ids(model: SambaYForCausalLM) -> list[int]:
    """EOS ids from the model directory's generation_config.json, else from config.json."""
    source = getattr(model, "source_dir", None)
    if source is not None:
        from ..tokenizer import load_generation_config

        gen = load_generation_config(source)
        if gen is not None and gen.eos_token_ids:
            return list(gen.eos_token_ids)
    return model.config.eos_token_ids


class _StopStrings:
    """Detects stop strings in a sequence's decoded text, token by token."""

    def __init__(self, tokenizer, stops: Sequence[str]) -> None:
        self.decoder = tokenizer.stream_decoder()
        self.stops = [s for s in stops if s]
        self.tail = ""
        self.keep = max((len(s) for s in self.stops), default=1)

    def push(self, token: int) -> bool:
        self.tail += self.decoder.push(token)
        hit = any(s in self.tail for s in self.stops)
        self.tail = self.tail[-(self.keep + 64):]
        return hit


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.inference_mode()
def generate(
    model: SambaYForCausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    return_logits: bool = False,
    num_samples: int = 1,
    sequence_seeds: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    tokenizer=None,
    batch_size: int | None = None,
    prefill_chunk: int = 2048,
    max_context: int | None = None,
    on_token: Callable[[int, int], None] | None = None,
    on_finish: Callable[[int, list[int], str], None] | None = None,
) -> GenerationOutput:
    """Generate continuations of token-id prompts with the cached engine.

    ``stop_token_ids=None`` stops on the model's EOS ids, ``[]`` never stops early. ``num_samples`` continuations of
    each prompt are forked from one prefill. Output sequence i = p * num_samples + k draws from its own generator
    seeded with ``sequence_seeds[i]`` or ``sequence_seed(seed, i)``. ``on_token(i, token)`` streams tokens;
    ``on_finish(i, tokens, reason)`` is called as each sequence ends. Ctrl-C stops cleanly: the output keeps what
    was generated and marks the unfinished sequences 'interrupted'.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    prompts = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if max_context is not None and len(p) + max_new_tokens > max_context:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with {max_new_tokens} new tokens that exceeds the allowed "
                f"context of {max_context}"
            )
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    stop_ids = set(model_eos_ids(model) if stop_token_ids is None else stop_token_ids)
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer")
    n_out = len(prompts) * num_samples
    if sequence_seeds is not None:
        if len(sequence_seeds) != n_out:
            raise ValueError(f"sequence_seeds needs {n_out} seeds, got {len(sequence_seeds)}")
        seeds = [int(s) for s in sequence_seeds]
    elif params.greedy:
        seeds = None
    else:
        base = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)
        seeds = [sequence_seed(base, i) for i in range(n_out)]

    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batch_size = batch_size or n_out
    capacity = max(num_samples, min(batch_size, n_out))

    out = GenerationOutput(
        tokens=[[] for _ in range(n_out)],
        finish_reasons=["length"] * n_out,
        logits=[[] for _ in range(n_out)] if return_logits else None,  # type: ignore[list-item]
        prompt_tokens=[len(prompts[i // num_samples]) for i in range(n_out)],
        seeds=seeds,
    )
    stats = {"prefill_seconds": 0.0, "decode_seconds": 0.0, "prefill_tokens": 0, "decode_steps": 0,
             "cache_bytes": 0}
    try:
        _Scheduler(model, prompts, num_samples, max_new_tokens, params, seeds, stop_ids, stop_strings, tokenizer,
                   prefill_chunk, capacity, out, stats, on_token, on_finish).run()
    except KeyboardInterrupt:
        out.interrupted = True
        for i in range(n_out):
            if out.finish_reasons[i] == "length" and len(out.tokens[i]) < max_new_tokens:
                out.finish_reasons[i] = "interrupted"
    if return_logits:
        out.logits = [torch.stack(steps) if steps else torch.empty(0, model.config.vocab_size)
                      for steps in out.logits]  # type: ignore[union-attr]
    generated = sum(len(t) for t in out.tokens)
    stats["generated_tokens"] = generated
    stats["prompt_tokens"] = sum(len(p) for p in prompts)
    stats["prefill_tokens_per_s"] = stats["prefill_tokens"] / stats["prefill_seconds"] if stats["prefill_seconds"] else 0.0
    stats["decode_tokens_per_s"] = (
        (generated - n_out) / stats["decode_seconds"] if stats["decode_seconds"] and generated > n_out else 0.0
    )
    if device.type == "cuda":
        stats["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        stats["peak_memory_kind"] = "cuda_allocated"
    else:
        stats["peak_memory_bytes"] = _rss_peak_bytes()
        stats["peak_memory_kind"] = "process_rss"
    out.stats = stats
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def prefill(
    model: SambaYForCausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    chunk: int = 2048,
    pad_id: int = 0,
) -> tuple[SambaYCache, torch.Tensor]:
    """Left-pad and prefill ``prompts`` in chunks; returns (cache sized for ``max_new_tokens`` more, last logits [B, V])."""
    device = model.device
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, longest - len(p):] = True
    ids, mask = ids.to(device), mask.to(device)
    cache = model.new_cache(len(prompts), longest + max_new_tokens)
    logits = None
    for c0 in range(0, longest, chunk):
        c1 = min(c0 + chunk, longest)
        last = c1 == longest
        res = model.run(ids[:, c0:c1], attention_mask=mask[:, c0:c1], cache=cache,
                        logits_to_keep=1 if last else None, compute_logits=last)
        if last:
            logits = res.logits[:, -1]
    return cache, logits


class _Scheduler:
    """Continuous batching: up to ``capacity`` sequences decode together; as sequences finish, waiting prompts are
    prefilled (in groups, chunked) and moved into the freed rows (their state is inserted; each row keeps its own
    position). When nothing is waiting, finished rows are compacted away so they stop costing compute."""

    def __init__(self, model, prompts, num_samples, max_new_tokens, params, seeds, stop_ids, stop_strings, tokenizer,
                 prefill_chunk, capacity, out, stats, on_token, on_finish) -> None:
        self.model = model
        self.prompts = prompts
        self.k = num_samples
        self.max_new = max_new_tokens
        self.params = params
        self.seeds = seeds
        self.stop_ids = stop_ids
        self.stop_strings = stop_strings
        self.tokenizer = tokenizer
        self.chunk = prefill_chunk
        self.capacity = capacity
        self.out = out
        self.stats = stats
        self.on_token = on_token
        self.on_finish = on_finish
        self.device = model.device
        self.waiting = list(range(len(prompts)))[::-1]  # a stack: pop() gives the next prompt in order
        self.pad_id = model.config.pad_token_id if isinstance(model.config.pad_token_id, int) else 0

    def _admit(self, cache, rows, logits, generators, stoppers) -> None:
        """Prefill as many waiting prompts as free rows allow (k rows each) and insert them."""
        free = [r for r, i in enumerate(rows) if i is None]
        take = min(len(self.waiting), len(free) // self.k)
        if take == 0:
            return
        group = [self.waiting.pop() for _ in range(take)]
        _sync(self.device)
        t0 = time.perf_counter()
        gcache, glogits = prefill(self.model, [self.prompts[p] for p in group], 0, chunk=self.chunk,
                                  pad_id=self.pad_id)
        pairs = [(j, sample) for j in range(take) for sample in range(self.k)]  # fork: k sequences per prompt
        src = [j for j, _ in pairs]
        dst = free[: len(src)]
        cache.insert(dst, gcache, src)
        for row in dst:
            self.row_pos[row] = gcache.seen
        logits[torch.tensor(dst, device=self.device)] = glogits[torch.tensor(src, device=self.device)].float()
        del gcache
        _sync(self.device)
        self.stats["prefill_seconds"] += time.perf_counter() - t0
        self.stats["prefill_tokens"] += sum(len(self.prompts[p]) for p in group)
        for row, (j, sample) in zip(dst, pairs, strict=True):
            i = group[j] * self.k + sample
            rows[row] = i
            if self.seeds is not None:
                generators[row] = make_generator(self.seeds[i], self.device)
            if self.stop_strings:
                stoppers[i] = _StopStrings(self.tokenizer, self.stop_strings)

    def _record(self, i: int, tok: int, logits_row, stoppers) -> str | None:
        out = self.out
        out.tokens[i].append(tok)
        if out.logits is not None:
            out.logits[i].append(logits_row.to(device="cpu", dtype=torch.float32, copy=True))
        if self.on_token is not None:
            self.on_token(i, tok)
        if tok in self.stop_ids:
            return "eos"
        if i in stoppers and stoppers[i].push(tok):
            return "stop"
        if len(out.tokens[i]) >= self.max_new:
            return "length"
        return None

    def _sample(self, sample_rows, rows, logits, tokens, generators, stoppers) -> list[int]:
        """Choose the next token of ``sample_rows`` from their logits, record it, and return the rows that ended."""
        act = torch.tensor(sample_rows, device=self.device)
        chosen = select_tokens(logits.index_select(0, act), self.params,
                               [generators[r] for r in sample_rows] if self.seeds is not None else None)
        tokens[act] = chosen
        finished = []
        for r, tok in zip(sample_rows, chosen.tolist(), strict=True):
            i = rows[r]
            reason = self._record(i, tok, logits[r], stoppers)
            if reason is not None:
                self.out.finish_reasons[i] = reason
                finished.append(r)
                if self.on_finish is not None:
                    self.on_finish(i, self.out.tokens[i], reason)
        return finished

    def run(self) -> None:
        model, device = self.model, self.device
        longest = max(len(p) for p in self.prompts)
        cache = model.new_cache(self.capacity, longest + self.max_new)
        rows: list[int | None] = [None] * self.capacity
        logits = torch.zeros(self.capacity, model.config.vocab_size, device=device)
        generators: list = [None] * self.capacity
        stoppers: dict[int, _StopStrings] = {}
        self.row_pos = [0] * self.capacity  # host copy of each row's position (rows advance together)
        self.stats["cache_bytes"] = max(self.stats["cache_bytes"], cache.nbytes())
        self._admit(cache, rows, logits, generators, stoppers)
        if self.max_new == 0:
            return
        use_graphs = graphs_enabled(model)
        graphed: GraphedDecodeStep | None = None
        decode_t, steps = 0.0, 0
        while True:
            t0 = time.perf_counter()
            tokens = torch.zeros(len(rows), dtype=torch.long, device=device)
            to_sample = [r for r, i in enumerate(rows) if i is not None]
            shrink = False
            while to_sample:  # rows admitted into freed slots sample their first token in the same round
                finished = self._sample(to_sample, rows, logits, tokens, generators, stoppers)
                to_sample = []
                if finished:
                    for r in finished:
                        rows[r] = None
                        generators[r] = None
                        self.row_pos[r] = 0
                    cache.park(finished)
                    if self.waiting:
                        before = {r for r, i in enumerate(rows) if i is not None}
                        decode_t += time.perf_counter() - t0
                        self._admit(cache, rows, logits, generators, stoppers)
                        t0 = time.perf_counter()
                        to_sample = [r for r, i in enumerate(rows) if i is not None and r not in before]
                    else:
                        shrink = True
            if not any(i is not None for i in rows):
                decode_t += time.perf_counter() - t0
                break
            if shrink:  # nothing waiting: drop finished rows so they stop costing compute
                kept = [r for r, i in enumerate(rows) if i is not None]
                keep = torch.tensor(kept, device=device)
                cache.compact(keep)
                tokens = tokens.index_select(0, keep)
                logits = logits.index_select(0, keep)
                rows = [rows[r] for r in kept]
                generators = [generators[r] for r in kept]
                self.row_pos = [self.row_pos[r] for r in kept]
                graphed = None  # the batch shrank: capture again
            cache.seen = max(self.row_pos)  # the longest row bounds what attention has to read
            if graphed is not None:
                new_logits = graphed(tokens)
            else:
                new_logits = model.run(tokens.view(-1, 1), cache=cache).logits[:, -1]
                if use_graphs and cache.seen < cache.max_length:  # the eager step warmed up the kernels
                    graphed = GraphedDecodeStep(model, cache)
            logits.copy_(new_logits)
            self.row_pos = [p + 1 for p in self.row_pos]
            steps += 1
            _sync(device)
            decode_t += time.perf_counter() - t0
        self.stats["decode_seconds"] += decode_t
        self.stats["decode_steps"] += steps
