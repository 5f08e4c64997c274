"""Build tests/fixtures/tokenizer-tiny: a 512-id byte-level BPE tokenizer shaped like Phi-4-mini-flash-reasoning's.

The real tokenizer (o200k byte-level BPE, ~200k ids) is too large for a test fixture, and the tiny fixture model has a
512-row embedding. This script trains, deterministically, a byte-level BPE on a small built-in English/math text with
the `tokenizers` library and gives it the Phi-4 special tokens with the real flags (special or not, rstrip), plus
`<think>` and `</think>` as plain (non-special) added tokens. Ids: 0 = <|endoftext|> (the tiny model's bos/eos/pad id),
1..256 = the 256 byte symbols, then the learned merges, then the other added tokens; 512 ids in total.

    .venv/bin/python tools/make_test_tokenizer.py [--out tests/fixtures/tokenizer-tiny]

Run it again to check the committed fixture: it rewrites identical files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer

from sambay_cli.convert.writer import atomic_output_dir
from sambay_cli.tokenizer import (
    PHI4_ADDED_TOKENS,
    PHI4_EOS_TOKEN,
    PLAIN_ADDED_TOKENS,
    phi4_special_tokens_map,
    phi4_tokenizer_config,
    train_phi4_shaped_bpe,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "tokenizer-tiny"
HUB_METADATA = REPO_ROOT / "tests" / "fixtures" / "phi4flash-hub-metadata"

TOTAL_IDS = 512
EOS_TOKEN = PHI4_EOS_TOKEN


# The public o200k pre-tokenization pattern (what the real tokenizer.json splits on before byte-level BPE).
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model can still learn how words are built.
To solve an equation, move every term to one side and simplify. Let us think step by step.
How to solve 3*x^2+4*x+5=1? Subtract 1 from both sides: 3*x^2+4*x+4=0. The discriminant is 16-48=-32.
Since the discriminant is negative, there are no real solutions; the complex roots are x = (-4 ± i*sqrt(32))/6.
The sum of the first n odd numbers is n^2. For example 1+3+5+7 = 16 = 4^2.
If a triangle has sides 3, 4 and 5, then it is a right triangle because 9 + 16 = 25.
The derivative of x^3 is 3*x^2, and the integral of 2*x from 0 to 1 equals 1.
What is 37 + 48? First add the tens: 30 + 40 = 70. Then the ones: 7 + 8 = 15. So the answer is 85.
The probability of rolling two sixes with two fair dice is 1/36.
A prime number has exactly two divisors: one and itself. The primes below twenty are 2, 3, 5, 7, 11, 13, 17, 19.
We compute the greatest common divisor of 84 and 36 with the Euclidean algorithm: 84 = 2*36 + 12, 36 = 3*12.
Therefore the answer is 12. Let me check the result again before writing the final answer.
The user asked a question and the assistant gave an answer. The system sets the rules of the conversation.
Reasoning models write their thoughts first, then give a short final answer in a box: \\boxed{85}.
Numbers such as 100, 250, 1000 and 2048 appear often in computer science.
The function f(x) = x^2 - 2*x + 1 = (x - 1)^2 has its minimum at x = 1, where f(1) = 0.
Water boils at 100 degrees Celsius at sea level. The speed of light is about 300000 kilometres per second.
She said that the weather would be fine today, so they went for a walk in the park with their friends.
In a geometric series with ratio r and |r| < 1, the sum equals a / (1 - r).
The matrix [[1, 2], [3, 4]] has determinant 1*4 - 2*3 = -2.
"""


def train_backend() -> Tokenizer:
    """Train the byte-level BPE and register the added tokens; the result has exactly TOTAL_IDS ids."""
    try:
        return train_phi4_shaped_bpe(TRAINING_TEXT.splitlines(keepends=True), total_ids=TOTAL_IDS,
                                     patterns=[O200K_PATTERN], min_frequency=1, exact=True)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """tokenizer_config.json in the real file's shape: same flags, real chat template, ids of this vocabulary."""
    real = json.loads((HUB_METADATA / "tokenizer_config.json").read_text(encoding="utf-8"))
    return phi4_tokenizer_config(tokenizer, chat_template=real["chat_template"], model_max_length=65536)


def special_tokens_map() -> dict:
    return phi4_special_tokens_map()


def generation_config(tokenizer: Tokenizer) -> dict:
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    return {
        "bos_token_id": eos_id,
        "eos_token_id": [tokenizer.token_to_id("<|end|>"), eos_id],
        "pad_token_id": eos_id,
    }


README = """\
# tokenizer-tiny: a 512-id stand-in for the Phi-4-mini-flash-reasoning tokenizer

Generated by `tools/make_test_tokenizer.py` (do not edit by hand; rerun the script, it is deterministic):

    .venv/bin/python tools/make_test_tokenizer.py

- `tokenizer.json`: byte-level BPE trained with the `tokenizers` library ({tokenizers_version}) on a small built-in
  English/math text, o200k pre-tokenization regex + ByteLevel, {total} ids in total (the tiny fixture model
  `phi4flash-tiny-a` has vocab 512). Id 0 = `<|endoftext|>`, ids 1..256 = byte symbols, then learned merges,
  then the added tokens.
- Added tokens, flags as in the real `tokenizer_config.json`: {added}. `<think>` and `</think>` are plain added tokens
  (not special), as in the real vocabulary where they are ordinary text.
- `tokenizer_config.json`: the real Phi-4 chat template, `add_bos_token` / `add_eos_token` false, bos/eos/pad/unk =
  `<|endoftext|>`.
- `special_tokens_map.json`: bos/eos/pad/unk = `<|endoftext|>`.
- `generation_config.json`: `eos_token_id` = [id of `<|end|>`, id of `<|endoftext|>`] = {eos_ids}.

Only for tests: the ids do not match the real tokenizer's (e.g. `<|end|>` is 200020 there).
"""


def write_fixture(out_dir: Path) -> None:
    import tokenizers

    tokenizer = train_backend()
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer), indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special_tokens_map(), indent=2) + "\n",
        "generation_config.json": json.dumps(generation_config(tokenizer), indent=2) + "\n",
    }
    added = ", ".join(
        f"`{c}` {tokenizer.token_to_id(c)} ({'special' if s else 'not special'}{', rstrip' if r else ''})"
        for c, s, r in PHI4_ADDED_TOKENS
    ) + ", " + ", ".join(f"`{c}` {tokenizer.token_to_id(c)}" for c in PLAIN_ADDED_TOKENS)
    files["README.md"] = README.format(
        tokenizers_version=tokenizers.__version__,
        total=tokenizer.get_vocab_size(with_added_tokens=True),
        added=added,
        eos_ids=generation_config(tokenizer)["eos_token_id"],
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(out_dir, force=True) as staging:  # a sibling temp dir, renamed into place
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
    print(f"wrote {out_dir} ({tokenizer.get_vocab_size(with_added_tokens=True)} ids)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    args = parser.parse_args()
    write_fixture(args.out)


if __name__ == "__main__":
    main()
