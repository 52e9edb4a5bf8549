"""Causal attention over the tokens of a step: ``scaled_dot_product_attention`` with tokens that took only SKIP hidden
as keys (a boolean key mask, or packing each sequence's valid tokens to its front), and the KV-cache slot when
decoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mom.model.ops import counting_sort


def causal_attention(qkv_BT3D: Tensor, n_head: int, key_valid_BT: Tensor | None = None, slot=None,
                     pack: bool = False) -> Tensor:
    """Causal multi-head attention over combined per-token q, k, v.

    ``key_valid_BT`` (bool) marks tokens that exist as keys at this step; a token whose attention picks were
    all SKIP is invalid and no other token may attend to it. It still attends to itself (only its own,
    zero-weighted output sees that), which keeps every softmax row non-empty and NaN-free.

    ``pack``: hide the invalid keys by packing instead of masking (:func:`packed_causal_attention`); the outputs
    of valid tokens are the same, those of invalid ones (never used) differ.

    ``slot`` is a KV-cache slot (:class:`mom.model.kv_cache.CacheSlot`) during incremental decoding: the new keys and
    values are written into it and the queries attend over everything cached so far, with the same rule.
    """
    B, T, threeD = qkv_BT3D.shape
    D = threeD // 3
    q, k, v = qkv_BT3D.view(B, T, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)  # each (B, G, T, d)
    if slot is not None:
        k, v, mask_B1TS = slot.update(k, v, key_valid_BT)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1TS)
    elif key_valid_BT is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    elif pack:
        return packed_causal_attention(qkv_BT3D, n_head, key_valid_BT)
    else:
        causal_TT = torch.ones(T, T, dtype=torch.bool, device=qkv_BT3D.device).tril()
        eye_TT = torch.eye(T, dtype=torch.bool, device=qkv_BT3D.device)
        mask_BTT = causal_TT & (key_valid_BT.unsqueeze(1) | eye_TT)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BTT.unsqueeze(1))
    return o.transpose(1, 2).reshape(B, T, D)


def packed_causal_attention(qkv_BT3D: Tensor, n_head: int, key_valid_BT: Tensor) -> Tensor:
    """Causal attention in which invalid tokens are no keys, by packing rather than masking.

    Each sequence's rows are reordered, stably, so that its valid tokens come first; plain causal attention
    (``is_causal=True``, the fastest SDPA path) then lets a valid token see exactly the valid tokens at or before
    it, as the mask would. An invalid token, packed after all valid ones, sees them all and the invalid ones before
    it: its output differs from the masked one, but nothing reads it (all its picks are SKIP, weight 0). The
    reorder is a counting sort by (sequence, invalid): static shapes, no host syncs."""
    B, T, threeD = qkv_BT3D.shape
    D = threeD // 3
    seq_B1 = torch.arange(B, device=qkv_BT3D.device).unsqueeze(1)
    keys_N = (2 * seq_B1 + (~key_valid_BT).long()).reshape(-1)  # sequence b's valid rows, then its invalid ones
    perm_N, inv_N, _ = counting_sort(keys_N, 2 * B)  # packed row → original row, and back
    packed_BT3D = qkv_BT3D.reshape(B * T, threeD).index_select(0, perm_N).view(B, T, threeD)
    return causal_attention(packed_BT3D, n_head).reshape(B * T, D).index_select(0, inv_N).view(B, T, D)
