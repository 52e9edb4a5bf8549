"""The KV cache: one slot per attention core (each vanilla layer, each (chunk, step), each anchor) holding keys, values
and key validity, with the positions of left-padded rows; and the reordering beam search needs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mom.errors import MomError


def layer_slot(where: str, i: int) -> str:
    """The slot of vanilla layer ``i`` of ``where`` (``"bottom"`` or ``"top"``)."""
    return f"{where}.{i}"


def step_slot(chunk: int, step: int) -> str:
    """The slot of assembly step ``step`` of chunk ``chunk``: every step attends with its own keys and values."""
    return f"chunks.{chunk}.step{step}"


def anchor_slot(chunk: int) -> str:
    return f"chunks.{chunk}.anchor"


def slot_names(cfg) -> list[str]:
    """Names of all attention cores of a config, in forward order."""
    names = [layer_slot("bottom", i) for i in range(cfg.bottom)]
    for c in range(cfg.chunks):
        names += [step_slot(c, h) for h in range(cfg.steps)]
        if cfg.anchor:
            names.append(anchor_slot(c))
    return names + [layer_slot("top", i) for i in range(cfg.top)]


class CacheSlot:
    """Keys, values and key-validity of one attention core, preallocated for ``max_len`` positions (uninitialised:
    :meth:`KVCache.reset` empties them)."""

    def __init__(self, cache: "KVCache", B: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        self.cache = cache
        self.k_BGSd = torch.empty(B, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v_BGSd = torch.empty_like(self.k_BGSd)
        self.valid_BS = torch.empty(B, max_len, dtype=torch.bool, device=device)

    def update(self, k_BGTd: Tensor, v_BGTd: Tensor, key_valid_BT: Tensor | None):
        """Write T new tokens at the cache position; return all keys, values and the (B, 1, T, S) mask.

        Shapes never depend on the position (it is a tensor): the queries attend over all ``max_len`` slots with
        the not-yet-written ones masked, so a compiled decode step serves every position (and, with the length
        marked dynamic, every cache length: :meth:`KVCache.mark_dynamic_length`)."""
        c = self.cache
        pos_T = c.pos_t + torch.arange(k_BGTd.shape[2], device=k_BGTd.device)
        self.k_BGSd.index_copy_(2, pos_T, k_BGTd.to(self.k_BGSd.dtype))
        self.v_BGSd.index_copy_(2, pos_T, v_BGTd.to(self.v_BGSd.dtype))
        real_BT = c.real_BS.index_select(1, pos_T)
        self.valid_BS.index_copy_(1, pos_T, real_BT if key_valid_BT is None else real_BT & key_valid_BT)
        k_pos_S = c.k_pos_S
        causal_TS = k_pos_S.unsqueeze(0) <= pos_T.unsqueeze(1)
        own_TS = k_pos_S.unsqueeze(0) == pos_T.unsqueeze(1)  # a query always sees its own key (as in the full forward)
        mask_BTS = causal_TS & (self.valid_BS.unsqueeze(1) | own_TS)
        return self.k_BGSd.to(k_BGTd.dtype), self.v_BGSd.to(v_BGTd.dtype), mask_BTS.unsqueeze(1)


class KVCache:
    """All cache slots of a model for a batch of ``B`` sequences of at most ``max_len`` tokens.

    The write position is a 0-d tensor (``pos_t``), advanced by the model's forward; callers keep the total
    under ``max_len`` (the :class:`Engine` checks before it starts)."""

    def __init__(self, model, batch_size: int, max_len: int, *, pad_lengths: Sequence[int] | None = None,
                 device=None, dtype=None):
        cfg = model.config
        if max_len > cfg.n_ctx:
            raise MomError(f"{max_len} tokens exceed the model's context length n_ctx={cfg.n_ctx}")
        p = next(model.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        if batch_size < 1 or max_len < 1:
            raise MomError(f"a KV cache needs batch_size ≥ 1 and max_len ≥ 1, got {batch_size} and {max_len}")
        self.max_len, self.device, self.dtype = max_len, torch.device(device), dtype
        # Allocated uninitialised: reset() sets every tensor but the positions, once, here and for each reuse.
        self.pos_t = torch.empty((), dtype=torch.long, device=device)
        self.pad_B = torch.empty(batch_size, dtype=torch.long, device=device)
        self.k_pos_S = torch.arange(max_len, device=device)
        self.real_BS = torch.empty(batch_size, max_len, dtype=torch.bool, device=device)
        self.slots = {name: CacheSlot(self, batch_size, cfg.n_head, max_len, cfg.head_dim, device, dtype)
                      for name in slot_names(cfg)}
        self.reset(pad_lengths)

    @property
    def batch_size(self) -> int:
        return self.pad_B.shape[0]  # (beam search reorders the rows, which may change it)

    def reset(self, pad_lengths: Sequence[int] | None = None) -> None:
        """Empty the cache for a new batch of prompts (``pad_lengths`` left pads per row), in place: every tensor
        keeps its address, which CUDA graphs replay (see :meth:`mark_static`). Keys and values are zeroed too:
        attention masks stale ones out with weight 0, but 0 × NaN is NaN, so one call whose weights overflowed
        would otherwise poison every later one."""
        B = self.batch_size
        if pad_lengths is not None and len(pad_lengths) != B:
            raise MomError(f"pad_lengths has {len(pad_lengths)} entries for a batch of {B}")
        self.pos_t.zero_()
        self.pad_B.copy_(torch.tensor(list(pad_lengths) if pad_lengths is not None else [0] * B))
        torch.ge(self.k_pos_S.unsqueeze(0), self.pad_B.unsqueeze(1), out=self.real_BS)
        for slot in self.slots.values():
            for t in (slot.k_BGSd, slot.v_BGSd, slot.valid_BS):
                t.zero_()

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (keys, values, validity, positions)."""
        return sum(t.nbytes for t in self._tensors())

    def _tensors(self) -> list[Tensor]:
        return [self.pos_t, self.pad_B] + [t for t, _ in self._length_dims()]

    def _length_dims(self) -> list[tuple[Tensor, int]]:
        """Every tensor whose size is the cache length, with that dimension."""
        dims = [(self.k_pos_S, 0), (self.real_BS, 1)]
        for slot in self.slots.values():
            dims += [(slot.k_BGSd, 2), (slot.v_BGSd, 2), (slot.valid_BS, 1)]
        return dims

    def mark_dynamic_length(self) -> None:
        """Tell ``torch.compile`` that the cache length varies between calls, so that one compiled decode step
        serves every prompt and output length; otherwise the second length compiles it again (~16 s for tiny-mom
        on the 2-core CPU with a cold compile cache, docs/log.md)."""
        for t, dim in self._length_dims():
            torch._dynamo.maybe_mark_dynamic(t, dim)

    def mark_static(self) -> None:
        """Tell ``torch.compile`` that these tensors keep their addresses from call to call (the cache is reused,
        see :meth:`reset`): CUDA graphs then read and write them in place rather than copying them in and out at
        every replay, and accept that the decode step writes into them."""
        for t in self._tensors():
            torch._dynamo.mark_static_address(t)

    def slot(self, name: str) -> CacheSlot:
        return self.slots[name]

    def positions(self, T: int) -> Tensor:
        """(B, T) position ids of the next T tokens: 0 at each row's first real token (pads clamp to 0)."""
        pos_T = self.pos_t + torch.arange(T, device=self.pad_B.device)
        return (pos_T.unsqueeze(0) - self.pad_B.unsqueeze(1)).clamp_min(0)

    def advance(self, T: int) -> None:
        self.pos_t += T

    def reorder(self, rows_R: Tensor) -> None:
        """Make row r of every slot a copy of row ``rows_R[r]`` (beam search keeping its best beams; the batch size
        becomes R)."""
        for slot in self.slots.values():
            slot.k_BGSd = slot.k_BGSd.index_select(0, rows_R)
            slot.v_BGSd = slot.v_BGSd.index_select(0, rows_R)
            slot.valid_BS = slot.valid_BS.index_select(0, rows_R)
        self.pad_B = self.pad_B.index_select(0, rows_R)
        self.real_BS = self.real_BS.index_select(0, rows_R)
