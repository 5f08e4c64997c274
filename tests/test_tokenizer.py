"""Tokenizer, chat template and generation config (sambay_cli/tokenizer.py) against the real Phi-4 metadata and the
512-id test tokenizer in tests/fixtures/tokenizer-tiny."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sambay_cli.errors import SambaYError
from sambay_cli.tokenizer import (
    GenerationConfig,
    Tokenizer,
    load_generation_config,
    render_chat_template,
)

FIXTURES = Path(__file__).parent / "fixtures"
HUB = FIXTURES / "phi4flash-hub-metadata"
TINY = FIXTURES / "tokenizer-tiny"
REPO_ROOT = Path(__file__).resolve().parents[1]

QUESTION = "How to solve 3*x^2+4*x+5=1?"
MULTIBYTE = "√ 37 + 48 = 85 — café ✓ 数学 🙂"


@pytest.fixture(scope="module")
def real_template() -> str:
    return json.loads((HUB / "tokenizer_config.json").read_text())["chat_template"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(TINY)


# ------------------------------------------------------------------------------------------ real chat template
def test_real_template_renders_card_prompt_byte_for_byte(real_template: str) -> None:
    text = render_chat_template(
        real_template, [{"role": "user", "content": QUESTION}], add_generation_prompt=True, eos_token="<|endoftext|>"
    )
    assert text.encode() == b"<|user|>How to solve 3*x^2+4*x+5=1?<|end|><|assistant|>"


def test_real_template_system_and_multi_turn(real_template: str) -> None:
    messages = [
        {"role": "system", "content": "You are a math expert."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2?"},
    ]
    text = render_chat_template(real_template, messages, eos_token="<|endoftext|>")
    assert text == (
        "<|system|>You are a math expert.<|end|><|user|>1+1?<|end|><|assistant|>2<|end|><|user|>2+2?<|end|><|assistant|>"
    )


def test_real_template_tools_form(real_template: str) -> None:
    tools = json.dumps([{"name": "calc", "description": "evaluate", "parameters": {"expr": {"type": "str"}}}])
    messages = [
        {"role": "system", "content": "Use tools.", "tools": tools},
        {"role": "user", "content": "7*6?"},
    ]
    text = render_chat_template(real_template, messages, eos_token="<|endoftext|>")
    assert text == f"<|system|>Use tools.<|tool|>{tools}<|/tool|><|end|><|user|>7*6?<|end|><|assistant|>"
    # tools=None falls back to the plain system form
    messages[0]["tools"] = None
    plain = render_chat_template(real_template, messages, eos_token="<|endoftext|>")
    assert plain.startswith("<|system|>Use tools.<|end|><|user|>")


def test_real_template_without_generation_prompt_ends_with_eos(real_template: str) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = render_chat_template(real_template, messages, add_generation_prompt=False, eos_token="<|endoftext|>")
    assert text == "<|user|>hi<|end|><|assistant|>hello<|end|><|endoftext|>"
    assert not text.endswith("<|assistant|>")


def test_render_sandbox_features() -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{{ m | tojson }}\n{% endfor %}{{ bos_token }}{{ extra_var }}"
    )
    messages = [{"role": "user", "content": "café"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]
    out = render_chat_template(template, messages, bos_token="<s>", extra_var="!")
    # trim_blocks eats the newline after a block tag, not after an expression; tojson keeps non-ASCII as is
    assert out == '{"role": "user", "content": "café"}\n{"role": "user", "content": "b"}\n<s>!'
    with pytest.raises(SambaYError, match="roles must alternate"):
        render_chat_template("{{ raise_exception('roles must alternate') }}", messages)
    with pytest.raises(SambaYError, match="does not parse"):
        render_chat_template("{% for m in messages %}", messages)
    with pytest.raises(SambaYError):  # the sandbox refuses attribute access to internals
        render_chat_template("{{ messages.__class__.__mro__ }}", messages)


# ------------------------------------------------------------------------------------------ generation config
def test_real_generation_config_eos_ids() -> None:
    gen = load_generation_config(HUB)
    assert isinstance(gen, GenerationConfig)
    assert gen.eos_token_ids == [200020, 199999]
    assert gen.bos_token_id == 199999 and gen.pad_token_id == 199999
    assert gen.temperature is None and gen.do_sample is None
    assert gen.raw["transformers_version"] == "4.45.0"


def test_generation_config_int_eos_missing_and_invalid(tmp_path: Path) -> None:
    assert load_generation_config(tmp_path) is None
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": 7, "temperature": 0.6, "top_p": 0.95, "top_k": 50, "do_sample": True})
    )
    gen = load_generation_config(tmp_path)
    assert gen is not None and gen.eos_token_ids == [7]
    assert (gen.temperature, gen.top_p, gen.top_k, gen.do_sample) == (0.6, 0.95, 50, True)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(SambaYError, match="eos_token_id"):
        load_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(SambaYError, match="not valid JSON"):
        load_generation_config(tmp_path)


def test_tiny_generation_config_stops_on_end_and_endoftext(tok: Tokenizer) -> None:
    gen = load_generation_config(TINY)
    assert gen is not None
    assert gen.eos_token_ids == [tok.token_to_id("<|end|>"), tok.token_to_id("<|endoftext|>")]


# ------------------------------------------------------------------------------------------ tiny tokenizer
def test_tiny_tokenizer_shape(tok: Tokenizer) -> None:
    assert tok.vocab_size == 512
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == tok.token_to_id("<|endoftext|>") == 0
    assert tok.add_bos_token is False and tok.add_eos_token is False
    assert tok.token_to_id("<think>") is not None and tok.token_to_id("</think>") is not None
    assert tok.token_to_id("<|no such token|>") is None


def test_tiny_added_token_flags_match_the_real_ones() -> None:
    real = json.loads((HUB / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    tiny = json.loads((TINY / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    real_flags = {e["content"]: (e["special"], e["rstrip"], e["lstrip"]) for e in real.values()}
    tiny_flags = {e["content"]: (e["special"], e["rstrip"], e["lstrip"]) for e in tiny.values()}
    assert len(real_flags) == 12
    for content, flags in real_flags.items():
        assert tiny_flags[content] == flags, content
    assert tiny_flags["<think>"][0] is False and tiny_flags["</think>"][0] is False
    # the backend agrees with the config: ids in tokenizer.json
    backend = json.loads((TINY / "tokenizer.json").read_text())
    backend_flags = {t["content"]: (t["special"], t["rstrip"], t["lstrip"]) for t in backend["added_tokens"]}
    for content, flags in tiny_flags.items():
        assert backend_flags[content] == flags, content
    assert json.loads((TINY / "tokenizer_config.json").read_text())["chat_template"] == json.loads(
        (HUB / "tokenizer_config.json").read_text()
    )["chat_template"]


def test_no_bos_when_add_bos_token_false(tok: Tokenizer) -> None:
    ids = tok.encode("hello world")
    assert ids == tok.encode("hello world", add_special_tokens=False)
    assert ids[0] != tok.bos_token_id
    assert tok.eos_token_id not in ids


def test_bos_and_eos_added_when_config_says_so(tmp_path: Path) -> None:
    shutil.copytree(TINY, tmp_path / "tok")
    cfg_path = tmp_path / "tok" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(add_bos_token=True, add_eos_token=True)
    cfg_path.write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(tmp_path / "tok")
    plain = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == [tok.bos_token_id, *plain, tok.eos_token_id]


def test_special_token_strings_map_to_ids(tok: Tokenizer) -> None:
    ids = tok.encode("<|user|>Hi<|end|><|assistant|><think>x</think>")
    assert ids[0] == tok.token_to_id("<|user|>")
    for token in ("<|end|>", "<|assistant|>", "<think>", "</think>"):
        assert tok.token_to_id(token) in ids
    # rstrip tokens swallow the whitespace that follows them, like the real tokenizer
    assert tok.encode("<|end|>\n\nHi") == tok.encode("<|end|>Hi")


@pytest.mark.parametrize(
    "text",
    ["How to solve 3*x^2+4*x+5=1? Let us think step by step.", "  spaces\tand\nnewlines\r\n", MULTIBYTE, ""],
)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_skip_special_tokens_keeps_non_special_added_tokens(tok: Tokenizer) -> None:
    ids = tok.encode("<|user|>Q<|end|><|assistant|><|tool_call|>f()<|/tool_call|><think>t</think>A<|end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "Q<|tool_call|>f()<|/tool_call|><think>t</think>A"
    assert tok.decode(ids).startswith("<|user|>Q<|end|><|assistant|>")


def test_unknown_ids_decode_to_nothing(tok: Tokenizer) -> None:
    ids = tok.encode("ok")
    assert tok.decode([*ids, 100_000]) == "ok"


def test_stream_decoder_reassembles_multibyte_text(tok: Tokenizer) -> None:
    text = MULTIBYTE + " <|end|>"
    ids = tok.encode(text)
    # the byte-level tokens really do split characters, or this test would prove nothing
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some pushes had to wait for the rest of a character


def test_stream_decoder_skip_special_and_flush_of_incomplete_char(tok: Tokenizer) -> None:
    ids = tok.encode("<|user|>é<|end|>")
    decoder = tok.stream_decoder(skip_special_tokens=True)
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "é"
    # a dangling half character is held back, then released by flush()
    e_acute = "é".encode()
    lead_ids = [i for i in tok.encode("é") if tok.decode([i]) != "é"]
    assert lead_ids, "é should take two byte tokens in the tiny vocabulary"
    partial = tok.stream_decoder()
    assert partial.push(lead_ids[0]) == ""
    assert partial.flush() == e_acute[:1].decode("utf-8", errors="replace")


def test_apply_chat_template(tok: Tokenizer) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    text = tok.apply_chat_template(messages)
    assert text == "<|user|>How to solve 3*x^2+4*x+5=1?<|end|><|assistant|>"
    ids = tok.apply_chat_template(messages, tokenize=True)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.token_to_id("<|user|>") and ids[-1] == tok.token_to_id("<|assistant|>")
    assert tok.apply_chat_template(messages, add_generation_prompt=False).endswith("<|end|><|endoftext|>")


def test_no_chat_template_is_a_user_error(tmp_path: Path) -> None:
    shutil.copy(TINY / "tokenizer.json", tmp_path / "tokenizer.json")
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.chat_template is None and tok.bos_token_id is None
    with pytest.raises(SambaYError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_jinja_file_is_used(tmp_path: Path) -> None:
    shutil.copy(TINY / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "[x]"


def test_added_tokens_missing_from_tokenizer_json_are_registered(tmp_path: Path) -> None:
    shutil.copytree(TINY, tmp_path / "tok")
    (tmp_path / "tok" / "added_tokens.json").write_text(json.dumps({"<|extra|>": 512}))
    tok = Tokenizer.from_dir(tmp_path / "tok")
    assert tok.token_to_id("<|extra|>") == 512 and tok.vocab_size == 513
    assert tok.encode("<|extra|>") == [512]


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SambaYError, match="not found"):
        Tokenizer.from_dir(tmp_path / "absent")
    with pytest.raises(SambaYError, match="tokenizer.json not found"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(SambaYError, match="corrupt or unsupported") as info:
        Tokenizer.from_dir(tmp_path)
    assert "\n" not in str(info.value)
    shutil.copy(TINY / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(SambaYError, match="JSON object"):
        Tokenizer.from_dir(tmp_path)


def test_fixture_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "make_test_tokenizer.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).read_bytes() == (TINY / name).read_bytes(), name
