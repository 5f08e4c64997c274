from __future__ import annotations

import json

from conftest import TINY

from sambay_cli.bench import _integrate, decode_bytes, dense_roofline, prefill_flops
from sambay_cli.cli import main
from sambay_cli.config import official_config
from sambay_cli.loading import build_empty


def test_decode_bytes_of_the_official_shape():
    cfg = official_config()
    model = build_empty(cfg)
    b = decode_bytes(cfg, model, batch=1, context=32768, kv_bytes=2)
    assert b.weights == 4 * 3_852_562_944  # every parameter once (the tied embedding as lm_head); fp32 meta model
    # 8 readers (layer 17 + 7 cross layers) × 32768 positions × K,V × 20 heads × 64 × 2 bytes
    assert b.shared_kv == 8 * 32768 * 2 * 20 * 64 * 2
    assert b.swa == 8 * 512 * 2 * 20 * 64 * 2
    assert b.states == 9 * 5120 * (16 + 3) * 4 * 2


def test_prefill_flops_scale_linearly_in_length():
    cfg = official_config()
    f4, f8, f16 = (prefill_flops(cfg, n) for n in (4096, 8192, 16384))
    assert 1.9 < f8 / f4 < 2.1 and 1.9 < f16 / f8 < 2.1
    # dominated by ~2 × (self-decoder parameters) per token
    assert 2.0e9 * 4096 < f4 < 6.0e9 * 4096


def test_integration_of_step_times():
    rows = [{"batch": 1, "context": 2048, "ms_per_step": 10.0}, {"batch": 1, "context": 4096, "ms_per_step": 20.0}]
    est = _integrate(rows, 2048, 4096)[0]
    assert abs(est["seconds"] - 2048 * 15.0 / 1000) < 0.2


def test_dense_roofline_fits_about_16_sequences_in_80gb():
    rows = dense_roofline(3.0e12, contexts=[32768], memory_budget=80e9, total_len=34816)
    assert rows[0]["batch"] in (15, 16)


def test_bench_cli_runs_on_cpu(capsys):
    try:
        main(["bench", "--config", str(TINY / "config.json"), "--device", "cpu", "--prompt-len", "8", "--gen-len",
              "16", "--context", "8", "--context", "16", "--steps", "2", "--batch", "1,2", "--json"])
    except SystemExit as e:
        assert e.code in (0, None)
    r = json.loads(capsys.readouterr().out)
    assert [(d["batch"], d["context"]) for d in r["sambay"]["decode"]] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert all(d["tokens_per_s"] > 0 for d in r["sambay"]["decode"])
    assert r["sambay"]["prefill"][0]["tokens_per_s"] > 0
    assert r["sambay"]["generation_estimate"][0]["to_context"] == 24


def test_bench_fp8_shared_kv_counts_one_byte_per_element(capsys):
    args = ["bench", "--config", str(TINY / "config.json"), "--device", "cpu", "--dtype", "bfloat16", "--prompt-len",
            "8", "--gen-len", "16", "--context", "16", "--steps", "2", "--json"]
    rows = {}
    for kv in ("auto", "fp8"):
        try:
            main(args + ["--kv-cache-dtype", kv])
        except SystemExit as e:
            assert e.code in (0, None)
        r = json.loads(capsys.readouterr().out)
        assert r["kv_cache_dtype"] == kv
        rows[kv] = r["sambay"]["decode"][0]["bytes_breakdown"]
    assert rows["fp8"]["shared_kv"] * 2 == rows["auto"]["shared_kv"] > 0
    assert rows["fp8"]["swa"] == rows["auto"]["swa"]
