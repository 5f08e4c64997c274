#!/usr/bin/env python3
"""Print a compact summary of `sambay bench --json` output files (for notes and docs/performance.md)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    for path in sys.argv[1:]:
        try:
            r = json.load(open(path))
        except Exception as e:  # noqa: BLE001
            print(f"{path}: unreadable ({e})")
            continue
        bw = r.get("copy_bandwidth_bytes_per_s") or 0
        print(f"== {path}: {r['device']} {r['dtype']} copy {bw / 1e12:.2f} TB/s kernels={r.get('kernels')}")
        for p in r["sambay"]["prefill"]:
            print(f"prefill L={p['prompt_len']} b={p['batch']}: {p['tokens_per_s']:.0f} tok/s {p['tflops']:.1f} TFLOP/s "
                  f"mfu={p['mfu']}")
        for d in r["sambay"]["decode"]:
            if "error" in d:
                print(f"decode b={d['batch']} ctx={d['context']}: {d['error']}")
                continue
            print(f"decode b={d['batch']} ctx={d['context']}: {d['ms_per_step']:.2f} ms/step {d['tokens_per_s']:.1f} tok/s "
                  f"{d['bytes_per_step'] / 1e9:.2f} GB/step {100 * (d['fraction_of_copy_bandwidth'] or 0):.0f}% of copy BW "
                  f"peak {(d['peak_memory_bytes'] or 0) / 1e9:.1f} GB")
        for e in r["sambay"].get("generation_estimate", []):
            print(f"estimate b={e['batch']} {e['from_context']}->{e['to_context']}: {e['seconds']:.1f} s "
                  f"{e['tokens_per_s']:.1f} tok/s")
        for d in r.get("dense_roofline", []):
            print(f"dense roofline ctx={d['context']} b={d['batch']}: {d['roofline_tokens_per_s']:.0f} tok/s")
        base = r.get("dense_baseline")
        if base:
            for row in base.get("rows", []):
                print(f"dense HF ctx={row['context']} b={row['batch']}: {row['tokens_per_s']:.1f} tok/s decode, "
                      f"{row['prefill_tokens_per_s']:.0f} tok/s prefill")
            if "error" in base:
                print("dense HF error:", base["error"])


if __name__ == "__main__":
    main()
