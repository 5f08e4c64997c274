"""Which tensors `sambay quantize` quantizes.

Default: every linear layer of the MLPs (``mlp.fc1``, ``mlp.fc2``), attention (``attn.Wqkv``, ``attn.out_proj``),
GMUs (``attn.in_proj``, ``attn.out_proj``) and Mamba mixers (``attn.in_proj``, ``attn.out_proj``). Kept in high
precision: the embedding / tied lm_head (opt in with ``--quantize-embeddings``), all norms, Mamba ``A_log``, ``D``,
``conv1d``, ``x_proj`` and ``dt_proj`` (they feed dt/B/C straight into the recurrence; 0.4 % of the parameters),
differential-attention λ vectors and subln, and every bias.

``--include`` / ``--skip`` take shell-style patterns (``fnmatch``) on module names, e.g. ``model.layers.16.*``,
``*.x_proj`` or ``*.mlp.fc2``; include is applied first, skip wins.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

EMBEDDING = "model.embed_tokens"
KEPT_BY_DEFAULT = (".x_proj", ".dt_proj")


@dataclass
class Selection:
    modules: list[str]  # module names to quantize, in model order
    warnings: list[str] = field(default_factory=list)


def linear_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def select_modules(model: nn.Module, *, include: list[str] | None = None, skip: list[str] | None = None,
                   quantize_embeddings: bool = False) -> Selection:
    candidates = [EMBEDDING, *linear_modules(model)]
    kept = (EMBEDDING, "lm_head")
    chosen = {n for n in candidates if n not in kept and not n.endswith(KEPT_BY_DEFAULT)}
    if quantize_embeddings:
        chosen.update(n for n in candidates if n in kept)
    warnings: list[str] = []
    for pattern in include or []:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            warnings.append(f"--include {pattern!r} matches no linear module")
        chosen.update(hits)
    for pattern in skip or []:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            warnings.append(f"--skip {pattern!r} matches no linear module")
        chosen.difference_update(hits)
    return Selection([n for n in candidates if n in chosen], warnings)
