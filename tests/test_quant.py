"""`sambay quantize`: formats, streaming quantize → load round trips, selection policy, bad input, report."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from typer.testing import CliRunner

from sambay_cli.cli import app, main
from sambay_cli.errors import SambaYError
from sambay_cli.loading import load_model
from sambay_cli.quant import formats
from sambay_cli.quant.modules import QuantLinear
from sambay_cli.quant.quantize import QuantizeOptions, quantize_checkpoint

runner = CliRunner()


def _quantize(tmp_path, name="q", **kw):
    kw.setdefault("method", "int8")
    out = tmp_path / name
    warnings: list[str] = []
    res = quantize_checkpoint(TINY, out, QuantizeOptions(**kw), warn=warnings.append)
    return out, res, warnings


def _orig_weight(name: str) -> torch.Tensor:
    with safe_open(str(TINY / "model.safetensors"), framework="pt") as f:
        return f.get_tensor(name)


# ------------------------------------------------------------------------------------------------ formats


def test_int8_rows_and_error():
    torch.manual_seed(0)
    w = torch.randn(33, 70) * torch.linspace(0.01, 3, 33)[:, None]
    q = formats.quantize_int8(w)
    assert q.qweight.dtype == torch.int8 and q.scales.shape == (33,)
    assert q.qweight.abs().amax(1).eq(127).all()  # each row's max maps to ±127
    deq = formats.dequantize_int8(q.qweight, q.scales)
    assert ((deq - w).abs() <= q.scales[:, None] / 2 + 1e-6).all()  # within half a step


def test_int4_packing_layout():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 7, 8]], dtype=torch.uint8)
    packed = formats.pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x87]]  # even column in the low nibble
    assert torch.equal(formats.unpack_int4(packed), codes)


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_quantize_error_and_zero_points(symmetric):
    torch.manual_seed(1)
    w = torch.randn(16, 256)
    q = formats.quantize_int4(w, 64, symmetric, clip_search=True)
    assert q.qweight.shape == (16, 128) and q.scales.shape == (16, 4)
    assert (q.zeros is None) == symmetric
    rel = ((formats.dequantize_int4(q) - w).norm() / w.norm()).item()
    assert rel < 0.12
    plain = formats.quantize_int4(w, 64, symmetric)
    rel_plain = ((formats.dequantize_int4(plain) - w).norm() / w.norm()).item()
    assert rel <= rel_plain + 1e-6  # the clip search never does worse


def test_fallback_group_size():
    assert formats.fallback_group_size(160, 128) == 32
    assert formats.fallback_group_size(64, 128) == 64
    assert formats.fallback_group_size(4, 128) == 4
    assert formats.fallback_group_size(7, 128) == 1


# -------------------------------------------------------------------------------------- quantize → load


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_round_trip_equals_in_memory_quantization(tmp_path, method):
    out, res, _ = _quantize(tmp_path, method=method)
    model = load_model(out)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == res.quantized_modules == 32
    for name in ("model.layers.0.mlp.fc1", "model.layers.3.attn.Wqkv", "model.layers.6.attn.in_proj"):
        w = _orig_weight(f"{name}.weight")
        if method == "int8":
            q = formats.quantize_int8(w)
            expected = formats.dequantize_int8(q.qweight, q.scales)
        else:
            q = formats.quantize_int4(w, formats.fallback_group_size(w.shape[1], 128))
            expected = formats.dequantize_int4(q)
        assert torch.equal(layers[name].dequantize(torch.float32), expected), name
        assert torch.equal(layers[name].qweight, q.qweight)
    # packed stays packed in memory
    fc1 = layers["model.layers.0.mlp.fc1"]
    assert fc1.qweight.dtype == (torch.int8 if method == "int8" else torch.uint8)
    assert "weight" not in dict(fc1.named_parameters())


def test_default_selection_and_config(tmp_path):
    out, res, warnings = _quantize(tmp_path, method="int4")
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "sambay" and cfg["format"] == "int4" and cfg["group_size"] == 128
    mods = set(cfg["modules"])
    assert not any(m.endswith((".x_proj", ".dt_proj")) for m in mods)
    assert "model.embed_tokens" not in mods
    assert {"model.layers.0.attn.in_proj", "model.layers.0.attn.out_proj", "model.layers.1.attn.Wqkv",
            "model.layers.6.attn.in_proj", "model.layers.7.mlp.fc2"} <= mods
    # width 64 is not a multiple of 128: group 64, recorded and warned once
    assert cfg["group_size_overrides"]["model.layers.0.mlp.fc1"] == 64
    assert "model.layers.0.mlp.fc2" not in cfg["group_size_overrides"]
    assert len(warnings) == 1 and "group 64" in warnings[0]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.attn.x_proj.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.fc1.scales").shape == (256, 1)
    assert "model.layers.0.mlp.fc1.weight" not in keys and "model.layers.0.mlp.fc1.zeros" in keys
    assert (out / "README.md").is_file()  # side files copied


def test_skip_include_and_embeddings(tmp_path):
    out, res, warnings = _quantize(tmp_path, method="int8", skip=["model.layers.0.*", "*.nothing"],
                                   include=["*.x_proj"], quantize_embeddings=True)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert not any(m.startswith("model.layers.0.") for m in cfg["modules"])
    assert "model.layers.2.attn.x_proj" in cfg["modules"] and "model.embed_tokens" in cfg["modules"]
    assert any("*.nothing" in w and "matches no" in w for w in warnings)
    model = load_model(out)
    ref = load_model(TINY)
    ids = torch.tensor([[1, 5, 9, 200, 3, 77]])
    logits = model(ids)
    assert logits.shape == (1, 6, 512) and torch.isfinite(logits).all()
    assert model.dtype == torch.float32
    emb = model.model.embed_tokens(ids)
    assert ((emb - ref.model.embed_tokens(ids)).norm() / emb.norm()).item() < 0.02


def test_quantized_model_generates_like_original_int8(tmp_path):
    from sambay_cli.generation import generate

    out, _, _ = _quantize(tmp_path, method="int8")
    ref, q = load_model(TINY), load_model(out)
    prompt = [[3, 14, 15, 92, 65, 35]]
    a = generate(ref, prompt, max_new_tokens=6, stop_token_ids=[], return_logits=True)
    b = generate(q, prompt, max_new_tokens=6, stop_token_ids=[], return_logits=True)
    kl = torch.nn.functional.kl_div(b.logits[0].log_softmax(-1), a.logits[0].log_softmax(-1), log_target=True,
                                    reduction="batchmean")
    assert kl.item() < 0.1  # random weights: int8 stays close (cache path exercised)


def test_chunked_prefill_reads_weight_of_quantized_kv_layer(tmp_path):
    out, _, _ = _quantize(tmp_path, method="int8")
    q = load_model(out)
    cache = q.new_cache(1, 16)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    q.run(ids, cache=cache, compute_logits=False)  # uses attn.Wqkv.weight[...] of the KV layer
    assert cache.seen == 5


def test_streaming_writes_multiple_shards_and_atomic(tmp_path):
    out, res, _ = _quantize(tmp_path, method="int4", max_shard_bytes=100_000)
    assert len([f for f in res.files if f.endswith(".safetensors")]) > 1
    assert (out / "model.safetensors.index.json").is_file()
    assert isinstance(load_model(out), torch.nn.Module)
    with pytest.raises(SambaYError, match="already exists"):
        _quantize(tmp_path, method="int4")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_errors(tmp_path):
    out, _, _ = _quantize(tmp_path, method="int8")
    with pytest.raises(SambaYError, match="already quantized"):
        quantize_checkpoint(out, tmp_path / "again", QuantizeOptions(method="int8"))
    with pytest.raises(SambaYError, match="unknown --method"):
        quantize_checkpoint(TINY, tmp_path / "x", QuantizeOptions(method="int3"))
    with pytest.raises(SambaYError, match="strict-group"):
        quantize_checkpoint(TINY, tmp_path / "y", QuantizeOptions(method="int4", strict_group=True))
    with pytest.raises(SambaYError, match="power of two"):
        quantize_checkpoint(TINY, tmp_path / "z", QuantizeOptions(method="int4", group_size=48))
    assert not (tmp_path / "y").exists()


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_exit_codes_and_json(tmp_path, capsys):
    code, _, err = _main(["quantize", str(TINY), str(tmp_path / "a"), "--method", "int4", "--strict-group"], capsys)
    assert code == 2 and "strict-group" in err and "Traceback" not in err
    code, _, err = _main(["quantize", str(TINY), str(tmp_path / "b"), "--method", "nope"], capsys)
    assert code == 2 and "unknown --method" in err
    code, out, _ = _main(["quantize", str(TINY), str(tmp_path / "c"), "--method", "int8", "--json", "--skip", "*.zzz"],
                         capsys)
    assert code == 0
    data = json.loads(out)
    assert data["quantized_modules"] == 32 and any("*.zzz" in w for w in data["warnings"])
    code, _, err = _main(["quantize", str(TINY), str(tmp_path / "c"), "--method", "int8", "--json"], capsys)
    assert code == 2 and "--force" in err
    code, _, _ = _main(["quantize", str(TINY), str(tmp_path / "c"), "--method", "int8", "--json", "--force"], capsys)
    assert code == 0


def test_compare_report_json(tmp_path):
    out, _, _ = _quantize(tmp_path, method="int8")
    r = runner.invoke(app, ["quantize", "--compare", str(TINY), str(out), "--json", "--sample-tokens", "96"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["report"]
    assert rep["tokens"] == 95 and 0 <= rep["kl_mean"] < 0.05 and rep["top1_agreement"] > 0.8
    assert len(rep["layers"]) == 32 and all(0 < x["rel_error"] < 0.02 for x in rep["layers"])
    with pytest.raises(SambaYError, match="not a quantized"):
        from sambay_cli.quant.report import compare

        compare(TINY, TINY)


def test_corrupt_quantized_checkpoint(tmp_path):
    out, _, _ = _quantize(tmp_path, method="int4")
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["modules"].append("model.layers.0.attn.x_proj")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SambaYError, match="missing"):
        load_model(out)
    shutil.rmtree(out)


def test_info_shows_quantization(tmp_path):
    from sambay_cli.info import collect_info

    out, _, _ = _quantize(tmp_path, method="int4")
    info = collect_info(out)
    assert info["quantization"]["method"] == "int4 g128 asymmetric"
    assert collect_info(TINY)["quantization"] is None


def test_gptq_beats_rtn_on_output_error():
    from sambay_cli.quant import gptq

    torch.manual_seed(0)
    x = torch.randn(1024, 16) @ torch.randn(16, 128) + 0.1 * torch.randn(1024, 128)  # correlated inputs
    w = torch.randn(32, 128)
    h = 2 * x.T @ x / x.shape[0]

    def out_err(deq):
        return ((x @ deq.T - x @ w.T).norm() / (x @ w.T).norm()).item()

    g4, r4 = gptq.gptq_int4(w, h, 32, False), formats.quantize_int4(w, 32)
    assert out_err(formats.dequantize_int4(g4)) < 0.6 * out_err(formats.dequantize_int4(r4))
    g8, r8 = gptq.gptq_int8(w, h), formats.quantize_int8(w)
    assert out_err(formats.dequantize_int8(g8.qweight, g8.scales)) < out_err(formats.dequantize_int8(r8.qweight,
                                                                                                     r8.scales))


def test_calibrate_cli_writes_gptq_checkpoint(tmp_path, capsys):
    code, out, _ = _main(["quantize", str(TINY), str(tmp_path / "g"), "--method", "int4", "--group-size", "32",
                          "--calibrate", "--calib-tokens", "256", "--json"], capsys)
    assert code == 0
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert cfg["rounding"] == "gptq"
    assert torch.isfinite(load_model(tmp_path / "g")(torch.tensor([[1, 2, 3]]))).all()


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_chunked_cpu_path_equals_full_dequantization(fmt, monkeypatch):
    from sambay_cli.quant import modules

    torch.manual_seed(0)
    w = torch.randn(100, 64)
    if fmt == "int8":
        q = formats.quantize_int8(w)
        tensors = {"qweight": q.qweight, "scales": q.scales}
    else:
        q = formats.quantize_int4(w, 32)
        tensors = {"qweight": q.qweight, "scales": q.scales, "zeros": q.zeros}
    layer = QuantLinear(fmt, 64, 100, tensors, torch.randn(100), torch.float32, group_size=32)
    x = torch.randn(3, 64)
    full = x @ layer.dequantize(torch.float32).T + layer.bias
    monkeypatch.setattr(modules, "CHUNK_ELEMENTS", 64 * 7)  # 7 rows per block, a partial last block
    torch.testing.assert_close(modules.dequant_linear(x, layer), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_int8pack_path_matches_dequant(dtype):
    from sambay_cli.quant import modules

    if not modules._cpu_int8pack_available(torch.empty(0, dtype=dtype)):
        pytest.skip("torch without _weight_int8pack_mm")
    torch.manual_seed(0)
    q = formats.quantize_int8(torch.randn(48, 64))
    layer = QuantLinear("int8", 64, 48, {"qweight": q.qweight, "scales": q.scales}, torch.randn(48), dtype)
    x = torch.randn(2, 5, 64).to(dtype)
    ref = modules.dequant_linear(x.float(), layer)
    out = modules.cpu_int8pack(x, layer)
    assert out.shape == (2, 5, 48) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((out.float() - ref).norm() / ref.norm()).item() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_f, group, symmetric", [(48, 64, False), (64, 128, True), (40, 32, False)])
def test_cpu_int4pack_path_matches_dequant(dtype, out_f, group, symmetric):
    """torch's CPU int4 kernel with our (code − zero)·scale mapped onto its (q − 8)·scale + zero; 40 output rows are
    not a multiple of 16, so that layer takes the dequantizing path (exactly)."""
    from sambay_cli.quant import modules

    if not modules._cpu_int4pack_available(torch.empty(0, dtype=dtype)):
        pytest.skip("torch without _weight_int4pack_mm_for_cpu")
    torch.manual_seed(0)
    q = formats.quantize_int4(torch.randn(out_f, 256), group, symmetric=symmetric)
    tensors = {"qweight": q.qweight, "scales": q.scales} | ({} if symmetric else {"zeros": q.zeros})
    layer = QuantLinear("int4", 256, out_f, tensors, torch.randn(out_f), dtype, group_size=group)
    x = torch.randn(2, 5, 256).to(dtype)
    ref = modules.dequant_linear(x.float(), layer)
    out = modules.cpu_int4pack(x, layer)
    assert out.shape == (2, 5, out_f) and out.dtype == dtype
    assert (layer.__dict__["_cpu_int4"][0] is None) == (out_f % 16 != 0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((out.float() - ref).norm() / ref.norm()).item() < tol


def test_chunked_prefill_of_a_quantized_model_matches_one_shot(tmp_path):
    """Prefill chunks that skip the cross-decoder project only K/V of layer N/2+1; a quantized Wqkv must work too."""
    import torch

    from sambay_cli import load_model
    from sambay_cli.cli import main
    from sambay_cli.generation import prefill

    out = tmp_path / "q8"
    try:
        main(["quantize", "tests/fixtures/phi4flash-tiny-a", str(out), "--method", "int8"])
    except SystemExit as e:
        assert e.code in (0, None)
    model = load_model(out, dtype="float32")
    prompt = list(range(1, 30))
    _, one = prefill(model, [prompt], 2, chunk=64)
    _, chunked = prefill(model, [prompt], 2, chunk=5)
    assert torch.allclose(one, chunked, atol=1e-4, rtol=1e-4)
