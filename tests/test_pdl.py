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
        **_settled_kernels(),
    }


def _settled_kernels():
    """Calls of the kernels that read *settled* inputs (written before the kernel just before them) before the wait
    point under late PDL: the Mamba conv and state update with their in-place states (fresh copies per call; output
    and new state returned together), and decode attention with keys/values or queries settled, differential and
    plain, with a split that owns no keys and invalid slots."""
    torch.manual_seed(12)
    dev = DEV
    d, n, r = 96, 16, 8
    x, z = torch.randn(2, d, device=dev), torch.randn(2, d, device=dev)
    conv_state, cw, cb = torch.randn(2, d, 3, device=dev), torch.randn(d, 4, device=dev), torch.randn(d, device=dev)
    ssm_state = torch.randn(2, d, n, device=dev)
    dt_low, w_dt = torch.randn(2, r, device=dev), torch.randn(d, r, device=dev) * 0.3
    a_rates = -torch.rand(d, n, device=dev) - 0.1
    bv, cv, dskip, dtb = (torch.randn(2, n, device=dev), torch.randn(2, n, device=dev), torch.randn(d, device=dev),
                          torch.randn(d, device=dev))

    def conv():
        state = conv_state.clone()
        y = triton_ops.causal_conv1d_update(x, state, cw, cb, settled=True)
        return torch.cat([y, state.flatten(1)], dim=-1)

    def ssm():
        state = ssm_state.clone()
        y = triton_ops.selective_state_update(state, x, dt_low, a_rates, bv, cv, D=dskip, z=z, dt_bias=dtb,
                                              dt_proj_weight=w_dt, settled=True)
        return torch.cat([y, state.flatten(1)], dim=-1)

    hd, s_max = 16, 80
    q = torch.randn(2, 8, hd, device=dev)
    k, v = torch.randn(2, 4, s_max, hd, device=dev), torch.randn(2, 4, s_max, hd, device=dev)
    valid = torch.rand(2, s_max, device=dev) > 0.2
    n_keys = torch.tensor([77, 5], device=dev)  # row 0: two key blocks per split; row 1: three splits own none
    lam, sub_w = torch.tensor(0.3, device=dev), torch.rand(2 * hd, device=dev) + 0.5

    def attention(settled, diff):
        kw = dict(lambda_full=lam, lambda_init=0.6, subln_weight=sub_w) if diff else \
            dict(lambda_full=None, lambda_init=0.0, subln_weight=None)
        return triton_ops.diff_attention_decode(q, k, v, valid, n_keys, scale=hd ** -0.5, eps=1e-5, splits=4,
                                                block_s=16, settled=settled, **kw)

    return {
        "conv update, state settled": conv,
        "state update, x / z / state settled": ssm,
        **{f"attention, {which} settled{', differential' if diff else ''}": (lambda w=which, df=diff:
                                                                            attention(w, df))
           for which in ("kv", "q") for diff in (True, False)},
    }


def test_pdl_structure_gives_the_same_results(monkeypatch):
    """Each kernel with its constants read before the wait point (PDL on; the interpreter's PDL_EMULATE on CPU)
    returns exactly what the plain kernel returns, split-K programs without steps included. The settled-input forms
    are taken here at two rows (the default is batch 1 only)."""
    monkeypatch.setattr(triton_ops, "SETTLED_MAX_ROWS", 2)
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



@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or torch.cuda.get_device_capability()[0] < 9, reason="needs a GPU with PDL (sm_90+)")
def test_gpu_settled_reads_in_cuda_graph(monkeypatch):
    """The kernels that read settled inputs before their wait point, in a decode-like chain captured with late PDL:
    in_proj → conv update (state settled) → x_proj → state update (x, z, state settled) → query projection →
    attention (K/V settled) → K/V projection → K/V write → attention (q settled). Each replay on new inputs and a
    rewritten cache equals the chain run eagerly without PDL from the same states; a kernel that read an unsettled
    input early would see the previous replay's values."""
    torch.manual_seed(6)
    bf = torch.bfloat16
    c, d, n, r, hd, heads, groups, s_max = 256, 512, 16, 32, 64, 8, 4, 256
    w_in = (torch.randn(2 * d, c, device=DEV) * 0.05).to(bf)
    cw, cb = torch.randn(d, 4, device=DEV).to(bf) * 0.5, torch.randn(d, device=DEV).to(bf) * 0.1
    w_x = (torch.randn(r + 2 * n, d, device=DEV) * 0.05).to(bf)
    w_dt, dtb = (torch.randn(d, r, device=DEV) * 0.1).to(bf), torch.randn(d, device=DEV).to(bf) * 0.1
    a_rates, dskip = -torch.rand(d, n, device=DEV) - 0.1, torch.randn(d, device=DEV).to(bf)
    w_q = (torch.randn(heads * hd, d, device=DEV) * 0.05).to(bf)
    w_kv = (torch.randn(2 * groups * hd, heads * hd, device=DEV) * 0.05).to(bf)
    lam, sub_w = torch.tensor(0.3, device=DEV), torch.rand(2 * hd, device=DEV).to(bf) + 0.5
    x = torch.randn(1, c, device=DEV, dtype=bf)
    kc, vc = torch.randn(1, groups, s_max, hd, device=DEV, dtype=bf), torch.randn(1, groups, s_max, hd, device=DEV,
                                                                                 dtype=bf)
    ring_k, ring_v = kc.clone(), vc.clone()
    valid = torch.ones(1, s_max, dtype=torch.bool, device=DEV)
    n_keys, slot = torch.tensor([s_max], device=DEV), torch.tensor([7], device=DEV)
    attn = dict(scale=hd ** -0.5, lambda_full=lam, lambda_init=0.6, subln_weight=sub_w, eps=1e-5, out_dtype=bf)

    def chain(conv_state, ssm_state, ring_k, ring_v):
        xz = triton_gemv.gemv(x, w_in)
        xc = triton_ops.causal_conv1d_update(xz[:, :d], conv_state, cw, cb, out_dtype=bf, settled=True)
        dbc = triton_gemv.gemv(xc, w_x)
        y = triton_ops.selective_state_update(ssm_state, xc, dbc[:, :r], a_rates, dbc[:, r:r + n], dbc[:, r + n:],
                                              D=dskip, z=xz[:, d:], dt_bias=dtb, dt_proj_weight=w_dt, out_dtype=bf,
                                              settled=True)
        q = triton_gemv.gemv(y, w_q).view(1, heads, hd)
        a1 = triton_ops.diff_attention_decode(q, kc, vc, valid, n_keys, settled="kv", **attn)
        kv = triton_gemv.gemv(a1.reshape(1, heads * hd), w_kv).view(1, 2, groups, hd)
        triton_ops.kv_write_decode(ring_k, ring_v, kv[:, 0], kv[:, 1], slot)
        a2 = triton_ops.diff_attention_decode(q, ring_k, ring_v, valid, n_keys, settled="q", **attn)
        return torch.cat([a1.flatten(), a2.flatten()])

    states = [torch.randn(1, d, 3, device=DEV), torch.randn(1, d, n, device=DEV) * 0.1, ring_k, ring_v]
    monkeypatch.setenv("SAMBAY_PDL", "late")
    chain(*[t.clone() for t in states])  # compiles, sizes the split-K workspace and the attention tickets
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(*states)
    for scale in (1.0, -2.0, 0.5):
        x.copy_(torch.randn_like(x) * scale)
        kc.copy_(torch.randn_like(kc) * scale)
        vc.copy_(torch.randn_like(vc))
        before = [t.clone() for t in states]
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setenv("SAMBAY_PDL", "off")
        ref = chain(*before)
        monkeypatch.setenv("SAMBAY_PDL", "late")
        for got, want in zip([out, *states], [ref, *before], strict=True):
            assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.float().abs().max().item())
