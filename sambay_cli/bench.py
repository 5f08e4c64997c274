"""`sambay bench`: prefill and decode throughput, memory, achieved bandwidth against a measured copy bandwidth,
prefill MFU, and (optionally) a dense Phi-4-mini-shaped transformer baseline in the same run.

Long generations are measured without running them whole: the caches are filled synthetically to a context length
(random K/V, valid masks, random small recurrent states), a number of decode steps is timed there, and this is
repeated at several lengths; the time of a full generation is the integral of the (linearly interpolated) step time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MAMBA_TYPES, SWA, SambaYConfig, official_config
from .errors import SambaYError
from .model.modeling import FLOAT32_PARAMS, SambaYForCausalLM

# bf16 dense tensor-core peak (FLOP/s) by device name, for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def random_model(cfg: SambaYConfig, device: str, dtype: torch.dtype, seed: int = 0) -> SambaYForCausalLM:
    """A model of ``cfg``'s shape with random weights (A_log = log(1..N) as Mamba initialises it)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = SambaYForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.log(torch.arange(1, p.shape[-1] + 1, device=device, dtype=torch.float32)))
            elif leaf.startswith("lambda_"):
                p.normal_(0, 0.1)
            if leaf not in FLOAT32_PARAMS:
                p.data = p.data.to(dtype)
    return model.eval().requires_grad_(False)


def fill_cache(cache, context: int, seed: int = 1) -> None:
    """Pretend ``context`` positions were processed: random K/V, valid masks, small random recurrent states."""
    g = torch.Generator(device=cache.device).manual_seed(seed)
    if cache.kv_k is not None:
        for t in (cache.kv_k, cache.kv_v):
            if t.dtype == torch.float8_e4m3fn:  # no normal_ for fp8: one row at a time through float32
                for row in t:
                    row[:, :context] = torch.randn(row[:, :context].shape, generator=g, device=t.device).to(t.dtype)
            else:
                t[:, :, :context].normal_(generator=g)
    cache.kv_valid[:, :context] = True
    for t in list(cache.swa_k.values()) + list(cache.swa_v.values()):
        t.normal_(generator=g)
    w = cache.window
    if w:
        pos = torch.arange(max(0, context - w), context, device=cache.device)
        cache.swa_pos[:, pos % w] = pos
        cache.swa_valid[:, pos % w] = True
    for t in list(cache.ssm_states.values()) + list(cache.conv_states.values()):
        t.normal_(generator=g).mul_(0.1)
    cache.seen = context
    cache.pos_t.fill_(context)


def cuda_ms(fn, reps: int = 5) -> float:
    """Milliseconds per call of ``fn`` on the current CUDA stream (one warm-up call, then ``reps`` timed by events)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read + bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * src.numel() * 2 * reps / (time.perf_counter() - t0)


@dataclass
class DecodeBytes:
    weights: int
    shared_kv: int
    swa: int
    states: int

    @property
    def total(self) -> int:
        return self.weights + self.shared_kv + self.swa + self.states


def decode_bytes(cfg: SambaYConfig, model: SambaYForCausalLM, batch: int, context: int, kv_bytes: int,
                 swa_bytes: int | None = None) -> DecodeBytes:
    """Bytes a decode step must move: every weight once (the tied embedding as lm_head; the embedding lookup is
    negligible), the shared KV read by layer N/2+1 and every cross layer (``kv_bytes`` per element), the SWA windows
    (``swa_bytes`` per element, default ``kv_bytes``), Mamba states read+written."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    types = cfg.layer_types
    kv_readers = sum(1 for t in types if t in ("full_attention", "cross_attention"))
    per_pos = 2 * cfg.num_key_value_heads * cfg.head_dim
    shared = kv_readers * batch * context * per_pos * kv_bytes
    swa = sum(1 for t in types if t == SWA) * batch * min(cfg.sliding_window, context) * per_pos * (swa_bytes or kv_bytes)
    mamba = sum(1 for t in types if t in MAMBA_TYPES)
    states = mamba * batch * cfg.d_inner * (cfg.mamba_d_state + cfg.mamba_d_conv - 1) * 4 * 2
    return DecodeBytes(weights, shared, swa, states)


def prefill_flops(cfg: SambaYConfig, tokens: int) -> float:
    """FLOPs executed by a prefill of ``tokens`` positions that keeps logits of the last position only (the engine's
    prefill): the self-decoder and layer N/2+1's K/V projection run on every position, the rest on one."""
    c, d_in, n = cfg.hidden_size, cfg.d_inner, cfg.mamba_d_state
    mlp = 2 * c * 2 * cfg.intermediate_size + 2 * cfg.intermediate_size * c
    mamba = (2 * c * 2 * d_in + 2 * d_in * (cfg.mamba_dt_rank + 2 * n) + 2 * cfg.mamba_dt_rank * d_in
             + 2 * d_in * c + 2 * d_in * cfg.mamba_d_conv + 9 * d_in * n)
    qkv = 2 * c * (cfg.q_size + 2 * cfg.kv_size)
    att_per_pair = (6 if cfg.differential_attention else 4) * cfg.q_size  # QK and PV of both streams
    swa_keys = min(cfg.sliding_window, tokens)
    swa = qkv + 2 * cfg.q_size * c + att_per_pair * swa_keys
    total = 0.0
    for i, t in enumerate(cfg.layer_types):
        if i < cfg.kv_layer:
            total += tokens * (mlp + (mamba if t in MAMBA_TYPES else swa))
        elif i == cfg.kv_layer:  # K/V for all positions, the rest for the last one
            total += tokens * 2 * c * 2 * cfg.kv_size + (2 * c * cfg.q_size + att_per_pair * tokens
                                                           + 2 * cfg.q_size * c + mlp)
        elif t == "gmu":
            total += 2 * c * d_in * 2 + mlp
        else:
            total += 2 * c * cfg.q_size + att_per_pair * tokens + 2 * cfg.q_size * c + mlp
    total += 2 * c * cfg.vocab_size
    return total


def _peak_flops(name: str) -> float | None:
    for key, v in PEAK_BF16.items():
        if key in name:
            return v
    return None


def _time_decode(model, cache, batch: int, steps: int, graphs: bool) -> float:
    from .generation.cuda_graphs import GraphedDecodeStep, graphs_enabled

    device = model.device
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
    with torch.inference_mode():
        logits = model.run(tok, cache=cache).logits[:, -1]  # warm-up (compiles the kernels)
        step = GraphedDecodeStep(model, cache) if graphs and graphs_enabled(model) else None
        for _ in range(3):
            tok = logits.argmax(-1, keepdim=True)
            logits = step(tok) if step else model.run(tok, cache=cache).logits[:, -1]
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = logits.argmax(-1, keepdim=True)
            logits = step(tok) if step else model.run(tok, cache=cache).logits[:, -1]
        _sync(device)
    return (time.perf_counter() - t0) / steps


def bench_sambay(model, cfg, *, batches, contexts, steps, prompt_len, gen_len, graphs, copy_bw,
                 prefill_lens=None) -> dict:
    device = model.device
    swa_bytes = torch.tensor([], dtype=model.dtype).element_size()
    kv_bytes = torch.tensor([], dtype=model.kv_cache_dtype or model.dtype).element_size()
    out: dict = {"decode": [], "prefill": []}
    prefill_lens = prefill_lens or [prompt_len]
    # prefill: chunked like the engine, last-position logits
    from .generation.engine import prefill

    for b in batches[:1]:
        for plen in prefill_lens:
            ids = torch.randint(0, cfg.vocab_size, (b, plen)).tolist()
            for _ in range(2):  # warm-up: compiles, and lets the allocator and clocks settle (one was not always enough)
                prefill(model, ids, 1)
            times = []
            for _ in range(3):  # the median of three (one run can catch a clock or allocator hiccup)
                _sync(device)
                t0 = time.perf_counter()
                prefill(model, ids, 1)
                _sync(device)
                times.append(time.perf_counter() - t0)
            dt = sorted(times)[1]
            flops = b * prefill_flops(cfg, plen)
            peak = _peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
            out["prefill"].append({"batch": b, "prompt_len": plen, "seconds": dt, "tokens_per_s": b * plen / dt,
                                   "tflops": flops / dt / 1e12, "mfu": (flops / dt / peak) if peak else None})
    for b in batches:
        for ctx in contexts:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                cache = model.new_cache(b, prompt_len + gen_len)
            except torch.OutOfMemoryError:
                out["decode"].append({"batch": b, "context": ctx, "error": "out of memory"})
                continue
            fill_cache(cache, ctx)
            step_s = _time_decode(model, cache, b, steps, graphs)
            moved = decode_bytes(cfg, model, b, ctx, kv_bytes, swa_bytes)
            r = {"batch": b, "context": ctx, "ms_per_step": 1000 * step_s, "tokens_per_s": b / step_s,
                 "ms_per_token_per_sequence": 1000 * step_s, "bytes_per_step": moved.total,
                 "bytes_breakdown": moved.__dict__, "achieved_bandwidth": moved.total / step_s,
                 "roofline_ms_per_step": 1000 * moved.total / copy_bw if copy_bw else None,
                 "fraction_of_copy_bandwidth": (moved.total / step_s) / copy_bw if copy_bw else None,
                 "cache_bytes": cache.nbytes(),
                 "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
            out["decode"].append(r)
            del cache
    out["generation_estimate"] = _integrate(out["decode"], prompt_len, prompt_len + gen_len)
    return out


def _integrate(rows: list[dict], start: int, end: int) -> list[dict]:
    """Time to decode from context ``start`` to ``end``: the integral of the linearly interpolated step time."""
    est = []
    for b in sorted({r["batch"] for r in rows if "ms_per_step" in r}):
        pts = sorted((r["context"], r["ms_per_step"]) for r in rows if r.get("batch") == b and "ms_per_step" in r)
        if len(pts) < 2:
            continue
        total_ms = 0.0
        for c in range(start, end, 256):
            seg = min(256, end - c)
            x = c + seg / 2
            lo = max([p for p in pts if p[0] <= x], default=pts[0], key=lambda p: p[0])
            hi = min([p for p in pts if p[0] >= x], default=pts[-1], key=lambda p: p[0])
            y = lo[1] if hi[0] == lo[0] else lo[1] + (hi[1] - lo[1]) * (x - lo[0]) / (hi[0] - lo[0])
            total_ms += seg * y
        tokens = end - start
        est.append({"batch": b, "from_context": start, "to_context": end, "seconds": total_ms / 1000,
                    "tokens_per_s": b * tokens / (total_ms / 1000), "method": "integrated from measured contexts"})
    return est


def dense_roofline(copy_bw: float, *, contexts, memory_budget: float, weight_bytes: int = 2 * 3_836_000_000,
                   kv_per_token: int = 131_072, total_len: int) -> list[dict]:
    """Best-case decode throughput of a dense Phi-4-mini-shaped model (KV 131 KB/token in bf16) in a memory budget."""
    max_batch = max(1, int((memory_budget - weight_bytes) // (kv_per_token * total_len)))
    rows = []
    for ctx in contexts:
        step = (weight_bytes + max_batch * kv_per_token * ctx) / copy_bw
        rows.append({"context": ctx, "batch": max_batch, "roofline_tokens_per_s": max_batch / step})
    return rows


def bench_dense_hf(device, dtype, *, contexts, steps, batch: int = 1) -> dict:
    """A dense Phi-4-mini-shaped transformer in Hugging Face transformers, random weights, same device."""
    try:
        from transformers import Phi3Config, Phi3ForCausalLM
    except ImportError as e:
        return {"error": f"transformers not available: {e}"}
    cfg = Phi3Config(hidden_size=3072, num_hidden_layers=32, num_attention_heads=24, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=200064, tie_word_embeddings=True,
                     max_position_embeddings=max(contexts) + steps + 16, attn_implementation="sdpa")
    with torch.device(device):
        model = Phi3ForCausalLM(cfg).to(dtype).eval()
    rows = []
    with torch.inference_mode():
        for ctx in contexts:
            ids = torch.randint(0, cfg.vocab_size, (batch, ctx), device=device)
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            _sync(device)
            prefill_s = time.perf_counter() - t0
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(3):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            dt = (time.perf_counter() - t0) / steps
            rows.append({"context": ctx, "batch": batch, "prefill_tokens_per_s": batch * ctx / prefill_s,
                         "ms_per_step": 1000 * dt, "tokens_per_s": batch / dt})
            del past, out
            torch.cuda.empty_cache()
    del model
    return {"model": "Phi-3/Phi-4-mini-shaped dense (hidden 3072, 32 layers, 24 heads, 8 KV heads, vocab 200064, "
                     "tied), transformers sdpa, eager", "rows": rows}


def run_bench(model_path: str | None, *, config: str | None, prompt_len: int | list[int], gen_len: int,
              batches: list[int],
              contexts: list[int] | None, steps: int, device: str | None, dtype: str | None, baseline: str | None,
              graphs: bool, json_out: bool, kv_cache_dtype: str = "auto") -> dict:
    from .loading import load_model, parse_device, parse_dtype
    from .textgen import kv_cache_dtype as parse_kv_dtype

    kv_dtype = parse_kv_dtype(kv_cache_dtype)
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    if model_path is None and config is None:
        config = "phi4-mini-flash"
    if config is not None:
        if config not in ("phi4-mini-flash", "phi4flash"):
            path = Path(config)
            if not path.exists():
                raise SambaYError(f"--config: unknown config {config!r} (use phi4-mini-flash or a config.json path)")
            cfg = SambaYConfig.from_file(path)
        else:
            cfg = official_config()
        model = random_model(cfg, str(dev), dt)
        source = f"config {config} (random weights)"
    else:
        model = load_model(model_path, dtype=dt, device=dev)
        cfg = model.config
        source = model_path
    model.kv_cache_dtype = kv_dtype
    prefill_lens = sorted(prompt_len) if isinstance(prompt_len, list) else [prompt_len]
    prompt_len = max(prefill_lens)
    total = prompt_len + gen_len
    if contexts is None:
        contexts = [c for c in (2048, 4096, 8192, 16384, 32768) if c <= total] or [min(prompt_len, total)]
    if any(c > total for c in contexts):
        raise SambaYError(f"contexts must not exceed --prompt-len + --gen-len ({total})")
    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    result = {"model": source, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "dtype": str(dt).replace("torch.", ""), "kv_cache_dtype": kv_cache_dtype, "torch": torch.__version__,
              "copy_bandwidth_bytes_per_s": bw, "prompt_len": prompt_len, "gen_len": gen_len, "graphs": graphs,
              "date": time.strftime("%Y-%m-%d"),
              "method": "caches filled synthetically to each context; decode steps timed there; full-length times "
                        "integrated over the measured contexts"}
    from . import kernels

    result["kernels"] = kernels.backends()
    result["sambay"] = bench_sambay(model, cfg, batches=batches, contexts=contexts, steps=steps,
                                    prompt_len=prompt_len, gen_len=gen_len, graphs=graphs, copy_bw=bw,
                                    prefill_lens=prefill_lens)
    if bw:
        mem = torch.cuda.get_device_properties(dev).total_memory
        result["dense_roofline"] = dense_roofline(bw, contexts=contexts, memory_budget=mem, total_len=total)
    if baseline == "dense":
        del model
        torch.cuda.empty_cache() if dev.type == "cuda" else None
        result["dense_baseline"] = bench_dense_hf(dev, dt, contexts=contexts, steps=max(10, steps // 4))
    if json_out:
        print(json.dumps(result))
    else:
        _print(result)
    return result


def _print(r: dict) -> None:
    from rich.table import Table

    from .console import console

    bw = r["copy_bandwidth_bytes_per_s"]
    console.print(f"[bold]sambay bench[/bold] — {r['model']} on {r['device']} ({r['dtype']}), torch {r['torch']}"
                  + (f", copy bandwidth {bw / 1e12:.2f} TB/s" if bw else ""))
    for p in r["sambay"]["prefill"]:
        mfu = f", MFU {100 * p['mfu']:.1f}%" if p["mfu"] else ""
        console.print(f"prefill {p['prompt_len']} tokens × {p['batch']}: {p['tokens_per_s']:.0f} tok/s, "
                      f"{p['tflops']:.1f} TFLOP/s{mfu}")
    t = Table(title="decode (caches filled synthetically to each context)")
    for col in ("batch", "context", "ms/step", "tok/s", "GB/step", "achieved TB/s", "% of copy BW", "peak mem GB"):
        t.add_column(col, justify="right")
    for d in r["sambay"]["decode"]:
        if "error" in d:
            t.add_row(str(d["batch"]), str(d["context"]), d["error"], "", "", "", "", "")
            continue
        frac = d["fraction_of_copy_bandwidth"]
        t.add_row(str(d["batch"]), str(d["context"]), f"{d['ms_per_step']:.2f}", f"{d['tokens_per_s']:.1f}",
                  f"{d['bytes_per_step'] / 1e9:.2f}", f"{d['achieved_bandwidth'] / 1e12:.2f}",
                  f"{100 * frac:.0f}%" if frac else "", f"{(d['peak_memory_bytes'] or 0) / 1e9:.1f}")
    console.print(t)
    for e in r["sambay"]["generation_estimate"]:
        console.print(f"batch {e['batch']}: {e['from_context']}→{e['to_context']} tokens in {e['seconds']:.1f} s "
                      f"({e['tokens_per_s']:.1f} tok/s, integrated)")
    for d in r.get("dense_roofline", []):
        console.print(f"dense roofline at context {d['context']}: batch {d['batch']} fits, "
                      f"≤ {d['roofline_tokens_per_s']:.0f} tok/s")
    base = r.get("dense_baseline")
    if base and "rows" in base:
        for row in base["rows"]:
            console.print(f"dense (transformers) context {row['context']}: {row['tokens_per_s']:.1f} tok/s decode, "
                          f"{row['prefill_tokens_per_s']:.0f} tok/s prefill")
    elif base:
        console.print(f"dense baseline: {base.get('error')}")


def parse_batches(values: list[str]) -> list[int]:
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                n = int(part)
                if n < 1:
                    raise SambaYError("--batch values must be >= 1")
                out.append(n)
    return out or [1]


__all__ = ["run_bench", "random_model", "fill_cache", "decode_bytes", "prefill_flops", "copy_bandwidth",
           "dense_roofline"]
