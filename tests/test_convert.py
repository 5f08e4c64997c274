"""`sambay convert`: reading, config resolution, writing, atomicity, bad input, streaming memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sambay_cli.cli import main
from sambay_cli.convert import archscale_config as asc
from sambay_cli.convert import writer
from sambay_cli.convert.convert import convert_archscale_to_hf
from sambay_cli.convert.mapping import folding_for, fused_to_qkv, qkv_to_fused
from sambay_cli.errors import SambaYError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_synthetic_archscale import synthetic_state, tiny_fields, write_checkpoint  # noqa: E402


def make_tiny(tmp: Path, model: str = "phi4miniflash_d32", layout: str = "2025", iters=(1000,), **over):
    cfg = asc.ArchConfig(asc.finish_fields(dict(tiny_fields(model), **over)), "test")
    state = synthetic_state(cfg, layout)
    hp = {"train_config": "scaling", "model_name": model, "seq_len": 64}
    paths = [write_checkpoint(tmp / "runs", cfg, layout, state, hp, iter_num=i) for i in iters]
    cfg_file = tmp / "model_config.json"
    cfg_file.write_text(json.dumps(cfg.to_json_dict()))
    return paths[-1], cfg_file, state


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
        raise SystemExit(0)
    return int(e.value.code or 0)


# ------------------------------------------------------------------------------------------------ config resolution
def test_hparams_resolve_phi4miniflash_and_sambay_names() -> None:
    cfg = asc.from_hparams({"model_name": "phi4miniflash_d32", "train_config": "scaling", "base_hps.d0": 16}, "2025")
    assert (cfg.n_embd, cfg.n_head, cfg.n_query_groups, cfg.head_size, cfg.intermediate_size) == (2560, 40, 20, 64,
                                                                                                 10240)
    assert cfg.padded_vocab_size == 200064 and cfg["tied_embed"] and cfg["local_window"] == 512
    assert folding_for(cfg).is_identity
    cfg = asc.from_hparams({"train_model": "sambayda", "depth": 24, "train_config": "scaling_mup_tie",
                            "base_hps.d0": 16, "swa_len": 256}, "2025")
    assert cfg.model_name == "sambayda_d24" and cfg.n_embd == 124 * 24 and cfg.head_size == 128
    assert cfg["tied_embed"] and cfg["use_da"] and cfg["local_window"] == 256
    f = folding_for(cfg)
    assert f.logit_scale == pytest.approx(16 / 24) and f.residual_scale == pytest.approx(48 ** -0.5)
    assert f.q_scale == 1.0  # head_dim 128 = mup_hd0
    # HEAD (2026): base d0 8, muonh -> no logit scale, depth_scale recorded in hparams
    cfg = asc.from_hparams({"model_name": "sambay_d16", "train_config": "scaling_muonh", "base_hps.d0": 8,
                            "depth_scale": True}, "2026")
    f = folding_for(cfg)
    assert f.logit_scale == 1.0 and f.residual_scale == pytest.approx(32 ** -0.5)


@pytest.mark.parametrize("name,needle", [("sambayoco_d16", "without GMUs"), ("sambay2_d16", "Mamba-2"),
                                         ("samba_d8", "Samba"), ("transformer_d8", "Transformer"),
                                         ("whatever_d3", "unknown ArchScale model name")])
def test_unsupported_and_unknown_model_names(name: str, needle: str) -> None:
    with pytest.raises(SambaYError, match=needle):
        asc.resolve_registry_name(name)


def test_unsupported_config_fields_listed_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps(dict(tiny_fields("sambay_d8"), n_embd=64, rnn_type="mamba2", nope=False, moe=True)))
    with pytest.raises(SambaYError) as e:
        asc.check_supported(asc.from_json_file(f))
    assert "Mamba-2" in str(e.value) and "RoPE" in str(e.value) and "MoE" in str(e.value)


def test_qkv_deinterleave_inverts() -> None:
    w = torch.arange(24 * 3, dtype=torch.float32).reshape(24, 3)  # H=4, G=2, hs=3 -> (4+4)*3 rows
    q = fused_to_qkv(w, 4, 2, 3)
    # group 0 rows: q0 q1 k0 v0 -> Q starts with fused rows 0..5, K with rows 6..8
    assert torch.equal(q[:6], w[:6]) and torch.equal(q[12:15], w[6:9]) and torch.equal(q[6:12], w[12:18])
    assert torch.equal(qkv_to_fused(q, 4, 2, 3), w)


# ------------------------------------------------------------------------------------------------ conversion
def test_run_folder_latest_iter_sharding_dtypes_and_progressless_json(tmp_path: Path, capsys) -> None:
    path, cfg_file, state = make_tiny(tmp_path, iters=(500, 1500, 1000))
    out = tmp_path / "hf"
    rc = run_cli("convert", str(path.parent), str(out), "--archscale-config", str(cfg_file), "--max-shard-size",
                 "200KB", "--json")
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert any("iter-001500-ckpt.pth" in n for n in rep["notes"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and all(f.stat().st_size <= 200_000 + 70_000 for f in shards)
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    with safe_open(str(out / index["weight_map"]["model.layers.0.attn.A_log"]), "pt") as f:
        assert f.get_tensor("model.layers.0.attn.A_log").dtype == torch.float32
    with safe_open(str(out / index["weight_map"]["model.layers.1.attn.inner_cross_attn.lambda_q1"]), "pt") as f:
        assert f.get_tensor("model.layers.1.attn.inner_cross_attn.lambda_q1").dtype == torch.float32
    with safe_open(str(out / index["weight_map"]["model.embed_tokens.weight"]), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert emb.dtype == torch.bfloat16 and torch.equal(emb, state["transformer.wte.weight"].bfloat16())
    assert "lm_head.weight" not in index["weight_map"]  # tied
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "phi4flash" and cfg["sambay_conversion"]["archscale_layout"] == "2025"
    assert not list(tmp_path.glob(".hf.tmp-*"))


def test_wrapper_prefixes_and_extra_state_are_handled(tmp_path: Path) -> None:
    path, cfg_file, state = make_tiny(tmp_path, model="sambayda_d8", layout="2026")
    obj = torch.load(path, weights_only=True)
    obj["model"] = {("_forward_module._orig_mod." + k): v for k, v in obj["model"].items()}
    obj["model"]["_forward_module._orig_mod.transformer.h.1.attn.q_proj._extra_state"] = torch.zeros(1)
    torch.save(obj, path)
    res = convert_archscale_to_hf(path, tmp_path / "hf", archscale_config=cfg_file, show_progress=False)
    assert res.details["layout"] == "2026" and res.details["model_type"] == "sambay"
    assert any("non-parameter" in n for n in res.notes)


def test_cli_verify(tmp_path: Path, capsys) -> None:
    pytest.importorskip("sambay_cli.loading")
    path, cfg_file, _ = make_tiny(tmp_path, model="sambay_d8", layout="2026", tied_embed=False)
    rc = run_cli("convert", str(path), str(tmp_path / "hf"), "--archscale-config", str(cfg_file), "--verify",
                 "--json")
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["verify"]["ok"] and rep["verify"]["max_abs_diff"] < 1e-3


# ------------------------------------------------------------------------------------------------ bad input
def _assert_one_line_exit_2(capsys, args: list[str], needle: str, leftovers: Path) -> None:
    before = set(leftovers.iterdir())
    rc = run_cli(*args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert set(leftovers.iterdir()) == before


def test_bad_inputs(tmp_path: Path, capsys) -> None:
    path, cfg_file, state = make_tiny(tmp_path)
    out = str(tmp_path / "out")
    # not ArchScale
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    _assert_one_line_exit_2(capsys, ["convert", str(tmp_path / "other.pth"), out], "not an ArchScale", tmp_path)
    (tmp_path / "text.pth").write_text("hello")
    _assert_one_line_exit_2(capsys, ["convert", str(tmp_path / "text.pth"), out], "not a PyTorch zip", tmp_path)
    # pickle with code in it: refused, never executed
    marker = tmp_path / "executed"
    code = textwrap.dedent(f"""
        import torch, builtins
        class Evil:
            def __reduce__(self):
                return (builtins.exec, ("open({str(marker)!r}, 'w').write('x')",))
        torch.save({{"model": {{"w": Evil()}}}}, {str(tmp_path / 'evil.pth')!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    _assert_one_line_exit_2(capsys, ["convert", str(tmp_path / "evil.pth"), out], "refused", tmp_path)
    assert not marker.exists()
    # unknown model name in hparams
    obj = torch.load(path, weights_only=True)
    obj["hparams"] = {"model_name": "mystery_d8", "train_config": "scaling"}
    torch.save(obj, tmp_path / "mystery.pth")
    _assert_one_line_exit_2(capsys, ["convert", str(tmp_path / "mystery.pth"), out], "unknown ArchScale model",
                            tmp_path)
    # missing layer
    obj["model"] = {k: v for k, v in state.items() if not k.startswith("transformer.h.7.")}
    torch.save(obj, tmp_path / "missing.pth")
    _assert_one_line_exit_2(capsys, ["convert", str(tmp_path / "missing.pth"), out, "--archscale-config",
                                     str(cfg_file)], "transformer.h.7.", tmp_path)
    # config contradicting the tensors
    bad = json.loads(cfg_file.read_text()) | {"n_query_groups": 4}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    _assert_one_line_exit_2(capsys, ["convert", str(path), out, "--archscale-config", str(tmp_path / "bad.json")],
                            "transformer.h.1.attn.attn.weight has shape", tmp_path)
    # OUT inside SRC
    run_dir = path.parent
    _assert_one_line_exit_2(capsys, ["convert", str(run_dir), str(run_dir / "hf")], "inside the source", run_dir)
    # existing OUT without --force
    (tmp_path / "exists").mkdir()
    _assert_one_line_exit_2(capsys, ["convert", str(path), str(tmp_path / "exists"), "--archscale-config",
                                     str(cfg_file)], "--force", tmp_path)


def test_no_disk_space_leaves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    path, cfg_file, _ = make_tiny(tmp_path)
    monkeypatch.setattr(writer, "free_bytes", lambda p: 1000)
    _assert_one_line_exit_2(capsys, ["convert", str(path), str(tmp_path / "hf"), "--archscale-config",
                                     str(cfg_file)], "not enough disk space", tmp_path)


def test_interrupt_mid_write_leaves_nothing_and_force_replaces(tmp_path: Path, monkeypatch) -> None:
    path, cfg_file, _ = make_tiny(tmp_path)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    real = writer._write_tensor
    calls = {"n": 0}

    def boom(f, t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real(f, t)

    monkeypatch.setattr(writer, "_write_tensor", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_archscale_to_hf(path, out, archscale_config=cfg_file, force=True, show_progress=False)
    assert (out / "keep.txt").read_text() == "old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["runs", "model_config.json", "hf"])
    monkeypatch.setattr(writer, "_write_tensor", real)
    convert_archscale_to_hf(path, out, archscale_config=cfg_file, force=True, show_progress=False)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ streaming memory
MEASURE = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import torch
    from sambay_cli.convert.convert import convert_archscale_to_hf

    def rss_anon():
        for line in open('/proc/self/status'):
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) * 1024
    base = rss_anon(); peak = [base]; stop = []
    def poll():
        while not stop:
            peak[0] = max(peak[0], rss_anon()); time.sleep(0.002)
    th = threading.Thread(target=poll); th.start()
    t0 = time.time()
    res = convert_archscale_to_hf(Path(sys.argv[1]), Path(sys.argv[2]), archscale_config=Path(sys.argv[3])
                                  if sys.argv[3] != '-' else None, max_shard_size=sys.argv[4], show_progress=False)
    stop.append(1); th.join()
    print(json.dumps({"peak_growth": peak[0] - base, "seconds": time.time() - t0,
                      "bytes_written": res.details["bytes_written"]}))
""")


def test_streaming_memory_bound(tmp_path: Path) -> None:
    """A scaled-down model (~100 MB fp32 + 2x optimizer state): anonymous RSS grows by far less than the model."""
    fields = dict(tiny_fields("phi4miniflash_d32"), n_embd=256, intermediate_size=1024, vocab_size=32000)
    cfg = asc.ArchConfig(asc.finish_fields(fields), "test")
    state = {k: torch.full(v.shape, 0.01) for k, v in synthetic_state(cfg, "2025").items()}
    path = write_checkpoint(tmp_path / "runs", cfg, "2025", state, {"train_config": "scaling", "model_name": "x",
                                                                    "seq_len": 64})
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(cfg.to_json_dict()))
    del state
    model_bytes = sum(t.numel() * 4 for t in synthetic_state(cfg, "2025").values())
    shard = 8_000_000
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(tmp_path / "hf"), str(cfg_file), str(shard)],
                       capture_output=True, text=True, cwd=REPO, check=True)
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert path.stat().st_size > 2 * model_bytes  # optimizer state (2x the model) is really there
    largest_tensor = 32000 * 256 * 4  # the fp32 embedding, converted one tensor at a time
    assert rep["peak_growth"] <= shard + largest_tensor + 24_000_000, rep
    assert rep["peak_growth"] < model_bytes / 2, rep


def test_official_shape_plan_matches_the_official_checkpoint_index() -> None:
    """phi4miniflash_d32 from hparams -> exactly the official tensor names and byte total (bf16 + fp32 A_log/λ)."""
    from sambay_cli.convert.mapping import expected_archscale_shapes, hf_plan

    cfg = asc.from_hparams({"model_name": "phi4miniflash_d32", "train_config": "scaling"}, "2025")
    meta = {k: torch.empty(s, device="meta") for k, s in expected_archscale_shapes(cfg, "2025").items()}
    plan = hf_plan(cfg, "2025", meta, folding_for(cfg), torch.bfloat16)
    index = json.loads((REPO / "tests/fixtures/phi4flash-hub-metadata/model.safetensors.index.json").read_text())
    assert {e.name for e in plan} == set(index["weight_map"])
    total = sum(writer.TensorSpec(e.name, e.shape, e.dtype, e.produce).nbytes for e in plan)
    assert total == index["metadata"]["total_size"]
