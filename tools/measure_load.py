#!/usr/bin/env python3
"""Measure `load_model` on a checkpoint: time, loaded weight bytes, and peak anonymous RAM (RssAnon, sampled).

    python tools/measure_load.py /tmp/phi4-synthetic [--dtype bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", type=Path)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from sambay_cli.loading import load_model

    base = rss_anon_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    model = load_model(args.path, dtype=args.dtype, device="cpu")
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    peak[0] = max(peak[0], rss_anon_bytes())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {
        "path": str(args.path), "dtype": args.dtype, "seconds": round(seconds, 2), "weights_bytes": weights,
        "baseline_anon_bytes": base, "peak_anon_bytes": peak[0], "peak_over_weights": round((peak[0] - base) / weights, 4),
        "torch": torch.__version__,
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
