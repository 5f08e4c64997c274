"""The `sambay` lm-eval model: loglikelihood tasks with the fixture model, generation kwargs, registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from sambay_cli.evaluation import runner
from sambay_cli.evaluation.fakes import CharTokenizer, ScriptedEngine
from sambay_cli.evaluation.lm import SambayLM, cut_at_stop, settings_from_gen_kwargs
from sambay_cli.evaluation.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from sambay_cli.loading import load_model
    from sambay_cli.tokenizer import Tokenizer

    return (load_model(FIXTURES / "phi4flash-tiny-a", dtype="float32", device="cpu"),
            Tokenizer.from_dir(FIXTURES / "tokenizer-tiny"))


def _brute_logprob(model, ids: list[int], n: int) -> float:
    logits = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)
    return float(sum(logits[i - 1, ids[i]] for i in range(len(ids) - n, len(ids))))


def test_loglikelihood_matches_single_sequence_forward(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    lm = SambayLM(backend=ScriptedEngine(CharTokenizer()), tokenizer=tok, model=model, batch_size=3)
    pairs = [("The cat sat on the", " mat"), ("A", " much longer continuation here"), ("Hello world", "!"),
             ("", "no context at all")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = lm.loglikelihood(requests)
    for (context, continuation), (logprob, greedy) in zip(pairs, results, strict=True):
        ctx = tok.encode(context, add_special_tokens=True) if context else [tok.eos_token_id]
        whole = tok.encode(context + continuation, add_special_tokens=True)
        cont = whole[len(ctx):] if context else tok.encode(continuation, add_special_tokens=True)
        ids = ctx + cont
        assert logprob == pytest.approx(_brute_logprob(model, ids, len(cont)), abs=1e-4)
        assert isinstance(greedy, bool) and logprob < 0
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("some text to score",), 0)])
    ids = [tok.eos_token_id] + tok.encode("some text to score", add_special_tokens=False)
    assert rolling[0] == pytest.approx(_brute_logprob(model, ids, len(ids) - 1), abs=1e-4)


def test_passthrough_multiple_choice_task(tmp_path: Path, model_and_tokenizer, monkeypatch) -> None:
    """Any lm-eval task name passes through (here a local multiple-choice task: loglikelihood requests)."""
    model, tok = model_and_tokenizer
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"Question {i}?", "choices": ["yes", "no"], "label": i % 2})
                              for i in range(3)) + "\n")
    (tmp_path / "toy_mc.yaml").write_text(
        f"task: toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1\n"
    )
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(runner, "_task_manager",
                        lambda include_ours, metadata: TaskManager(include_path=str(tmp_path), include_defaults=False))
    runtime = Runtime(backend=ScriptedEngine(CharTokenizer()), tokenizer=tok, model=model, info={"path": "fixture"})
    result = runner.run_eval(runner.EvalOptions(model="fixture", tasks=["toy_mc"], output=tmp_path / "out",
                                                json_out=True), runtime_factory=lambda: runtime)
    acc = result["lm_eval"]["results"]["toy_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and result["lm_eval"]["n-samples"]["toy_mc"]["effective"] == 3


def test_generation_kwargs_are_honoured() -> None:
    s = settings_from_gen_kwargs({"until": ["\n\n"], "do_sample": True, "temperature": 0.6, "top_p": 0.9,
                                  "top_k": 20, "max_gen_toks": 99})
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens, s.stop_strings) == (0.6, 0.9, 20, 99, ("\n\n",))
    greedy = settings_from_gen_kwargs({"until": "Q:", "temperature": 0.7})
    assert greedy.temperature == 0.0 and greedy.stop_strings == ("Q:",) and greedy.max_new_tokens == 256
    assert cut_at_stop("answer\n\nQ: next", ("Q:", "\n\n")) == "answer"


def test_generate_until_groups_samples_and_applies_stops() -> None:
    tok = CharTokenizer()
    engine = ScriptedEngine(tok, script=lambda prompt, rng: f"A{rng.randint(0, 9)} STOP tail")
    lm = SambayLM(backend=engine, tokenizer=tok)
    kwargs = {"until": ["STOP"], "do_sample": True, "temperature": 1.0, "max_gen_toks": 50}
    requests = []
    for doc_id, prompt in enumerate(["p0", "p1"]):
        instance = Instance("generate_until", {"target": "1"}, (prompt, kwargs), doc_id,
                            metadata=("toy", doc_id, 3))
        requests += [instance] * 3  # lm-eval repeats: the same instance k times
    out = lm.generate_until(requests)
    assert len(out) == 6 and all(o.startswith("A") and o.endswith(" ") and "STOP" not in o for o in out)
    assert [(c["prompts"], c["num_samples"]) for c in engine.calls] == [(2, 3)]
    assert engine.calls[0]["settings"].stop_strings == ("STOP",)


def test_registered_with_lm_eval() -> None:
    from lm_eval.api.registry import get_model

    assert get_model("sambay") is SambayLM


def test_real_engine_end_to_end(tmp_path: Path) -> None:
    """The fixture model through the project's engine: samples do not depend on the batch size."""
    from sambay_cli.evaluation.runtime import load_runtime

    runtime = load_runtime(str(FIXTURES / "phi4flash-tiny-a"), tokenizer_dir=str(FIXTURES / "tokenizer-tiny"),
                           dtype="float32", device="cpu")
    data = Path(__file__).parent / "data"
    outputs = []
    for name, batch in (("a", None), ("b", 1)):
        out = tmp_path / name
        runner.run_eval(runner.EvalOptions(model="fixture", tasks=["aime24", "gpqa"], samples=3, limit=2,
                                           max_tokens=6, data_dir=str(data), output=out, batch_size=batch,
                                           json_out=True), runtime_factory=lambda: runtime)
        outputs.append([json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()])
    assert len(outputs[0]) == 2 * 2 * 3
    assert all(x["tokens"] <= 6 and x["finish_reason"] in ("eos", "length") for x in outputs[0])
    assert [x["completion"] for x in outputs[0]] == [x["completion"] for x in outputs[1]]
    assert len({x["completion"] for x in outputs[0]}) > 1
