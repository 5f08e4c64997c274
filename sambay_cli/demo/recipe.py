"""The demo model's recipe: tokenizer, architecture, initialisation, training loop, export and greedy evaluation.

Everything here uses the project's own code: :class:`~sambay_cli.model.modeling.SambaYForCausalLM` (trained through
its differentiable full forward), the project's tokenizer wrapper and chat template, and
:func:`~sambay_cli.generation.generate` for evaluation. ``tools/train_demo.py`` is the command-line front end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PHI4FLASH_DEFAULTS, SambaYConfig, official_config_dir
from ..convert.writer import atomic_output_dir
from ..model.modeling import FLOAT32_PARAMS, SambaYForCausalLM
from ..tokenizer import (
    PHI4_ADDED_TOKENS,
    PHI4_EOS_TOKEN,
    PLAIN_ADDED_TOKENS,
    phi4_special_tokens_map,
    phi4_tokenizer_config,
    train_phi4_shaped_bpe,
)
from . import arith

# --------------------------------------------------------------------------------------------------- tokenizer
EOS_TOKEN = PHI4_EOS_TOKEN
TOKENIZER_IDS = 384  # 1 + 256 byte symbols + learned merges + added tokens; a multiple of 128
TOKENIZER_TRAINING_SAMPLES = 4000
# Words and punctuation are split like the o200k pattern; digits were already isolated one by one.
WORD_PATTERN = (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
HUB_CHAT_TEMPLATE_FILE = official_config_dir() / "tokenizer_config.json"  # the real Phi-4 chat template


def phi4_chat_template() -> str:
    """The real Phi-4-mini-flash-reasoning chat template (from the bundled hub metadata)."""
    for candidate in (Path(__file__).resolve().parents[1] / "configs" / "phi4-mini-flash" / "tokenizer_config.json",
                      HUB_CHAT_TEMPLATE_FILE):
        if candidate.is_file():
            data = json.loads(candidate.read_text(encoding="utf-8"))
            if isinstance(data.get("chat_template"), str):
                return data["chat_template"]
    raise FileNotFoundError("no Phi-4 tokenizer_config.json with a chat template found")


def build_tokenizer(seed: int):
    """A byte-level BPE (``tokenizers``) trained on training samples; every digit is its own token."""
    stream = arith.training_stream(seed, exclude=set())
    texts = []
    for _ in range(TOKENIZER_TRAINING_SAMPLES):
        prompt, reply, _p = next(stream)
        for special, _s, _r in PHI4_ADDED_TOKENS:
            prompt, reply = prompt.replace(special, " "), reply.replace(special, " ")
        for plain in PLAIN_ADDED_TOKENS:
            reply = reply.replace(plain, " ")
        texts.append(prompt + reply)
    return train_phi4_shaped_bpe(texts, total_ids=TOKENIZER_IDS, patterns=[WORD_PATTERN], min_frequency=2,
                                 split_digits=True)


def tokenizer_files(tok) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json in the real files' shapes."""
    config = phi4_tokenizer_config(tok, chat_template=phi4_chat_template(), model_max_length=4096)
    special_map = phi4_special_tokens_map()
    return {
        "tokenizer.json": tok.to_str(pretty=False) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
    }


# ------------------------------------------------------------------------------------------------ architecture
@dataclass
class ModelShape:
    num_hidden_layers: int = 8
    hidden_size: int = 256
    intermediate_size: int = 512
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    sliding_window: int = 64
    vocab_size: int = TOKENIZER_IDS


TINY_SHAPE = ModelShape(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                        num_key_value_heads=2, sliding_window=16)


def model_config(shape: ModelShape, eos_id: int, end_id: int, max_positions: int = 4096) -> SambaYConfig:
    """A phi4flash (official Hugging Face layout) config of the given shape; everything else is the official model's
    default (PHI4FLASH_DEFAULTS: Mamba d_state 16 / d_conv 4 / expand 2, tied embeddings, LayerNorm ε 1e-5, …)."""
    data = {
        "architectures": ["Phi4FlashForCausalLM"],
        "model_type": "phi4flash",
        **PHI4FLASH_DEFAULTS,  # written out, so the exported config.json is explicit
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "sliding_window": shape.sliding_window,
        "max_position_embeddings": max_positions,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": "bfloat16",
    }
    return SambaYConfig.from_dict(data, source="demo config")


def init_weights(model: SambaYForCausalLM, seed: int) -> None:
    """GPT-style init (N(0, 0.02), residual outputs scaled by 1/sqrt(2·layers)) plus the Mamba-1 and differential
    attention conventions: A = −(1..N), D = 1, Δ bias = softplus⁻¹ of a log-uniform Δ in [1e-3, 1e-1], λ ~ N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name or "subln" in name:
                p.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "A_log":
                n = p.shape[1]
                p.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(p))
            elif leaf == "D":
                p.fill_(1.0)
            elif leaf.startswith("lambda_"):
                p.normal_(0.0, 0.1, generator=gen)
            elif "dt_proj" in name and leaf == "bias":
                dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            elif "dt_proj" in name:
                bound = p.shape[1] ** -0.5
                p.uniform_(-bound, bound, generator=gen)
            elif "conv1d" in name:
                if leaf == "weight":
                    bound = p.shape[-1] ** -0.5
                    p.uniform_(-bound, bound, generator=gen)
                else:
                    p.zero_()
            elif leaf == "bias":
                p.zero_()
            else:
                std = 0.02
                if name.endswith(("out_proj.weight", "fc2.weight")):
                    std = 0.02 / math.sqrt(2 * n_layers)
                p.normal_(0.0, std, generator=gen)


# ----------------------------------------------------------------------------------------------------- batches
@dataclass
class Encoded:
    ids: list[int]
    loss_from: int  # first position whose token is trained on


def encode_sample(tok, prompt: str, reply: str) -> Encoded:
    p = tok.encode(prompt, add_special_tokens=False).ids
    r = tok.encode(reply, add_special_tokens=False).ids
    return Encoded(p + r, len(p))


def sample_batch(tok, seed: int, step: int, batch_size: int, exclude: set, pad_id: int,
                 max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: a function of (seed, step) only, so resuming reproduces the same data.
    Returns (input_ids [B, L], labels [B, L] with -100 outside the assistant reply and on padding)."""
    stream = arith.training_stream(seed * 1_000_003 + step, exclude)
    samples = [encode_sample(tok, prompt, reply) for prompt, reply, _p in (next(stream) for _ in range(batch_size))]
    length = min(max_len, max(len(s.ids) for s in samples))
    ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, length), -100, dtype=torch.long)
    for row, s in enumerate(samples):
        seq = s.ids[:length]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, s.loss_from: len(seq)] = torch.tensor(seq[s.loss_from:])
    return ids, labels


def lm_loss(model: SambaYForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class TrainSettings:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 1234
    max_len: int = 320
    save_every: int = 250
    log_every: int = 25
    max_minutes: float | None = None
    bf16: bool = True
    fit_minutes: float | None = None  # after FIT_PROBE_STEPS, lower `steps` so the run ends within this time
    compact_checkpoint: bool = False  # optimizer moments stored in bf16 (halves the checkpoint)
    shape: ModelShape = field(default_factory=ModelShape)


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    frac = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        (decay if p.dim() >= 2 and leaf not in FLOAT32_PARAMS else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.98), eps=1e-8)


def set_determinism(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


CKPT_META = "ckpt.json"
SHARD_BYTES = 15 * 2**20  # each shard under 16 MB (what a device run can bring back per file)


def save_checkpoint(out_dir: Path, model: nn.Module, optim: torch.optim.Optimizer, meta: dict[str, Any],
                    moments_dtype: torch.dtype = torch.float32) -> None:
    """Model (float32) and AdamW state as safetensors shards of at most SHARD_BYTES plus ``ckpt.json``; no pickle.
    ``moments_dtype=bfloat16`` halves the optimizer state (for size-limited transfers; resuming is then approximate).
    The meta file is written last and names its shards, so an interrupted save leaves the previous checkpoint valid."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().float().cpu().contiguous()
                                        for k, v in model.state_dict().items()}
    opt = optim.state_dict()
    scalars: dict[str, dict[str, float]] = {}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if key == "step":
                scalars.setdefault(str(idx), {})[key] = float(value)
            else:
                tensors[f"optim.{idx}.{key}"] = value.detach().to(moments_dtype).cpu().contiguous()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    tag = f"{int(meta['step']):07d}"
    names = []
    for i, shard in enumerate(shards):
        name = f"ckpt-{tag}-{i:02d}.safetensors"
        save_file(shard, str(out_dir / f".{name}.tmp"))
        (out_dir / f".{name}.tmp").replace(out_dir / name)
        names.append(name)
    full_meta = dict(meta, shards=names, optim_param_groups=opt["param_groups"], optim_steps=scalars)
    tmp = out_dir / f".{CKPT_META}.tmp"
    tmp.write_text(json.dumps(full_meta) + "\n", encoding="utf-8")
    tmp.replace(out_dir / CKPT_META)
    for old in out_dir.glob("ckpt-*.safetensors"):
        if old.name not in names:
            old.unlink()


def load_checkpoint(out_dir: Path, model: nn.Module, optim: torch.optim.Optimizer, device: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((out_dir / CKPT_META).read_text(encoding="utf-8"))
    tensors: dict[str, torch.Tensor] = {}
    for name in meta["shards"]:
        tensors.update(load_file(str(out_dir / name), device="cpu"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, field_name = key.split(".", 2)
            state.setdefault(int(idx), {})[field_name] = value.float().to(device)
    for idx, scal in meta["optim_steps"].items():
        for key, value in scal.items():
            state.setdefault(int(idx), {})[key] = torch.tensor(value)
    optim.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
    return meta


FIT_PROBE_STEPS = 30  # inside the warm-up, so shortening the schedule then changes no learning rate already used


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", "elapsed_s"} every log_every steps
    seconds: float = 0.0  # training seconds over all sessions
    device: str | None = None  # the device of the last session that trained


def train(
    out_dir: Path,
    settings: TrainSettings,
    *,
    device: str,
    resume: bool,
    log: Callable[[str], None] = print,
) -> tuple[SambaYForCausalLM, TrainState, Any]:
    """Train (or continue training) in ``out_dir``; checkpoints go to ``out_dir/ckpt.json`` + shards. Returns the model, the
    state and the tokenizer. Stops at ``settings.steps`` or after ``settings.max_minutes``."""
    previous = os.environ.get("SAMBAY_KERNELS")
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ["SAMBAY_KERNELS"] = "torch"  # the differentiable reference kernels (the Triton ones have no backward)
    try:
        return _train(out_dir, settings, device=device, resume=resume, log=log)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        if previous is None:
            os.environ.pop("SAMBAY_KERNELS", None)
        else:
            os.environ["SAMBAY_KERNELS"] = previous


def _train(out_dir: Path, settings: TrainSettings, *, device: str, resume: bool,
           log: Callable[[str], None]) -> tuple[SambaYForCausalLM, TrainState, Any]:
    from tokenizers import Tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(settings.seed)
    tok_path = out_dir / "tokenizer.json"
    has_ckpt = (out_dir / CKPT_META).is_file()
    if resume and has_ckpt and tok_path.is_file():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = build_tokenizer(settings.seed)
        tok_path.write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")
    eos_id, end_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id("<|end|>")
    config = model_config(settings.shape, eos_id, end_id)
    model = SambaYForCausalLM(config)
    init_weights(model, settings.seed)
    model.to(device)
    model.train()
    optim = make_optimizer(model, settings)
    state = TrainState()
    if resume and has_ckpt:
        meta = load_checkpoint(out_dir, model, optim, device)
        state = TrainState(step=int(meta["step"]), history=list(meta["history"]), seconds=float(meta["seconds"]),
                           device=meta.get("device"))
        log(f"resumed from {out_dir / CKPT_META} at step {state.step}")
    exclude = arith.eval_keys(arith.eval_problems())
    use_bf16 = settings.bf16 and device.startswith("cuda")
    started = time.monotonic()
    session_start_seconds = state.seconds
    first_step = state.step
    window_loss, window_n, window_tokens, window_t = 0.0, 0, 0, time.monotonic()

    def save() -> None:
        state.seconds = session_start_seconds + time.monotonic() - started
        state.device = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        save_checkpoint(out_dir, model, optim, {"step": state.step, "history": state.history,
                                                "seconds": state.seconds, "settings": settings_dict(settings),
                                                "device": state.device},
                        moments_dtype=torch.bfloat16 if settings.compact_checkpoint else torch.float32)

    while state.step < settings.steps:
        if settings.max_minutes is not None and time.monotonic() - started > settings.max_minutes * 60:
            log(f"time limit reached at step {state.step}")
            break
        ids, labels = sample_batch(tok, settings.seed, state.step, settings.batch_size, exclude, eos_id,
                                   settings.max_len)
        ids, labels = ids.to(device), labels.to(device)
        for g in optim.param_groups:
            g["lr"] = lr_at(state.step, settings)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = lm_loss(model, ids, labels)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optim.step()
        state.step += 1
        window_loss += float(loss.detach())
        window_n += 1
        window_tokens += int((labels != -100).sum())
        if state.step % settings.log_every == 0 or state.step == settings.steps:
            now = time.monotonic()
            entry = {"step": state.step, "loss": round(window_loss / window_n, 5), "lr": lr_at(state.step - 1, settings),
                     "elapsed_s": round(session_start_seconds + now - started, 1),
                     "step_s": round((now - window_t) / window_n, 4)}
            state.history.append(entry)
            log(json.dumps(entry))
            window_loss, window_n, window_tokens, window_t = 0.0, 0, 0, now
        if state.step == FIT_PROBE_STEPS and settings.fit_minutes is not None and state.step > first_step:
            per_step = (time.monotonic() - started) / (state.step - first_step)
            fitted = max(settings.warmup + 1, int((settings.fit_minutes * 60 - (time.monotonic() - started)) / per_step)
                         + state.step)
            if fitted < settings.steps:
                log(json.dumps({"event": "fit", "step_s": round(per_step, 4), "steps": fitted, "was": settings.steps}))
                settings.steps = fitted
        if state.step % settings.save_every == 0:
            save()
    if state.step > first_step:  # nothing to record when this session trained no step
        save()
    model.eval()
    return model, state, tok


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    return asdict(s)


# -------------------------------------------------------------------------------------------------------- export
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_state_dict(model: SambaYForCausalLM) -> dict[str, torch.Tensor]:
    """bf16 weights, with A_log, D and the λ vectors kept in float32 (as the official checkpoint stores them)."""
    out = {}
    for name, t in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        t = t.detach().to("cpu")
        out[name] = t.float().contiguous() if leaf in FLOAT32_PARAMS else t.to(torch.bfloat16).contiguous()
    return out


def export_model(model: SambaYForCausalLM, tok, out_dir: Path, training_record: dict[str, Any],
                 readme: str | None = None) -> Path:
    """Write a Hugging Face layout model directory atomically (a sibling temp dir renamed into place)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out_dir, force=True) as staging:
        (staging / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        save_file(export_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        eos_id, end_id = tok.token_to_id(EOS_TOKEN), tok.token_to_id("<|end|>")
        gen = {"bos_token_id": eos_id, "eos_token_id": [end_id, eos_id], "pad_token_id": eos_id,
               "max_new_tokens": 256}
        (staging / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        for name, text in tokenizer_files(tok).items():
            (staging / name).write_text(text, encoding="utf-8")
        record = dict(training_record)
        record["weights_sha256"] = _sha256(staging / "model.safetensors")
        record["parameters"] = sum(p.numel() for p in model.parameters())
        (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if readme is not None:
            (staging / "README.md").write_text(readme, encoding="utf-8")
        for f in staging.iterdir():
            f.chmod(0o644)
    return out_dir


# ---------------------------------------------------------------------------------------------------- evaluation
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (no nested braces), stripped; None when absent."""
    found = BOXED.findall(text)
    return found[-1].strip() if found else None


def evaluate(model: SambaYForCausalLM, tokenizer, records: list[dict], *, batch_size: int = 256,
             max_new_tokens: int = 200, instruction: bool = False) -> dict[str, Any]:
    """Greedy accuracy on ``records`` (the arith schema), overall and per phrasing and operation.
    ``tokenizer``: the project's :class:`~sambay_cli.tokenizer.Tokenizer`. ``instruction``: prefix each problem with
    the eval framework's math instruction (as ``sambay eval`` prompts)."""
    from ..generation import generate

    eos = [tokenizer.token_to_id("<|end|>"), tokenizer.token_to_id(EOS_TOKEN)]
    prompts = []
    for r in records:
        text = f"{arith.MATH_INSTRUCTION} {r['problem']}" if instruction else r["problem"]
        prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True))
    out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=eos,
                   batch_size=batch_size)
    rows = []
    for r, toks in zip(records, out.tokens, strict=True):
        text = tokenizer.decode(toks, skip_special_tokens=True)
        pred = extract_boxed(text)
        rows.append({"id": r["id"], "op": r["op"], "phrasing": r["phrasing"], "answer": r["answer"],
                     "prediction": pred, "correct": pred == r["answer"], "tokens": len(toks), "completion": text})

    def acc(sel: list[dict]) -> float | None:
        return round(100.0 * sum(x["correct"] for x in sel) / len(sel), 2) if sel else None

    summary: dict[str, Any] = {"n": len(rows), "accuracy": acc(rows)}
    for key in ("phrasing", "op"):
        for value in sorted({x[key] for x in rows}):
            summary[f"{key}={value}"] = acc([x for x in rows if x[key] == value])
    summary["mean_generated_tokens"] = round(sum(x["tokens"] for x in rows) / max(1, len(rows)), 1)
    summary["max_generated_tokens"] = max((x["tokens"] for x in rows), default=0)
    return {"summary": summary, "rows": rows}
