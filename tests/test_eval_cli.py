"""`sambay eval` command line: bad input gives one clear line and exit code 2; two gloo ranks == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sambay_cli.cli import main
from sambay_cli.evaluation import runner

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
MODEL = Path(__file__).parent / "fixtures" / "phi4flash-tiny-a"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_task(capsys, monkeypatch, tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(runner, "_task_manager",  # an empty registry: indexing lm-eval's takes ~20 s
                        lambda include_ours, metadata: TaskManager(include_path=str(tmp_path), include_defaults=False))
    code, _, err = run_cli(["eval", str(MODEL), "--task", "no_such_task", "--data-dir", str(DATA)], capsys)
    assert code == 2 and "unknown task no_such_task" in err and "Traceback" not in err


def test_data_dir_without_files(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(["eval", str(MODEL), "--task", "aime24", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "has no data for aime24" in err


def test_gated_dataset_without_token(capsys, monkeypatch, tmp_path: Path) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    code, _, err = run_cli(["eval", str(MODEL), "--task", "gpqa_diamond"], capsys)
    assert code == 2 and "Idavidrein/gpqa is gated" in err and "huggingface-cli login" in err


def test_not_a_sambay_model(capsys, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    code, _, err = run_cli(["eval", str(tmp_path), "--task", "aime24", "--data-dir", str(DATA),
                            "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "not a SambaY model" in err
    assert not (tmp_path / "o").exists()


def test_rescore_through_the_cli(capsys, tmp_path: Path) -> None:
    (tmp_path / "samples.jsonl").write_text(json.dumps(
        {"task": "aime25", "doc_id": 0, "completion": r"</think>\boxed{53}", "target": "53"}) + "\n")
    code, out, _ = run_cli(["eval", "--rescore", str(tmp_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["metrics"]["aime25"]["avg@k"] == 1.0


WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from sambay_cli.evaluation.fakes import CharTokenizer, ScriptedEngine
    from sambay_cli.evaluation.runner import EvalOptions, run_eval
    from sambay_cli.evaluation.runtime import Runtime

    tok = CharTokenizer()
    engine = ScriptedEngine(tok)
    factory = lambda: Runtime(backend=engine, tokenizer=tok, model=None, info={"path": "fake", "config_sha256": "0"})
    run_eval(EvalOptions(model="fake", tasks=["aime24", "gpqa_diamond"], samples=5, data_dir=sys.argv[1],
                         output=Path(sys.argv[2]), json_out=True, device="cpu"), runtime_factory=factory)
    import os
    generated = sum(c["prompts"] * c["num_samples"] for c in engine.calls)
    Path(sys.argv[2], "..", f"generated.{os.environ['RANK']}").write_text(str(generated))
    """
)


@pytest.mark.slow  # three processes importing torch + lm-eval: ~25 s on 2 cores
def test_two_ranks_equal_one(tmp_path: Path) -> None:
    """(problem, sample) pairs are sharded across 2 gloo ranks; merged results equal a single process's."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    from sambay_cli.evaluation.fakes import CharTokenizer, ScriptedEngine
    from sambay_cli.evaluation.runtime import Runtime

    tok = CharTokenizer()
    runner.run_eval(runner.EvalOptions(model="fake", tasks=["aime24", "gpqa_diamond"], samples=5, data_dir=str(DATA),
                                       output=tmp_path / "one", json_out=True),
                    runtime_factory=lambda: Runtime(backend=ScriptedEngine(tok), tokenizer=tok, model=None,
                                                    info={"path": "fake", "config_sha256": "0"}))
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(script), str(DATA), str(tmp_path / "two")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert double.returncode == 0, double.stderr[-2000:]
    counts = sorted(int(p.read_text()) for p in tmp_path.glob("generated.*"))
    assert counts == [12, 13]  # 25 (problem, sample) pairs split over the ranks, not 3 documents vs 2
    one = [json.loads(x) for x in (tmp_path / "one" / "samples.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    assert one == two and not list((tmp_path / "two").glob("samples.rank*.jsonl"))
    metrics_one = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]
    metrics_two = json.loads((tmp_path / "two" / "results.json").read_text())["metrics"]
    assert metrics_one == metrics_two
