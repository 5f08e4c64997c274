"""Programmatic dependent launch (sambay_cli/kernels/pdl.py): the mode switch, the same results with and without
the PDL code structure (CPU: the interpreter runs it as PDL_EMULATE), and on a GPU a chain of dependent decode
kernels captured in a CUDA graph with PDL gives the plain stream-order results."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
pdl = importlib.import_module("sambay_cli.kernels.pdl")
triton_gemv = importlib.import_module("sambay_cli.kernels.triton_gemv")
triton_ops = importlib.import_module("sambay_cli.kernels.triton_ops")
tk = importlib.import_module("sambay_cli.quant.triton_kernels")
from sambay_cli.quant import formats  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"


def test_mode_from_environment(monkeypatch):
    """SAMBAY_PDL picks the mode; off always wins; the interpreter runs the structure without the instructions; a
    device without PDL (a CPU tensor outside the interpreter) gets none; a bad value is refused by name."""
    t = torch.zeros(1, device=DEV)
    monkeypatch.setenv("SAMBAY_PDL", "off")
    assert pdl.pdl_mode(t) == pdl.PDL_OFF and pdl.launch_options(pdl.PDL_OFF) == {}
    for name, mode in (("late", pdl.PDL_LATE), ("early", pdl.PDL_EARLY), ("", pdl._MODES[pdl.DEFAULT_MODE])):
        monkeypatch.setenv("SAMBAY_PDL", name)
        got = pdl.pdl_mode(t)
        if pdl._INTERPRET:
            assert got == (pdl.PDL_OFF if mode == pdl.PDL_OFF else pdl.PDL_EMULATE)
        elif ON_GPU and torch.cuda.get_device_capability()[0] >= 9:
            assert got == mode
        assert pdl.launch_options(got) == ({"launch_pdl": True} if got in (pdl.PDL_LATE, pdl.PDL_EARLY) else {})
    monkeypatch.setattr(pdl, "_INTERPRET", False)
    monkeypatch.setenv("SAMBAY_PDL", "late")
    assert pdl.pdl_mode(torch.zeros(1)) == pdl.PDL_OFF
    monkeypatch.setenv("SAMBAY_PDL", "sometimes")
    with pytest.raises(ValueError, match="SAMBAY_PDL"):
        pdl.pdl_mode(t)


def _decode_kernels():
    """Calls of every kernel that has a PDL form, on small shapes with split-K programs that own no steps (whose
    first-step reads are clamped into the weight): name → function returning the output."""
    torch.manual_seed(11)
    dev = DEV
    x = torch.randn(2, 200, device=dev)
    w = torch.randn(24, 200, device=dev)
    q8 = formats.quantize_int8(torch.randn(24, 256))
    x8 = torch.randn(2, 256, device=dev)
    q4 = formats.quantize_int4(torch.randn(20, 320), 16, False)
    w4 = formats.interleave_int4(q4.qweight, 16).to(dev)
    x4 = torch.randn(1, 320, device=dev)
    h, delta, nw = torch.randn(3, 64, device=dev), torch.randn(3, 64, device=dev), torch.randn(64, device=dev)
    return {
        "dense gemv, ragged K, 4 splits": lambda: triton_gemv.gemv(x, w, config=(4, 32, 1, 4)),
        "int8 gemv, elements, split": lambda: triton_gemv.gemv(x8, q8.qweight.to(dev), scales=q8.scales.to(dev),
                                                               epilogue="swiglu", config=(4, 32, 1, 3)),
        "int8 gemv, words, 5 splits": lambda: triton_gemv.gemv(x8, q8.qweight.to(dev), scales=q8.scales.to(dev),
                                                               config=(8, 32, 1, 5), int8_words=True),
        "int4 gemv, 4 splits (one empty)": lambda: tk.w4a16_gemv(x4, w4, q4.scales.to(dev), q4.zeros.to(dev), 16,
                                                                 None, config=(8, 2, 1, 4)),
        "int4 gemv swiglu": lambda: tk.w4a16_gemv(x4, w4, q4.scales.to(dev), q4.zeros.to(dev), 16, None,
                                                  epilogue="swiglu", config=(4, 2, 1, 2)),
        "add_norm": lambda: torch.cat(triton_ops.add_norm(h, delta, nw, None, 1e-5, True), dim=-1),
    }


def test_pdl_structure_gives_the_same_results(monkeypatch):
    """Each kernel with its constants read before the wait point (PDL on; the interpreter's PDL_EMULATE on CPU)
    returns exactly what the plain kernel returns, split-K programs without steps included."""
    calls = _decode_kernels()
    monkeypatch.setenv("SAMBAY_PDL", "off")
    plain = {name: call() for name, call in calls.items()}
    monkeypatch.setenv("SAMBAY_PDL", "late")
    assert pdl.pdl_mode(torch.zeros(1, device=DEV)) != pdl.PDL_OFF or (ON_GPU and
                                                                        torch.cuda.get_device_capability()[0] < 9)
    for name, call in calls.items():
        got = call()
        if ON_GPU:  # split-K sums in another order from run to run
            assert torch.allclose(got, plain[name], rtol=1e-5, atol=1e-5), name
        else:
            assert torch.equal(got, plain[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or torch.cuda.get_device_capability()[0] < 9, reason="needs a GPU with PDL (sm_90+)")
@pytest.mark.parametrize("mode", ["late", "early"])
def test_gpu_dependent_chain_in_cuda_graph(monkeypatch, mode):
    """A chain where every kernel reads what the one before it wrote — int4 GEMV (split) → add_norm → int8 GEMV
    (SwiGLU) → bf16 GEMV → add_norm → int4 GEMV — captured in a CUDA graph with PDL: every replay on a new input
    equals the chain run eagerly without PDL. A kernel that read its input before its wait point would see the last
    replay's values."""
    torch.manual_seed(5)
    d, f = 1024, 2048
    q4a = formats.quantize_int4(torch.randn(d, d) * 0.03, 128)
    w4a, s4a, z4a = formats.interleave_int4(q4a.qweight, 128).to(DEV), q4a.scales.to(DEV), q4a.zeros.to(DEV)
    q8 = formats.quantize_int8((torch.randn(2 * f, d) * 0.03).bfloat16())
    w8, s8 = q8.qweight.to(DEV), q8.scales.to(DEV)
    wb = (torch.randn(d, f, device=DEV) * 0.03).bfloat16()
    q4b = formats.quantize_int4(torch.randn(d, d) * 0.03, 128)
    w4b, s4b, z4b = formats.interleave_int4(q4b.qweight, 128).to(DEV), q4b.scales.to(DEV), q4b.zeros.to(DEV)
    norm = torch.rand(d, device=DEV).bfloat16() + 0.5
    x = torch.randn(1, d, device=DEV, dtype=torch.bfloat16)
    h0 = torch.randn(1, d, device=DEV)

    def chain():
        a = tk.w4a16_gemv(x, w4a, s4a, z4a, 128, None)
        h, n1 = triton_ops.add_norm(h0, a, norm, None, 1e-5, True)
        m = triton_gemv.gemv(n1, w8, scales=s8, epilogue="swiglu")
        b = triton_gemv.gemv(m, wb)
        _, n2 = triton_ops.add_norm(h, b, norm, None, 1e-5, True)
        return tk.w4a16_gemv(n2, w4b, s4b, z4b, 128, None)

    monkeypatch.setenv("SAMBAY_PDL", mode)
    chain()  # compiles, sizes the split-K workspace
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    for scale in (1.0, -2.0, 0.5):
        x.copy_(torch.randn_like(x) * scale)
        h0.copy_(torch.randn_like(h0))
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv("SAMBAY_PDL", "off")
        ref = chain()
        monkeypatch.setenv("SAMBAY_PDL", mode)
        assert torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.float().abs().max().item())
        assert (out.float() - ref.float()).norm() / ref.float().norm() < 1e-2

