"""Tokenizer and chat template for SambaY models, without `transformers`.

:class:`Tokenizer` wraps a Hugging Face ``tokenizer.json`` (read with the ``tokenizers`` library) together with the
settings of ``tokenizer_config.json`` (BOS/EOS policy, special tokens, chat template). Phi-4-mini-flash-reasoning uses
a byte-level BPE tokenizer with ``add_bos_token = add_eos_token = false``: no BOS is prepended.

:func:`render_chat_template` renders a Jinja2 chat template in a sandbox configured like ``transformers`` does
(``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``, ``tojson``, ``strftime_now``).

:func:`load_generation_config` reads ``generation_config.json`` (EOS ids and sampling defaults).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import SambaYError

__all__ = [
    "Tokenizer",
    "StreamDecoder",
    "GenerationConfig",
    "render_chat_template",
    "load_generation_config",
]

_REPLACEMENT_CHAR = "\ufffd"


# --------------------------------------------------------------------------------------------------- file helpers
# (content, special, rstrip) as in Phi-4-mini-flash-reasoning's tokenizer_config.json, in id order.
PHI4_ADDED_TOKENS: list[tuple[str, bool, bool]] = [
    ("<|endoftext|>", True, False),
    ("<|endofprompt|>", True, False),
    ("<|assistant|>", True, True),
    ("<|end|>", True, True),
    ("<|user|>", True, True),
    ("<|system|>", True, True),
    ("<|tool|>", False, True),
    ("<|/tool|>", False, True),
    ("<|tool_call|>", False, True),
    ("<|/tool_call|>", False, True),
    ("<|tool_response|>", False, True),
    ("<|tag|>", True, True),
]
PLAIN_ADDED_TOKENS = ["<think>", "</think>"]
PHI4_EOS_TOKEN = "<|endoftext|>"  # also BOS, PAD and UNK in Phi-4's tokenizer config


def add_phi4_tokens(backend: Any) -> None:
    """Register the Phi-4 added tokens after ``<|endoftext|>`` (a special token of BPE training) and the plain
    ``<think>``/``</think>`` tokens on a freshly trained `tokenizers` backend, with the real flags."""
    from tokenizers import AddedToken

    for content, special, rstrip in PHI4_ADDED_TOKENS[1:]:
        token = AddedToken(content, special=special, rstrip=rstrip, lstrip=False, normalized=False, single_word=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])


def train_phi4_shaped_bpe(texts: Sequence[str], *, total_ids: int, patterns: Sequence[str], min_frequency: int,
                          split_digits: bool = False, exact: bool = False) -> Any:
    """A small byte-level BPE (``tokenizers``) shaped like the Phi-4 tokenizer, for the demo model and test fixtures.

    Text is split by ``patterns`` (regexes, isolated; digits one by one first with ``split_digits``), then byte-level
    BPE is trained on ``texts`` (single-threaded, so the merge order is reproducible). Ids: 0 = <|endoftext|>, then
    the 256 byte symbols, the learned merges, and the other Phi-4 added tokens, at most ``total_ids`` in all
    (``exact``: exactly). Raises ValueError when the ids do not fit.
    """
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    splits = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    splits += [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    later = len(PHI4_ADDED_TOKENS) - 1 + len(PLAIN_ADDED_TOKENS)  # added after training (eos is id 0)
    trainer = trainers.BpeTrainer(
        vocab_size=total_ids - later,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(PHI4_EOS_TOKEN, special=True, normalized=False)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if exact and tok.get_vocab_size(with_added_tokens=True) != total_ids - later:
        raise ValueError(f"training text too small: got {tok.get_vocab_size(with_added_tokens=True)} ids, "
                         f"want {total_ids - later}")
    add_phi4_tokens(tok)
    total = tok.get_vocab_size(with_added_tokens=True)
    if total > total_ids or (exact and total != total_ids):
        raise ValueError(f"tokenizer has {total} ids, {'not' if exact else 'more than'} {total_ids}")
    return tok


def phi4_tokenizer_config(backend: Any, *, chat_template: str, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json in the real Phi-4 file's shape (same flags, no BOS), with this vocabulary's ids."""
    decoder: dict[str, dict] = {}
    flags = [*PHI4_ADDED_TOKENS, *((t, False, False) for t in PLAIN_ADDED_TOKENS)]
    for content, special, rstrip in flags:
        decoder[str(backend.token_to_id(content))] = {"content": content, "lstrip": False, "normalized": False,
                                                      "rstrip": rstrip, "single_word": False, "special": special}
    return {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": decoder, "bos_token": PHI4_EOS_TOKEN, "chat_template": chat_template,
        "clean_up_tokenization_spaces": False, "eos_token": PHI4_EOS_TOKEN, "model_max_length": model_max_length,
        "pad_token": PHI4_EOS_TOKEN, "tokenizer_class": "GPT2Tokenizer", "unk_token": PHI4_EOS_TOKEN,
    }


def phi4_special_tokens_map() -> dict[str, dict]:
    entry = {"content": PHI4_EOS_TOKEN, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {name: dict(entry) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}

def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    """Read a JSON object from ``path``; None when absent and not required. One-line SambaYError otherwise."""
    if not path.is_file():
        if required:
            raise SambaYError(f"{path.name} not found in {path.parent}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SambaYError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SambaYError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special-token entry is either a string or an AddedToken-like dict {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _pick_chat_template(config: Mapping[str, Any], model_dir: Path) -> str | None:
    """The chat template: tokenizer_config.json's ``chat_template`` (a string, or a list of named templates from
    which "default" is taken), else a ``chat_template.jinja`` / ``chat_template.json`` file next to it."""
    template = config.get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        chosen = named.get("default") or next(iter(named.values()), None)
        return chosen if isinstance(chosen, str) else None
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = _read_json(model_dir / "chat_template.json", required=False)
    if json_file and isinstance(json_file.get("chat_template"), str):
        return json_file["chat_template"]
    return None


# --------------------------------------------------------------------------------------------------- chat template
def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:
    """Like transformers' ``tojson`` filter: no HTML escaping, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_template(template: str):
    compiled = _TEMPLATE_CACHE.get(template)
    if compiled is not None:
        return compiled
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as e:
        raise SambaYError(f"chat template does not parse (line {e.lineno}): {e.message}") from None
    _TEMPLATE_CACHE[template] = compiled
    return compiled


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` (dicts with ``role`` and ``content``, optional ``tools`` ...) with a Jinja2 chat template.

    The sandbox matches Hugging Face transformers: ``trim_blocks``, ``lstrip_blocks``, ``{% break %}/{% continue %}``,
    ``raise_exception(msg)``, ``tojson`` and ``strftime_now(fmt)``. ``extra`` keywords (``tools``, ``documents``,
    ``pad_token`` ...) are passed to the template as variables. Template errors become one-line SambaYErrors.
    """
    from jinja2.exceptions import TemplateError

    compiled = _compile_template(template)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except TemplateError as e:
        raise SambaYError(f"chat template failed: {e}") from None
    except (TypeError, KeyError, AttributeError) as e:
        raise SambaYError(f"chat template failed on these messages: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------------- stream decoding
class StreamDecoder:
    """Turns token ids, pushed one at a time, into text as soon as it is complete.

    Byte-level BPE tokens can split a multi-byte UTF-8 character; the decoder holds text back while the decoded tail
    is an incomplete character (U+FFFD) and emits it once the following token completes it. It decodes a short window
    of recent tokens (prefix/read offsets), so each push costs O(window), not O(length).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the context window used to decode
        self._read_offset = 0  # ids before this were already emitted as text

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is still incomplete)."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT_CHAR):
            new_text = full_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text
        return ""

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes to U+FFFD) and reset the window."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]


# --------------------------------------------------------------------------------------------------- tokenizer
class Tokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``) plus the settings of ``tokenizer_config.json``."""

    def __init__(
        self,
        backend: Any,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        extra_special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.add_bos_token = bool(add_bos_token)
        self.add_eos_token = bool(add_eos_token)
        self.chat_template = chat_template
        self._extra_special_tokens = dict(extra_special_tokens or {})
        self.bos_token_id = self._id_or_none(bos_token)
        self.eos_token_id = self._id_or_none(eos_token)
        self.pad_token_id = self._id_or_none(pad_token)

    # ---- construction
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (required) and ``tokenizer_config.json``, ``special_tokens_map.json``,
        ``added_tokens.json`` and chat-template files when present."""
        from tokenizers import Tokenizer as BackendTokenizer

        model_dir = Path(path)
        if not model_dir.is_dir():
            raise SambaYError(f"tokenizer directory not found: {model_dir}")
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise SambaYError(f"tokenizer.json not found in {model_dir} (vocab.json/merges.txt alone are not supported)")
        try:
            backend = BackendTokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # the Rust library raises a bare Exception on malformed files
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SambaYError(f"{tokenizer_file} is corrupt or unsupported: {first_line}") from None

        config = _read_json(model_dir / "tokenizer_config.json", required=False) or {}
        special_map = _read_json(model_dir / "special_tokens_map.json", required=False) or {}
        added_tokens = _read_json(model_dir / "added_tokens.json", required=False) or {}
        _register_missing_added_tokens(backend, config.get("added_tokens_decoder"), added_tokens)

        def special(name: str) -> str | None:
            return _token_content(config.get(name)) or _token_content(special_map.get(name))

        return cls(
            backend,
            bos_token=special("bos_token"),
            eos_token=special("eos_token"),
            pad_token=special("pad_token"),
            add_bos_token=bool(config.get("add_bos_token", False)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            chat_template=_pick_chat_template(config, model_dir),
            extra_special_tokens={k: v for k in ("unk_token",) if (v := special(k)) is not None},
        )

    # ---- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    # ---- encode / decode
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special-token strings in the text (``<|user|>`` ...) map to their ids. BOS/EOS are
        added only when ``add_special_tokens`` and the config's ``add_bos_token``/``add_eos_token`` say so."""
        ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. ``skip_special_tokens`` drops tokens flagged special (not ``<|tool|>`` & co.). Ids the
        vocabulary lacks (the model's placeholder rows above the tokenizer's last id) decode to nothing."""
        id_list = [int(i) for i in ids]
        return self._backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, *, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ---- chat
    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        **extra: Any,
    ) -> str | list[int]:
        """Render ``messages`` with the tokenizer's chat template; with ``tokenize=True`` return ids (encoded with
        ``add_special_tokens=False``, as transformers does: the template itself writes any BOS)."""
        if not self.chat_template:
            raise SambaYError("this tokenizer has no chat template (tokenizer_config.json has no 'chat_template')")
        variables: dict[str, Any] = {"pad_token": self.pad_token or "", **self._extra_special_tokens, **extra}
        text = render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **variables,
        )
        if tokenize:
            return self.encode(text, add_special_tokens=False)
        return text

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, eos={self.eos_token_id}, "
            f"pad={self.pad_token_id}, add_bos={self.add_bos_token})"
        )


def _register_missing_added_tokens(backend: Any, added_tokens_decoder: Any, added_tokens: Mapping[str, Any]) -> None:
    """Tokens listed in tokenizer_config.json / added_tokens.json but missing from tokenizer.json get added, with the
    config's flags (special, lstrip, rstrip, normalized, single_word). Existing tokens are left untouched."""
    from tokenizers import AddedToken

    wanted: dict[str, dict[str, Any]] = {}
    if isinstance(added_tokens_decoder, Mapping):
        for entry in added_tokens_decoder.values():
            if isinstance(entry, Mapping) and isinstance(entry.get("content"), str):
                wanted[entry["content"]] = dict(entry)
    for content in added_tokens:
        wanted.setdefault(content, {"content": content, "special": False})
    for content, entry in wanted.items():
        if backend.token_to_id(content) is not None:
            continue
        token = AddedToken(
            content,
            single_word=bool(entry.get("single_word", False)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            normalized=bool(entry.get("normalized", False)),
            special=bool(entry.get("special", False)),
        )
        if token.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


# --------------------------------------------------------------------------------------------------- generation config
@dataclass
class GenerationConfig:
    """The fields of ``generation_config.json`` that generation uses; ``raw`` keeps the whole file."""

    eos_token_ids: list[int]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    do_sample: bool | None = None
    max_new_tokens: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _optional_number(data: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SambaYError(f"{path}: '{key}' must be a number, found {value!r}")
    if kind is int and float(value) != int(value):
        raise SambaYError(f"{path}: '{key}' must be an integer, found {value!r}")
    return kind(value)


def load_generation_config(model_dir: str | Path) -> GenerationConfig | None:
    """Read ``generation_config.json`` of ``model_dir``; None when the file is absent. ``eos_token_id`` may be an int
    or a list of ints (Phi-4-mini-flash-reasoning: [200020, 199999] = ``<|end|>``, ``<|endoftext|>``)."""
    path = Path(model_dir) / "generation_config.json"
    data = _read_json(path, required=False)
    if data is None:
        return None
    eos = data.get("eos_token_id")
    if eos is None:
        eos_ids: list[int] = []
    elif isinstance(eos, int) and not isinstance(eos, bool):
        eos_ids = [eos]
    elif isinstance(eos, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in eos):
        eos_ids = list(eos)
    else:
        raise SambaYError(f"{path}: 'eos_token_id' must be an integer or a list of integers, found {eos!r}")
    do_sample = data.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise SambaYError(f"{path}: 'do_sample' must be true or false, found {do_sample!r}")
    return GenerationConfig(
        eos_token_ids=eos_ids,
        bos_token_id=_optional_number(data, "bos_token_id", int, path),
        pad_token_id=_optional_number(data, "pad_token_id", int, path),
        temperature=_optional_number(data, "temperature", float, path),
        top_p=_optional_number(data, "top_p", float, path),
        top_k=_optional_number(data, "top_k", int, path),
        min_p=_optional_number(data, "min_p", float, path),
        do_sample=do_sample,
        max_new_tokens=_optional_number(data, "max_new_tokens", int, path),
        raw=data,
    )
