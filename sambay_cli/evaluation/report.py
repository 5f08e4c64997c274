"""The end-of-run report: a rich table on stdout (with the paper's numbers when Phi-4-mini-flash-reasoning is
evaluated), or one JSON object with --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(value: float | None, stderr: float | None = None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    text = f"{100 * value:.2f}"
    return f"{text} ± {100 * stderr:.2f}" if stderr is not None else text


def summary(results: dict[str, Any], output: Path) -> dict[str, Any]:
    published = results.get("published_phi4_mini_flash_reasoning") or {}
    return {
        "output": str(output),
        "metrics": results.get("metrics", {}),
        "published_phi4_mini_flash_reasoning": published or None,
        "lm_eval": (results.get("lm_eval") or {}).get("results", {}),
        "run": results.get("run"),
    }


def print_report(results: dict[str, Any], output: Path, *, json_out: bool) -> None:
    if json_out:
        print(json.dumps(summary(results, output), default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    published = results.get("published_phi4_mini_flash_reasoning") or {}
    table = Table(title="sambay eval", show_lines=False)
    for column in ("task", "k", "problems", "avg@k (pass@1)", "pass@k", "maj@k", "truncated", "mean tokens"):
        table.add_column(column, justify="left" if column == "task" else "right")
    if published:
        table.add_column("paper (Phi-4-mini-flash)", justify="right")
    rows = []
    for task, m in sorted((results.get("metrics") or {}).items()):
        rows.append((task, m))
        rows.extend((f"{task} ({group})", gm) for group, gm in (m.get("by_group") or {}).items())
    for task, m in rows:
        row = [
            task,
            str(m.get("k", "-")),
            str(m.get("num_problems", "-")),
            _pct(m.get("avg@k"), m.get("avg@k_stderr")),
            _pct(m.get("pass@k"), m.get("pass@k_stderr")),
            _pct(m.get("maj@k"), m.get("maj@k_stderr")),
            _pct(m.get("truncation_rate")),
            f"{m['mean_tokens']:,.0f}" if m.get("mean_tokens") is not None else "-",
        ]
        if published:
            row.append(f"{published[task]:.2f}" if task in published else "-")
        table.add_row(*row)
    console.print(table)
    other = {t: r for t, r in ((results.get("lm_eval") or {}).get("results") or {}).items()
             if not t.startswith("sambay_")}
    for task, values in sorted(other.items()):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items() if isinstance(v, float))
        console.print(f"[bold]{task}[/bold] (lm-eval): {shown}")
    run = results.get("run") or {}
    if run:
        console.print(f"{run.get('generated_samples', 0)} samples generated, {run.get('reused_samples', 0)} reused, "
                      f"{run.get('seconds', 0):.1f} s; results in {output}")
    else:
        console.print(f"re-scored; results in {output}")
