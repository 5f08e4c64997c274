"""`sambay eval --task arith` with the embedded demo model: the full pipeline offline (chat template, greedy, think
stripping, math-verify scoring, avg@k), asserting answers the model gets right deterministically."""

from __future__ import annotations

import json

from sambay_cli.cli import main
from sambay_cli.evaluation.tasks import TASKS, resolve_tasks


def test_arith_is_a_task_but_not_part_of_all():
    assert "arith" in TASKS and not TASKS["arith"].paper
    ours, _ = resolve_tasks(["all"])
    assert ours == ["aime24", "aime25", "math500", "gpqa_diamond"]


def test_eval_arith_with_the_demo_model(tmp_path, capsys):
    out = tmp_path / "run"
    try:
        main(["eval", "--task", "arith", "--limit", "10", "--output", str(out), "--json"])
    except SystemExit as e:
        assert e.code in (0, None)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = summary["metrics"]["arith"]
    assert m["k"] == 1 and m["num_problems"] == 10
    assert m["avg@k"] == 1.0 and m["truncation_rate"] == 0.0
    assert set(m["by_group"]) <= {"seen", "unseen"} and m["by_group"]
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(x["correct"] for x in lines)
    assert all(x["completion"].startswith("<think>") and "\\boxed{" in x["completion"] for x in lines)
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["sampling"]["arith"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256}
