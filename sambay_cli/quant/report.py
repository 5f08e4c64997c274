"""Quality report of a quantized checkpoint against its original (`sambay quantize --report` / `--compare`).

* per layer: relative weight error ‖W_q − W‖ / ‖W‖ of every quantized layer (dequantized in float32);
* on a text sample: mean KL(p_orig ‖ p_quant) of the next-token distributions (nats/token), top-1 agreement, and the
  perplexity of both models on the sample's next tokens;
* optionally, task accuracy (``arith``: greedy answers to the demo arithmetic eval problems, both models, same
  protocol).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SambaYError
from .modules import QuantLinear

BUILTIN_TEXT = (
    "The river starts as a thin stream high in the hills, where snow melts slowly through the spring. By the time it "
    "reaches the valley it has gathered a dozen smaller brooks, and the town that grew up along its banks still "
    "measures the seasons by its height. Millers once used the current to turn their stones; today a small power "
    "station hums where the old mill stood, and children fish from the same wooden bridge their grandparents built. "
    "Every autumn the council checks the levees, counts the sandbags, and writes a short report that nobody reads "
    "until the water rises again.\n"
)


def sample_token_ids(model_dir: Path, text: str | None, vocab_size: int, max_tokens: int,
                     calibration: bool = False) -> tuple[list[int], str]:
    """Token ids of the sample and a description of where they came from. ``calibration`` draws the built-in /
    pseudo-random sample from a different seed, so calibration and evaluation samples never coincide."""
    tokenizer = None
    try:
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(model_dir)
    except Exception:
        tokenizer = None
    if tokenizer is None:
        if text is not None:
            raise SambaYError(f"--text needs a tokenizer in {model_dir}")
        g = torch.Generator().manual_seed(4321 if calibration else 1234)
        ids = torch.randint(0, vocab_size, (max_tokens,), generator=g).tolist()
        return ids, f"{max_tokens} pseudo-random token ids (no tokenizer in the model directory)"
    if text is None:
        text = builtin_sample(seed=11 if calibration else 7)
        source = "built-in sample (arithmetic worked solutions + English prose)"
    else:
        source = "--text file"
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < 2:
        raise SambaYError("the text sample is too short (fewer than 2 tokens)")
    return ids[:max_tokens], f"{source}, {min(len(ids), max_tokens)} tokens"


def builtin_sample(seed: int = 7) -> str:
    import random

    from ..demo import arith

    rng = random.Random(seed)
    parts = []
    for _ in range(12 if seed == 7 else 48):
        p = arith.sample_problem(rng)
        prompt, reply = arith.training_sample(p, rng)
        parts.append(prompt + reply)
    return "".join(parts) + (BUILTIN_TEXT if seed == 7 else "")


def weight_errors(quant_model, src_dir: Path) -> list[dict]:
    """Relative Frobenius error of every quantized layer against the original weight."""
    from safetensors import safe_open

    from ..loading import find_weights

    weights = find_weights(src_dir)
    located: dict[str, Path] = {}
    for f in weights.files:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for k in sf.keys():
                located[k] = f
    rows = []
    layers = [(n, m) for n, m in quant_model.named_modules() if isinstance(m, QuantLinear)]
    emb = quant_model.model.embed_tokens.weight
    if hasattr(emb, "layer"):
        layers.insert(0, ("model.embed_tokens", emb.layer))
    for name, layer in layers:
        key = f"{name}.weight"
        with safe_open(str(located[key]), framework="pt", device="cpu") as sf:
            w = sf.get_tensor(key).float()
        wq = layer.dequantize(torch.float32).cpu()
        rel = ((wq - w).norm() / w.norm().clamp_min(1e-30)).item()
        rows.append({"module": name, "format": layer.fmt, "shape": list(w.shape), "rel_error": rel,
                     "group_size": layer.group_size})
    return rows


@torch.inference_mode()
def logit_metrics(ref_model, quant_model, ids: list[int], seq_len: int = 256) -> dict:
    """KL(p_ref ‖ p_q), top-1 agreement and perplexities over next-token predictions of ``ids``."""
    kl_sum = agree = nll_ref = nll_q = 0.0
    n = 0
    for start in range(0, len(ids) - 1, seq_len):
        chunk = ids[start:start + seq_len + 1]
        if len(chunk) < 2:
            break
        x = torch.tensor([chunk[:-1]])
        y = torch.tensor(chunk[1:])
        lr = F.log_softmax(ref_model(x.to(ref_model.device))[0].float().cpu(), -1)
        lq = F.log_softmax(quant_model(x.to(quant_model.device))[0].float().cpu(), -1)
        kl_sum += (lr.exp() * (lr - lq)).sum(-1).sum().item()
        agree += (lr.argmax(-1) == lq.argmax(-1)).sum().item()
        nll_ref -= lr.gather(-1, y[:, None]).sum().item()
        nll_q -= lq.gather(-1, y[:, None]).sum().item()
        n += y.numel()
    return {"tokens": n, "kl_mean": kl_sum / n, "top1_agreement": agree / n,
            "ppl_original": float(torch.tensor(nll_ref / n).exp()), "ppl_quantized": float(torch.tensor(nll_q / n).exp())}


def arith_accuracy(model, model_dir: Path, limit: int, max_new_tokens: int = 160) -> dict:
    """Greedy accuracy on the first ``limit`` demo arithmetic eval problems (boxed answer == gold)."""
    from ..demo import arith
    from ..evaluation.scoring import last_boxed
    from ..generation import generate
    from ..tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)
    records = arith.eval_problems()
    step = max(1, len(records) // limit)
    records = records[::step][:limit]
    prompts = [tokenizer.encode(arith.chat_prompt(f"{arith.MATH_INSTRUCTION} {r['problem']}"),
                                add_special_tokens=False) for r in records]
    out = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=32)
    correct = 0
    for r, toks in zip(records, out.tokens, strict=True):
        text = tokenizer.decode(toks, skip_special_tokens=True)
        correct += int((last_boxed(text) or "").strip() == r["answer"])
    return {"task": "arith", "problems": len(records), "accuracy": correct / len(records)}


def compare(src: str | Path, quant: str | Path, *, text_file: str | None = None, max_tokens: int = 2048,
            device: str | None = None, task: str | None = None, task_limit: int = 150) -> dict:
    from ..loading import load_model, resolve_model_path

    src_dir, q_dir = resolve_model_path(src), resolve_model_path(quant)
    t0 = time.perf_counter()
    ref = load_model(src_dir, device=device, dtype="float32" if device in (None, "cpu") else None)
    qm = load_model(q_dir, device=device, dtype="float32" if device in (None, "cpu") else None)
    if getattr(qm, "quantization", None) is None:
        raise SambaYError(f"{q_dir} is not a quantized checkpoint (no quantization_config)")
    text = None
    if text_file is not None:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except OSError as e:
            raise SambaYError(f"cannot read --text {text_file}: {e.strerror or e}") from None
    ids, source = sample_token_ids(src_dir, text, ref.config.vocab_size, max_tokens)
    layers = weight_errors(qm, src_dir)
    metrics = logit_metrics(ref, qm, ids)
    report = {
        "original": str(src_dir), "quantized": str(q_dir), "quantization": qm.quantization,
        "sample": source, **metrics,
        "layers": layers,
        "weight_rel_error_mean": sum(r["rel_error"] for r in layers) / max(1, len(layers)),
        "weight_rel_error_max": max((r["rel_error"] for r in layers), default=0.0),
    }
    if task is not None:
        if task != "arith":
            raise SambaYError(f"--task {task!r}: only 'arith' runs inside the report; for other tasks run "
                              f"`sambay eval` on both directories")
        report["task"] = {"original": arith_accuracy(ref, src_dir, task_limit),
                          "quantized": arith_accuracy(qm, q_dir, task_limit)}
    report["seconds"] = time.perf_counter() - t0
    return report


def print_report(report: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"quantization quality — {report['quantization']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("sample", report["sample"])
    t.add_row("mean KL(orig ‖ quant), nats/token", f"{report['kl_mean']:.3e}")
    t.add_row("top-1 agreement", f"{100 * report['top1_agreement']:.2f} %")
    t.add_row("perplexity original → quantized", f"{report['ppl_original']:.3f} → {report['ppl_quantized']:.3f}")
    t.add_row("weight rel. error mean / max", f"{report['weight_rel_error_mean']:.4f} / "
                                              f"{report['weight_rel_error_max']:.4f}")
    if "task" in report:
        o, q = report["task"]["original"], report["task"]["quantized"]
        t.add_row(f"arith accuracy ({o['problems']} problems)",
                  f"{100 * o['accuracy']:.1f} % → {100 * q['accuracy']:.1f} %")
    console.print(t)
    lt = Table(title="per-layer relative weight error")
    lt.add_column("module")
    lt.add_column("format")
    lt.add_column("shape")
    lt.add_column("rel. error", justify="right")
    for r in report["layers"]:
        fmt = r["format"] + (f" g{r['group_size']}" if r.get("group_size") else "")
        lt.add_row(r["module"], fmt, "×".join(map(str, r["shape"])), f"{r['rel_error']:.4f}")
    console.print(lt)
