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

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mom.config.train import cuda_graphs
from mom.data.tokenizer import decode_generated, gpt2_tokenizer
from mom.errors import MomError
from mom.model.kv_cache import KVCache


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class _Clock:
    """A generate call's start, and the seconds its decode steps spent compiling."""

    t0: float = field(default_factory=time.perf_counter)
    compile_s: float = 0.0


def _left_padded(rows: list[list[int]], device) -> tuple[Tensor, list[int]]:
    """Rows left-padded to the longest (pads: any id, never keys) and the pad count of each."""
    longest = max(len(x) for x in rows)
    pads = [longest - len(x) for x in rows]
    return torch.tensor([[0] * pad + x for pad, x in zip(pads, rows)], device=device), pads


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to the first stop string it contains (each stop string in turn, as generation checks them)."""
    for s in stops:
        if s in text:
            text = text[: text.index(s)]
    return text


class StreamTexts:
    """Per row, the decoded text of the tokens so far and how much of it was given out: a piece is given once
    final (not a partial multi-byte character, not possibly the start of a stop string), so that the pieces join
    to exactly what :meth:`Engine.generate` returns as ``text``."""

    def __init__(self, engine: "Engine", p: SamplingParams):
        self.engine, self.stops = engine, p.stop
        self.hold = max((len(s) for s in p.stop), default=1) - 1
        self.tokens: dict[int, list[int]] = {}
        self.given: dict[int, int] = {}

    def _text(self, b: int) -> str:
        eot = self.engine.eot
        return _cut_at_stop(self.engine.decode([t for t in self.tokens[b] if t != eot]), self.stops)

    def add(self, b: int, token: int) -> str:
        self.tokens.setdefault(b, []).append(token)
        text = self._text(b)
        end = len(text.rstrip("\ufffd"))  # an unfinished multi-byte character decodes to U+FFFD for now
        end = max(min(end, len(text) - self.hold), self.given.get(b, 0))
        piece, self.given[b] = text[self.given.get(b, 0):end], end
        return piece

    def flush(self) -> Iterator[tuple[int, str]]:
        """What was held back, once the rows are finished."""
        for b in sorted(self.tokens):
            piece = self._text(b)[self.given.get(b, 0):]
            if piece:
                yield b, piece


# ---------------------------------------------------------------------------------------------- sampling
# One default for the API and ``mom generate``: sample from the model's own distribution, as HF ``generate`` and
# vLLM do (lower it, e.g. 0.8, for safer text from small models; 0 is greedy).
DEFAULT_TEMPERATURE = 1.0


@dataclass
class SamplingParams:
    """How :meth:`Engine.generate` picks tokens and when a row stops.

    ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` filter before sampling; ``seed`` makes sampling repeatable;
    a row stops at the end-of-text token (unless ``ignore_eos``), at a ``stop`` string (cut from the text) or after
    ``max_new_tokens``. ``slide``: generate past the model's context ``n_ctx``: when the context is full, keep the
    last ``slide`` tokens (prompt and generated) and go on from them (a fresh prefill, positions from 0); it must be
    below ``n_ctx``. Without it, prompt + new tokens must fit in ``n_ctx``."""

    max_new_tokens: int = 64
    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks), past the end-of-text token
    slide: int | None = None  # sliding-window generation: tokens kept when the context is full

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # one stop string, not a set of one-character ones
            self.stop = [self.stop]

    def validate(self) -> None:
        # Types first: a float count or a string would otherwise fail deep inside torch with an unrelated message.
        for name, integer in (("max_new_tokens", True), ("top_k", True), ("seed", True), ("temperature", False),
                              ("top_p", False), ("slide", True)):
            v = getattr(self, name)
            if v is None and name in ("top_k", "seed", "top_p", "slide"):
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
        if self.slide is not None and self.slide < 1:
            raise MomError(f"slide must be ≥ 1 (tokens kept when the context is full), got {self.slide}")


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
    """One prompt's result. ``finish_reason``: ``"length"`` (max_new_tokens reached), ``"eos"`` (the end-of-text
    token) or ``"stop"`` (a stop string, cut from ``text``). ``seconds``: the call's wall time (prompt prefill and
    decoding of the whole batch); ``compile_seconds``: the part of it spent compiling the decode step (0 when it was
    already compiled); ``tokens_per_s``: this row's new tokens per second of the rest."""

    prompt: str | None
    prompt_tokens: list[int]
    tokens: list[int]  # generated tokens only
    text: str | None
    finish_reason: str  # "length" | "eos" | "stop"
    seconds: float = 0.0
    compile_seconds: float = 0.0
    tokens_per_s: float = 0.0


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
    A call holds its cache until it ends, so interleaved ``stream`` calls each get their own.

    ``log``: where the engine says what takes time the caller did not ask for (``mom generate`` passes a printer
    to stderr): "compiling the decode step…" before a compile."""
    def __init__(self, model, tokenizer=None, *, use_cache: bool = True, compile: bool = False,
                 compile_mode: str | None = None, log: Callable[[str], None] | None = None):
        self.model = model.eval()
        self._tok = tokenizer
        self.use_cache = use_cache
        self._compiled = compile and use_cache
        self._graphs = self._compiled and cuda_graphs(compile_mode)
        self._decode = torch.compile(self.model, mode=compile_mode) if self._compiled else self.model
        self._reused: dict[tuple, KVCache] = {}  # (batch size, device, dtype) -> a free cache for CUDA graphs
        self._log = log
        self._batch_sizes: set[int] = set()  # batch sizes the compiled decode step has run

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
    def stream_text(self, prompts, params: SamplingParams | None = None, *, results: list | None = None,
                    **kw) -> Iterator[tuple[int, str]]:
        """Yield ``(row, text)`` pieces as the rows' continuations grow; each row's pieces join to exactly its
        :attr:`Generation.text`. A piece is only given once it is final: characters still waiting for the rest of a
        multi-byte character, or that could be the start of a stop string, are held back until they are decided.
        ``results``: a list that receives the :class:`Generation` of every row when the stream ends."""
        p = params or SamplingParams(**kw)
        texts = StreamTexts(self, p)
        for step in self._run(prompts, p, results=results):
            for b, t in enumerate(step):
                if t is not None:
                    piece = texts.add(b, t)
                    if piece:
                        yield b, piece
        for b, piece in texts.flush():
            yield b, piece

    @torch.no_grad()
    def generate(self, prompts, params: SamplingParams | None = None, **kw) -> list[Generation]:
        """Continue each prompt; returns one :class:`Generation` per prompt, in order.

        ``prompts``: a string, a list of strings, a list of token-id lists, or a tensor / array of ids (1-D: one
        prompt, 2-D: a batch). Prompts of different lengths are left-padded into one batch; each row generates what
        it would alone. Sampling settings come as a :class:`SamplingParams` or as its fields by keyword
        (``max_new_tokens=64, temperature=1.0, top_k=None, top_p=None, seed=None, stop=[], ignore_eos=False,
        slide=None``). Errors a caller can make (an empty prompt, ids outside the vocabulary, a prompt that with
        ``max_new_tokens`` does not fit in ``n_ctx`` without ``slide``, invalid settings) raise
        :class:`~mom.errors.MomError`.

        >>> engine = Engine(MoM.from_pretrained("runs/tiny"))
        >>> g, = engine.generate("The history of", max_new_tokens=20, temperature=0.8, top_p=0.95, seed=0)
        >>> g.text, g.finish_reason, g.tokens_per_s"""
        results: list[Generation] = []
        for _ in self._run(prompts, params or SamplingParams(**kw), results=results):
            pass
        return results

    def _context_check(self, p: SamplingParams, longest: int) -> int:
        """The positions the model will see (prompt + new tokens − 1, capped at n_ctx when sliding); one error line
        when they do not fit, or when the sliding window leaves no room to generate."""
        n_ctx = self.model.config.n_ctx
        # The last new token is sampled, never fed back: the model sees at most longest + max_new_tokens - 1.
        seen = longest + p.max_new_tokens - 1
        if p.slide is not None:
            if p.slide >= n_ctx:
                raise MomError(f"slide window {p.slide} must be smaller than the context n_ctx={n_ctx} (tokens kept "
                               "when the context is full, leaving room for new ones)")
            return min(seen, n_ctx)
        if seen > n_ctx:
            raise MomError(f"prompt ({longest} tokens) + max_new_tokens ({p.max_new_tokens}) exceed the context "
                           f"length n_ctx={n_ctx} by {seen - n_ctx} (--slide WINDOW generates past it)")
        return seen

    def _run(self, prompts, p: SamplingParams, results: list | None):
        p.validate()
        texts, ids = self._encode(prompts)
        n_ctx = self.model.config.n_ctx
        if p.slide is not None:  # a prompt longer than the context keeps its last `slide` tokens
            ids_in = [x[-p.slide:] if len(x) > n_ctx else x for x in ids]
        else:
            ids_in = ids
        longest = max(len(x) for x in ids_in)
        seen = self._context_check(p, longest)
        device = next(self.model.parameters()).device
        B = len(ids)
        ctx = [list(x) for x in ids_in]  # what each row's context holds (for sliding)
        idx_BT, pads = _left_padded(ctx, device)
        gen = torch.Generator(device=device).manual_seed(p.seed) if p.seed is not None else None
        out_tokens: list[list[int]] = [[] for _ in range(B)]
        finish: list[str | None] = [None] * B
        eot = None if p.ignore_eos else self.eot
        clock = _Clock()
        cache = self._take_cache(B, seen, pads) if self.use_cache else None
        try:
            logits_BV = self._logits(idx_BT, cache, pads)
            used = longest  # positions of the context in use
            for i in range(p.max_new_tokens):
                nxt_B = sample_next(logits_BV, p, gen)
                step = self._record(nxt_B.tolist(), out_tokens, finish, texts, p, eot)
                yield step
                if all(f is not None for f in finish) or i + 1 == p.max_new_tokens:
                    break  # (after the last token: no forward whose logits nothing would read)
                for b, t in enumerate(nxt_B.tolist()):
                    ctx[b].append(t)
                if used == n_ctx:  # full (only when sliding): go on from the last `slide` tokens
                    ctx = [c[-p.slide:] for c in ctx]
                    idx_BT, pads = _left_padded(ctx, device)
                    used = idx_BT.shape[1]
                    cache = self._refill_cache(cache, B, min(n_ctx, used + p.max_new_tokens - i - 2), pads)
                    logits_BV = self._logits(idx_BT, cache, pads)
                    continue
                used += 1
                if cache is not None:
                    logits_BV = self._decode_step(nxt_B, cache, clock)
                else:  # the uncached reference recomputes the whole context
                    idx_BT = torch.cat([idx_BT, nxt_B.unsqueeze(1)], dim=1)
                    logits_BV = self._logits(idx_BT, cache, pads)
            if results is not None:
                results.extend(self._results(texts, ids, out_tokens, finish, p, clock))
        finally:  # also when a stream is abandoned or a step raises: the cache is free again
            if cache is not None and self._graphs:
                self._reused.setdefault((B, cache.device, cache.dtype), cache)

    def _record(self, new: list[int], out_tokens: list[list[int]], finish: list, texts: list, p: SamplingParams,
                eot: int | None) -> list[int | None]:
        """Append a decode step's tokens to the unfinished rows and mark the rows it finishes."""
        step: list[int | None] = []
        for b, t in enumerate(new):
            if finish[b] is not None:
                step.append(None)
                continue
            out_tokens[b].append(t)
            step.append(t)
            if t == eot:
                finish[b] = "eos"
            elif p.stop and texts[b] is not None and any(s in self.decode(out_tokens[b]) for s in p.stop):
                finish[b] = "stop"
        return step

    def _decode_step(self, nxt_B: Tensor, cache: KVCache, clock: _Clock) -> Tensor:
        """One cached decode step; the first one of a compiled engine at a new batch size compiles (said in the
        log, and timed apart)."""
        B = nxt_B.shape[0]
        compiling = self._compiled and B not in self._batch_sizes and len(self._batch_sizes) < 2
        if compiling and self._log is not None:
            self._log(f"compiling the decode step (batch size {B}; once per engine, a second time for a second batch "
                      "size)…")
        t0 = time.perf_counter()
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are read: reuse them
        logits_BV = self._decode(nxt_B.unsqueeze(1), cache=cache).logits[:, -1]
        if self._compiled:
            self._batch_sizes.add(B)
        if compiling:
            clock.compile_s += time.perf_counter() - t0
        return logits_BV

    def _results(self, texts, ids, out_tokens, finish, p: SamplingParams, clock: _Clock) -> list[Generation]:
        seconds = time.perf_counter() - clock.t0
        out = []
        for b, toks in enumerate(out_tokens):
            text = None
            if texts[b] is not None:
                text = _cut_at_stop(self.decode([t for t in toks if t != self.eot]), p.stop)
            run_s = max(seconds - clock.compile_s, 1e-9)
            out.append(Generation(texts[b], ids[b], toks, text, finish[b] or "length", seconds, clock.compile_s,
                                  len(toks) / run_s))
        return out

    def _refill_cache(self, cache: KVCache | None, B: int, seen: int, pads: list[int]) -> KVCache | None:
        """The cache for a context that slid: the CUDA-graph cache reset in place, else a fresh one."""
        if cache is None:
            return None
        if self._graphs:
            cache.reset(pads)
            return cache
        return self._take_cache(B, seen, pads)

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
