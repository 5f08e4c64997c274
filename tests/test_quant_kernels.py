"""Fused W8A16 / W4A16 Triton kernels against dequantize-then-matmul in float32.

CPU: the Triton interpreter, small shapes. GPU (`make test-gpu`): compiled, bf16 activations, decode and prefill
shapes, plus a whole quantized model through the kernels vs the dequantizing torch path."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
tk = importlib.import_module("sambay_cli.quant.triton_kernels")
from sambay_cli.quant import formats  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
pytestmark = [pytest.mark.gpu] if ON_GPU else []


def _spy(monkeypatch, owner, name: str, record, log: list | None = None) -> list:
    """Wrap ``owner.name`` (for this test) so that every call, run once as before, appends ``record(args, result)`` to
    ``log`` (a new list unless given), which is returned."""
    log = [] if log is None else log
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        log.append(record(args, out))
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return log


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("rows, k", [(1, 80), (3, 80), (21, 80), (1, 256), (2, 256), (9, 80), (16, 600), (40, 300),
                                     (70, 80), (140, 80)])
def test_w8a16_matches_reference(rows, k):
    """GEMV (≤ 4 rows), batched-decode GEMM (5–128 rows, four tile sets; K shorter than and not a multiple of the
    K step) and prefill GEMM paths, float32 activations."""
    torch.manual_seed(rows)
    n = 48
    w = torch.randn(n, k)
    q = formats.quantize_int8(w)
    x, bias = torch.randn(rows, k), torch.randn(n)
    ref = x @ formats.dequantize_int8(q.qweight, q.scales).T + bias
    y = tk.w8a16_linear(x.to(DEV), q.qweight.to(DEV), q.scales.to(DEV), bias.to(DEV))
    assert y.shape == (rows, n)
    assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)


_W8_TRANSPOSED = (16, 64, 64, 4, 3, 1)  # an explicit transposed launch (the split target is appended)


@pytest.mark.parametrize("rows, k, launch", [(6, 1100, None), (40, 1100, None), (100, 1100, None),
                                             (6, 300, (*_W8_TRANSPOSED, 0)), (40, 1100, (*_W8_TRANSPOSED, 10_000)),
                                             (100, 80, (*_W8_TRANSPOSED, 0))])
def test_w8a16_batched_gemm_split_k(monkeypatch, rows, k, launch):
    """The batched-decode int8 GEMM, bf16 activations, bias: split over K (forced by a high program target) and, with
    an explicit launch, in its transposed form (yᵀ = W·xᵀ), split or not. Right twice in a row, the split taken as
    asked, workspace and tickets zero afterwards."""
    from sambay_cli.kernels import triton_gemv

    n = 48
    if launch is None:
        monkeypatch.setattr(tk, "W8_BATCHED_SPLIT_TARGET", 10_000)
    else:
        monkeypatch.setenv("SAMBAY_W8_GEMM_BATCHED", ",".join(map(str, launch)))
        assert tk.w8_batched_config(rows, n) == launch
    splits = _spy(monkeypatch, triton_gemv, "split_buffers", lambda args, out: out[0])
    torch.manual_seed(rows)
    q = formats.quantize_int8(torch.randn(n, k))
    x, bias = torch.randn(rows, k).bfloat16(), torch.randn(n).bfloat16()
    ref = x.float() @ formats.dequantize_int8(q.qweight, q.scales).float().T + bias.float()
    for _ in range(2):
        y = tk.w8a16_linear(x.to(DEV), q.qweight.to(DEV), q.scales.to(DEV), bias.to(DEV))
        assert y.shape == (rows, n) and y.dtype == torch.bfloat16
        assert _rel(y.float().cpu(), ref) < 2 * _rel(ref.bfloat16().float(), ref) + 1e-3
    assert len(splits) == 2 and all((sp > 1) == (launch is None or launch[6] > 0) for sp in splits)
    ws, tickets = triton_gemv.splitk_workspace(torch.device(DEV), 1, 1)
    assert not ws.any() and not tickets.any()


def test_w8_batched_launch_tables():
    """The int8 batched launch table covers GEMV_MAX_ROWS + 1 … W8_BATCHED_M rows in increasing row classes; a layer
    gets its class's wide or narrow entry (transposed flag and split target) by its width; above: prefill tiles."""
    table = tk._W8_BATCHED_LAUNCH
    assert [rows for rows, _, _ in table] == sorted(rows for rows, _, _ in table)
    assert table[0][0] > tk.GEMV_MAX_ROWS and table[-1][0] == tk.W8_BATCHED_M
    assert tk.w8_batched_config(tk.W8_BATCHED_M + 1, 2560) is None
    previous = tk.GEMV_MAX_ROWS
    for rows, wide, narrow in table:
        for m in (previous + 1, rows):
            assert tk.w8_batched_config(m, tk.WIDE_MIN_N)[5:] == wide[5:]
            assert tk.w8_batched_config(m, tk.WIDE_MIN_N - 1)[5:] == narrow[5:]
        previous = rows


@pytest.mark.parametrize("epilogue", ["swiglu", "gate"])
def test_w8a16_fused_epilogues(epilogue):
    """An int8 QuantLinear's fused decode path (one GEMV kernel with the SwiGLU / GMU-gate epilogue) equals the layer
    followed by the element-wise op, in float32; at two rows the unfused path serves."""
    from sambay_cli.quant.modules import QuantLinear, linear_then_epilogue

    torch.manual_seed(4)
    n, k = 48, 256  # whole steps (32 columns under the interpreter, 256 on the GPU): the word-wise path can serve
    q = formats.quantize_int8(torch.randn(n, k))
    layer = QuantLinear("int8", k, n, {"qweight": q.qweight, "scales": q.scales}, torch.randn(n),
                        torch.float32).to(DEV)
    out_n = n // 2 if epilogue == "swiglu" else n
    for rows in (1, 2):
        x = torch.randn(rows, k, device=DEV)
        memory = torch.randn(rows, out_n, device=DEV) if epilogue == "gate" else None
        ref = linear_then_epilogue(x, layer, epilogue, memory)
        y = layer.forward_fused(x, epilogue, memory)  # the seam: Triton on CUDA, the torch path elsewhere
        assert y.shape == (rows, out_n)
        assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)
        # the fused kernel itself (under the interpreter on CPU)
        y = tk.w8a16_gemv(x, layer.qweight, layer.scales, layer.bias, epilogue=epilogue, memory=memory)
        assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)


@pytest.mark.parametrize("epilogue", ["none", "swiglu"])
def test_int8_word_wise_gemv(epilogue):
    """The word-wise int8 GEMV itself: float32 activations against dequantize-then-matmul, within 1e-4 — its final
    correction (256·Σ f·x − 384·Σ x) costs about two bits of the float32 sum, which is why the seam sends float32
    activations to the element-wise kernel and uses words for bf16/fp16 only; on the GPU also bf16 activations within
    the bf16 rule."""
    from sambay_cli.kernels import triton_gemv

    torch.manual_seed(6)
    n, k = 32, 256
    q = formats.quantize_int8(torch.randn(n, k))
    x, bias = torch.randn(1, k), torch.randn(n)
    y = x @ formats.dequantize_int8(q.qweight, q.scales).T + bias
    ref = torch.nn.functional.silu(y[:, : n // 2]) * y[:, n // 2:] if epilogue == "swiglu" else y
    args = (q.qweight.to(DEV), bias.to(DEV))
    kw = dict(scales=q.scales.to(DEV), epilogue=epilogue, int8_words=True, config=(4, 32 if not ON_GPU else 256, 4))
    assert _rel(triton_gemv.gemv(x.to(DEV), *args, **kw), ref) < 1e-4
    if ON_GPU:  # bf16 activations, directly and through the seam with each variant
        xb = x.to(DEV, torch.bfloat16)
        assert _rel(triton_gemv.gemv(xb, *args, **kw), ref) < 2e-2
        for variant in ("words", "bytes"):
            os.environ["SAMBAY_INT8_GEMV"] = variant
            try:
                y = tk.w8a16_gemv(xb, q.qweight.to(DEV), q.scales.to(DEV), bias.to(DEV), epilogue=epilogue)
            finally:
                del os.environ["SAMBAY_INT8_GEMV"]
            assert _rel(y, ref) < 2e-2, variant


@pytest.mark.parametrize("epilogue", ["none", "swiglu", "gate"])
def test_gemv_split_k(epilogue):
    """The shared GEMV with its input dimension split across programs (split-K): dense float32 weights (a ragged K:
    the last step masked) and int8 codes (element-wise and word-wise) give the unsplit result, with every fused
    epilogue, over two activation rows and two calls in a row (the workspace cleans itself up)."""
    from sambay_cli.kernels import triton_gemv

    torch.manual_seed(7)
    n = 24
    out_n = n // 2 if epilogue == "swiglu" else n
    for k, int8, words, config in ((200, False, False, (4, 32, 1, 3)), (256, True, False, (4, 32, 1, 4)),
                                   (256, True, True, (8, 32, 1, 5))):
        w, x, bias = torch.randn(n, k), torch.randn(2, k), torch.randn(n)
        memory = torch.randn(2, out_n) if epilogue == "gate" else None
        if int8:
            q = formats.quantize_int8(w)
            weight, scales, dense = q.qweight, q.scales, formats.dequantize_int8(q.qweight, q.scales)
        else:
            weight, scales, dense = w, None, w
        y = x @ dense.T + bias
        if epilogue == "swiglu":
            ref = torch.nn.functional.silu(y[:, :out_n]) * y[:, out_n:]
        elif epilogue == "gate":
            ref = torch.nn.functional.silu(y) * memory
        else:
            ref = y
        for _ in range(2):
            out = triton_gemv.gemv(x.to(DEV), weight.to(DEV), bias.to(DEV), epilogue=epilogue,
                                   memory=memory.to(DEV) if memory is not None else None,
                                   scales=scales.to(DEV) if scales is not None else None, config=config,
                                   int8_words=words)
            assert out.shape == (2, out_n)
            assert _rel(out, ref) < (1e-4 if not ON_GPU else 2e-3), (k, int8, words)
    for floats, tickets in triton_gemv._WORKSPACES.values():
        assert floats.abs().sum().item() == 0 and tickets.abs().sum().item() == 0


@pytest.mark.parametrize("rows,symmetric,group", [(1, False, 32), (2, True, 16), (19, False, 32), (17, True, 64)])
def test_w4a16_matches_reference(rows, symmetric, group):
    torch.manual_seed(rows)
    n, k = 40, 128
    w = torch.randn(n, k)
    q = formats.quantize_int4(w, group, symmetric)
    x = torch.randn(rows, k)
    ref = x @ formats.dequantize_int4(q).T
    z = q.zeros.to(DEV) if q.zeros is not None else None
    y = tk.w4a16_linear(x.to(DEV), q.qweight.to(DEV), q.scales.to(DEV), z, group, None)
    assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)


@pytest.mark.parametrize("n,k,group,rows,config", [
    (13, 256, 32, 1, None),  # ragged row count (clamped rows), the default launch
    (24, 384, 32, 2, (4, 4, 1, 3)),  # 3 steps of 4 groups over 3 splits, two activation rows
    (20, 320, 16, 1, (8, 2, 1, 4)),  # 10 steps over 4 splits: the last split gets one step, one gets none
    (9, 64, 8, 4, (4, 1, 1, 2)),  # one-word groups, four activation rows
])
@pytest.mark.parametrize("symmetric", [False, True])
def test_w4a16_gemv_interleaved(n, k, group, rows, config, symmetric):
    from sambay_cli.kernels import triton_gemv

    """The int4 decode GEMV on the word-interleaved code order: ragged rows, uneven k-splits (the split-K workspace
    must be clean afterwards, twice in a row), small groups, several activation rows, float32 activations (read
    element-wise) within 1e-5; bf16 activations (read as 32-bit pairs) within the bf16 rule."""
    torch.manual_seed(n + k)
    q = formats.quantize_int4(torch.randn(n, k), group, symmetric)
    qi = formats.interleave_int4(q.qweight, group).to(DEV)
    z = q.zeros.to(DEV) if q.zeros is not None else None
    x, bias = torch.randn(rows, k), torch.randn(n)
    w = formats.dequantize_int4(q)
    for dtype, tol in ((torch.float32, 1e-5 if not ON_GPU else 2e-3), (torch.bfloat16, 2e-2)):
        xd = x.to(DEV, dtype)
        ref = xd.float().cpu() @ w.T + bias
        for _ in range(2):
            y = tk.w4a16_gemv(xd, qi, q.scales.to(DEV), z, group, bias.to(DEV), config=config)
            assert y.shape == (rows, n) and y.dtype == dtype
            assert _rel(y, ref) < tol, dtype
    for floats, tickets in triton_gemv._WORKSPACES.values():
        assert floats.abs().sum().item() == 0 and tickets.abs().sum().item() == 0


def test_w4a16_gemv_bf16x2_error_bound():
    """bf16 activations take the packed bfloat16 path (products and sums of four rounded to bf16): its error against
    float32 dequantize-then-matmul stays within 2.5× that of rounding the exact result to bf16 (measured ≈ 1.8× on the
    H100), and far below the quantization error itself. The Triton interpreter truncates float32 → bf16 stores
    instead of rounding them, which adds up to one more unit in the last place on CPU: 3.5× there."""
    torch.manual_seed(3)
    n, k = (2560, 2560) if ON_GPU else (256, 1024)
    w = torch.randn(n, k) / k ** 0.5
    x = torch.randn(1, k).bfloat16()
    q = formats.quantize_int4(w, 128)
    ref = x.float() @ formats.dequantize_int4(q).T
    y = tk.w4a16_gemv(x.to(DEV), formats.interleave_int4(q.qweight, 128).to(DEV), q.scales.to(DEV), q.zeros.to(DEV),
                      128, None).float().cpu()
    rounding = _rel(ref.bfloat16().float(), ref)
    assert _rel(y, ref) < (2.5 if ON_GPU else 3.5) * rounding, (_rel(y, ref), rounding)
    assert _rel(y, ref) < 0.1 * _rel(x.float() @ w.T, ref)


def _check_int4_rows(n, k, group, rows, symmetric, calls=1):
    """w4a16_linear on interleaved weights, bf16 activations and bias, ``calls`` times: shape, dtype, and within the
    bf16 bound of the float32 reference (weights and output rounded to bf16)."""
    torch.manual_seed(n + rows)
    q = formats.quantize_int4(torch.randn(n, k), group, symmetric)
    x, bias = torch.randn(rows, k).bfloat16(), torch.randn(n).bfloat16()
    ref = x.float() @ formats.dequantize_int4(q).T + bias.float()
    z = q.zeros.to(DEV) if q.zeros is not None else None
    for _ in range(calls):
        y = tk.w4a16_linear(x.to(DEV), formats.interleave_int4(q.qweight, group).to(DEV), q.scales.to(DEV), z, group,
                            bias.to(DEV), interleaved=True)
        assert y.shape == (rows, n) and y.dtype == torch.bfloat16
        assert _rel(y.float().cpu(), ref) < (2.5 if ON_GPU else 3.5) * _rel(ref.bfloat16().float(), ref)


@pytest.mark.parametrize("n,k,group,rows,symmetric", [(40, 512, 64, 13, True), (9, 256, 128, 16, False),
                                                        (17, 384, 128, 5, False), (24, 256, 128, 33, False),
                                                        (40, 256, 64, 64, True), (40, 512, 64, 7, False),
                                                        (24, 1024, 256, 9, False), (40, 256, 128, 100, False),
                                                        (17, 256, 64, 128, True)])
def test_w4a16_batched_rows_gemm(monkeypatch, n, k, group, rows, symmetric):
    """Batched decode (5–128 bf16 rows, several activation tiles) on word-interleaved weights takes the tensor-core
    GEMM that decodes each group in registers (once per call): ragged output rows, an odd group count, bias; within
    the bf16 bound of the float32 reference (weights and output rounded to bf16)."""
    calls = _spy(monkeypatch, tk, "_w4_batched_gemm", lambda args, out: args[0].shape)
    _check_int4_rows(n, k, group, rows, symmetric)
    assert calls == [(rows, k)]  # group 64 with zeros too (the earlier kernel's sm_90 miscompile is gone)


@pytest.mark.parametrize("n,k,group,rows,symmetric", [(40, 384, 128, 20, False), (72, 256, 128, 64, True),
                                                        (40, 256, 64, 40, True), (40, 256, 128, 120, False)])
def test_w4a16_batched_rows_wide_gemm(monkeypatch, n, k, group, rows, symmetric):
    """17–128 rows on a wide layer (the threshold lowered to these shapes) take the wide layers' launch, which does
    not split K: ragged tiles, bias, within the bf16 bound of the float32 reference."""
    from sambay_cli.kernels import triton_gemv

    monkeypatch.setattr(tk, "WIDE_MIN_N", 32)
    assert tk.w4_batched_config(rows, n)[4] == 0
    splits = _spy(monkeypatch, triton_gemv, "split_buffers", lambda args, out: out[0])
    _check_int4_rows(n, k, group, rows, symmetric)
    assert splits == [1]


@pytest.mark.parametrize("rows", [1, 2, 4, 5])
def test_decode_rows_routing(monkeypatch, rows):
    """One row takes the decode GEMVs; from BATCHED_MIN_ROWS bf16 rows on the batched GEMMs take over (the GEMVs
    re-decode the weights for every row), while float32 rows up to GEMV_MAX_ROWS stay on the exact GEMVs (beyond:
    int4 dequantizes into the scratch). The fused SwiGLU epilogue runs only where the GEMV does. Results within the
    bf16 / float32 bounds either way."""
    from sambay_cli.quant import modules

    calls = []
    for name in ("w4a16_gemv", "_w4_batched_gemm", "w8a16_gemv"):
        _spy(monkeypatch, tk, name, lambda args, out, _n=name: _n, calls)
    torch.manual_seed(rows)
    n, k = 48, 256
    w = torch.randn(n, k)
    q4, q8 = formats.quantize_int4(w, 128), formats.quantize_int8(w)
    qi, z = formats.interleave_int4(q4.qweight, 128).to(DEV), q4.zeros.to(DEV)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(rows, k).to(dtype)
        gemv = rows <= tk.GEMV_MAX_ROWS and (rows < tk.BATCHED_MIN_ROWS or dtype != torch.bfloat16)
        calls.clear()
        y4 = tk.w4a16_linear(x.to(DEV), qi, q4.scales.to(DEV), z, 128, None, interleaved=True)
        assert calls == (["w4a16_gemv"] if gemv else ["_w4_batched_gemm"] if dtype == torch.bfloat16 else [])
        ref4 = x.float() @ formats.dequantize_int4(q4).T
        assert _rel(y4.float().cpu(), ref4) < (2e-2 if dtype == torch.bfloat16 else 2e-3)
        calls.clear()
        y8 = tk.w8a16_linear(x.to(DEV), q8.qweight.to(DEV), q8.scales.to(DEV), None)
        assert calls == (["w8a16_gemv"] if gemv else [])
        ref8 = x.float() @ formats.dequantize_int8(q8.qweight, q8.scales).T
        assert _rel(y8.float().cpu(), ref8) < (2e-2 if dtype == torch.bfloat16 else 2e-3)
        assert tk.w4_takes_gemv(rows, dtype, q4.scales.to(dtype), 128, True) == gemv
    layer = modules.QuantLinear("int4", k, n, {"qweight": q4.qweight.clone(), "scales": q4.scales.bfloat16(),
                                              "zeros": q4.zeros}, None, torch.bfloat16, group_size=128).to(DEV)
    monkeypatch.setenv("SAMBAY_KERNELS", "triton")  # the CPU default is torch's int4 kernel
    calls.clear()
    layer.forward_fused(torch.randn(rows, k).bfloat16().to(DEV), "swiglu")
    assert calls == (["w4a16_gemv"] if rows < tk.BATCHED_MIN_ROWS else ["_w4_batched_gemm"])


def test_w4_batched_launch_tables(monkeypatch):
    """The batched int4 GEMM's launch table covers GEMV_MAX_ROWS + 1 … W4_BATCHED_M rows in increasing row classes;
    a layer gets its class's wide or narrow entry by its width (narrow ones always split K); SAMBAY_W4_GEMM_BATCHED
    overrides all five numbers."""
    table = tk._W4_BATCHED_LAUNCH
    assert [rows for rows, _, _ in table] == sorted(rows for rows, _, _ in table)
    assert table[0][0] > tk.GEMV_MAX_ROWS and table[-1][0] == tk.W4_BATCHED_M
    previous = tk.GEMV_MAX_ROWS
    for rows, wide, narrow in table:
        for m in (previous + 1, rows):
            assert tk.w4_batched_config(m, tk.WIDE_MIN_N)[4] == wide[4]
            assert tk.w4_batched_config(m, tk.WIDE_MIN_N - 1)[4] == narrow[4] > 0
        previous = rows
    monkeypatch.setenv("SAMBAY_W4_GEMM_BATCHED", "64,64,4,3,100")
    assert tk.w4_batched_config(40, 2560) == (64, 64, 4, 3, 100)


@pytest.mark.parametrize("rows,group,symmetric", [(7, 128, False), (33, 128, True), (12, 64, True), (12, 64, False)])
def test_w4a16_batched_rows_gemm_split_k(monkeypatch, rows, group, symmetric):
    """The batched-decode int4 GEMM split over K (forced by a high program target): partial tiles meet in the
    split-K workspace; the result matches the bf16 bound, twice in a row, and the workspace and tickets are zero
    afterwards (the next call and graph replays rely on it)."""
    from sambay_cli.kernels import triton_gemv

    monkeypatch.setattr(tk, "W4_BATCHED_SPLIT_TARGET", 10_000)
    splits = _spy(monkeypatch, triton_gemv, "split_buffers", lambda args, out: out[0])
    n, k = 40, 8 * group
    assert tk.batched_split(6, k // group, tk.W4_BATCHED_SPLIT_TARGET) == 4
    _check_int4_rows(n, k, group, rows, symmetric, calls=2)
    assert splits == [4, 4]
    ws, tickets = triton_gemv.splitk_workspace(torch.device(DEV), 1, 1)
    assert not ws.any() and not tickets.any()


def test_w4_prefill_dequantize_then_matmul(monkeypatch):
    """Prefill-sized int4 matmuls dequantize into a scratch buffer, then matmul: the dequantized weight equals
    formats.dequantize_int4 exactly from either code order, and y matches the reference with bias, also when the
    layer is dequantized in row chunks (a large lm_head)."""
    torch.manual_seed(6)
    n, k, group = 40, 256, 32
    for symmetric in (False, True):
        q = formats.quantize_int4(torch.randn(n, k), group, symmetric)
        w = formats.dequantize_int4(q)
        z = q.zeros.to(DEV) if q.zeros is not None else None
        for packed, inter in ((q.qweight, False), (formats.interleave_int4(q.qweight, group), True)):
            out = torch.empty(n - 5, k, device=DEV)
            tk.w4_dequantize(packed.to(DEV), q.scales.to(DEV), z, group, slice(5, n), out, interleaved=inter)
            assert torch.equal(out.cpu(), w[5:])
    x, bias = torch.randn(tk.DEQUANT_MIN_ROWS + 3, k), torch.randn(n)
    ref = x @ w.T + bias
    qi = formats.interleave_int4(q.qweight, group).to(DEV)
    for chunk in (tk.DEQUANT_CHUNK_ELEMENTS, 16 * k):  # one pass; then 16-row chunks (40 = 16 + 16 + 8)
        monkeypatch.setattr(tk, "DEQUANT_CHUNK_ELEMENTS", chunk)
        y = tk.w4a16_linear(x.to(DEV), qi, q.scales.to(DEV), None, group, bias.to(DEV), interleaved=True)
        assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)


def test_int4_interleave_round_trip_and_gemm_orders(monkeypatch):
    """interleave_int4 is a permutation of the codes within each group (inverse: deinterleave_int4): nibble field
    4h + q of 32-bit word j in a group holds column 2·(q·G/8 + j) + h; the prefill GEMM gives the same result on
    either order, fused or after dequantizing into the scratch buffer."""
    torch.manual_seed(1)
    q = formats.quantize_int4(torch.randn(6, 256), 64)
    qi = formats.interleave_int4(q.qweight, 64)
    assert torch.equal(formats.deinterleave_int4(qi, 64), q.qweight)
    codes, inter_codes = formats.unpack_int4(q.qweight), formats.unpack_int4(qi)
    assert not torch.equal(qi, q.qweight) and torch.equal(inter_codes.sort(dim=1).values, codes.sort(dim=1).values)
    words = qi.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    wpg = 64 // 8
    for j, q_, h in ((0, 0, 0), (3, 1, 1), (7, 3, 0), (5, 2, 1)):
        field = (words[:, wpg + j] >> (4 * (4 * h + q_))) & 0xF  # second group
        assert torch.equal(field, codes[:, 64 + 2 * (q_ * wpg + j) + h].to(torch.int64))
    x, bias = torch.randn(7, 256), torch.randn(6)
    ref = x @ formats.dequantize_int4(q).T + bias
    for min_rows in (tk.DEQUANT_MIN_ROWS, 10 ** 9):  # dequantize + matmul (the default at 7 rows); the fused GEMM
        monkeypatch.setattr(tk, "DEQUANT_MIN_ROWS", min_rows)
        for packed, inter in ((q.qweight, False), (qi, True)):
            y = tk.w4a16_linear(x.to(DEV), packed.to(DEV), q.scales.to(DEV), q.zeros.to(DEV), 64, bias.to(DEV),
                                interleaved=inter)
            assert _rel(y, ref) < (1e-5 if not ON_GPU else 2e-3)


def test_quantlinear_int4_gpu_order_everywhere():
    """After interleave_for_gpu_ an int4 QuantLinear dequantizes, dequantizes row blocks, runs its CPU kernel and
    its fused epilogues exactly as before; groups that are not a multiple of 8 stay in file order."""
    from sambay_cli.quant.modules import QuantLinear, linear_then_epilogue

    torch.manual_seed(2)
    n, k = 32, 256
    q = formats.quantize_int4(torch.randn(n, k), 32)
    layer = QuantLinear("int4", k, n, {"qweight": q.qweight.clone(), "scales": q.scales, "zeros": q.zeros},
                        torch.randn(n), torch.float32, group_size=32)
    before = layer.dequantize()
    x = torch.randn(1, k)
    y_before = layer(x)
    assert layer.interleave_for_gpu_() and layer.int4_order == "interleaved"
    assert not torch.equal(layer.qweight, q.qweight)
    assert torch.equal(layer.dequantize(), before)
    assert torch.equal(layer.dequantize_rows(5, 17, torch.float32), before[5:17])
    assert _rel(layer(x), y_before) < 1e-6
    layer = layer.to(DEV)
    for epilogue in ("swiglu", "gate"):
        out_n = n // 2 if epilogue == "swiglu" else n
        memory = torch.randn(1, out_n, device=DEV) if epilogue == "gate" else None
        ref = linear_then_epilogue(x.to(DEV), layer, epilogue, memory)
        fused = tk.w4a16_gemv(x.to(DEV), layer.qweight, layer.scales, layer.zeros_or_none, 32, layer.bias,
                              epilogue=epilogue, memory=memory)
        assert fused.shape == (1, out_n)
        assert _rel(fused, ref) < (1e-5 if not ON_GPU else 2e-3)
        assert _rel(layer.forward_fused(x.to(DEV), epilogue, memory), ref) < (1e-5 if not ON_GPU else 2e-3)
    from sambay_cli.quant.embedding import QuantEmbeddingWeight

    emb = QuantEmbeddingWeight.from_parts("int4", {"e.qweight": q.qweight.clone(), "e.scales": q.scales,
                                                   "e.zeros": q.zeros}, n, k, torch.float32)
    ids = torch.tensor([[3, 0, 31], [7, 7, 12]])
    rows = emb.embedding_rows(ids)
    assert emb.layer.interleave_for_gpu_()  # a tied lm_head ran the GPU GEMV: lookups still read file order
    assert torch.equal(emb.embedding_rows(ids), rows) and torch.equal(rows[0, 1], before[0])
    q4 = formats.quantize_int4(torch.randn(4, 12), 4)
    small = QuantLinear("int4", 12, 4, {"qweight": q4.qweight, "scales": q4.scales, "zeros": q4.zeros}, None,
                        torch.float32, group_size=4)
    assert not small.interleave_for_gpu_() and small.int4_order == "file"


def test_3d_input_and_dispatch_seam(monkeypatch):
    """A QuantLinear routes through the seam: SAMBAY_KERNELS=triton forces the fused kernel even on CPU."""
    from sambay_cli import kernels
    from sambay_cli.quant.modules import QuantLinear

    torch.manual_seed(0)
    w = torch.randn(24, 64)
    q = formats.quantize_int4(w, 32)
    layer = QuantLinear("int4", 64, 24, {"qweight": q.qweight, "scales": q.scales, "zeros": q.zeros},
                        torch.randn(24), torch.float32, group_size=32).to(DEV)
    x = torch.randn(2, 3, 64, device=DEV)
    monkeypatch.setenv("SAMBAY_KERNELS", "torch")
    assert kernels.resolve("w4a16_linear", x).name == "torch"
    ref = layer(x)
    monkeypatch.setenv("SAMBAY_KERNELS", "triton")
    assert kernels.resolve("w4a16_linear", x).name == "triton"
    out = layer(x)
    assert out.shape == (2, 3, 24)
    assert _rel(out, ref) < (1e-5 if not ON_GPU else 2e-3)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_gpu_batched_split_k_in_cuda_graph():
    """Batched decode (24 rows) on a narrow, long layer — the int4 and int8 batched GEMMs split K — captured in a
    CUDA graph after an eager call (which sized the workspace): replays give the right product for new inputs, and
    the workspace and tickets are clean after each replay."""
    from sambay_cli.kernels import triton_gemv

    torch.manual_seed(3)
    n, k = 256, 8192
    w = torch.randn(n, k, device=DEV) * 0.02
    q4, q8 = formats.quantize_int4(w, 128), formats.quantize_int8(w.bfloat16())
    qi = formats.interleave_int4(q4.qweight, 128)
    x = torch.randn(24, k, device=DEV, dtype=torch.bfloat16)
    calls = {"int4": lambda: tk.w4a16_linear(x, qi, q4.scales, q4.zeros, 128, None, interleaved=True),
             "int8": lambda: tk.w8a16_linear(x, q8.qweight, q8.scales, None)}
    weights = {"int4": formats.dequantize_int4(q4).float(),
               "int8": formats.dequantize_int8(q8.qweight, q8.scales).float()}
    for name, call in calls.items():
        call()  # eager: compiles, sizes the split-K workspace
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = call()
        for scale in (1.0, -3.0):
            x.copy_(torch.randn_like(x) * scale)
            graph.replay()
            torch.cuda.synchronize()
            ref = x.float() @ weights[name].T
            assert _rel(y, ref) < 1e-2, name
            ws, tickets = triton_gemv.splitk_workspace(x.device, 1, 1)
            assert not ws.any() and not tickets.any(), name


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_gpu_int4_batched_rows_in_cuda_graph(monkeypatch):
    """W4_BATCHED_M + 16 activation rows (above the batched-decode GEMM) inside a CUDA-graph capture: with the
    scratch buffer left by an eager call the graph dequantizes into it and replays the right product; with no
    scratch the capture takes the fused GEMM and allocates none."""
    torch.manual_seed(2)
    n, k = 512, 1024
    q = formats.quantize_int4(torch.randn(n, k, device=DEV) * 0.02, 128)
    qi = formats.interleave_int4(q.qweight, 128)
    x = torch.randn(tk.W4_BATCHED_M + 16, k, device=DEV, dtype=torch.bfloat16)
    ref = x.float() @ formats.dequantize_int4(q).T
    for ready in (True, False):
        monkeypatch.setattr(tk, "_SCRATCH", {})
        if ready:
            tk.w4a16_linear(x, qi, q.scales, q.zeros, 128, None, interleaved=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = tk.w4a16_linear(x, qi, q.scales, q.zeros, 128, None, interleaved=True)
        assert bool(tk._SCRATCH) == ready
        x.copy_(x * 2)
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(y, 2 * ref) < 1e-2
        x.copy_(x / 2)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 4, 24, 100, 128, 300])
def test_gpu_official_shapes_bf16(rows):
    """fc2 of the 3.8B (10240 → 2560), bf16 activations, decode, batched-decode and prefill row counts."""
    torch.manual_seed(0)
    n, k = 2560, 10240
    w = torch.randn(n, k, device=DEV) * 0.02
    x = torch.randn(rows, k, device=DEV, dtype=torch.bfloat16)
    q4 = formats.quantize_int4(w, 128)
    ref4 = x.float() @ formats.dequantize_int4(q4).T
    y4 = tk.w4a16_linear(x, formats.interleave_int4(q4.qweight, 128), q4.scales, q4.zeros, 128, None,
                         interleaved=True)
    assert _rel(y4, ref4) < 1e-2
    q8 = formats.quantize_int8(w)
    ref8 = x.float() @ formats.dequantize_int8(q8.qweight, q8.scales).T
    assert _rel(tk.w8a16_linear(x, q8.qweight, q8.scales, None), ref8) < 1e-2


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["int8", "int4", "nf4"])
def test_gpu_quantized_model_kernels_vs_torch_path(tmp_path, method, monkeypatch):
    from conftest import TINY

    from sambay_cli.loading import load_model
    from sambay_cli.quant.quantize import QuantizeOptions, quantize_checkpoint

    if method == "nf4":
        pytest.importorskip("bitsandbytes")
    quantize_checkpoint(TINY, tmp_path / "q", QuantizeOptions(method=method))
    # float32 on both sides: two bf16 runs of a random model differ by ~2e-2 through rounding alone. The GEMM path's
    # tl.dot uses TF32 on fp32 inputs (10-bit mantissa), hence 5e-3 rather than the fp32 rule's 1e-4.
    model = load_model(tmp_path / "q", device="cuda", dtype="float32")
    ids = torch.randint(0, 512, (2, 40), device="cuda")
    fast = model(ids)
    monkeypatch.setenv("SAMBAY_KERNELS", "torch")
    slow = model(ids)
    assert _rel(fast, slow) < 5e-3


def test_gemv_launch_defaults_and_overrides(monkeypatch):
    """The GPU launch choices (only read when compiled, so checked here directly): int8 word-wise reads on Mamba's
    in_proj only, split-K for the narrow int4 layers only, 8 rows per int4 program on the 4,096–10,240-row layers
    without SwiGLU, and the SAMBAY_* overrides."""
    monkeypatch.delenv("SAMBAY_GEMV", raising=False)
    monkeypatch.delenv("SAMBAY_INT8_GEMV", raising=False)
    monkeypatch.delenv("SAMBAY_W4_GEMV", raising=False)
    assert [tk.int8_gemv_variant(k, n) for k, n in ((2560, 20480), (2560, 10240), (10240, 2560))] == \
        ["bytes", "words", "bytes"]
    assert tk.int8_gemv_config(2560, 2560) == {"block_n": 2, "block_k": 1024, "num_warps": 4, "split": 1}
    assert tk.int8_gemv_config(2560, 5120) == {"block_n": 2, "block_k": 512, "num_warps": 2, "split": 1}
    monkeypatch.setenv("SAMBAY_GEMV", "2,512,4,3")
    assert tk.int8_gemv_config(1, 1) == {"block_n": 2, "block_k": 512, "num_warps": 4, "split": 3}
    monkeypatch.setattr(tk, "_INTERPRET", False)
    assert tk.w4_gemv_config(20480, 2560, 128)[3] == 1  # 1,280 row blocks: no split
    bn, ng, nw, split = tk.w4_gemv_config(2560, 10240, 128)
    assert (bn, ng, nw, split) == (16, 4, 4, 5)  # 160 row blocks, 5 splits
    assert tk.w4_gemv_config(10240, 2560, 128, "swiglu") == (16, 4, 4, 1)
    assert tk.w4_gemv_config(10240, 2560, 128) == tk.w4_gemv_config(5120, 2560, 128, "gate") == (8, 4, 4, 1)
    monkeypatch.setenv("SAMBAY_W4_GEMV", "8,2,1,99")
    assert tk.w4_gemv_config(2560, 2560, 128) == (8, 2, 1, 10)  # the split is capped at the steps there are
