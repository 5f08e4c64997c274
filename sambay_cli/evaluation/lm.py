"""`SambayLM`: the lm-eval model `sambay`, backed by the project's generation engine.

* generate_until: every request of a call (each problem x each sample) goes to the engine at once; the k samples of
  one prompt are forked from a single prefill (`num_samples=k`), each with its own seed derived from
  (seed, task, doc_id, sample). Finished samples are journaled as they complete and reused on a rerun, and under
  torchrun the (problem, sample) pairs are split across ranks (lm-eval itself is told world_size 1, so every rank
  sees every document; the completions are gathered to all ranks).
* loglikelihood / loglikelihood_rolling: teacher-forced forward passes of the model, so any lm-eval task works.
* The context is never truncated: the engine is given prompt + max new tokens.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..errors import SambaYError
from . import distributed
from .engine import GenerationBackend, SamplingSettings, sequence_seed
from .scoring import prompt_opens_think, score
from .store import Journal, SampleKey, journal_path, load_journal
from .tasks import TASKS, canonical_task

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for tasks that give none


@dataclass
class _Job:
    position: int  # index in the request list
    task: str  # short task name (aime24, or an lm-eval task name)
    doc_id: int
    sample: int
    context: str
    settings: SamplingSettings
    doc: dict[str, Any]

    @property
    def key(self) -> SampleKey:
        return (self.task, self.doc_id, self.sample)


def settings_from_gen_kwargs(gen_kwargs: dict[str, Any]) -> SamplingSettings:
    """lm-eval generation kwargs -> engine settings (greedy unless do_sample is true, as lm-eval does)."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
    if not do_sample:
        temperature = 0.0
    return SamplingSettings(
        max_new_tokens=int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS))),
        temperature=temperature,
        top_p=float(kwargs.pop("top_p", 1.0)),
        top_k=int(kwargs.pop("top_k", 0) or 0),
        min_p=float(kwargs.pop("min_p", 0.0) or 0.0),
        stop_strings=tuple(str(s) for s in until),
    )


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """lm-eval semantics: the answer ends before the first stop string (which is not returned)."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if 0 <= found < cut:
                cut = found
    return text[:cut]


@register_model("sambay")
class SambayLM(TemplateLM):
    """lm-eval model backed by the SambaY generation engine.

    Built by `sambay eval` (which injects the engine, the tokenizer and the journal), or by lm-eval itself as
    ``--model sambay --model_args pretrained=DIR[,tokenizer=DIR,dtype=bfloat16,device=cuda,batch_size=N]``
    after ``import sambay_cli.evaluation.lm``.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        backend: GenerationBackend | None = None,
        tokenizer: Any = None,
        model: Any = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = None,
        seed: int = 0,
        output: Path | None = None,
        max_length: int = 4096,
        show_progress: bool = False,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        if backend is None:
            if pretrained is None:
                raise SambaYError("the sambay lm-eval model needs pretrained=<model dir>")
            from .runtime import load_runtime

            runtime = load_runtime(str(pretrained), tokenizer_dir=tokenizer, dtype=dtype, device=device)
            backend, tokenizer, model = runtime.backend, runtime.tokenizer, runtime.model
        self.backend = backend
        self.tok = tokenizer
        self.model = model
        self.gen_batch_size = int(batch_size) if batch_size not in (None, "auto") else None
        self.seed = int(seed)
        self.max_length = max_length
        self.show_progress = show_progress
        self.chat_template_applied = False  # set by the runner before lm-eval applies the template
        self.dist_rank, self.dist_world = distributed.rank_and_world()
        self.output = output
        self.journal: Journal | None = None
        self.finished: dict[SampleKey, dict[str, Any]] = {}
        if output is not None:
            self.finished = load_journal(output)
            distributed.barrier()  # every rank reads the same journals before any rank appends
            self.journal = Journal(journal_path(output, self.dist_rank, self.dist_world))
        self.generated_count = 0
        self.reused_count = 0

    # ------------------------------------------------------------------ tokenizer & chat template
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_token_id)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tok, "name_or_path", None) or type(self.tok).__name__)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tok, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt, tokenize=False)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = not self.chat_template_applied  # the chat template carries its own specials
        return list(self.tok.encode(string, add_special_tokens=add_special_tokens))

    # ------------------------------------------------------------------ generation
    def _jobs(self, requests: list[Any]) -> list[_Job]:
        occurrences: dict[tuple[str, int], int] = defaultdict(int)
        jobs = []
        for position, request in enumerate(requests):
            context, gen_kwargs = request.args
            task = canonical_task(str(request.task_name)) or str(request.task_name)
            doc_id = int(request.doc_id) if request.doc_id is not None else position
            sample = occurrences[(task, doc_id)]
            occurrences[(task, doc_id)] += 1
            jobs.append(
                _Job(position, task, doc_id, sample, context, settings_from_gen_kwargs(gen_kwargs), request.doc or {})
            )
        return jobs

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        jobs = self._jobs(requests)
        results: list[str | None] = [None] * len(jobs)
        pending = []
        for job in jobs:
            record = self.finished.get(job.key)
            if record is not None and record.get("prompt") == job.context and "completion" in record:
                results[job.position] = cut_at_stop(record["completion"], job.settings.stop_strings)
                self.reused_count += 1
            else:
                pending.append(job)
        mine = pending[self.dist_rank :: self.dist_world]
        produced = self._generate(mine, total_pending=len(pending))
        if self.dist_world > 1:
            merged: dict[SampleKey, str] = {}
            for part in distributed.all_gather_object(produced):
                merged.update(part)
            produced = merged
        for job in pending:
            if job.key not in produced:
                raise SambaYError(f"no completion for {job.task} doc {job.doc_id} sample {job.sample} (engine error)")
            results[job.position] = produced[job.key]
        return [r if r is not None else "" for r in results]

    def _generate(self, jobs: list[_Job], *, total_pending: int) -> dict[SampleKey, str]:
        """Generate the given jobs: one engine call per (settings, samples per prompt) bucket."""
        groups: dict[tuple[str, SamplingSettings], list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[(job.context, job.settings)].append(job)
        buckets: dict[tuple[SamplingSettings, int], list[list[_Job]]] = defaultdict(list)
        for (_, settings), members in groups.items():
            buckets[(settings, len(members))].append(members)
        produced: dict[SampleKey, str] = {}
        with _Progress(self.show_progress, len(jobs), self.dist_rank) as progress:
            for (settings, num_samples), prompt_groups in buckets.items():
                self._run_bucket(settings, num_samples, prompt_groups, produced, progress)
        return produced

    def _run_bucket(
        self,
        settings: SamplingSettings,
        num_samples: int,
        prompt_groups: list[list[_Job]],
        produced: dict[SampleKey, str],
        progress: _Progress,
    ) -> None:
        prompts = [self.tok_encode(group[0].context) for group in prompt_groups]
        seeds = [sequence_seed(self.seed, job.task, job.doc_id, job.sample) for group in prompt_groups for job in group]
        done: set[int] = set()

        def on_finish(index: int, tokens: list[int], finish_reason: str) -> None:
            if index in done or finish_reason == "interrupted":  # Ctrl-C: a partial sample is not a sample
                return
            done.add(index)
            job = prompt_groups[index // num_samples][index % num_samples]
            produced[job.key] = self._record(job, tokens, finish_reason, seeds[index])
            progress.advance(len(tokens))

        all_tokens, reasons = self.backend.generate(
            prompts,
            settings=settings,
            num_samples=num_samples,
            sequence_seeds=seeds,
            batch_size=self.gen_batch_size,
            on_finish=on_finish,
        )
        for index, (tokens, reason) in enumerate(zip(all_tokens, reasons, strict=True)):
            on_finish(index, list(tokens), reason)  # engines that do not call back
        if "interrupted" in reasons:
            raise KeyboardInterrupt  # finished samples are journaled; rerun the command to resume

    def _record(self, job: _Job, tokens: list[int], finish_reason: str, seed: int) -> str:
        """Decode, score (our tasks), journal one finished sample; returns the text lm-eval receives."""
        completion = self.tok.decode(tokens, skip_special_tokens=True)
        record: dict[str, Any] = {
            "task": job.task,
            "doc_id": job.doc_id,
            "sample": job.sample,
            "prompt": job.context,
            "completion": completion,
            "tokens": len(tokens),
            "finish_reason": finish_reason,
            "seed": seed,
        }
        if job.task in TASKS:
            target = str(job.doc.get("target", ""))
            verdict = score(TASKS[job.task].kind, completion, target,
                            think_opened_in_prompt=prompt_opens_think(job.context))
            record.update(
                id=job.doc.get("id"),
                group=job.doc.get(TASKS[job.task].group_field) if TASKS[job.task].group_field else None,
                extracted=verdict.extracted,
                target=target,
                correct=verdict.correct,
                truncated=verdict.unfinished or finish_reason == "length",
            )
        self.finished[job.key] = record
        if self.journal is not None:
            self.journal.append(record)
        self.generated_count += 1
        return cut_at_stop(completion, job.settings.stop_strings)

    # ------------------------------------------------------------------ log-likelihood
    def _require_model(self) -> Any:
        if self.model is None:
            raise SambaYError("loglikelihood tasks need a loaded model (this back end only generates)")
        return self.model

    def _token_logprobs(self, sequences: list[list[int]], continuation_lengths: list[int]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of the last n tokens of each sequence, and whether they are all greedy."""
        import torch

        model = self._require_model()
        device = next(model.parameters()).device
        width = max(len(s) for s in sequences) - 1
        input_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # right padding: a causal model's earlier positions are unaffected
            input_ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            mask[row, : len(seq) - 1] = 1
        with torch.no_grad():
            logits = model(input_ids.to(device), attention_mask=mask.to(device))
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for row, (seq, n) in enumerate(zip(sequences, continuation_lengths, strict=True)):
            positions = torch.arange(len(seq) - 1 - n, len(seq) - 1)
            targets = torch.tensor(seq[-n:])
            picked = logprobs[row, positions, targets]
            greedy = bool((logprobs[row, positions].argmax(dim=-1) == targets).all())
            out.append((float(picked.sum()), greedy))
        return out

    def _batched_logprobs(self, items: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        batch = self.gen_batch_size or 8
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(items)
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            scored = self._token_logprobs([items[i][0] for i in chunk], [items[i][1] for i in chunk])
            for i, value in zip(chunk, scored, strict=True):
                results[i] = value
        return [r for r in results if r is not None]

    def _sharded(self, items: list[Any], fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Run fn on this rank's share of items and gather every rank's answers (in item order)."""
        if self.dist_world <= 1:
            return fn(items)
        indices = list(range(self.dist_rank, len(items), self.dist_world))
        mine = dict(zip(indices, fn([items[i] for i in indices]), strict=True)) if indices else {}
        merged: dict[int, Any] = {}
        for part in distributed.all_gather_object(mine):
            merged.update(part)
        return [merged[i] for i in range(len(items))]

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
        items = []
        for _, context_enc, continuation_enc in requests:
            sequence = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]
            items.append((sequence, len(continuation_enc)))
        return self._sharded(items, self._batched_logprobs)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        def one(request: Any) -> float:
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            items = [(list(ctx) + list(cont), len(cont)) for ctx, cont in windows]
            return sum(lp for lp, _ in self._batched_logprobs(items))

        return self._sharded(list(requests), lambda chunk: [one(r) for r in chunk])


class _Progress:
    """A rich progress bar (stderr) over the sequences to generate, with throughput and remaining time."""

    def __init__(self, enabled: bool, total: int, rank: int):
        self.enabled = enabled and total > 0 and rank == 0
        self.total = total
        self.tokens = 0
        self.started = time.monotonic()
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("generating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task("generate", total=self.total, rate="")
        return self

    def advance(self, tokens: int) -> None:
        self.tokens += tokens
        if self._progress is not None:
            rate = self.tokens / max(time.monotonic() - self.started, 1e-9)
            self._progress.update(self._task, advance=1, rate=f"{rate:,.0f} tok/s")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
