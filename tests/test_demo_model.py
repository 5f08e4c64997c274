"""The embedded demo model, its recipe (tools/train_demo.py via sambay_cli.demo) and the embedded arith eval set."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from sambay_cli.demo import arith
from sambay_cli.demo.recipe import (
    TINY_SHAPE,
    TrainSettings,
    build_tokenizer,
    encode_sample,
    export_model,
    extract_boxed,
    train,
)
from sambay_cli.model.modeling import FLOAT32_PARAMS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sambay_cli" / "assets" / "demo-model"
HUB_TOKENIZER_CONFIG = REPO / "tests" / "fixtures" / "phi4flash-hub-metadata" / "tokenizer_config.json"


@pytest.fixture
def one_thread():
    """Tiny ops run fastest on one intra-op thread (and do not collapse on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_model():
    from sambay_cli.loading import load_model

    return load_model(DEMO)


@pytest.fixture(scope="module")
def demo_tokenizer():
    from sambay_cli.tokenizer import Tokenizer

    return Tokenizer.from_dir(DEMO)


# ------------------------------------------------------------------------------------------------ data
def test_reasoning_traces_are_correct_arithmetic():
    rng = random.Random(0)
    for _ in range(3000):
        p = arith.sample_problem(rng)
        text = arith.completion(p)
        assert extract_boxed(text) == str(p.answer)
        assert f"So {p.a}{arith.SYMBOL[p.op]}{p.b}={p.answer}." in text
        assert text.startswith("<think>") and "</think>" in text
        if p.op == "sub":
            assert p.a >= p.b
    assert "carry 1; tens 5+8+1=14" in arith.completion(arith.Problem("add", 457, 386))
    assert "borrow: 14-8=6" in arith.completion(arith.Problem("sub", 734, 258))
    assert "8*8=64, 64+5=69" in arith.completion(arith.Problem("mul", 87, 8))


def test_eval_set_is_shipped_and_regenerates_identically():
    shipped = [json.loads(line) for line in arith.ASSET_EVAL_PATH.read_text(encoding="utf-8").splitlines()]
    assert shipped == arith.eval_problems()
    assert len(shipped) >= 500
    assert len({r["id"] for r in shipped}) == len(shipped)
    assert {r["phrasing"] for r in shipped} == {"seen", "unseen"}
    assert {r["op"] for r in shipped} == set(arith.OPS)
    for r in shipped:
        assert set(r) >= {"id", "problem", "answer", "phrasing"}
        assert str(arith.Problem(r["op"], r["a"], r["b"]).answer) == r["answer"]
        train_templates = arith.TRAIN_PHRASINGS[r["op"]]
        assert (r["template"] in train_templates) == (r["phrasing"] == "seen")


def test_training_corpus_is_disjoint_from_the_eval_set():
    keys = arith.eval_keys(arith.eval_problems())
    seen_templates = {t for ts in arith.TRAIN_PHRASINGS.values() for t in ts}
    assert not seen_templates & {t for ts in arith.UNSEEN_PHRASINGS.values() for t in ts}
    stream = arith.training_stream(1234, keys)
    for _ in range(20000):
        _prompt, _reply, p = next(stream)
        assert p.key not in keys
        assert (p.op, p.b, p.a) not in keys or p.op == "sub"


def test_instruction_prefix_matches_the_eval_framework():
    tasks = pytest.importorskip("sambay_cli.evaluation.tasks")
    assert tasks.MATH_INSTRUCTION == arith.MATH_INSTRUCTION


# ------------------------------------------------------------------------------------------- tokenizer
def test_demo_tokenizer_splits_digits_and_uses_the_phi4_chat_template(demo_tokenizer):
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_file(str(DEMO / "tokenizer.json"))
    ids = backend.encode("1234567890", add_special_tokens=False).ids
    assert [backend.id_to_token(i) for i in ids] == list("1234567890")
    assert len(backend.encode("37 + 48 = 85", add_special_tokens=False).ids) >= 6
    real = json.loads(HUB_TOKENIZER_CONFIG.read_text(encoding="utf-8"))["chat_template"]
    ours = json.loads((DEMO / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert ours == real
    rendered = demo_tokenizer.apply_chat_template([{"role": "user", "content": "What is 37 + 48?"}],
                                                  add_generation_prompt=True, tokenize=True)
    assert list(rendered) == encode_sample(backend, arith.chat_prompt("What is 37 + 48?"), "").ids
    for special in ("<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>", "<think>", "</think>"):
        assert demo_tokenizer.token_to_id(special) is not None


# ------------------------------------------------------------------------------------------ checkpoint
def test_shipped_checkpoint_layout_and_record():
    from safetensors import safe_open

    from sambay_cli.config import SambaYConfig

    names = {p.name for p in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "training.json", "README.md"} <= names
    total = sum(p.stat().st_size for p in DEMO.iterdir())
    assert total <= 16 * 2**20
    cfg = SambaYConfig.from_file(DEMO)
    assert cfg.model_type == "phi4flash" and cfg.num_hidden_layers == 8 and cfg.hidden_size % 128 == 0
    assert cfg.vocab_size % 128 == 0 and cfg.intermediate_size % 128 == 0
    record = json.loads((DEMO / "training.json").read_text(encoding="utf-8"))
    assert record["parameters"] <= 8_000_000
    assert record["weights_sha256"] == hashlib.sha256((DEMO / "model.safetensors").read_bytes()).hexdigest()
    assert record["eval"]["accuracy"] >= 90.0
    gen = json.loads((DEMO / "generation_config.json").read_text(encoding="utf-8"))
    assert not {"temperature", "top_p", "top_k", "min_p", "do_sample"} & set(gen)
    assert len(gen["eos_token_id"]) == 2
    with safe_open(str(DEMO / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            leaf = name.rsplit(".", 1)[-1]
            assert dtype == ("F32" if leaf in FLOAT32_PARAMS else "BF16"), name


def test_default_model_dir_is_the_demo_model():
    from sambay_cli.textgen import default_model_dir

    assert default_model_dir().resolve() == DEMO.resolve()


def test_demo_model_answers_arithmetic_greedily(demo_model, demo_tokenizer, one_thread):
    from sambay_cli.generation import generate

    problems = {"What is 37 + 48?": "85", "Compute 734 - 258.": "476", "What is 47 * 6?": "282",
                "Calculate 905 plus 98.": "1003"}
    prompts = [demo_tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=True) for q in problems]
    end = [demo_tokenizer.token_to_id("<|end|>")]
    out = generate(demo_model, prompts, max_new_tokens=120, temperature=0.0, stop_token_ids=end)
    for (question, answer), tokens, reason in zip(problems.items(), out.tokens, out.finish_reasons, strict=True):
        text = demo_tokenizer.decode(tokens, skip_special_tokens=True)
        assert reason == "eos", (question, text)
        assert extract_boxed(text) == answer, (question, text)
        assert text.startswith("<think>")


# -------------------------------------------------------------------------------------------- recipe
def test_recipe_smoke_trains_resumes_and_loss_decreases(tmp_path, one_thread):
    settings = TrainSettings(steps=3, batch_size=4, lr=3e-3, warmup=1, seed=7, save_every=2, log_every=1,
                             shape=TINY_SHAPE)
    model, state, tok = train(tmp_path, settings, device="cpu", resume=False, log=lambda _line: None)
    assert state.step == 3 and (tmp_path / "ckpt.json").is_file()
    settings.steps = 6
    model, state, tok = train(tmp_path, settings, device="cpu", resume=True, log=lambda _line: None)
    assert state.step == 6
    losses = [h["loss"] for h in state.history]
    assert [h["step"] for h in state.history] == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0] - 0.3
    meta = json.loads((tmp_path / "ckpt.json").read_text(encoding="utf-8"))
    assert meta["step"] == 6 and all((tmp_path / s).is_file() for s in meta["shards"])
    assert tok.token_to_id("<|end|>") is not None
    assert not torch.are_deterministic_algorithms_enabled()
    # export: a loadable model directory, written atomically; a second export replaces the first whole
    from sambay_cli.loading import load_model

    out = tmp_path / "export"
    for step in (1, 2):
        export_model(model, tok, out, {"step": step})
    assert json.loads((out / "training.json").read_text(encoding="utf-8"))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []  # no staging left
    loaded = load_model(out, device="cpu", dtype=torch.float32)
    assert loaded.config.num_hidden_layers == TINY_SHAPE.num_hidden_layers


def test_the_shipped_demo_tokenizer_is_what_the_recipe_trains():
    """The recipe's tokenizer (shared BPE trainer, seed of the shipped run) reproduces the shipped tokenizer.json."""
    tok = build_tokenizer(TrainSettings().seed)
    assert json.loads(tok.to_str()) == json.loads((DEMO / "tokenizer.json").read_text(encoding="utf-8"))
