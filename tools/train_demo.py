"""Train the embedded demo model: a small SambaY (Phi-4-mini-flash layout) on step-by-step arithmetic.

    # CPU smoke run (tiny shape, seconds):
    .venv/bin/python tools/train_demo.py --out /tmp/demo-run --tiny --steps 20 --batch-size 8
    # the real run (one GPU; resumable, each command under 10 minutes):
    PYTHONPATH=. python3 tools/train_demo.py --out .demo_ckpt --steps 3000 --max-minutes 8 [--resume]
    # when the steps are done, export + evaluate (greedy, the embedded arith set):
    PYTHONPATH=. python3 tools/train_demo.py --out .demo_ckpt --resume --export sambay_cli/assets/demo-model

Checkpoints (model + optimizer + step, ``ckpt.pt``) are written to --out every --save-every steps and when the run
stops; the data of a step is a function of (seed, step), so a resumed run sees exactly the batches it would have.
``--write-eval`` regenerates the embedded eval set sambay_cli/assets/arith/arith.jsonl.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from sambay_cli.demo import arith  # noqa: E402
from sambay_cli.demo.recipe import (  # noqa: E402
    TINY_SHAPE,
    TrainSettings,
    evaluate,
    export_model,
    settings_dict,
    train,
)

README_TEMPLATE = """\
# sambay demo model

A {params:,}-parameter SambaY model in the Phi-4-mini-flash-reasoning layout (`model_type: phi4flash`: Mamba +
sliding-window differential attention self-decoder, one shared full-attention KV, GMU + cross-attention
cross-decoder), trained from scratch by the sambay project on synthetic arithmetic with step-by-step reasoning
(`<think>` column-by-column carries/borrows `</think>` then `\\boxed{{answer}}`): addition and subtraction of numbers
0-999 and two-digit × one-digit multiplication. It exists so that every `sambay` command runs offline out of the
box; it knows nothing but this arithmetic.

- shape: {layers} layers, hidden {hidden}, {heads} heads / {kv} KV heads, intermediate {inter}, sliding window {window},
  vocabulary {vocab} (byte-level BPE, every digit its own token, Phi-4 special tokens and chat template)
- training: {steps} steps × {batch} samples, final loss {loss}, {minutes} min on {device}
- greedy accuracy on the embedded `arith` set ({n} problems, none seen in training): {acc}% overall,
  {seen}% on trained phrasings, {unseen}% on unseen phrasings
- weights: bfloat16 (A_log, D and the λ vectors in float32), sha256 in training.json

Recipe and how to retrain: docs/demo-model.md (`tools/train_demo.py`).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=False, help="training folder (checkpoint, tokenizer, log)")
    p.add_argument("--steps", type=int, default=TrainSettings.steps, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--lr", type=float, default=TrainSettings.lr)
    p.add_argument("--seed", type=int, default=TrainSettings.seed)
    p.add_argument("--save-every", type=int, default=TrainSettings.save_every)
    p.add_argument("--log-every", type=int, default=TrainSettings.log_every)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much training time")
    p.add_argument("--fit-minutes", type=float, default=None,
                   help="after 30 steps, shorten --steps so that training ends within this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt when present")
    p.add_argument("--tiny", action="store_true", help="a tiny shape for CPU smoke runs")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compact-checkpoint", action="store_true",
                   help="store the AdamW moments in bf16 (checkpoint shards fit a 64 MB transfer)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--export", type=Path, default=None, help="write the Hugging Face layout model here when done")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N eval problems only")
    p.add_argument("--no-eval", action="store_true", help="skip the greedy evaluation before export")
    p.add_argument("--trained-on", default=None, help="device name for training.json (default: the device of the "
                   "session that finished training, as recorded in the checkpoint)")
    p.add_argument("--note", default=None, help="free-text note recorded in training.json (e.g. a schedule change)")
    p.add_argument("--write-eval", action="store_true", help="(re)write sambay_cli/assets/arith/arith.jsonl and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_eval:
        records = arith.eval_problems()
        arith.write_jsonl(records, arith.ASSET_EVAL_PATH)
        print(f"wrote {len(records)} problems to {arith.ASSET_EVAL_PATH}")
        return 0
    if args.out is None:
        raise SystemExit("--out is required")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             save_every=args.save_every, log_every=args.log_every, max_minutes=args.max_minutes,
                             bf16=not args.fp32, compact_checkpoint=args.compact_checkpoint,
                             fit_minutes=args.fit_minutes)
    if args.tiny:
        settings.shape = TINY_SHAPE
    log_file = args.out / "train_log.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with log_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    t0 = time.monotonic()
    model, state, tok = train(args.out, settings, device=device, resume=args.resume, log=log)
    log(json.dumps({"event": "stopped", "step": state.step, "of": settings.steps,
                    "session_s": round(time.monotonic() - t0, 1), "training_s": round(state.seconds, 1)}))
    if args.export is None:
        return 0
    if state.step < settings.steps:
        log("not exporting: training is not finished (run again with --resume)")
        return 3
    import tempfile

    from sambay_cli.demo.recipe import tokenizer_files
    from sambay_cli.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as staging_tok:
        for name, text in tokenizer_files(tok).items():
            (Path(staging_tok) / name).write_text(text, encoding="utf-8")
        project_tok = Tokenizer.from_dir(staging_tok)
    summary: dict = {}
    if not args.no_eval:
        records = arith.eval_problems()[: args.eval_limit]
        model_bf16 = _bf16_roundtrip(model)
        t1 = time.monotonic()
        result = evaluate(model_bf16, project_tok, records, batch_size=min(len(records), 600))
        summary = result["summary"]
        summary["eval_seconds"] = round(time.monotonic() - t1, 1)
        summary["weights"] = "bfloat16 export"
        log(json.dumps({"event": "eval", **summary}))
        with (args.out / "eval_rows.jsonl").open("w", encoding="utf-8") as f:
            for row in result["rows"]:
                f.write(json.dumps(row) + "\n")
    final_loss = state.history[-1]["loss"] if state.history else float("nan")  # mean over the last log window
    device_name = args.trained_on or state.device or platform.processor() or "cpu"
    record = {
        "recipe": "tools/train_demo.py",
        "data": {
            "generator": "sambay_cli.demo.arith.training_stream(seed * 1000003 + step, exclude=eval keys)",
            "ops": {"add": "a + b, 0 <= a, b <= 999 (1:2:5 weights for 1/2/3 digits)",
                    "sub": "a - b, a >= b, same operands", "mul": "10-99 × 2-9, either order"},
            "train_phrasings": arith.TRAIN_PHRASINGS,
            "instruction_rate": arith.INSTRUCTION_RATE,
            "samples_seen": state.step * settings.batch_size,
            "eval_excluded": "every problem of sambay_cli/assets/arith/arith.jsonl (both orders for add/mul)",
        },
        "settings": settings_dict(settings),
        "steps": state.step,
        "final_loss": round(final_loss, 5),
        "loss_history": state.history,
        "training_seconds": round(state.seconds, 1),
        "device": device_name,
        "torch": torch.__version__,
        "eval": summary,
        "note": args.note,
    }
    sh = settings.shape
    readme = README_TEMPLATE.format(
        params=sum(p.numel() for p in model.parameters()), layers=sh.num_hidden_layers, hidden=sh.hidden_size,
        heads=sh.num_attention_heads, kv=sh.num_key_value_heads, inter=sh.intermediate_size,
        window=sh.sliding_window, vocab=sh.vocab_size, steps=state.step, batch=settings.batch_size,
        loss=record["final_loss"], minutes=round(state.seconds / 60, 1), device=device_name,
        n=summary.get("n", "-"), acc=summary.get("accuracy", "-"), seen=summary.get("phrasing=seen", "-"),
        unseen=summary.get("phrasing=unseen", "-"),
    )
    path = export_model(model, tok, args.export, record, readme)
    log(json.dumps({"event": "exported", "path": str(path)}))
    return 0


def _bf16_roundtrip(model):
    """A copy of the model with the exported weights' precision (bf16, float32 kept where the export keeps it),
    computing in the model's dtype — what users load."""
    import copy

    from sambay_cli.demo.recipe import export_state_dict

    clone = copy.deepcopy(model)
    state = {k: v.to(next(clone.parameters()).device).float() for k, v in export_state_dict(model).items()}
    clone.load_state_dict(state)
    clone.eval().requires_grad_(False)
    return clone


if __name__ == "__main__":
    sys.exit(main())
