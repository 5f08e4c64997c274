"""The inference state of a SambaY model — exactly what decoding needs and nothing more.

* per Mamba layer (self-decoder and the memory layer): a conv state (the last d_conv−1 raw inputs) and an SSM state,
  both float32;
* per sliding-window layer: a ring buffer of the last ``window`` keys/values. The model has no positional encoding,
  so slot order is irrelevant: position p lives in slot p mod window;
* one KV buffer for the full-attention layer N/2+1, preallocated to ``max_length`` and read by every
  cross-attention layer (the YOCO shared KV) — in the model dtype, or in float8 (e4m3, values saturated to ±448)
  with ``kv_dtype=torch.float8_e4m3fn``;
* nothing for GMU and cross-attention layers: the GMU memory is only needed for the current tokens.

Prefill processes chunks in which every row shares the same positions (prompts are left-padded; ``*_valid`` masks
mark padding). Decoding keeps one position per row (``pos_t``), so rows can hold sequences that started at different
times (continuous batching: :meth:`insert` moves a freshly prefilled sequence into a free row). Decode bookkeeping is
device-side only, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..config import FULL_ATTENTION, MAMBA_TYPES, SWA, SambaYConfig


class SambaYCache:
    def __init__(
        self,
        config: SambaYConfig,
        batch_size: int,
        max_length: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        if kv_dtype not in (None, dtype, torch.float8_e4m3fn):
            raise ValueError(f"shared-KV dtype must be the model dtype or torch.float8_e4m3fn, not {kv_dtype}")
        self.config = config
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        self.dtype = dtype
        self.kv_dtype = kv_dtype or dtype
        self.seen = 0  # largest number of positions any row has used (capacity bookkeeping)
        c = config
        g, hd = c.num_key_value_heads, c.head_dim
        self.conv_states: dict[int, torch.Tensor] = {}
        self.ssm_states: dict[int, torch.Tensor] = {}
        self.swa_k: dict[int, torch.Tensor] = {}
        self.swa_v: dict[int, torch.Tensor] = {}
        types = c.layer_types
        self.window = c.sliding_window if SWA in types else 0
        for i, t in enumerate(types):
            if t in MAMBA_TYPES:
                self.conv_states[i] = torch.zeros(batch_size, c.d_inner, c.mamba_d_conv - 1, device=device)
                self.ssm_states[i] = torch.zeros(batch_size, c.d_inner, c.mamba_d_state, device=device)
            elif t == SWA:
                self.swa_k[i] = torch.zeros(batch_size, g, self.window, hd, device=device, dtype=dtype)
                self.swa_v[i] = torch.zeros(batch_size, g, self.window, hd, device=device, dtype=dtype)
        self.swa_pos = torch.full((batch_size, self.window), -1, dtype=torch.long, device=device)
        self.swa_valid = torch.zeros(batch_size, self.window, dtype=torch.bool, device=device)
        self.kv_k = self.kv_v = None
        if FULL_ATTENTION in types:
            self.kv_k = torch.zeros(batch_size, g, max_length, hd, device=device, dtype=self.kv_dtype)
            self.kv_v = torch.zeros(batch_size, g, max_length, hd, device=device, dtype=self.kv_dtype)
        self.kv_valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.chunk_valid: torch.Tensor | None = None  # set by begin() for the chunk being processed
        # per-row decode position, keys visible to it, and the ring size (device tensors: graph-safe)
        self.pos_t = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.n_keys_t = torch.ones(batch_size, dtype=torch.long, device=device)
        self.window_t = torch.full((batch_size,), self.window, dtype=torch.long, device=device)

    # ------------------------------------------------------------------------------- chunks (shared positions)
    def begin(self, length: int, valid: torch.Tensor | None) -> torch.Tensor:
        """Start processing ``length`` new positions for every row; ``valid`` [B, length] marks real tokens
        (None: all). Returns the new tokens' absolute positions."""
        if self.seen + length > self.max_length:
            raise ValueError(f"cache holds {self.max_length} positions; {self.seen} used, {length} more requested")
        if valid is None:
            valid = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device)
        self.chunk_valid = valid.to(device=self.device, dtype=torch.bool)
        self.kv_valid[:, self.seen:self.seen + length] = self.chunk_valid
        return torch.arange(self.seen, self.seen + length, device=self.device)

    def end(self, length: int) -> None:
        """Finish the chunk: record the positions written into the SWA rings and advance."""
        if self.window:
            n = min(length, self.window)
            pos = torch.arange(self.seen + length - n, self.seen + length, device=self.device)
            slots = pos % self.window
            self.swa_pos[:, slots] = pos
            self.swa_valid[:, slots] = self.chunk_valid[:, length - n:]
        self.seen += length
        self.pos_t.fill_(self.seen)
        self.chunk_valid = None

    def write_swa(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the last ``window`` keys/values of the chunk (k, v: [B, G, L, d]) in the layer's ring."""
        length = k.shape[2]
        n = min(length, self.window)
        slots = torch.arange(self.seen + length - n, self.seen + length, device=self.device) % self.window
        self.swa_k[layer][:, :, slots] = k[:, :, length - n:].to(self.dtype)
        self.swa_v[layer][:, :, slots] = v[:, :, length - n:].to(self.dtype)

    def write_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append the chunk's keys/values (k, v: [B, G, L, d]) to the shared KV of layer N/2+1."""
        length = k.shape[2]
        self.kv_k[:, :, self.seen:self.seen + length] = self._to_kv(k)
        self.kv_v[:, :, self.seen:self.seen + length] = self._to_kv(v)

    def _to_kv(self, t: torch.Tensor) -> torch.Tensor:
        if self.kv_dtype == torch.float8_e4m3fn:  # e4m3fn has no infinity: saturate instead of producing NaN
            return t.float().clamp(-448.0, 448.0).to(self.kv_dtype)
        return t.to(self.kv_dtype)

    # --------------------------------------------------------------------- one-token decode (per-row, graph-safe)
    def begin_decode(self) -> None:
        """Start a one-token step: each row's position ``pos_t`` becomes a valid key of the shared KV and takes its
        slot in the SWA rings. Device-side ops only, so the step can be captured in a CUDA graph."""
        if self.seen + 1 > self.max_length:
            raise ValueError(f"cache holds {self.max_length} positions; all used")
        self.chunk_valid = None
        if self.window:  # each row's ring slot, once per step for every SWA layer
            self.swa_slot_t = torch.empty_like(self.pos_t)
            kernels.decode_positions(self.pos_t, self.n_keys_t, self.kv_valid, self.swa_slot_t, self.swa_pos,
                                     self.swa_valid)
        else:
            kernels.decode_positions(self.pos_t, self.n_keys_t, self.kv_valid)

    def end_decode(self) -> None:
        self.pos_t.add_(1)
        self.seen += 1

    def write_swa_decode(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, G, 1, d] → each row's ring slot for its current position (one kernel for K and V)."""
        kernels.kv_write_decode(self.swa_k[layer], self.swa_v[layer], k[:, :, 0], v[:, :, 0], self.swa_slot_t)

    def write_kv_decode(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.kv_dtype == torch.float8_e4m3fn:  # saturating conversion first
            k, v = self._to_kv(k), self._to_kv(v)
        kernels.kv_write_decode(self.kv_k, self.kv_v, k[:, :, 0], v[:, :, 0], self.pos_t)

    # ------------------------------------------------------------------------------------------ batch surgery
    def _row_tensors(self) -> dict[str, object]:
        return {"conv_states": self.conv_states, "ssm_states": self.ssm_states, "swa_k": self.swa_k,
                "swa_v": self.swa_v}

    def compact(self, index: torch.Tensor | list[int]) -> None:
        """Keep only rows ``index`` (ascending), in place: finished sequences stop costing compute and no second
        shared-KV buffer is allocated."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        n = int(index.numel())

        def shrink(t: torch.Tensor, upto: int | None = None) -> torch.Tensor:
            if upto is None:
                t[:n] = t.index_select(0, index)
            else:
                t[:n, :, :upto] = t[:, :, :upto].index_select(0, index)
            return t[:n]

        self.conv_states = {i: shrink(t) for i, t in self.conv_states.items()}
        self.ssm_states = {i: shrink(t) for i, t in self.ssm_states.items()}
        self.swa_k = {i: shrink(t) for i, t in self.swa_k.items()}
        self.swa_v = {i: shrink(t) for i, t in self.swa_v.items()}
        self.swa_pos = shrink(self.swa_pos)
        self.swa_valid = shrink(self.swa_valid)
        self.kv_valid = shrink(self.kv_valid)
        if self.kv_k is not None:
            self.kv_k = shrink(self.kv_k, self.seen)
            self.kv_v = shrink(self.kv_v, self.seen)
        self.pos_t = shrink(self.pos_t)
        self.n_keys_t = shrink(self.n_keys_t)
        self.window_t = shrink(self.window_t)
        self.batch_size = n

    def insert(self, dst_rows: list[int], src: SambaYCache, src_rows: list[int]) -> None:
        """Move sequences into rows of this (decode) cache: row ``dst_rows[i]`` becomes a copy of ``src`` row
        ``src_rows[i]`` — its recurrent states, SWA ring, shared-KV prefix and position. Continuous batching uses
        this to put freshly prefilled prompts into rows whose sequences finished."""
        if src.seen > self.max_length:
            raise ValueError("the inserted sequence is longer than this cache")
        dst = torch.as_tensor(dst_rows, dtype=torch.long, device=self.device)
        idx = torch.as_tensor(src_rows, dtype=torch.long, device=self.device)
        for i in self.conv_states:
            self.conv_states[i][dst] = src.conv_states[i].index_select(0, idx)
            self.ssm_states[i][dst] = src.ssm_states[i].index_select(0, idx)
        for i in self.swa_k:
            self.swa_k[i][dst] = src.swa_k[i].index_select(0, idx)
            self.swa_v[i][dst] = src.swa_v[i].index_select(0, idx)
        self.swa_pos[dst] = src.swa_pos.index_select(0, idx)
        self.swa_valid[dst] = src.swa_valid.index_select(0, idx)
        n = src.seen
        self.kv_valid[dst] = False
        self.kv_valid[dst, :n] = src.kv_valid[:, :n].index_select(0, idx)
        if self.kv_k is not None:
            self.kv_k[dst, :, :n] = src.kv_k[:, :, :n].index_select(0, idx)
            self.kv_v[dst, :, :n] = src.kv_v[:, :, :n].index_select(0, idx)
        self.pos_t[dst] = n
        self.seen = max(self.seen, n)

    def park(self, rows: list[int]) -> None:
        """Mark rows free: they keep computing garbage in batched steps, so pin them at position 0."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        self.pos_t[idx] = 0
        self.kv_valid[idx] = False
        self.swa_valid[idx] = False

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        tensors = [*self.conv_states.values(), *self.ssm_states.values(), *self.swa_k.values(), *self.swa_v.values(),
                   self.swa_pos, self.swa_valid, self.kv_valid]
        if self.kv_k is not None:
            tensors += [self.kv_k, self.kv_v]
        return sum(t.numel() * t.element_size() for t in tensors)
