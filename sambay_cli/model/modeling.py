"""The SambaY decoder-hybrid-decoder in plain PyTorch (arXiv 2507.06607; Phi-4-mini-flash-reasoning).

Read it next to the paper:

* self-decoder (layers i < N/2): Samba — Mamba-1 layers interleaved with sliding-window attention (SWA);
* layer N/2: a Mamba layer whose scan output y (SSM output + D·x, before the silu(z) gate) is the **memory** m;
* layer N/2+1: the only full-attention layer; its keys/values are the **shared KV** (YOCO);
* cross-decoder (i > N/2+1): Gated Memory Units, GMU(x) = W_out(silu(W_in x) ⊙ m), alternating with
  cross-attention layers that project only queries and attend to the shared KV.

Every layer is pre-norm: h ← h + mixer(norm(h)); h ← h + MLP(norm(h)), with the residual stream h kept in float32
and sublayer inputs cast to the weight dtype. There is no positional encoding. Attention is differential attention
(two softmax maps, even/odd head stripes, a learned λ) unless the config turns it off.

Parameter names are those of the official Hugging Face checkpoint (``model.layers.{i}.attn.*`` for every mixer).
Device-specific operations go through :mod:`sambay_cli.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..config import (
    CROSS_ATTENTION,
    FULL_ATTENTION,
    GMU,
    MAMBA,
    MAMBA_MEMORY,
    SWA,
    SambaYConfig,
    lambda_init,
)
from .cache import SambaYCache

# Parameters kept in float32 whatever the model dtype (see docs/python-api.md, "Precision").
FLOAT32_PARAMS = ("A_log", "D", "lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.reference.rms_norm(x, self.weight, self.eps).to(self.weight.dtype)


def make_norm(config: SambaYConfig, dim: int) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(dim, config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps)


class Linear(nn.Linear):
    """nn.Linear whose product goes through the kernel seam (decode-sized calls on CUDA use the Triton GEMV)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


def is_plain_linear(m: nn.Module) -> bool:
    """A dense linear layer (not a quantized replacement) with no hooks (calibration observes its inputs): its
    weight can feed a fused-epilogue kernel instead of the module being called."""
    return isinstance(m, nn.Linear) and not m._forward_hooks and not m._forward_pre_hooks


def add_norm(h: torch.Tensor, delta: torch.Tensor | None, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """h ← h + delta on the float32 residual stream, and the next sub-layer's input norm(h) — one fused kernel."""
    return kernels.add_norm(h, delta, norm.weight, getattr(norm, "bias", None), norm.eps, isinstance(norm, RMSNorm))


def embed_norm(embed: nn.Module, ids: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 residual stream h = embed(ids) and the first sub-layer's input norm(h): one fused kernel for a
    plain embedding table, the module then :func:`add_norm` otherwise (a quantized table)."""
    if (type(embed) is nn.Embedding and embed.max_norm is None and not embed._forward_hooks
            and not embed._forward_pre_hooks):
        return kernels.embed_norm(ids, embed.weight, norm.weight, getattr(norm, "bias", None), norm.eps,
                                  isinstance(norm, RMSNorm))
    return add_norm(embed(ids).float(), None, norm)


# ----------------------------------------------------------------------------------------------------- MLP


class SwiGLU(nn.Module):
    """MLP: fc2(up ⊙ silu(gate)) with fc1 = [gate | up]."""

    def __init__(self, config: SambaYConfig) -> None:
        super().__init__()
        self.fc1 = Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_plain_linear(self.fc1):  # one kernel for fc1 and the gate at decode
            return self.fc2(kernels.linear_swiglu(x, self.fc1.weight, self.fc1.bias))
        if hasattr(self.fc1, "forward_fused"):  # a quantized fc1 with its own fused path
            return self.fc2(self.fc1.forward_fused(x, "swiglu"))
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(kernels.swiglu(gate, up))


# --------------------------------------------------------------------------------------------------- Mamba


class Mamba(nn.Module):
    """Mamba-1 mixer (selective SSM). With ``is_memory`` it also returns its ungated scan output as the GMU memory."""

    def __init__(self, config: SambaYConfig, layer_idx: int, is_memory: bool) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.is_memory = is_memory
        self.d_inner = c.d_inner
        self.d_state = c.mamba_d_state
        self.dt_rank = c.mamba_dt_rank
        self.in_proj = Linear(c.hidden_size, 2 * c.d_inner, bias=c.mamba_proj_bias)  # [x | z]
        self.conv1d = nn.Conv1d(c.d_inner, c.d_inner, c.mamba_d_conv, groups=c.d_inner, bias=c.mamba_conv_bias,
                                padding=c.mamba_d_conv - 1)
        self.x_proj = Linear(c.d_inner, c.mamba_dt_rank + 2 * c.mamba_d_state, bias=False)  # [dt | B | C]
        self.dt_proj = Linear(c.mamba_dt_rank, c.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.zeros(c.d_inner, c.mamba_d_state))
        self.D = nn.Parameter(torch.ones(c.d_inner))
        self.out_proj = Linear(c.d_inner, c.hidden_size, bias=c.mamba_proj_bias)

    def _decay_rates(self) -> torch.Tensor:
        """A = −exp(A_log), float32; computed once for frozen weights (every decode step would recompute it)."""
        if self.A_log.requires_grad:
            return -torch.exp(self.A_log.float())
        key = (self.A_log.data_ptr(), self.A_log._version, self.A_log.device)
        cached = getattr(self, "_A_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, -torch.exp(self.A_log.float()))
            self._A_cache = cached
        return cached[1]

    def forward(
        self, x: torch.Tensor, cache: SambaYCache, decode: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, L, C] normed input. Returns (output [B, L, C], memory [B, L, d_inner] or None)."""
        dtype = x.dtype
        xz = self.in_proj(x)
        xs, z = xz.chunk(2, dim=-1)  # [B, L, d_inner] each
        conv_w = self.conv1d.weight.squeeze(1)  # [d_inner, K]
        conv_state = cache.conv_states[self.layer_idx]
        ssm_state = cache.ssm_states[self.layer_idx]
        A = self._decay_rates()
        if decode:  # one token per row, state updated in place
            # the states were last written in the previous step, x and z by in_proj before the conv: only the kernel
            # just before each of these two wrote what it must wait for (in_proj's x, x_proj's Δ / B / C)
            xc = kernels.causal_conv1d_update(xs[:, 0], conv_state, conv_w, self.conv1d.bias, dtype,
                                              settled=True)  # [B, d_inner]
            dt_low, b, c = torch.split(self.x_proj(xc), [self.dt_rank, self.d_state, self.d_state], dim=-1)
            if is_plain_linear(self.dt_proj):  # Δ = W_dt·δ inside the state update (bias added there, in fp32)
                dt, w_dt = dt_low, self.dt_proj.weight
            else:
                dt, w_dt = F.linear(dt_low, self.dt_proj.weight), None
            y = kernels.selective_state_update(
                ssm_state, xc, dt, A, b, c, D=self.D, z=None if self.is_memory else z[:, 0],
                dt_bias=self.dt_proj.bias, dt_softplus=True, dt_proj_weight=w_dt, out_dtype=dtype, settled=True,
            ).unsqueeze(1)  # [B, 1, d_inner]
        else:
            # conv + SiLU over the chunk, channels last; padded positions (chunk_valid False) contribute nothing
            xc, new_conv_state = kernels.causal_conv1d(xs, conv_w, self.conv1d.bias, conv_state,
                                                       valid=cache.chunk_valid, out_dtype=dtype)  # [B, L, d_inner]
            conv_state.copy_(new_conv_state)
            x_dbl = self.x_proj(xc)  # [B, L, R + 2N]
            dt_low, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = F.linear(dt_low, self.dt_proj.weight)  # [B, L, d_inner]; bias and softplus inside the scan
            # the scan takes channels-before-time views of these channels-last tensors (no copies)
            y, last_state = kernels.selective_scan(
                xc.transpose(1, 2), dt.transpose(1, 2), A, b.transpose(1, 2), c.transpose(1, 2), D=self.D,
                z=None if self.is_memory else z.transpose(1, 2),
                delta_bias=self.dt_proj.bias, delta_softplus=True, initial_state=ssm_state, out_dtype=dtype,
            )
            ssm_state.copy_(last_state)
            y = y.transpose(1, 2)  # [B, L, d_inner] in the model dtype
        if self.is_memory:
            memory = y.to(dtype)  # the scan output with the D skip, before the gate (a no-op at decode)
            return self.out_proj(kernels.gmu_gate(z, memory)), memory
        return self.out_proj(y.to(dtype)), None


# ----------------------------------------------------------------------------------------------------- GMU


class GatedMemoryUnit(nn.Module):
    """GMU (paper eq. 4): y = W_out(silu(W_in x) ⊙ m), with m the memory of layer N/2."""

    def __init__(self, config: SambaYConfig) -> None:
        super().__init__()
        self.in_proj = Linear(config.hidden_size, config.d_inner, bias=config.mlp_bias)
        self.out_proj = Linear(config.d_inner, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if is_plain_linear(self.in_proj):  # one kernel for in_proj and the gate at decode
            return self.out_proj(kernels.linear_gate(x, self.in_proj.weight, self.in_proj.bias, memory))
        if hasattr(self.in_proj, "forward_fused"):
            return self.out_proj(self.in_proj.forward_fused(x, "gate", memory))
        return self.out_proj(kernels.gmu_gate(self.in_proj(x), memory))


# ----------------------------------------------------------------------------------------------- attention


class DifferentialParams(nn.Module):
    """λ vectors and the sub-layer RMSNorm of differential attention (``attn.inner_cross_attn.*``)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.lambda_q1 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_k1 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_q2 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_k2 = nn.Parameter(torch.zeros(head_dim))
        self.subln = RMSNorm(2 * head_dim, eps=1e-5)

    def lambda_full(self, lambda_init_value: float) -> torch.Tensor:
        """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init (a scalar per layer). Frozen weights (inference) compute it
        once — it is ~8 tiny kernels that would otherwise run in every decode step of every attention layer."""
        if self.lambda_q1.requires_grad or torch.is_grad_enabled() and self.training:
            return self._lambda(lambda_init_value)
        key = (lambda_init_value, *(p.data_ptr() for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2,
                                                            self.lambda_k2)), self.lambda_q1._version)
        cached = getattr(self, "_lambda_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self._lambda(lambda_init_value))
            self._lambda_cache = cached
        return cached[1]

    def _lambda(self, lambda_init_value: float) -> torch.Tensor:
        l1 = torch.exp(torch.sum(self.lambda_q1.float() * self.lambda_k1.float()))
        l2 = torch.exp(torch.sum(self.lambda_q2.float() * self.lambda_k2.float()))
        return l1 - l2 + lambda_init_value


class Attention(nn.Module):
    """Sliding-window, full (KV-producing) or cross attention, differential or plain GQA.

    ``Wqkv`` rows are [Q (H·d) | K (G·d) | V (G·d)]; cross-attention layers project queries only and read the
    shared KV of layer N/2+1.
    """

    def __init__(self, config: SambaYConfig, layer_idx: int, kind: str) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.kind = kind
        self.num_heads = c.num_attention_heads
        self.num_kv_heads = c.num_key_value_heads
        self.head_dim = c.head_dim
        self.window = c.sliding_window if kind == SWA else None
        self.scale = c.head_dim ** -0.5
        out_rows = c.q_size if kind == CROSS_ATTENTION else c.q_size + 2 * c.kv_size
        self.Wqkv = Linear(c.hidden_size, out_rows, bias=c.attention_bias)
        self.out_proj = Linear(c.q_size, c.hidden_size, bias=c.attention_out_bias)
        self.lambda_init = lambda_init(layer_idx)  # depth = global layer index
        self.inner_cross_attn = DifferentialParams(c.head_dim) if c.differential_attention else None

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        b, length, _ = t.shape
        return t.view(b, length, n, self.head_dim).transpose(1, 2)  # [B, n, L, d]

    @staticmethod
    def _shared_kv(cache: SambaYCache, end: int):
        """Keys/values of the shared KV up to ``end`` (positions 0 …), as stored: attention widens an fp8 cache."""
        return cache.kv_k[:, :, :end], cache.kv_v[:, :, :end], cache.kv_valid[:, :end], 0

    def _decode(self, x: torch.Tensor, cache: SambaYCache) -> torch.Tensor:
        """One new token per row (x: [B, 1, C]): write its K/V, then attend over the ring / shared KV."""
        dtype = x.dtype
        bsz = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = self.Wqkv(x)
        q = qkv[:, 0, :q_size].reshape(bsz, self.num_heads, self.head_dim)
        if self.kind == CROSS_ATTENTION:
            k_buf, v_buf, valid, n_keys = cache.kv_k, cache.kv_v, cache.kv_valid, cache.seen + 1
        else:
            k_new = self._heads(qkv[..., q_size:q_size + kv_size], self.num_kv_heads)
            v_new = self._heads(qkv[..., q_size + kv_size:], self.num_kv_heads)
            if self.kind == SWA:  # the ring holds exactly the window once the new key is in
                cache.write_swa_decode(self.layer_idx, k_new, v_new)
                k_buf, v_buf = cache.swa_k[self.layer_idx], cache.swa_v[self.layer_idx]
                valid, n_keys = cache.swa_valid, cache.window
            else:
                cache.write_kv_decode(k_new, v_new)
                k_buf, v_buf, valid, n_keys = cache.kv_k, cache.kv_v, cache.kv_valid, cache.seen + 1
        n_keys_t = cache.window_t if self.kind == SWA else cache.n_keys_t
        da = self.inner_cross_attn
        out = kernels.attention_decode(
            q, k_buf, v_buf, valid, n_keys_t, n_keys, scale=self.scale,
            lambda_full=da.lambda_full(self.lambda_init) if da is not None else None,
            lambda_init=self.lambda_init,
            subln_weight=da.subln.weight if da is not None else None,
            eps=da.subln.eps if da is not None else 1e-5, out_dtype=dtype,
            # what the kernel just before (the query projection, or this layer's K/V write) did not write
            settled="kv" if self.kind == CROSS_ATTENTION else "q",
        )  # [B, H, d]
        return self.out_proj(out.reshape(bsz, 1, q_size))

    def forward(self, x: torch.Tensor, cache: SambaYCache, positions: torch.Tensor | None, keep: int | None,
                decode: bool = False) -> torch.Tensor:
        """x: [B, L, C] normed input for the chunk at ``positions``; ``keep``: compute outputs for the last ``keep``
        positions only (None: all). Returns [B, L or keep, C]."""
        if decode:
            return self._decode(x, cache)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        start, length = cache.seen, positions.numel()  # this chunk's positions: start … start + length − 1
        ring = None
        if self.kind == CROSS_ATTENTION:
            q = self._heads(self.Wqkv(x), self.num_heads)
            k, v, k_valid, k_start = self._shared_kv(cache, start + length)
        else:
            qkv = self.Wqkv(x)
            q = self._heads(qkv[..., :q_size], self.num_heads)
            k = self._heads(qkv[..., q_size:q_size + kv_size], self.num_kv_heads)
            v = self._heads(qkv[..., q_size + kv_size:], self.num_kv_heads)
            if self.kind == SWA:
                # keys: the ring (the ``window`` positions before the chunk, read in place) and the chunk itself
                ring = (cache.swa_k[self.layer_idx], cache.swa_v[self.layer_idx], cache.swa_pos, cache.swa_valid)
                k_valid, k_start = cache.chunk_valid, start
            else:  # full attention: the shared KV producer
                cache.write_kv(k, v)
                k, v, k_valid, k_start = self._shared_kv(cache, start + length)
            if keep is not None:
                q = q[:, :, q.shape[2] - keep:]
        da = self.inner_cross_attn
        kw = dict(scale=self.scale, lambda_full=da.lambda_full(self.lambda_init) if da is not None else None,
                  lambda_init=self.lambda_init, subln_weight=da.subln.weight if da is not None else None,
                  eps=da.subln.eps if da is not None else 1e-5)
        if q.shape[2] == 1 and self.kind != SWA:
            # one query over the whole shared KV (the last position of a prompt): the split-K decode kernel spreads
            # the keys over the GPU, where a query-blocked kernel would walk them in one program per head pair
            end = start + length
            n_keys_t = torch.full((q.shape[0],), end, dtype=torch.long, device=q.device)
            out = kernels.attention_decode(q[:, :, 0], k, v, k_valid, n_keys_t, end, out_dtype=q.dtype, **kw)
            return self.out_proj(out.reshape(q.shape[0], 1, q_size))
        out = kernels.attention_prefill(q, k, v, k_valid, start + length - q.shape[2], k_start, self.window,
                                        ring=ring, **kw)  # [B, L, H·d] in x's dtype
        if self.kind == SWA:  # the ring is overwritten only once attention has read it
            cache.write_swa(self.layer_idx, k, v)
        return self.out_proj(out)


# ------------------------------------------------------------------------------------------------- layers


class DecoderLayer(nn.Module):
    def __init__(self, config: SambaYConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.kind = config.layer_types[layer_idx]
        self.input_layernorm = make_norm(config, config.hidden_size)
        if self.kind in (MAMBA, MAMBA_MEMORY):
            self.attn = Mamba(config, layer_idx, is_memory=self.kind == MAMBA_MEMORY)
        elif self.kind == GMU:
            self.attn = GatedMemoryUnit(config)
        else:
            self.attn = Attention(config, layer_idx, self.kind)
        self.post_attention_layernorm = make_norm(config, config.hidden_size)
        self.mlp = SwiGLU(config)

    def forward(self, h, x, *, next_norm, cache, positions, decode, memory, keep):
        """h: float32 residual stream [B, L, C]; x: this layer's normed input (the previous layer computed it with
        its last residual add). Returns (h, next_norm(h) for the next layer, memory)."""
        if self.kind in (MAMBA, MAMBA_MEMORY):
            a, mem = self.attn(x, cache, decode)
            if mem is not None:
                memory = mem
        elif self.kind == GMU:
            a = self.attn(x, memory)
        else:
            a = self.attn(x, cache, positions, keep if self.kind == FULL_ATTENTION else None, decode=decode)
            if self.kind == FULL_ATTENTION and keep is not None:
                h = h[:, h.shape[1] - keep:]  # the cross-decoder only needs the kept positions
                memory = memory[:, memory.shape[1] - keep:] if memory is not None else None
        h, x = add_norm(h, a, self.post_attention_layernorm)
        h, x = add_norm(h, self.mlp(x), next_norm)
        return h, x, memory


@dataclass
class ForwardOutput:
    logits: torch.Tensor | None  # float32 [B, kept positions, V]
    hidden_states: list[torch.Tensor] | None = None  # [embeddings, after layer 0, ..., final norm(after last)]
    last_hidden_raw: torch.Tensor | None = None  # output of the last layer before the final norm


class SambaYModel(nn.Module):
    def __init__(self, config: SambaYConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = make_norm(config, config.hidden_size)


class SambaYForCausalLM(nn.Module):
    """A SambaY language model. ``model(input_ids, attention_mask=None, logits_to_keep=None)`` returns float32
    logits [batch, time, vocab] (only the last ``logits_to_keep`` positions when given)."""

    def __init__(self, config: SambaYConfig) -> None:
        super().__init__()
        self.config = config
        self.model = SambaYModel(config)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size,
                                                                          bias=False)
        # storage dtype of the shared KV in new caches (None: the model dtype); torch.float8_e4m3fn halves the
        # long-context traffic (see docs/performance.md, "fp8 shared KV")
        self.kv_cache_dtype: torch.dtype | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def lm_head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, batch_size: int, max_length: int) -> SambaYCache:
        return SambaYCache(self.config, batch_size, max_length, device=self.device, dtype=self.dtype,
                           kv_dtype=self.kv_cache_dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
    ) -> torch.Tensor:
        """Full (no-cache) forward. Left padding via ``attention_mask`` (1 = token, 0 = pad)."""
        out = self.run(input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        return out.logits

    def run(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: SambaYCache | None = None,
        logits_to_keep: int | None = None,
        compute_logits: bool = True,
        output_hidden_states: bool = False,
    ) -> ForwardOutput:
        """Process new tokens, continuing from ``cache`` (a fresh one when None).

        ``attention_mask`` [B, L] marks the real tokens of this chunk (1) and left padding (0); a mask covering
        cached + new positions is also accepted (its last L columns are used).
        ``logits_to_keep``: logits (and cross-decoder work) only for the last k positions.
        ``compute_logits=False`` only updates the cache: the cross-decoder is skipped entirely (its layers keep no
        state), which is what chunked prefill needs for all but the last chunk.
        Differentiable when parameters require grad (training); inference callers wrap it in torch.inference_mode().
        """
        if input_ids.dim() != 2:
            raise ValueError("input_ids must be [batch, time]")
        bsz, length = input_ids.shape
        if cache is None:
            cache = self.new_cache(bsz, length)
        if attention_mask is not None:
            attention_mask = attention_mask[:, attention_mask.shape[1] - length:].to(self.device).bool()
        decode = length == 1 and cache.seen > 0
        if logits_to_keep is not None and (logits_to_keep <= 0 or logits_to_keep > length):
            logits_to_keep = length
        keep = None if output_hidden_states else logits_to_keep
        if not compute_logits:
            keep = 0
        if decode:
            cache.begin_decode()
            positions = None
        else:
            positions = cache.begin(length, attention_mask)
        layers = self.model.layers
        h, x = embed_norm(self.model.embed_tokens, input_ids.to(self.device), layers[0].input_layernorm)
        hidden = [h] if output_hidden_states else None
        memory = None
        kv_layer = self.config.kv_layer
        for i, layer in enumerate(layers):
            if keep == 0 and i >= kv_layer:
                # only the shared KV is needed from layer N/2+1; no queries, no cross-decoder
                self._write_shared_kv(layer.attn, x, cache)
                break
            next_norm = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.model.final_layernorm
            h, x, memory = layer(h, x, next_norm=next_norm, cache=cache, positions=positions, decode=decode,
                                 memory=memory, keep=keep)
            if hidden is not None:
                hidden.append(h)
        if decode:
            cache.end_decode()
        else:
            cache.end(length)
        if keep == 0:
            return ForwardOutput(logits=None)
        raw = h
        normed = x  # the final norm, fused into the last layer's residual add
        if hidden is not None:
            hidden[-1] = normed.float()
        if logits_to_keep is not None:
            normed = normed[:, normed.shape[1] - logits_to_keep:]
        logits = kernels.linear(normed, self.lm_head_weight(), out_dtype=torch.float32)
        return ForwardOutput(logits=logits, hidden_states=hidden, last_hidden_raw=raw if hidden is not None else None)

    @staticmethod
    def _write_shared_kv(attn: Attention, x: torch.Tensor, cache: SambaYCache) -> None:
        q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        if isinstance(attn.Wqkv, nn.Linear):  # project K and V only
            w = attn.Wqkv.weight[q_size:]
            b = attn.Wqkv.bias[q_size:] if attn.Wqkv.bias is not None else None
            kv = kernels.linear(x, w, b)
        else:  # a quantized projection: run it whole and keep K, V
            kv = attn.Wqkv(x)[..., q_size:]
        k = attn._heads(kv[..., :kv_size], attn.num_kv_heads)
        v = attn._heads(kv[..., kv_size:], attn.num_kv_heads)
        cache.write_kv(k, v)
