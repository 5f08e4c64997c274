"""A quantized embedding that also serves as the tied lm_head (``--quantize-embeddings``).

The model reads the embedding through ``embed_tokens(ids)`` (``F.embedding``), the lm_head through
``F.linear(x, embed_tokens.weight)`` and its dtype/device through ``embed_tokens.weight``. So the packed weight is
wrapped in a tensor subclass that reports the compute dtype and the logical [vocab, hidden] shape, and routes those
calls to the packed data: ``F.embedding`` dequantizes only the rows looked up, ``F.linear`` runs the quantized
matmul (fused Triton kernel on CUDA). Any other operation sees the dequantized weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .modules import QuantLinear

_METADATA_OK = {"detach", "requires_grad_", "__get__", "__repr__", "dim", "size", "numel", "element_size",
                "is_floating_point", "stride", "__format__", "data_ptr"}


class QuantEmbeddingWeight(torch.Tensor):
    """Logical [vocab, hidden] weight in the compute dtype, stored packed in ``self.layer`` (a QuantLinear)."""

    layer: QuantLinear

    @staticmethod
    def __new__(cls, layer: QuantLinear, dtype: torch.dtype):
        return torch.Tensor._make_wrapper_subclass(cls, (layer.out_features, layer.in_features), dtype=dtype,
                                                   device=layer.qweight.device, requires_grad=False)

    def __init__(self, layer: QuantLinear, dtype: torch.dtype) -> None:
        self.layer = layer

    @classmethod
    def from_parts(cls, fmt: str, parts: dict[str, torch.Tensor], vocab: int, hidden: int,
                   dtype: torch.dtype) -> QuantEmbeddingWeight:
        p = {k.rsplit(".", 1)[-1]: v for k, v in parts.items()}
        group = None
        if fmt == "int4":
            group = hidden // p["scales"].shape[1]
        layer = QuantLinear(fmt, hidden, vocab, p, None, dtype, group_size=group)
        return cls(layer, dtype)

    def __repr__(self) -> str:  # type: ignore[override]
        return f"QuantEmbeddingWeight({self.layer.extra_repr()})"

    def embedding_rows(self, ids: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        flat = ids.reshape(-1)
        if layer.fmt == "int8":
            rows = layer.qweight[flat].float() * layer.scales[flat].float()[:, None]
        else:
            from . import formats

            # file byte order, also after a tied lm_head put the layer in the GPU's order
            rows = formats.dequantize_int4_codes(formats.unpack_int4(layer.int4_file_bytes(flat)), layer.scales[flat],
                                                 layer.zeros_or_none[flat] if layer.zeros_or_none is not None
                                                 else None, layer.group_size)
        return rows.to(self.dtype).reshape(*ids.shape, layer.in_features)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is F.embedding:
            ids, weight = args[0], args[1]
            return weight.embedding_rows(ids)
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = weight.layer(x)
            return out + bias if bias is not None else out
        if name in _METADATA_OK:
            if name in ("detach", "requires_grad_"):
                return args[0]
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        args, kwargs = _dequantize_all((args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        args, kwargs = _dequantize_all((args, kwargs or {}))
        return func(*args, **kwargs)


def _dequantize_all(tree):
    from torch.utils._pytree import tree_map

    return tree_map(lambda a: a.layer.dequantize(a.dtype) if isinstance(a, QuantEmbeddingWeight) else a, tree)
