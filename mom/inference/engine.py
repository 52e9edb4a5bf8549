"""Inference engine: KV-cached generation that stays exact with dynamic depth.

The paper's public code shares one cache slot across the H steps of an assembled block, so cached generation
diverges from a full forward as soon as H > 1. Here every attention core has its own preallocated slot: one per
vanilla layer and one per (chunk, step). A slot stores, for every cached token, the keys and values *that token*
produced at that step from the modules it chose, and whether it is a key at all there (a token that chose
only SKIP for attention at a step is recorded as absent, exactly as the full forward masks it).

Batches of prompts of different lengths are left-padded; pads are never keys and positions start at 0 at each
prompt's first real token, so every row generates what it would alone.

Expert-choice routing (Mixture-of-Depths) picks the top tokens of a whole sequence, which a decoder cannot do
without seeing the future. With a cache (and with ``causal_routing=True`` in a plain forward) the model uses a
causal rule instead: candidate c takes a token iff its router probability reaches a threshold, the running
estimate of the capacity cut-off measured during training. This changes which tokens are processed compared to
training-time routing (the *train/decode gap*, see docs/inference.md); cached decoding equals the uncached causal
forward exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mom.config.train import cuda_graphs
from mom.data.tokenizer import decode_generated, gpt2_tokenizer
from mom.errors import MomError
from mom.model.kv_cache import KVCache


# ---------------------------------------------------------------------------------------------- sampling
@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks), past the end-of-text token

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, not a set of one-character ones
            self.stop = [self.stop]

    def validate(self) -> None:
        # Types first: a float count or a string would otherwise fail deep inside torch with an unrelated message.
        for name, integer in (("max_new_tokens", True), ("top_k", True), ("seed", True), ("temperature", False),
                              ("top_p", False)):
            v = getattr(self, name)
            if v is None and name in ("top_k", "seed", "top_p"):
                continue
            kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
            if isinstance(v, bool) or not isinstance(v, kinds):
                raise MomError(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
        if self.max_new_tokens < 1:
            raise MomError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):
            raise MomError(f"temperature must be ≥ 0 and finite, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise MomError(f"top_k must be ≥ 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise MomError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch.Generator can hold
            raise MomError(f"seed must be between -2**63 and 2**64 - 1, got {self.seed}")
        if any(not s for s in self.stop):
            raise MomError("stop strings must be non-empty (an empty one would stop before the first token)")


def sample_next(logits_BV: Tensor, p: SamplingParams, gen: torch.Generator | None) -> Tensor:
    """Next token per row: greedy at temperature 0, else top-k / top-p filtered sampling."""
    if p.temperature == 0:
        return logits_BV.argmax(-1)
    # Shift the largest logit to 0 first (softmax does not change) and divide by at least float32's smallest
    # normal number: a tiny temperature then sends the other logits to -inf (greedy, its limit) instead of
    # overflowing to inf, or dividing by a temperature rounded to 0, and sampling from NaN probabilities.
    logits_BV = logits_BV.float()
    logits = (logits_BV - logits_BV.amax(-1, keepdim=True)) / max(p.temperature, torch.finfo(torch.float32).tiny)
    if p.top_k is not None:
        kth = logits.topk(min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > p.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@dataclass
class Generation:
    prompt: str | None
    prompt_tokens: list[int]
    tokens: list[int]  # generated tokens only
    text: str | None
    finish_reason: str  # "length" | "eos" | "stop"


class Engine:
    """Batched generation with a per-(chunk, step) KV cache. ``use_cache=False`` recomputes the full forward at
    every step (with the causal routing rule), the reference the cache is tested against.

    ``compile=True`` runs the one-token decode step through ``torch.compile(mode=compile_mode)``. The cache
    length is marked dynamic, so whatever the prompt and output lengths it compiles once, and a new batch size
    at most once more (dynamo then makes the batch dimension dynamic too). In the modes that replay CUDA graphs
    (``"reduce-overhead"``, ``"max-autotune"``; on a GPU decoding is bound by kernel launches) the engine keeps
    one cache of the model's full context per batch size and reuses it, in place, for every call: a graph
    replays fixed addresses. Attention then reads all ``n_ctx`` cache positions at every step (masked), the
    price of one graph for every length; on the CPU, where there are no graphs, that is all these modes change.
    A call holds its cache until it ends, so interleaved ``stream`` calls each get their own."""
    def __init__(self, model, tokenizer=None, *, use_cache: bool = True, compile: bool = False,
                 compile_mode: str | None = None):
        self.model = model.eval()
        self._tok = tokenizer
        self.use_cache = use_cache
        self._compiled = compile and use_cache
        self._graphs = self._compiled and cuda_graphs(compile_mode)
        self._decode = torch.compile(self.model, mode=compile_mode) if self._compiled else self.model
        self._reused: dict[tuple, KVCache] = {}  # (batch size, device, dtype) -> a free cache for CUDA graphs

    @property
    def tok(self):
        """The :class:`mom.data.tokenizer.Tokenizer` given, else the one the model was loaded with
        (``mom.runs.load_model`` sets ``model.tokenizer``), else GPT-2."""
        if self._tok is None:
            self._tok = getattr(self.model, "tokenizer", None) or gpt2_tokenizer()
        return self._tok

    @property
    def eot(self) -> int:
        """The tokenizer's end-of-text id: a row that samples it is finished (unless ``ignore_eos``)."""
        return self.tok.eot_token

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (ids past the tokenizer's vocabulary, from a padded embedding, have none)."""
        return decode_generated(self.tok, ids)

    def _encode(self, prompts) -> tuple[list[str | None], list[list[int]]]:
        if isinstance(prompts, (Tensor, np.ndarray)):  # one prompt (1-D) or a batch of equal-length ones (2-D)
            prompts = prompts.tolist()
        if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if not prompts:
            raise MomError("no prompts given")
        texts, ids = [], []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                texts.append(p)
                ids.append(self.tok.encode_ordinary(p))
            else:
                texts.append(None)
                p = p.tolist() if isinstance(p, (Tensor, np.ndarray)) else p
                if not isinstance(p, (list, tuple)) or not all(isinstance(t, (int, np.integer)) for t in p):
                    raise MomError(f"prompt {i} must be a string or a sequence of integer token ids, got {p!r:.60}")
                ids.append([int(t) for t in p])
            if not ids[-1]:
                raise MomError(f"prompt {i} is empty")
            bad = [t for t in ids[-1] if not 0 <= t < self.model.config.vocab_size]
            if bad:
                raise MomError(f"prompt {i} has token id {bad[0]} outside the vocabulary "
                               f"({self.model.config.vocab_size})")
        return texts, ids

    @torch.no_grad()
    def stream(self, prompts, params: SamplingParams | None = None, **kw) -> Iterator[list[int | None]]:
        """Yield, after every decode step, the new token of each row (None for rows already finished)."""
        yield from self._run(prompts, params or SamplingParams(**kw), results=None)

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams | None = None, **kw) -> list[Generation]:
        results: list[Generation] = []
        for _ in self._run(prompts, params or SamplingParams(**kw), results=results):
            pass
        return results

    def _run(self, prompts, p: SamplingParams, results: list | None):
        p.validate()
        texts, ids = self._encode(prompts)
        cfg = self.model.config
        device = next(self.model.parameters()).device
        longest = max(len(x) for x in ids)
        # The last new token is sampled, never fed back: the model sees at most longest + max_new_tokens - 1.
        seen = longest + p.max_new_tokens - 1
        if seen > cfg.n_ctx:
            raise MomError(f"prompt ({longest} tokens) + max_new_tokens ({p.max_new_tokens}) exceed the context "
                           f"length n_ctx={cfg.n_ctx} by {seen - cfg.n_ctx}")
        B = len(ids)
        pads = [longest - len(x) for x in ids]
        idx_BT = torch.tensor([[0] * pad + x for pad, x in zip(pads, ids)], device=device)  # pads: any id, never keys
        gen = None
        if p.seed is not None:
            gen = torch.Generator(device=device).manual_seed(p.seed)
        out_tokens: list[list[int]] = [[] for _ in range(B)]
        finish = [None] * B
        eot = None if p.ignore_eos else self.eot
        cache = self._take_cache(B, seen, pads) if self.use_cache else None
        try:
            logits_BV = self._logits(idx_BT, cache, pads)
            for i in range(p.max_new_tokens):
                nxt_B = sample_next(logits_BV, p, gen)
                step: list[int | None] = []
                for b, t in enumerate(nxt_B.tolist()):
                    if finish[b] is not None:
                        step.append(None)
                        continue
                    out_tokens[b].append(t)
                    step.append(t)
                    if t == eot:
                        finish[b] = "eos"
                    elif p.stop and texts[b] is not None and any(s in self.decode(out_tokens[b]) for s in p.stop):
                        finish[b] = "stop"
                yield step
                if all(f is not None for f in finish) or i + 1 == p.max_new_tokens:
                    break  # (after the last token: no forward whose logits nothing would read)
                if cache is not None:
                    if self._graphs:
                        torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are read: reuse them
                    logits_BV = self._decode(nxt_B.unsqueeze(1), cache=cache).logits[:, -1]
                else:  # the uncached reference recomputes the whole sequence
                    idx_BT = torch.cat([idx_BT, nxt_B.unsqueeze(1)], dim=1)
                    logits_BV = self._logits(idx_BT, cache, pads)
            if results is not None:
                for b in range(B):
                    toks = out_tokens[b]
                    text = None
                    if texts[b] is not None:
                        text = self.decode([t for t in toks if t != self.eot])
                        for s in p.stop:
                            if s in text:
                                text = text[: text.index(s)]
                    results.append(Generation(texts[b], ids[b], toks, text, finish[b] or "length"))
        finally:  # also when a stream is abandoned or a step raises: the cache is free again
            if cache is not None and self._graphs:
                self._reused.setdefault((B, cache.device, cache.dtype), cache)

    def cache_length(self, seen: int) -> int:
        """Positions of the cache a call allocates when the model sees ``seen`` tokens (prompt + new - 1)."""
        return self.model.config.n_ctx if self._graphs else seen

    def _take_cache(self, B: int, seen: int, pads: list[int]) -> KVCache:
        """A cache for one call. For CUDA graphs the free full-context cache of this batch size, reset (taken out
        of the free list until the call ends, see :meth:`_run`), or a new one; caches for a device or dtype the
        model has left are dropped."""
        if not self._graphs:
            cache = KVCache(self.model, B, self.cache_length(seen), pad_lengths=pads)
            if self._compiled:
                cache.mark_dynamic_length()
            return cache
        p = next(self.model.parameters())
        key = (B, p.device, p.dtype)
        self._reused = {k: c for k, c in self._reused.items() if k[1:] == key[1:]}
        cache = self._reused.pop(key, None)
        if cache is None:
            cache = KVCache(self.model, B, self.cache_length(seen), pad_lengths=pads)
            cache.mark_static()
        else:
            cache.reset(pads)
        return cache

    def _logits(self, idx_BT: Tensor, cache: KVCache | None, pads: list[int]) -> Tensor:
        """Logits of the last position of every row."""
        if cache is not None:
            return self.model(idx_BT, cache=cache).logits[:, -1]
        # Uncached reference: rerun each row's real tokens (no padding) through the full causal forward.
        rows = [self.model(idx_BT[b:b + 1, pad:], causal_routing=True).logits[0, -1] for b, pad in enumerate(pads)]
        return torch.stack(rows)
