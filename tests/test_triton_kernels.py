"""The project's Triton kernels against the torch reference.

On a CPU machine they run under the Triton interpreter (TRITON_INTERPRET=1, small shapes); on a GPU machine
(`make test-gpu`) they run compiled, on CUDA.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:  # must be set before triton is imported: its own @jit helpers (tl.sum, …) are decorated at import
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
ops = importlib.import_module("sambay_cli.kernels.triton_ops")
from sambay_cli.kernels import reference  # noqa: E402

DEV = "cuda" if ON_GPU else "cpu"
pytestmark = [pytest.mark.gpu] if ON_GPU else []


def _close(a, b, tol=1e-5):
    a, b = a.double().cpu(), b.double().cpu()
    rel = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    assert rel <= tol, f"rel {rel:.2e}"


@pytest.mark.parametrize("k", [4, 2])
def test_conv_update(k):
    torch.manual_seed(0)
    b, d = 3, 40
    x = torch.randn(b, d, device=DEV)
    w = torch.randn(d, k, device=DEV)
    bias = torch.randn(d, device=DEV)
    s_ref = torch.randn(b, d, k - 1, device=DEV)
    s_tri = s_ref.clone()
    y_ref = reference.causal_conv1d_update(x, s_ref, w, bias)
    y_tri = ops.causal_conv1d_update(x, s_tri, w, bias)
    _close(y_tri, y_ref)
    assert torch.equal(s_tri, s_ref)


@pytest.mark.parametrize("length, with_state, padded", [(45, True, True), (2, True, False), (33, False, False)])
def test_conv_prefill(length, with_state, padded):
    """The prefill conv + SiLU over a chunk (channels last, read in place from a wider projection output): several
    time tiles, a chunk shorter than the conv state, left padding, continuing from a state; the new state is the last
    K−1 inputs (padding as zeros), the old one is left untouched."""
    torch.manual_seed(10)
    b, d, k = 2, 40, 4
    xz = torch.randn(b, length, 2 * d, device=DEV)
    x = xz[..., :d]  # a strided view, as the model passes the x half of in_proj's output
    w, bias = torch.randn(d, k, device=DEV), torch.randn(d, device=DEV)
    state = torch.randn(b, d, k - 1, device=DEV) if with_state else None
    valid = None
    if padded:
        valid = torch.ones(b, length, dtype=torch.bool, device=DEV)
        valid[1, :7] = False
    before = state.clone() if state is not None else None
    y_ref, s_ref = reference.causal_conv1d(x, w, bias, state, valid)
    y_tri, s_tri = ops.causal_conv1d(x, w, bias, state, valid, block_t=16, block_d=32)
    assert y_tri.shape == (b, length, d) and s_tri.shape == (b, d, k - 1)
    _close(y_tri, y_ref)
    _close(s_tri, s_ref)
    if padded:
        assert torch.all(y_tri[1, :7] == 0)
    if state is not None:
        assert torch.equal(state, before)


def test_conv_prefill_continues_like_one_pass():
    """Two chunks with the carried state equal one pass over both (the Triton kernel, float32)."""
    torch.manual_seed(11)
    b, d, k, length = 1, 24, 4, 30
    x = torch.randn(b, length, d, device=DEV)
    w = torch.randn(d, k, device=DEV)
    y_all, s_all = ops.causal_conv1d(x, w, None, None, block_t=8, block_d=16)
    y1, s1 = ops.causal_conv1d(x[:, :11], w, None, None, block_t=8, block_d=16)
    y2, s2 = ops.causal_conv1d(x[:, 11:], w, None, s1, block_t=8, block_d=16)
    _close(torch.cat([y1, y2], dim=1), y_all)
    assert torch.allclose(s2, s_all)


@pytest.mark.parametrize("gated", [True, False])
def test_ssm_update(gated):
    torch.manual_seed(1)
    b, d, n = 2, 70, 16
    state = torch.randn(b, d, n, device=DEV)
    x, dt, z = (torch.randn(b, d, device=DEV) for _ in range(3))
    A = -torch.rand(d, n, device=DEV) * 4
    B, C = torch.randn(b, n, device=DEV), torch.randn(b, n, device=DEV)
    D, dtb = torch.randn(d, device=DEV), torch.randn(d, device=DEV)
    s2 = state.clone()
    y_ref = reference.selective_state_update(state, x, dt, A, B, C, D=D, z=z if gated else None, dt_bias=dtb)
    y_tri = ops.selective_state_update(s2, x, dt, A, B, C, D=D, z=z if gated else None, dt_bias=dtb)
    _close(y_tri, y_ref)
    _close(s2, state)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("length", [9, 20])
def test_selective_scan(with_state, length):
    """The chunked parallel scan (chunks of 8 steps here: several, with a ragged end)."""
    torch.manual_seed(2)
    b, d, n = 2, 40, 16
    u, delta, z = (torch.randn(b, d, length, device=DEV) for _ in range(3))
    A = -torch.rand(d, n, device=DEV) * 4
    B, C = torch.randn(b, n, length, device=DEV), torch.randn(b, n, length, device=DEV)
    D, dtb = torch.randn(d, device=DEV), torch.randn(d, device=DEV)
    s0 = torch.randn(b, d, n, device=DEV) if with_state else None
    # time-strided views, as the model passes them (x_proj output transposed)
    delta = torch.randn(b, length, d, device=DEV).transpose(1, 2)
    B = torch.randn(b, length, n, device=DEV).transpose(1, 2)
    y_ref, s_ref = reference.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb, initial_state=s0)
    y_tri, s_tri = ops.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb, initial_state=s0, block_t=8)
    _close(y_tri, y_ref)
    _close(s_tri, s_ref)


def test_selective_scan_channels_last():
    """The model's layouts: u, Δ and z are channels-last tensors seen as [B, D, L] (z a slice of the input
    projection), and y comes back channels last in memory, so y.transpose(1, 2) is contiguous."""
    torch.manual_seed(12)
    b, d, n, length = 2, 24, 16, 19
    xz = torch.randn(b, length, 2 * d, device=DEV)
    u, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
    delta = torch.randn(b, length, d, device=DEV).transpose(1, 2)
    A = -torch.rand(d, n, device=DEV) * 4
    bc = torch.randn(b, length, 2 * n, device=DEV)
    B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
    D, dtb = torch.randn(d, device=DEV), torch.randn(d, device=DEV)
    y_ref, s_ref = reference.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb)
    for block_d in (4, 16):  # lanes over channels and states, and over channels only
        y_tri, s_tri = ops.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=dtb, block_d=block_d, block_t=8)
        assert y_tri.transpose(1, 2).is_contiguous()
        _close(y_tri, y_ref)
        _close(s_tri, s_ref)


@pytest.mark.parametrize("diff, h, g", [(True, 4, 2), (True, 8, 4), (True, 8, 2), (False, 8, 2), (False, 4, 4)])
@pytest.mark.parametrize("splits", [None, 1, 4])
def test_attention_decode(diff, h, g, splits):
    """Tensor-core split-K decode attention (IEEE dots in float32) equals the reference, rows of different lengths."""
    torch.manual_seed(3)
    b, d, s_max = 3, 16, 70
    lengths = [29, 70, 1]
    q = torch.randn(b, h, d, device=DEV)
    k = torch.randn(b, g, s_max, d, device=DEV)
    v = torch.randn(b, g, s_max, d, device=DEV)
    valid = torch.rand(b, s_max, device=DEV) > 0.2
    valid[:, 0] = True
    lam = torch.tensor(0.37, device=DEV) if diff else None
    w = torch.randn(2 * d, device=DEV) if diff else None
    n_keys = torch.tensor(lengths, device=DEV)
    out = ops.diff_attention_decode(q, k, v, valid, n_keys, scale=d ** -0.5, lambda_full=lam, lambda_init=0.6,
                                    subln_weight=w, eps=1e-5, splits=splits, block_s=16)
    for i, n in enumerate(lengths):
        ref = reference.differential_attention(q[i:i + 1, :, None], k[i:i + 1, :, :n], v[i:i + 1, :, :n],
                                               valid[i:i + 1, None, :n], scale=d ** -0.5, lambda_full=lam,
                                               lambda_init=0.6, subln_weight=w, eps=1e-5)[:, :, 0]
        _close(out[i:i + 1], ref)


def test_attention_decode_many_splits_some_empty():
    """16 splits of 16-key blocks: 10 own keys for the long row and 2 for the short one, the others are empty; the
    merge of all 16 partials equals the reference."""
    torch.manual_seed(4)
    b, h, g, d, s_max = 2, 8, 4, 16, 300
    lengths = [300, 20]
    q, k, v = torch.randn(b, h, d, device=DEV), torch.randn(b, g, s_max, d, device=DEV), torch.randn(b, g, s_max, d,
                                                                                                       device=DEV)
    valid = torch.rand(b, s_max, device=DEV) > 0.1
    valid[:, 0] = True
    lam, w = torch.tensor(0.3, device=DEV), torch.randn(2 * d, device=DEV)
    out = ops.diff_attention_decode(q, k, v, valid, torch.tensor(lengths, device=DEV), scale=d ** -0.5,
                                    lambda_full=lam, lambda_init=0.6, subln_weight=w, eps=1e-5, splits=16, block_s=16)
    for i, n in enumerate(lengths):
        ref = reference.differential_attention(q[i:i + 1, :, None], k[i:i + 1, :, :n], v[i:i + 1, :, :n],
                                               valid[i:i + 1, None, :n], scale=d ** -0.5, lambda_full=lam,
                                               lambda_init=0.6, subln_weight=w, eps=1e-5)[:, :, 0]
        _close(out[i:i + 1], ref)


def test_attention_decode_launch_policy(monkeypatch):
    """The decode-attention launch (H100 measurements) by rows of work: about one sequence's rows take 64-key blocks
    and up to 32 splits; up to four rows per SM 32-key blocks and about four programs per SM (an fp8 cache 128-key
    blocks and eight); more rows 128-key blocks and eight; a short cache caps the splits; the environment overrides
    it."""
    monkeypatch.delenv("SAMBAY_ATTN_DECODE", raising=False)
    launch = ops.attention_decode_launch
    assert launch(10, 512, 132) == (64, 8, 4, 2)  # batch 1, SWA ring of 512
    assert launch(10, 34816, 132) == (64, 32, 4, 2)  # batch 1, shared KV of a 32K generation
    assert launch(10, 34816, 132, kv_bytes=1) == (64, 32, 4, 2)
    assert launch(40, 34816, 132) == (32, 16, 4, 2)  # batch 4
    assert launch(40, 34816, 132, kv_bytes=1) == (128, 32, 4, 2)
    assert launch(160, 512, 132) == (32, 4, 4, 2)  # batch 16
    assert launch(160, 34816, 132, kv_bytes=1) == (128, 8, 4, 2)
    assert launch(640, 34816, 132) == (128, 2, 4, 2)  # batch 64
    assert launch(10, 40, 132) == (64, 1, 4, 2)
    monkeypatch.setenv("SAMBAY_ATTN_DECODE", "16,4,2,1")
    assert launch(10, 34816, 132) == (16, 4, 2, 1)


def test_attention_decode_fused_merge_and_fallback(monkeypatch):
    """The split programs' merge runs in the last program to finish (ticket counters, left at zero for the next
    call); without counters (a CUDA-graph capture that finds none) the separate merge kernel gives the same
    output."""
    from sambay_cli.kernels import triton_gemv

    torch.manual_seed(5)
    b, h, g, d, s_max = 2, 8, 4, 16, 64
    q, k, v = torch.randn(b, h, d, device=DEV), torch.randn(b, g, s_max, d, device=DEV), torch.randn(b, g, s_max, d,
                                                                                                       device=DEV)
    valid = torch.ones(b, s_max, dtype=torch.bool, device=DEV)
    n_keys = torch.tensor([64, 40], device=DEV)
    kw = dict(scale=d ** -0.5, lambda_full=torch.tensor(0.3, device=DEV), lambda_init=0.6,
              subln_weight=torch.randn(2 * d, device=DEV), eps=1e-5, splits=4, block_s=16)
    fused = [ops.diff_attention_decode(q, k, v, valid, n_keys, **kw) for _ in range(2)]
    assert torch.equal(fused[0], fused[1])
    assert all(t[1].abs().sum().item() == 0 for t in triton_gemv._WORKSPACES.values())
    monkeypatch.setattr(ops, "splitk_workspace", lambda *a: None)
    _close(ops.diff_attention_decode(q, k, v, valid, n_keys, **kw), fused[0])


@pytest.mark.skipif(not ON_GPU, reason="bf16 tensor-core dots: GPU")
def test_attention_decode_bf16_official_shape():
    """The official head layout (40 query heads, 20 KV heads, head_dim 64) in bf16, within the bf16 rule of the
    float32 reference."""
    torch.manual_seed(5)
    b, h, g, d, s_max = 2, 40, 20, 64, 3000
    lengths = [2999, 700]
    q = torch.randn(b, h, d, device=DEV)
    k = torch.randn(b, g, s_max, d, device=DEV)
    v = torch.randn(b, g, s_max, d, device=DEV)
    valid = torch.ones(b, s_max, dtype=torch.bool, device=DEV)
    lam, w = torch.tensor(0.2, device=DEV), torch.rand(2 * d, device=DEV) + 0.5
    out = ops.diff_attention_decode(q.bfloat16(), k.bfloat16(), v.bfloat16(), valid, torch.tensor(lengths, device=DEV),
                                    scale=d ** -0.5, lambda_full=lam, lambda_init=0.8, subln_weight=w, eps=1e-5)
    for i, n in enumerate(lengths):
        ref = reference.differential_attention(q[i:i + 1, :, None], k[i:i + 1, :, :n], v[i:i + 1, :, :n],
                                               valid[i:i + 1, None, :n], scale=d ** -0.5, lambda_full=lam,
                                               lambda_init=0.8, subln_weight=w, eps=1e-5)[:, :, 0]
        _close(out[i:i + 1], ref, tol=2e-2)


@pytest.mark.parametrize("diff, h, g", [(True, 4, 2), (True, 8, 2), (False, 4, 2)])
@pytest.mark.parametrize("window", [None, 7])
def test_attention_prefill(diff, h, g, window):
    """Flash-style prefill attention (IEEE dots in float32) equals the reference: an SWA-like key set (a ring of
    unsorted positions with empty slots, then the chunk), left padding in one row, queries that see no key."""
    torch.manual_seed(7)
    b, d, lq, ring = 2, 16, 50, 9  # 4 query blocks of 16: the window skips whole key blocks
    lk = ring + lq
    q = torch.randn(b, h, lq, d, device=DEV)
    k = torch.randn(b, g, lk, d, device=DEV)
    v = torch.randn(b, g, lk, d, device=DEV)
    start = 30
    ring_pos = torch.tensor([27, 28, 29, 21, 22, 23, 24, 25, 26], device=DEV)
    k_pos = torch.cat([ring_pos, torch.arange(start, start + lq, device=DEV)]).expand(b, -1).clone()
    k_pos[1, :4] = -1  # empty ring slots
    q_pos = torch.arange(start, start + lq, device=DEV)
    k_valid = torch.ones(b, lk, dtype=torch.bool, device=DEV)
    k_valid[1, ring:ring + 5] = False  # left padding of row 1: its first queries see nothing but the ring
    k_valid[1, :ring] = False
    lam = torch.tensor(0.37, device=DEV) if diff else None
    w = torch.randn(2 * d, device=DEV) if diff else None
    kw = dict(scale=d ** -0.5, lambda_full=lam, lambda_init=0.6, subln_weight=w, eps=1e-5)
    # the ring (unsorted positions) is passed as such, the chunk as consecutive keys from ``start``
    ring_kv = (k[:, :, :ring], v[:, :, :ring], k_pos[:, :ring], k_valid[:, :ring])
    args = (q, k[:, :, ring:], v[:, :, ring:], k_valid[:, ring:], start, start, window)
    ref = reference.attention_prefill(*args, ring=ring_kv, **kw)
    out = ops.attention_prefill(*args, ring=ring_kv, block_m=16, block_n=16, **kw)
    assert out.shape == ref.shape == (b, lq, h * d)
    _close(out, ref)
    # the same keys as one explicit-position set give the same answer (the reference's own mask rules)
    mask = reference.attention_mask(q_pos, k_pos, k_valid, window)
    _close(out, reference.differential_attention(q, k, v, mask, **kw).transpose(1, 2).reshape(b, lq, h * d))
    # no ring, the last 5 queries only (the full-attention layer's ``keep``)
    args = (q[:, :, -5:], k[:, :, ring:], v[:, :, ring:], k_valid[:, ring:], start + lq - 5, start, window)
    out = ops.attention_prefill(*args, block_m=16, block_n=16, **kw)
    _close(out, reference.attention_prefill(*args, **kw))


@pytest.mark.skipif(not ON_GPU, reason="bf16 tensor-core dots: GPU")
@pytest.mark.parametrize("window", [None, 2048])
def test_attention_prefill_bf16_official_shape(window):
    """The official head layout in bf16 (a 1,024-query chunk after 2,048 cached keys), within the bf16 rule of the
    float32 reference."""
    torch.manual_seed(8)
    b, h, g, d, lq, past = 1, 40, 20, 64, 1024, 2048
    q = torch.randn(b, h, lq, d, device=DEV)
    k = torch.randn(b, g, past + lq, d, device=DEV)
    v = torch.randn(b, g, past + lq, d, device=DEV)
    k_valid = torch.ones(b, past + lq, dtype=torch.bool, device=DEV)
    kw = dict(scale=d ** -0.5, lambda_full=torch.tensor(0.2, device=DEV), lambda_init=0.8,
              subln_weight=torch.rand(2 * d, device=DEV) + 0.5, eps=1e-5)
    ref = reference.attention_prefill(q, k, v, k_valid, past, 0, window, **kw)
    out = ops.attention_prefill(q.bfloat16(), k.bfloat16(), v.bfloat16(), k_valid, past, 0, window, **kw)
    _close(out, ref, tol=2e-2)


def test_attention_kernels_read_an_fp8_shared_kv():
    """An fp8 (e4m3) cache is widened on load: decode and prefill attention over fp8 K/V equal the reference over
    the same fp8 values (float32 queries, IEEE dots) — also one row at a time with a ``settled`` hint, which a
    widened cache answers with the plain kernel form."""
    torch.manual_seed(9)
    b, h, g, d, s_max = 2, 8, 4, 16, 40
    k8 = torch.randn(b, g, s_max, d, device=DEV).to(torch.float8_e4m3fn)
    v8 = torch.randn(b, g, s_max, d, device=DEV).to(torch.float8_e4m3fn)
    valid = torch.ones(b, s_max, dtype=torch.bool, device=DEV)
    kw = dict(scale=d ** -0.5, lambda_full=torch.tensor(0.3, device=DEV), lambda_init=0.6,
              subln_weight=torch.rand(2 * d, device=DEV) + 0.5, eps=1e-5)
    q = torch.randn(b, h, d, device=DEV)
    n = torch.tensor([s_max, 23], device=DEV)
    out = ops.diff_attention_decode(q, k8, v8, valid, n, splits=2, block_s=16, **kw)
    for i, ni in enumerate(n.tolist()):
        ref = reference.attention_decode(q[i:i + 1], k8[i:i + 1], v8[i:i + 1], valid[i:i + 1], n[i:i + 1], ni, **kw)
        _close(out[i:i + 1], ref)
        for settled in ("kv", "q"):
            row = ops.diff_attention_decode(q[i:i + 1], k8[i:i + 1], v8[i:i + 1], valid[i:i + 1], n[i:i + 1],
                                            splits=2, block_s=16, settled=settled, **kw)
            _close(row, ref)
    qp = torch.randn(b, h, 7, d, device=DEV)
    out = ops.attention_prefill(qp, k8, v8, valid, s_max - 7, 0, None, block_m=16, block_n=16, **kw)
    _close(out, reference.attention_prefill(qp, k8.float(), v8.float(), valid, s_max - 7, 0, None, **kw))


def test_whole_model_with_triton_kernels_matches_golden(monkeypatch):
    """The fixture model with every Triton kernel in place (prefill scan, Mamba decode step, decode attention):
    parity with the official golden and cached greedy decoding, in float32."""
    from conftest import TINY, assert_close_fp32
    from safetensors.torch import load_file

    from sambay_cli import generate, load_model
    from sambay_cli.kernels import resolve

    monkeypatch.setenv("SAMBAY_KERNELS", "triton")
    if not ON_GPU:  # the interpreter runs tl.associative_scan element by element (minutes here): the scan kernel
        # is checked on its own above; this CPU run takes the reference scan with every other Triton kernel
        from sambay_cli.kernels import reference as ref_ops
        monkeypatch.setattr(ops, "selective_scan", ref_ops.selective_scan)
    x = torch.zeros(1, device=DEV)
    assert resolve("selective_scan", x).name == "triton" and resolve("attention_decode", x).name == "triton"
    g = load_file(TINY / "golden.safetensors")
    model = load_model(TINY, dtype="float32", device=DEV)
    assert_close_fp32(model(g["ids_a"].to(DEV)).cpu(), g["logits_a"], "logits with triton scan")
    steps = 12
    out = generate(model, [g["gen_prompt"].tolist()], max_new_tokens=steps, stop_token_ids=[], return_logits=True)
    assert out.tokens[0] == g["gen_ids"][6:6 + steps].tolist()
    assert_close_fp32(out.logits[0], g["gen_logits"][:steps], "cached decoding with triton kernels")


def test_silu_mul_matches_swiglu_and_gmu_gate():
    torch.manual_seed(4)
    y = torch.randn(3, 5, 2 * 40, device=DEV)
    gate, up = y.chunk(2, dim=-1)  # strided views, as the MLP passes them
    _close(ops.silu_mul(gate, up, up.dtype), reference.swiglu(gate, up), tol=1e-6)
    x, m = torch.randn(2, 7, 33, device=DEV), torch.randn(2, 9, 33, device=DEV)[:, 2:]
    _close(ops.silu_mul(x, m, x.dtype), reference.gmu_gate(x, m), tol=1e-6)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_norm(rms, with_delta, dtype):
    """Fused residual add + LayerNorm/RMSNorm equals the reference: the float32 residual exactly, the normed output
    within float32 rounding (float32) or one bf16 rounding (bf16)."""
    if dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("the Triton interpreter truncates float32 -> bf16 (the GPU rounds to nearest even)")
    torch.manual_seed(6)
    h = torch.randn(2, 3, 100, device=DEV) * 3 + 1
    delta = torch.randn(2, 3, 100, device=DEV).to(dtype) if with_delta else None
    w = (torch.rand(100, device=DEV) + 0.5).to(dtype)
    b = None if rms else torch.randn(100, device=DEV).to(dtype)
    h_ref, x_ref = reference.add_norm(h, delta, w, b, 1e-5, rms)
    h_tri, x_tri = ops.add_norm(h, delta, w, b, 1e-5, rms)
    assert torch.equal(h_tri, h_ref)
    assert x_tri.dtype == dtype
    _close(x_tri, x_ref, tol=1e-6 if dtype == torch.float32 else 4e-3)


gemv = importlib.import_module("sambay_cli.kernels.triton_gemv")


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("n,k", [(36, 64), (13, 40)])  # K a multiple of the block or not, N ragged
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemv_and_its_fused_epilogues(rows, n, k, with_bias):
    """The decode GEMV (plain, SwiGLU fc1, gated GMU) equals the reference linear + element-wise op in float32."""
    torch.manual_seed(7)
    x = torch.randn(rows, 1, k, device=DEV)
    w = torch.randn(n, k, device=DEV)
    w2 = torch.randn(2 * n, k, device=DEV)
    b, b2 = (torch.randn(n, device=DEV), torch.randn(2 * n, device=DEV)) if with_bias else (None, None)
    mem = torch.randn(rows, 1, n, device=DEV)
    assert gemv.supported(x, w) == (rows == 1)  # the seam sends one row here; the kernel itself takes several
    _close(gemv.gemv(x, w, b), reference.linear(x, w, b))
    _close(gemv.gemv(x, w2, b2, epilogue="swiglu"), reference.linear_swiglu(x, w2, b2))
    _close(gemv.gemv(x, w, b, epilogue="gate", memory=mem), reference.linear_gate(x, w, b, mem))


def test_gemv_serves_decode_rows_only():
    w = torch.randn(8, 32, device=DEV)
    assert gemv.supported(torch.randn(1, 1, 32, device=DEV), w)
    assert not gemv.supported(torch.randn(2, 32, device=DEV), w)  # a GEMM reads W once for all rows: cuBLAS
    assert not gemv.supported(torch.randn(1, 32, device=DEV).half(), w)  # mixed dtypes


@pytest.mark.skipif(not ON_GPU, reason="bf16 rounding differs under the interpreter")
def test_gemv_bf16_official_shapes():
    """bf16 weights of the 3.8B shape (fc1 with its SwiGLU, fc2): within the project's bf16 rule of float32."""
    torch.manual_seed(8)
    for n, k, epi in [(20480, 2560, "swiglu"), (2560, 10240, "none"), (5120, 2560, "gate")]:
        x = torch.randn(1, k, device=DEV)
        w = torch.randn(n, k, device=DEV) / k ** 0.5
        mem = torch.randn(1, n, device=DEV)
        if epi == "swiglu":
            ref = reference.linear_swiglu(x, w, None)
        elif epi == "gate":
            ref = reference.linear_gate(x, w, None, mem)
        else:
            ref = reference.linear(x, w, None)
        out = gemv.gemv(x.bfloat16(), w.bfloat16(), None, epilogue=epi, memory=mem.bfloat16())
        _close(out.float(), ref, tol=2e-2)


def test_kv_write_decode_matches_reference():
    """One kernel writes each row's new K and V into its own slot (ring slot or position), strided inputs."""
    torch.manual_seed(9)
    b, g, s_max, d = 3, 5, 11, 16
    qkv = torch.randn(b, 1, 4 * g * d, device=DEV)
    k = qkv[:, 0, g * d:2 * g * d].view(b, g, d)
    v = qkv[:, 0, 3 * g * d:].view(b, g, d)
    slots = torch.tensor([0, 7, 10], device=DEV)
    caches = [torch.randn(b, g, s_max, d, device=DEV) for _ in range(2)]
    ref = [c.clone() for c in caches]
    ops.kv_write_decode(caches[0], caches[1], k, v, slots)
    reference.kv_write_decode(ref[0], ref[1], k, v, slots)
    assert torch.equal(caches[0], ref[0]) and torch.equal(caches[1], ref[1])
    assert torch.equal(caches[0][1, :, 7], k[1])


@pytest.mark.parametrize("rms,with_bias", [(True, False), (False, True)])
def test_embed_norm_matches_reference(rms, with_bias):
    """Gather + float32 residual + first norm in one kernel: h is the table row widened exactly, the normed row the
    reference's (bf16 table and norm weights, as the model keeps them)."""
    torch.manual_seed(12)
    vocab, n = 50, 96
    table = torch.randn(vocab, n, device=DEV).bfloat16()
    weight = (torch.rand(n, device=DEV) + 0.5).bfloat16()
    bias = torch.randn(n, device=DEV).bfloat16() if with_bias else None
    ids = torch.tensor([[3, 49, 0], [7, 7, 12]], device=DEV)
    h, x = ops.embed_norm(ids, table, weight, bias, 1e-5, rms)
    h_ref, x_ref = reference.embed_norm(ids, table, weight, bias, 1e-5, rms)
    assert h.shape == (2, 3, n) and h.dtype == torch.float32 and x.dtype == torch.bfloat16
    assert torch.equal(h, h_ref) and torch.equal(h[1, 0], h[1, 1])
    _close(x.float(), x_ref.float(), tol=2e-2)


def test_gemv_writes_the_asked_dtype():
    """The lm_head GEMV writes float32 logits itself (no conversion kernel after it), the same values."""
    from sambay_cli.kernels import triton_gemv

    torch.manual_seed(13)
    w, x = torch.randn(40, 64, device=DEV).bfloat16(), torch.randn(1, 64, device=DEV).bfloat16()
    y32 = triton_gemv.gemv(x, w, out_dtype=torch.float32)
    assert y32.dtype == torch.float32 and y32.shape == (1, 40)
    _close(y32, x.float() @ w.float().T, tol=1e-2)


@pytest.mark.parametrize("window", [8, 0])
def test_decode_positions_matches_reference(window):
    """The one-kernel step bookkeeping: rows at different positions (one wrapping round the ring) get n_keys = p + 1,
    their position marked valid in the shared KV, their ring slot p mod W with its position and validity — the
    reference's result, nothing else touched."""
    b, s_max = 3, 20
    pos = torch.tensor([0, 5, 13], device=DEV)
    state = {"n_keys": torch.zeros(b, dtype=torch.long, device=DEV),
             "kv_valid": torch.rand(b, s_max, device=DEV) < 0.3}
    if window:
        state.update(swa_slot=torch.full((b,), -7, dtype=torch.long, device=DEV),
                     swa_pos=torch.randint(-1, 20, (b, window), device=DEV),
                     swa_valid=torch.rand(b, window, device=DEV) < 0.5)
    ref = {k: t.clone() for k, t in state.items()}
    ops.decode_positions(pos, *state.values())
    reference.decode_positions(pos, *ref.values())
    for name in state:
        assert torch.equal(state[name], ref[name]), name
    assert state["n_keys"].tolist() == [1, 6, 14] and bool(state["kv_valid"][2, 13])
    if window:
        assert state["swa_slot"].tolist() == [0, 5, 5] and state["swa_pos"][2, 5].item() == 13


@pytest.mark.parametrize("gated", [True, False])
def test_ssm_update_with_fused_dt_proj_and_out_dtype(gated):
    """Δ = W_dt·δ formed inside the state update equals dt_proj then the update; output in the asked dtype."""
    torch.manual_seed(10)
    b, d, n, r = 2, 70, 16, 12
    state = torch.randn(b, d, n, device=DEV)
    x, z = torch.randn(b, d, device=DEV), torch.randn(b, d, device=DEV)
    xdbl = torch.randn(b, r + 2 * n, device=DEV)
    low, B, C = torch.split(xdbl, [r, n, n], dim=-1)
    w_dt = torch.randn(d, r, device=DEV) / r ** 0.5
    A = -torch.rand(d, n, device=DEV) * 4
    D, dtb = torch.randn(d, device=DEV), torch.randn(d, device=DEV)
    s2 = state.clone()
    y_ref = reference.selective_state_update(state, x, low @ w_dt.T, A, B, C, D=D, z=z if gated else None,
                                             dt_bias=dtb)
    y_tri = ops.selective_state_update(s2, x, low, A, B, C, D=D, z=z if gated else None, dt_bias=dtb,
                                       dt_proj_weight=w_dt, out_dtype=torch.float32)
    _close(y_tri, y_ref)
    _close(s2, state)
    y16 = ops.selective_state_update(state.clone(), x, low, A, B, C, D=D, dt_bias=dtb, dt_proj_weight=w_dt,
                                     out_dtype=torch.float16)
    assert y16.dtype == torch.float16

