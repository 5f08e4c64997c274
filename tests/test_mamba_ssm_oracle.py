"""mamba-ssm as a second oracle for the project's Mamba kernels (GPU; only where mamba-ssm is installed — on the GPU
machine it is built from its sdist by tools/build_mamba_ssm.sh; it is never a dependency)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
mamba_scan = pytest.importorskip("mamba_ssm.ops.selective_scan_interface", reason="mamba-ssm not built here")
mamba_step = pytest.importorskip("mamba_ssm.ops.triton.selective_state_update")

from sambay_cli.kernels import reference, triton_ops  # noqa: E402


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("gated", [True, False])
def test_prefill_scan_matches_mamba_ssm(gated):
    """Our chunked Triton scan and the torch reference against mamba-ssm's CUDA selective scan, float32, 1,000 steps
    (several chunks and a ragged end), with D skip, Δ bias + softplus and (optionally) the silu(z) gate."""
    torch.manual_seed(0)
    b, d, n, length = 2, 192, 16, 1000
    u, z = torch.randn(b, d, length, device="cuda"), torch.randn(b, d, length, device="cuda")
    delta = torch.randn(b, length, d, device="cuda").transpose(1, 2) * 0.5
    A = -torch.exp(torch.randn(d, n, device="cuda"))
    B, C = torch.randn(b, n, length, device="cuda"), torch.randn(b, n, length, device="cuda")
    D, dtb = torch.randn(d, device="cuda"), torch.randn(d, device="cuda") * 0.1
    zz = z if gated else None
    y_m, s_m = mamba_scan.selective_scan_fn(u, delta.contiguous(), A, B, C, D, zz, dtb, delta_softplus=True,
                                            return_last_state=True)
    y_t, s_t = triton_ops.selective_scan(u, delta, A, B, C, D=D, z=zz, delta_bias=dtb)
    y_r, s_r = reference.selective_scan(u, delta, A, B, C, D=D, z=zz, delta_bias=dtb)
    assert _rel(y_t, y_m) <= 1e-4 and _rel(s_t, s_m) <= 1e-4, (_rel(y_t, y_m), _rel(s_t, s_m))
    assert _rel(y_r, y_m) <= 1e-4 and _rel(s_r, s_m) <= 1e-4, (_rel(y_r, y_m), _rel(s_r, s_m))


@pytest.mark.parametrize("gated", [True, False])
def test_decode_step_matches_mamba_ssm(gated):
    """Our fused SSM decode step against mamba-ssm's selective_state_update (its Triton kernel), float32."""
    torch.manual_seed(1)
    b, d, n = 3, 192, 16
    state = torch.randn(b, d, n, device="cuda")
    x, dt, z = (torch.randn(b, d, device="cuda") for _ in range(3))
    A = -torch.exp(torch.randn(d, n, device="cuda"))
    B, C = torch.randn(b, n, device="cuda"), torch.randn(b, n, device="cuda")
    D, dtb = torch.randn(d, device="cuda"), torch.randn(d, device="cuda")
    s_m, s_t = state.clone(), state.clone()
    zz = z if gated else None
    y_m = mamba_step.selective_state_update(s_m, x, dt, A, B, C, D=D, z=zz, dt_bias=dtb, dt_softplus=True)
    y_t = triton_ops.selective_state_update(s_t, x, dt, A, B, C, D=D, z=zz, dt_bias=dtb)
    assert _rel(y_t, y_m) <= 1e-5 and _rel(s_t, s_m) <= 1e-5, (_rel(y_t, y_m), _rel(s_t, s_m))
