from __future__ import annotations

import io
import json

import pytest
from conftest import TINY, TOKENIZER_TINY
from rich.console import Console

from sambay_cli.cli import main
from sambay_cli.textgen import ThinkStyler, split_reasoning

BASE = ["generate", str(TINY), "--tokenizer", str(TOKENIZER_TINY)]


def _run(capsys, args):
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_generate_json_greedy_matches_engine(capsys):
    code, out, _ = _run(capsys, BASE + ["-p", "What is 37 + 48?", "-n", "8", "--json"])
    assert code == 0
    obj = json.loads(out)
    assert obj["finish_reason"] == "length" and obj["truncated"] is True
    assert len(obj["token_ids"]) == 8
    assert obj["sambay_version"] and obj["model"]["config_sha256"]
    # chat template applied: the prompt ids end with <|end|><|assistant|>
    from sambay_cli.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(TOKENIZER_TINY)
    assert obj["prompt_token_ids"][-2:] == [tok.token_to_id("<|end|>"), tok.token_to_id("<|assistant|>")]
    # same tokens as a second, identical run (greedy, fp32)
    _, out2, _ = _run(capsys, BASE + ["-p", "What is 37 + 48?", "-n", "8", "--json"])
    assert json.loads(out2)["token_ids"] == obj["token_ids"]


def test_generate_fp8_kv_cache(capsys):
    code, out, _ = _run(capsys, BASE + ["-p", "What is 37 + 48?", "-n", "6", "--kv-cache-dtype", "fp8", "--json"])
    obj = json.loads(out)
    assert code == 0 and obj["kv_cache_dtype"] == "float8_e4m3fn" and len(obj["token_ids"]) == 6


def test_generate_raw_and_seeded_sampling(capsys):
    args = BASE + ["-p", "hello", "--raw", "-n", "6", "-t", "0.9", "--seed", "11", "--json"]
    _, a, _ = _run(capsys, args)
    _, b, _ = _run(capsys, args)
    assert json.loads(a)["token_ids"] == json.loads(b)["token_ids"]
    assert json.loads(a)["sampling"]["defaults_from"] == "command line"


def test_generate_streams_and_prints_stats(capsys):
    code, out, err = _run(capsys, BASE + ["-p", "hi", "-n", "4"])
    assert code == 0
    assert "decode" in err and "stop: length" in err and "token limit" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "   "], "prompt is empty"),
        (["-p", "hi", "--max-context", "5"], "exceeds the allowed context"),
        (["-p", "hi", "--raw", "--system", "be brief"], "--system needs the chat template"),
        (["-p", "hi", "--kv-cache-dtype", "int3"], "--kv-cache-dtype must be auto or fp8"),
    ],
)
def test_generate_user_errors(capsys, args, message):
    code, _, err = _run(capsys, BASE + args)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_model_and_uncached_hub_id(capsys, tmp_path, monkeypatch):
    code, _, err = _run(capsys, ["generate", str(tmp_path / "nope"), "-p", "hi"])
    assert code == 2 and "no such model directory" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, _, err = _run(capsys, ["generate", "someone/not-downloaded", "-p", "hi"])
    assert code == 2 and "sambay pull" in err


def test_missing_tokenizer_is_a_clear_error(capsys):
    code, _, err = _run(capsys, ["generate", str(TINY), "-p", "hi"])
    assert code == 2 and "no tokenizer.json" in err and "--tokenizer" in err


def test_batch_mode_incremental_resume_and_bad_lines(capsys, tmp_path):
    inp = tmp_path / "prompts.jsonl"
    outp = tmp_path / "out.jsonl"
    inp.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "one plus one"}),
        "{this is not json",
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "two"}]}),
        json.dumps({"prompt": "three"}),
    ]) + "\n")
    code, _, err = _run(capsys, BASE + ["--input", str(inp), "--output", str(outp), "-n", "4", "--batch-size", "2"])
    assert code == 2  # one bad line, reported with its number; the rest processed
    assert f"{inp}:2" in err and "not JSON" in err
    rows = [json.loads(line) for line in outp.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "b", "line-4"]
    assert all(r["generated_tokens"] == 4 and r["finish_reason"] == "length" for r in rows)
    # a torn last line (killed mid-write) and a rerun: only missing rows are generated
    kept = [json.dumps(r) for r in rows if r["id"] != "b"]
    outp.write_text("\n".join(kept) + "\n" + '{"id": "b", "compl')
    code, _, err = _run(capsys, BASE + ["--input", str(inp), "--output", str(outp), "-n", "4"])
    rows2 = [json.loads(line) for line in outp.read_text().splitlines()]
    assert sorted(r["id"] for r in rows2) == ["a", "b", "line-4"]
    assert "1 to go" in " ".join(err.split())  # however the console wrapped the line


def test_split_reasoning():
    assert split_reasoning("<think>a b</think> The answer is 3.") == ("a b", " The answer is 3.", True)
    assert split_reasoning("<think>unfinished \\boxed{2}") == ("unfinished \\boxed{2}", "", False)
    assert split_reasoning("plain") == (None, "plain", True)


def test_think_styler_dims_reasoning_even_with_split_tags():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=200)
    styler = ThinkStyler(console)
    for piece in ["<th", "ink>reason", "ing</thi", "nk>answer"]:
        styler.feed(piece)
    styler.close()
    text = buf.getvalue()
    assert "\x1b[2m" in text  # dim escape used
    plain = Console(file=io.StringIO(), force_terminal=False)
    styler2 = ThinkStyler(plain)
    for piece in ["<th", "ink>reason", "ing</thi", "nk>answer"]:
        styler2.feed(piece)
    styler2.close()
    assert plain.file.getvalue() == "<think>reasoning</think>answer"
