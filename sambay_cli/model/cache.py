"""The inference state of a SambaY model — exactly what decoding needs and nothing more.

* per Mamba layer (self-decoder and the memory layer): a conv state (the last d_conv−1 raw inputs) and an SSM state,
  both float32;
* per sliding-window layer: a ring buffer of the last ``window`` keys/values. The model has no positional encoding,
  so slot order is irrelevant: position p lives in slot p mod window. The slot positions and validity are shared by
  all SWA layers;
* one KV buffer for the full-attention layer N/2+1, preallocated to ``max_length`` and read by every
  cross-attention layer (the YOCO shared KV);
* nothing for GMU and cross-attention layers: the GMU memory is only needed for the current tokens.

Batches are left-padded, so every row shares the same absolute positions; ``*_valid`` masks mark padding.
"""

from __future__ import annotations

import torch

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
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        self.dtype = dtype
        self.seen = 0  # positions processed so far (the same for every row)
        c = config
        g, hd = c.num_key_value_heads, c.head_dim
        self.conv_states: dict[int, torch.Tensor] = {}
        self.ssm_states: dict[int, torch.Tensor] = {}
        self.swa_k: dict[int, torch.Tensor] = {}
        self.swa_v: dict[int, torch.Tensor] = {}
        types = c.layer_types
        for i, t in enumerate(types):
            if t in MAMBA_TYPES:
                self.conv_states[i] = torch.zeros(batch_size, c.d_inner, c.mamba_d_conv - 1, device=device)
                self.ssm_states[i] = torch.zeros(batch_size, c.d_inner, c.mamba_d_state, device=device)
            elif t == SWA:
                w = min(c.sliding_window, max_length)
                self.swa_k[i] = torch.zeros(batch_size, g, w, hd, device=device, dtype=dtype)
                self.swa_v[i] = torch.zeros(batch_size, g, w, hd, device=device, dtype=dtype)
        self.window = min(c.sliding_window, max_length) if self.swa_k else 0
        self.swa_pos = torch.full((self.window,), -1, dtype=torch.long, device=device)
        self.swa_valid = torch.zeros(batch_size, self.window, dtype=torch.bool, device=device)
        self.kv_k = self.kv_v = None
        if FULL_ATTENTION in types:
            self.kv_k = torch.zeros(batch_size, g, max_length, hd, device=device, dtype=dtype)
            self.kv_v = torch.zeros(batch_size, g, max_length, hd, device=device, dtype=dtype)
        self.kv_valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.kv_pos = torch.arange(max_length, device=device)
        # set by begin() for the chunk being processed
        self.chunk_valid: torch.Tensor | None = None
        # device-side mirrors for graph-safe decoding: the position being decoded and the keys visible to it
        self.pos_t = torch.zeros(1, dtype=torch.long, device=device)
        self.n_keys_t = torch.ones(1, dtype=torch.long, device=device)
        self.window_t = torch.full((1,), self.window, dtype=torch.long, device=device)

    # --------------------------------------------------------------------------------------- chunk bookkeeping
    def begin(self, length: int, valid: torch.Tensor | None) -> torch.Tensor:
        """Start processing ``length`` new positions; ``valid`` [B, length] marks real tokens (None: all).
        Returns the new tokens' absolute positions."""
        if self.seen + length > self.max_length:
            raise ValueError(
                f"cache holds {self.max_length} positions; {self.seen} used, {length} more requested"
            )
        if valid is None:
            valid = torch.ones(self.batch_size, length, dtype=torch.bool, device=self.device)
        self.chunk_valid = valid.to(device=self.device, dtype=torch.bool)
        self.kv_valid[:, self.seen:self.seen + length] = self.chunk_valid
        return torch.arange(self.seen, self.seen + length, device=self.device)

    # ------------------------------------------------------------------------- one-token decode (graph-safe)
    def begin_decode(self) -> None:
        """Start a one-token step at position ``pos_t``. Only device-side ops, so the step can be CUDA-graphed:
        the new position becomes a valid key (shared KV) and takes its slot in the SWA rings."""
        if self.seen + 1 > self.max_length:
            raise ValueError(f"cache holds {self.max_length} positions; all used")
        self.chunk_valid = None
        self.n_keys_t.copy_(self.pos_t + 1)
        self.kv_valid.index_fill_(1, self.pos_t, True)
        if self.window:
            slot = torch.remainder(self.pos_t, self.window)
            self.swa_pos.index_copy_(0, slot, self.pos_t)
            self.swa_valid.index_fill_(1, slot, True)

    def end_decode(self) -> None:
        self.pos_t.add_(1)
        self.seen += 1

    def write_swa_decode(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, G, 1, d] → the ring slot of the current position."""
        slot = torch.remainder(self.pos_t, self.window)
        self.swa_k[layer].index_copy_(2, slot, k.to(self.dtype))
        self.swa_v[layer].index_copy_(2, slot, v.to(self.dtype))

    def write_kv_decode(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv_k.index_copy_(2, self.pos_t, k.to(self.dtype))
        self.kv_v.index_copy_(2, self.pos_t, v.to(self.dtype))

    def end(self, length: int) -> None:
        """Finish the chunk: record the positions written into the SWA rings and advance."""
        if self.window:
            n = min(length, self.window)
            pos = torch.arange(self.seen + length - n, self.seen + length, device=self.device)
            slots = pos % self.window
            self.swa_pos[slots] = pos
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
        self.kv_k[:, :, self.seen:self.seen + length] = k.to(self.dtype)
        self.kv_v[:, :, self.seen:self.seen + length] = v.to(self.dtype)

    # ------------------------------------------------------------------------------------------ batch surgery
    def select(self, index: torch.Tensor | list[int]) -> SambaYCache:
        """A new cache whose row r is this cache's row ``index[r]`` (rows may repeat: forking).

        The prompt's shared-KV rows are copied (only up to the filled length), the small Mamba/SWA state too.
        """
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        new = SambaYCache.__new__(SambaYCache)
        new.__dict__.update(self.__dict__)
        new.batch_size = int(index.numel())
        new.conv_states = {i: t.index_select(0, index) for i, t in self.conv_states.items()}
        new.ssm_states = {i: t.index_select(0, index) for i, t in self.ssm_states.items()}
        new.swa_k = {i: t.index_select(0, index) for i, t in self.swa_k.items()}
        new.swa_v = {i: t.index_select(0, index) for i, t in self.swa_v.items()}
        new.swa_pos = self.swa_pos.clone()
        new.swa_valid = self.swa_valid.index_select(0, index)
        new.kv_valid = self.kv_valid.index_select(0, index)
        if self.kv_k is not None:
            shape = (new.batch_size,) + tuple(self.kv_k.shape[1:])
            new.kv_k = self.kv_k.new_zeros(shape)
            new.kv_v = self.kv_v.new_zeros(shape)
            new.kv_k[:, :, : self.seen] = self.kv_k[:, :, : self.seen].index_select(0, index)
            new.kv_v[:, :, : self.seen] = self.kv_v[:, :, : self.seen].index_select(0, index)
        new.chunk_valid = None
        new.pos_t = self.pos_t.clone()
        new.n_keys_t = self.n_keys_t.clone()
        return new

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
        self.swa_valid = shrink(self.swa_valid)
        self.kv_valid = shrink(self.kv_valid)
        if self.kv_k is not None:
            self.kv_k = shrink(self.kv_k, self.seen)
            self.kv_v = shrink(self.kv_v, self.seen)
        self.batch_size = n

    def nbytes(self) -> int:
        """Bytes held by the cache tensors."""
        tensors = [*self.conv_states.values(), *self.ssm_states.values(), *self.swa_k.values(), *self.swa_v.values(),
                   self.swa_pos, self.swa_valid, self.kv_valid]
        if self.kv_k is not None:
            tensors += [self.kv_k, self.kv_v]
        return sum(t.numel() * t.element_size() for t in tensors)
