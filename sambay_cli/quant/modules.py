"""Linear layers whose weights stay packed in memory.

Each :class:`QuantLinear` holds its packed tensors as frozen parameters (so ``model.parameters()`` — and therefore
``sambay bench``'s bytes-per-step — counts the packed bytes). ``forward`` goes through the kernel seam
(:mod:`sambay_cli.kernels`) under the op names ``w8a16_linear``, ``w4a16_linear``, ``bnb4_linear`` and
``bnb8_linear``: the torch implementation dequantizes one layer into the activation dtype and calls ``F.linear``
(the working set is that one layer), the Triton implementations (CUDA) fuse dequantization into the matmul, and
bitsandbytes serves its own formats on CUDA when installed.

``.weight`` returns the dequantized weight (a temporary) for code that reads weights directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from . import formats

OWN_FORMATS = ("int8", "int4")
BNB_FORMATS = ("nf4", "fp4", "bnb-int8")
FORMATS = OWN_FORMATS + BNB_FORMATS


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class QuantLinear(nn.Module):
    """A weight-only quantized linear layer (y = x Wᵀ + b with W dequantized on the fly).

    ``tensors`` holds the packed tensors by parameter name: int8 → qweight, scales; int4 → qweight, scales[, zeros];
    nf4/fp4 → qweight, absmax, quant_map[, nested_absmax, nested_quant_map]; bnb-int8 → qweight, SCB.
    """

    def __init__(self, fmt: str, in_features: int, out_features: int, tensors: dict[str, torch.Tensor],
                 bias: torch.Tensor | None, compute_dtype: torch.dtype, *, group_size: int | None = None,
                 bnb_state: dict | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown quantized format {fmt!r}")
        self.fmt = fmt
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.compute_dtype = compute_dtype
        self.bnb_state = dict(bnb_state or {})
        for name, t in tensors.items():
            self.register_parameter(name, _frozen(t))
        self.bias = _frozen(bias) if bias is not None else None
        self._bnb_quant_state = None  # built lazily for bitsandbytes' own CUDA matmul
        # int4 code order in memory: "file" (as stored) or "interleaved" (the GPU kernels' word-interleaved order,
        # formats.interleave_int4: same codes, permuted within each group); see interleave_for_gpu_
        self.int4_order = "file"

    def extra_repr(self) -> str:
        extra = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.fmt}, in_features={self.in_features}, out_features={self.out_features}{extra}"

    @property
    def zeros_or_none(self) -> torch.Tensor | None:
        return self._parameters.get("zeros")

    def interleave_for_gpu_(self) -> bool:
        """Put an int4 layer's codes in the GPU kernels' word-interleaved order, in place (one layer's bytes
        of extra memory for a moment). Groups that are not a multiple of 8 columns keep the file order (served by
        the GEMM kernel). Returns whether the layer is now interleaved."""
        if self.fmt != "int4" or self.int4_order == "interleaved":
            return self.int4_order == "interleaved"
        if self.group_size % 8:
            return False
        self.qweight.data = formats.interleave_int4(self.qweight.data, self.group_size)
        self.int4_order = "interleaved"
        return True

    def int4_file_bytes(self, rows: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """The rows ``rows`` (a slice or an index tensor) of an int4 layer's packed bytes in file order, whatever the
        order in memory."""
        q = self.qweight[rows]
        return formats.deinterleave_int4(q, self.group_size) if self.int4_order == "interleaved" else q

    def packed_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for name, p in self.named_parameters() if name != "bias")

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [out, in] weight this layer computes with, in ``dtype`` (default: the compute dtype)."""
        dtype = dtype or self.compute_dtype
        if self.fmt == "int8":
            return formats.dequantize_int8(self.qweight, self.scales, dtype)
        if self.fmt == "int4":
            return formats.dequantize_int4_codes(formats.unpack_int4(self.int4_file_bytes()), self.scales,
                                                 self.zeros_or_none, self.group_size, dtype)
        if self.fmt == "bnb-int8":
            return formats.dequantize_bnb_int8(self.qweight, self.SCB, dtype)
        nested = None
        if "nested_absmax" in self._parameters:
            nested = {"absmax": self.nested_absmax, "quant_map": self.nested_quant_map,
                      "blocksize": self.bnb_state["nested_blocksize"], "offset": self.bnb_state["nested_offset"]}
        return formats.dequantize_bnb4(self.qweight, self.absmax, self.quant_map, self.bnb_state["blocksize"],
                                       (self.out_features, self.in_features), dtype, nested)

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [start, stop) of the dequantized weight (int8, int4 and LLM.int8 formats)."""
        if self.fmt == "int8":
            return formats.dequantize_int8(self.qweight[start:stop], self.scales[start:stop], dtype)
        if self.fmt == "bnb-int8":
            return formats.dequantize_bnb_int8(self.qweight[start:stop], self.SCB[start:stop], dtype)
        zeros = self.zeros_or_none
        codes = formats.unpack_int4(self.int4_file_bytes(slice(start, stop)))
        g = self.group_size
        w = codes.to(dtype).view(stop - start, -1, g)
        w.sub_(zeros[start:stop, :, None].to(dtype) if zeros is not None else 8.0)
        w.mul_(self.scales[start:stop, :, None].to(dtype))
        return w.view(stop - start, -1)

    @property
    def weight(self) -> torch.Tensor:  # compatibility for code that reads .weight (a temporary, dequantized)
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = OP_OF_FORMAT[self.fmt]
        return kernels.resolve(op, x).fn(x, self)

    def forward_fused(self, x: torch.Tensor, epilogue: str, memory: torch.Tensor | None = None) -> torch.Tensor:
        """This layer followed by an element-wise epilogue, in one kernel where one exists (int8 and int4 at decode on
        CUDA): ``swiglu`` — the rows are [gate | up], returns silu(gate)·up; ``gate`` — returns silu(y)·memory (the
        GMU)."""
        op = EPILOGUE_OP_OF_FORMAT.get(self.fmt)
        if op is None:
            return linear_then_epilogue(x, self, epilogue, memory)
        return kernels.resolve(op, x).fn(x, self, epilogue, memory)


OP_OF_FORMAT = {"int8": "w8a16_linear", "int4": "w4a16_linear", "nf4": "bnb4_linear", "fp4": "bnb4_linear",
                "bnb-int8": "bnb8_linear"}
EPILOGUE_OP_OF_FORMAT = {"int8": "w8a16_linear_epilogue", "int4": "w4a16_linear_epilogue"}


# ------------------------------------------------------------------------------------------- implementations


CHUNK_ELEMENTS = 1 << 20  # dequantize big layers in row blocks of about this many weights (cache-sized)


def dequant_linear(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    """Reference / CPU path: dequantize into the activation dtype, then F.linear. Big layers go in row blocks, so the
    dequantized working set stays about CHUNK_ELEMENTS weights instead of the whole layer."""
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    rows = max(1, CHUNK_ELEMENTS // layer.in_features)
    if layer.fmt not in ("int8", "int4", "bnb-int8") or layer.out_features <= rows:
        return F.linear(x, layer.dequantize(x.dtype), bias)
    out = torch.empty(*x.shape[:-1], layer.out_features, dtype=x.dtype, device=x.device)
    for start in range(0, layer.out_features, rows):
        stop = min(start + rows, layer.out_features)
        out[..., start:stop] = F.linear(x, layer.dequantize_rows(start, stop, x.dtype),
                                        bias[start:stop] if bias is not None else None)
    return out


def linear_then_epilogue(x: torch.Tensor, layer: QuantLinear, epilogue: str,
                         memory: torch.Tensor | None = None) -> torch.Tensor:
    """The unfused path: the layer, then the element-wise kernel."""
    y = layer(x)
    if epilogue == "swiglu":
        gate, up = y.chunk(2, dim=-1)
        return kernels.swiglu(gate, up)
    return kernels.gmu_gate(y, memory)


def _cpu_int8pack_available(x: torch.Tensor, *_args) -> bool:
    return x.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm") and x.dtype in (
        torch.float32, torch.bfloat16, torch.float16)


def cpu_int8pack(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    """torch's own CPU int8 weight-only matmul (no dequantized copy of the weight)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch._weight_int8pack_mm(x2, layer.qweight, layer.scales.to(x.dtype))
    if layer.bias is not None:
        y = y + layer.bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


def _cpu_int4pack_available(x: torch.Tensor, *_args) -> bool:
    return x.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and x.dtype in (
        torch.float32, torch.bfloat16)


def cpu_int4pack(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    """torch's own CPU int4 kernel. It computes W = (q − 8)·scale + zero, so our (code − zero_code)·scale becomes
    scale with zero = (8 − zero_code)·scale; its packed layout differs from ours, so each layer is repacked once, at
    first use, into a same-sized int4 buffer (the file-backed original is not touched again). Shapes the kernel does
    not take (out_features not a multiple of 16, other group sizes) use the dequantizing path."""
    pack = layer.__dict__.get("_cpu_int4")
    if pack is None or pack[2] != x.dtype:
        pack = _cpu_int4_pack(layer, x.dtype)
        layer.__dict__["_cpu_int4"] = pack
    if pack[0] is None:
        return dequant_linear(x, layer)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, pack[0], layer.group_size, pack[1])
    if layer.bias is not None:
        y = y + layer.bias.to(x.dtype)
    return y.reshape(*x.shape[:-1], layer.out_features)


def _cpu_int4_pack(layer: QuantLinear, dtype: torch.dtype):
    if layer.out_features % 16 or layer.group_size not in (32, 64, 128, 256) or layer.in_features % layer.group_size:
        return None, None, dtype
    codes = formats.unpack_int4(layer.int4_file_bytes()).to(torch.int32)
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    except RuntimeError:
        return None, None, dtype
    zeros = layer.zeros_or_none
    scale = layer.scales.float()
    zero = (8.0 - zeros.float()) * scale if zeros is not None else torch.zeros_like(scale)
    scale_and_zero = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()  # [in/group, out, 2]
    return packed, scale_and_zero, dtype


def _triton_available(x: torch.Tensor, *_args) -> bool:
    return x.is_cuda and _triton_quant() is not None


def _triton_quant():
    return kernels.optional_import("sambay_cli.quant.triton_kernels")


def triton_w8a16(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    return _triton_quant().w8a16_linear(x, layer.qweight, layer.scales, layer.bias)


def triton_w8a16_epilogue(x: torch.Tensor, layer: QuantLinear, epilogue: str,
                          memory: torch.Tensor | None = None) -> torch.Tensor:
    if x.numel() // x.shape[-1] != 1:  # the fused epilogues serve decode's single row; cuBLAS-sized work unfused
        return linear_then_epilogue(x, layer, epilogue, memory)
    return _triton_quant().w8a16_gemv(x, layer.qweight, layer.scales, layer.bias, epilogue=epilogue, memory=memory)


def _gpu_order(layer: QuantLinear) -> bool:
    """Whether the layer is in the GPU's interleaved order, converting it at first use (not inside a CUDA-graph
    capture; the loader converts CUDA models up front)."""
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if layer.int4_order == "file" and not capturing:
        layer.interleave_for_gpu_()
    return layer.int4_order == "interleaved"


def triton_w4a16(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
    return _triton_quant().w4a16_linear(x, layer.qweight, layer.scales, layer.zeros_or_none, layer.group_size,
                                        layer.bias, interleaved=_gpu_order(layer))


def triton_w4a16_epilogue(x: torch.Tensor, layer: QuantLinear, epilogue: str,
                          memory: torch.Tensor | None = None) -> torch.Tensor:
    tk = _triton_quant()
    if not _gpu_order(layer) or not tk.w4_takes_gemv(x.numel() // x.shape[-1], x.dtype, layer.scales,
                                                      layer.group_size, True):
        return linear_then_epilogue(x, layer, epilogue, memory)
    return tk.w4a16_gemv(x, layer.qweight, layer.scales, layer.zeros_or_none, layer.group_size, layer.bias,
                         epilogue=epilogue, memory=memory)


def _bnb_cuda_available(x: torch.Tensor, *_args) -> bool:
    return x.is_cuda and kernels.optional_import("bitsandbytes") is not None


def bnb4_linear(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # pragma: no cover - CUDA only
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f

    if layer._bnb_quant_state is None:
        state2, offset = None, None
        if "nested_absmax" in layer._parameters:
            offset = torch.tensor(float(layer.bnb_state["nested_offset"]), device=x.device)
            state2 = bnb_f.QuantState(absmax=layer.nested_absmax, blocksize=layer.bnb_state["nested_blocksize"],
                                      code=layer.nested_quant_map, dtype=torch.float32)
        layer._bnb_quant_state = bnb_f.QuantState(
            absmax=layer.absmax, shape=torch.Size((layer.out_features, layer.in_features)), code=layer.quant_map,
            blocksize=layer.bnb_state["blocksize"], quant_type=layer.fmt,
            dtype=getattr(torch, layer.bnb_state.get("dtype", "bfloat16")), offset=offset, state2=state2)
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    return bnb.matmul_4bit(x, layer.qweight.t(), bias=bias, quant_state=layer._bnb_quant_state)


def bnb8_linear(x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # pragma: no cover - CUDA only
    """LLM.int8 as Linear8bitLt runs it (outlier threshold 6.0, as transformers' default config says)."""
    import bitsandbytes as bnb

    if layer._bnb_quant_state is None:
        state = bnb.MatmulLtState()
        state.threshold = 6.0
        state.has_fp16_weights = False
        state.is_training = False
        state.CB = layer.qweight
        state.SCB = layer.SCB
        layer._bnb_quant_state = state
    bias = layer.bias.to(x.dtype) if layer.bias is not None else None
    return bnb.matmul(x, layer.qweight, bias=bias, state=layer._bnb_quant_state)


for _op in ("w8a16_linear", "w4a16_linear", "bnb4_linear", "bnb8_linear"):
    kernels.register(_op, "torch", dequant_linear, kernels.always, first=False)
kernels.register("w8a16_linear", "cpu-int8pack", cpu_int8pack, _cpu_int8pack_available)
kernels.register("w4a16_linear", "cpu-int4pack", cpu_int4pack, _cpu_int4pack_available)
kernels.register("w8a16_linear_epilogue", "torch", linear_then_epilogue, kernels.always, first=False)
kernels.register("w8a16_linear", "triton", triton_w8a16, _triton_available)
kernels.register("w8a16_linear_epilogue", "triton", triton_w8a16_epilogue, _triton_available)
kernels.register("w4a16_linear", "triton", triton_w4a16, _triton_available)
kernels.register("w4a16_linear_epilogue", "torch", linear_then_epilogue, kernels.always, first=False)
kernels.register("w4a16_linear_epilogue", "triton", triton_w4a16_epilogue, _triton_available)
kernels.register("bnb4_linear", "bitsandbytes", bnb4_linear, _bnb_cuda_available)
kernels.register("bnb8_linear", "bitsandbytes", bnb8_linear, _bnb_cuda_available)
