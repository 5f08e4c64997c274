#!/usr/bin/env python3
"""How much an fp8 (e4m3) shared KV changes a model's predictions (default: the embedded demo model, CPU).

    python tools/kv_fp8_accuracy.py --limit 200 --max-tokens 48

Greedy-generates each arith prompt (chat template) with the shared KV in the model dtype, then replays the same
tokens with the shared KV in fp8 (teacher forcing through the cache), and reports the mean KL divergence of the
next-token distributions (nats/token), top-1 agreement, and how many greedy completions stay identical.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sambay_cli.demo import arith  # noqa: E402
from sambay_cli.generation.engine import generate  # noqa: E402
from sambay_cli.loading import load_model  # noqa: E402
from sambay_cli.textgen import default_model_dir  # noqa: E402
from sambay_cli.tokenizer import Tokenizer  # noqa: E402


def replay(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    """Logits [len(ids) − prompt_len, V] predicting ids[prompt_len:], through a cache (prefill, then 1-token steps)."""
    cache = model.new_cache(1, len(ids))
    with torch.inference_mode():
        out = [model.run(torch.tensor([ids[:prompt_len]]), cache=cache, logits_to_keep=1).logits[0, -1]]
        for t in ids[prompt_len:-1]:
            out.append(model.run(torch.tensor([[t]]), cache=cache).logits[0, -1])
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    model_dir = args.model or default_model_dir()
    model = load_model(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    records = [json.loads(x) for x in arith.ASSET_EVAL_PATH.read_text().splitlines() if x.strip()][: args.limit]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": r["problem"]}])) for r in records]
    base = generate(model, prompts, max_new_tokens=args.max_tokens)
    model.kv_cache_dtype = torch.float8_e4m3fn
    fp8 = generate(model, prompts, max_new_tokens=args.max_tokens)
    kls, agree, n = [], 0, 0
    for p, gen in zip(prompts, base.tokens, strict=True):
        ids = list(p) + list(gen)
        model.kv_cache_dtype = None
        ref = torch.log_softmax(replay(model, ids, len(p)).float(), -1)
        model.kv_cache_dtype = torch.float8_e4m3fn
        q = torch.log_softmax(replay(model, ids, len(p)).float(), -1)
        kls.append((ref.exp() * (ref - q)).sum(-1))
        agree += int((ref.argmax(-1) == q.argmax(-1)).sum())
        n += ref.shape[0]
    kl = torch.cat(kls)
    same = sum(a == b for a, b in zip(base.tokens, fp8.tokens, strict=True))
    print(json.dumps({"model": str(model_dir), "prompts": len(prompts), "tokens": n,
                      "mean_kl_nats": kl.mean().item(), "max_kl_nats": kl.max().item(),
                      "top1_agreement": agree / n, "identical_greedy_completions": f"{same}/{len(prompts)}"}))


if __name__ == "__main__":
    main()
