"""`sambay eval` end to end on CPU: lm-eval + the sambay LM + a scripted engine, local data, resume, rescore."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sambay_cli.errors import SambaYError
from sambay_cli.evaluation.data import load_local_records, load_task_docs, prepare_docs
from sambay_cli.evaluation.fakes import CharTokenizer, ScriptedEngine
from sambay_cli.evaluation.runner import EvalOptions, rescore, run_eval
from sambay_cli.evaluation.runtime import Runtime
from sambay_cli.evaluation.tasks import resolve_tasks

DATA = Path(__file__).parent / "data"


def factory(engine: ScriptedEngine | None = None, **info):
    tokenizer = CharTokenizer()
    engine = engine or ScriptedEngine(tokenizer)

    def make() -> Runtime:
        return Runtime(backend=engine, tokenizer=tokenizer, model=None,
                       info={"name": "fake", "path": "fake", "config_sha256": "0", **info})

    return make


def options(output: Path, **kw) -> EvalOptions:
    base = dict(model="fake", tasks=["all"], samples=4, data_dir=str(DATA), output=output, json_out=True)
    base.update(kw)
    return EvalOptions(**base)


def samples(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]


def test_prompts_and_gpqa_shuffle() -> None:
    docs, info = load_task_docs("gpqa_diamond", data_dir=str(DATA), seed=0)
    assert info["num_docs"] == 2 and len(info["sha256"]) == 64
    doc = docs[0]
    assert doc["prompt"].startswith("Please reason step by step, and put your final choice of one letter from "
                                    "A/B/C/D within \\boxed{}. Which particle")
    assert "\n\nA) " in doc["prompt"] and doc["prompt"].count("\n") == 5
    assert doc["choices"]["ABCD".index(doc["target"])] == "photon"
    again, _ = load_task_docs("gpqa_diamond", data_dir=str(DATA), seed=0)
    assert again[0]["target"] == doc["target"]  # seeded: same order every time
    orders = {tuple(prepare_docs("gpqa_diamond", load_local_records(DATA, "gpqa_diamond"), seed=s)[0]["choices"])
              for s in range(12)}
    assert len(orders) > 1  # the seed changes the order
    math_doc = load_task_docs("aime24", data_dir=str(DATA), seed=0)[0][0]
    assert math_doc["prompt"] == ("Please reason step by step, and put your final answer within \\boxed{}. "
                                  "Find the remainder when $2^{10}$ is divided by $1000$.")


def test_hub_layout_rows_are_adapted(tmp_path: Path) -> None:
    rows = [{"Question": "Q?", "Correct Answer": "yes", "Incorrect Answer 1": "no", "Incorrect Answer 2": "maybe",
             "Incorrect Answer 3": "never", "Record ID": "r1"}]
    (tmp_path / "gpqa_diamond").mkdir()
    (tmp_path / "gpqa_diamond" / "gpqa_diamond.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "math500.json").write_text(json.dumps([{"problem": "1+1?", "answer": "2", "unique_id": "u/1"}]))
    record = load_local_records(tmp_path, "gpqa_diamond")[0]
    assert record == {"id": "r1", "answer": "yes", "question": "Q?", "choices": ["yes", "no", "maybe", "never"]}
    assert load_local_records(tmp_path, "math500")[0]["id"] == "u/1"


def test_task_names() -> None:
    assert resolve_tasks(["all"]) == (["aime24", "aime25", "math500", "gpqa_diamond"], [])
    assert resolve_tasks(["AIME24,sambay_math500", "gpqa", "hellaswag"]) == (
        ["aime24", "math500", "gpqa_diamond"], ["hellaswag"])


def test_end_to_end_and_resume(tmp_path: Path) -> None:
    engine = ScriptedEngine(CharTokenizer())
    out = tmp_path / "run"
    first = run_eval(options(out, limit=2), runtime_factory=factory(engine, is_phi4_mini_flash=True))
    # one engine call for every problem of every task, each prompt forked into 4 samples from one prefill
    assert [(c["prompts"], c["num_samples"]) for c in engine.calls] == [(8, 4)]
    settings = engine.calls[0]["settings"]
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.6, 0.95, 32768)
    lines = samples(out)
    assert len(lines) == 4 * 2 * 4
    assert {"task", "doc_id", "sample", "prompt", "completion", "extracted", "target", "correct", "truncated",
            "tokens"} <= set(lines[0])
    assert lines[0]["prompt"].startswith("<|user|>Please reason step by step")  # chat template, no system prompt
    results = json.loads((out / "results.json").read_text())
    for task, m in results["metrics"].items():
        lm = results["lm_eval"]["results"][f"sambay_{task}"]
        assert m["avg@k"] == pytest.approx(lm["avg_at_k,all"])  # our metrics == lm-eval's aggregation
        assert m["maj@k"] == pytest.approx(lm["maj_at_k,all"])
        assert m["k"] == 4 and m["num_problems"] == 2
    assert results["published_phi4_mini_flash_reasoning"]["aime24"] == 52.29
    assert results["config"]["sampling"]["aime24"]["temperature"] == 0.6 and results["versions"]["lm-eval"] == "0.4.13"
    assert first["metrics"] == results["metrics"]

    # a rerun of the same command generates nothing and gives the same results
    engine2 = ScriptedEngine(CharTokenizer())
    second = run_eval(options(out, limit=2), runtime_factory=factory(engine2, is_phi4_mini_flash=True))
    assert engine2.calls == [] and second["metrics"] == first["metrics"]
    assert samples(out) == lines


def test_interrupted_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    reference = tmp_path / "ref"
    run_eval(options(reference, tasks=["aime24", "gpqa"]), runtime_factory=factory())
    out = tmp_path / "crash"
    crashing = ScriptedEngine(CharTokenizer(), fail_after=7)
    with pytest.raises(RuntimeError):
        run_eval(options(out, tasks=["aime24", "gpqa"]), runtime_factory=factory(crashing))
    journal = (out / "samples.jsonl").read_text()
    assert journal.count("\n") == 7  # finished samples were journaled as they completed
    (out / "samples.jsonl").write_text(journal + '{"task": "aime24", "doc_id": 2, "sam')  # torn line (kill -9)
    resumed = ScriptedEngine(CharTokenizer())
    run_eval(options(out, tasks=["aime24", "gpqa"]), runtime_factory=factory(resumed))
    assert sum(c["prompts"] * c["num_samples"] for c in resumed.calls) == 3 * 4 + 2 * 4 - 7
    assert samples(out) == samples(reference)
    ref_results = json.loads((reference / "results.json").read_text())
    new_results = json.loads((out / "results.json").read_text())
    assert new_results["metrics"] == ref_results["metrics"]


def test_changed_configuration_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_eval(options(out, tasks=["aime25"]), runtime_factory=factory())
    with pytest.raises(SambaYError, match="another configuration.*temperature"):
        run_eval(options(out, tasks=["aime25"], temperature=0.7), runtime_factory=factory())
    engine = ScriptedEngine(CharTokenizer())
    run_eval(options(out, tasks=["aime25"], temperature=0.7, force=True), runtime_factory=factory(engine))
    assert engine.calls and json.loads((out / "run_config.json").read_text())["temperature"] == 0.7


def test_rescore(tmp_path: Path) -> None:
    lines = [
        {"task": "aime24", "doc_id": 0, "completion": r"<think>x</think>\boxed{24}", "target": "24"},
        {"task": "aime24", "doc_id": 0, "completion": r"<think>\boxed{24}", "target": "24", "correct": True},
        {"task": "gpqa_diamond", "doc_id": 3, "completion": r"</think>\boxed{(B)}", "target": "B"},
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    results = rescore(tmp_path, json_out=True)
    scored = samples(tmp_path)
    assert [x["correct"] for x in scored] == [True, False, True]
    assert [x["sample"] for x in scored[:2]] == [0, 1] and scored[1]["truncated"] is True
    assert results["metrics"]["aime24"]["avg@k"] == 0.5
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["gpqa_diamond"]["avg@k"] == 1.0


def test_rescore_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SambaYError, match="no samples.jsonl"):
        rescore(tmp_path)
    (tmp_path / "samples.jsonl").write_text(json.dumps({"task": "aime24", "doc_id": 0}) + "\n")
    with pytest.raises(SambaYError, match="missing completion, target"):
        rescore(tmp_path)
    (tmp_path / "samples.jsonl").write_text(json.dumps({"task": "nope", "doc_id": 0, "completion": "",
                                                        "target": "1"}) + "\n")
    with pytest.raises(SambaYError, match="unknown task"):
        rescore(tmp_path)


def test_sampling_is_per_sequence(tmp_path: Path) -> None:
    """Same seed -> same samples whatever the batch size; another seed -> other samples."""
    def script(prompt: str, rng: random.Random) -> str:
        return f"</think>\\boxed{{{rng.randint(0, 10**6)}}}"

    a, b, c = (tmp_path / n for n in "abc")
    run_eval(options(a, tasks=["math500"]), runtime_factory=factory(ScriptedEngine(CharTokenizer(), script)))
    run_eval(options(b, tasks=["math500"], batch_size=1), runtime_factory=factory(ScriptedEngine(CharTokenizer(), script)))
    run_eval(options(c, tasks=["math500"], seed=1), runtime_factory=factory(ScriptedEngine(CharTokenizer(), script)))
    assert [x["completion"] for x in samples(a)] == [x["completion"] for x in samples(b)]
    assert [x["completion"] for x in samples(a)] != [x["completion"] for x in samples(c)]
    assert len({x["completion"] for x in samples(a)}) > 6  # the 4 samples of one problem differ
