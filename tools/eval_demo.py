"""Greedy accuracy of a model (default: the embedded demo model) on the embedded `arith` eval set.

    .venv/bin/python tools/eval_demo.py                      # all 600 problems, CPU, ~2-3 min on 2 cores
    .venv/bin/python tools/eval_demo.py --limit 60 --json    # a quick look, one JSON object on stdout

Uses the project's loader, tokenizer + chat template and generate() (greedy), and reads the last \\boxed{...} of each
completion. Prints overall accuracy, accuracy on trained ("seen") and unseen phrasings, and per operation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded demo model)")
    p.add_argument("--data", type=Path, default=None, help="arith JSONL (default: sambay_cli/assets/arith/arith.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--instruction", action="store_true", help="prefix the eval framework's math instruction")
    p.add_argument("--device", default=None)
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="storage of the shared KV (fp8: float8 e4m3)")
    p.add_argument("--rows", type=Path, default=None, help="write per-problem rows (JSONL) here")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)

    from sambay_cli.demo import arith
    from sambay_cli.demo.recipe import evaluate
    from sambay_cli.loading import load_model
    from sambay_cli.textgen import default_model_dir
    from sambay_cli.tokenizer import Tokenizer

    model_dir = args.model or default_model_dir()
    data = args.data or arith.ASSET_EVAL_PATH
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = records[: args.limit]
    model = load_model(model_dir, device=args.device)
    if args.kv_cache_dtype == "fp8":
        import torch

        model.kv_cache_dtype = torch.float8_e4m3fn
    tokenizer = Tokenizer.from_dir(model_dir)
    t0 = time.monotonic()
    result = evaluate(model, tokenizer, records, batch_size=args.batch_size, instruction=args.instruction)
    summary = dict(result["summary"], seconds=round(time.monotonic() - t0, 1), model=str(model_dir), data=str(data),
                   kv_cache_dtype=args.kv_cache_dtype)
    if args.rows:
        with args.rows.open("w", encoding="utf-8") as f:
            for row in result["rows"]:
                f.write(json.dumps(row) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
