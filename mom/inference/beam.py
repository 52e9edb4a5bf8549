"""Greedy decoding and beam search on the KV cache (each beam a cache row, reordered as beams are kept)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mom.data.tokenizer import EOT
from mom.errors import MomError
from mom.inference.engine import Engine, SamplingParams
from mom.model.kv_cache import KVCache


def _strip_eot(tokens: Sequence[int], eot: int = EOT) -> list[int]:
    tokens = list(tokens)
    return tokens[:tokens.index(eot)] if eot in tokens else tokens


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations (without the end token: the model's tokenizer's, see :attr:`Engine.tok`) through the
    KV-cached :class:`~mom.inference.engine.Engine`, in batches of similar prompt lengths (left-padded; each row
    decodes as it would alone)."""
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        for r, g in zip(rows, engine.generate([prompts[r] for r in rows], params)):
            out[r] = _strip_eot(g.tokens, engine.eot)
    return out


@torch.no_grad()
def beam_search(model, prompt: list[int], beams: int, max_new_tokens: int, *, length_penalty: float = 1.0,
                eot: int | None = None) -> list[int]:
    """Beam search over one prompt on the KV cache; returns the best continuation without the end token (``eot``;
    default: the end-of-text id of the model's tokenizer, ``model.tokenizer`` when loaded by
    ``mom.runs.load_model``, else GPT-2's).

    HF's algorithm (``early_stopping=False``): each step ranks the top 2·beams expansions of the live beams by
    total log-probability; an expansion ending in EOT among the top ``beams`` becomes a finished hypothesis,
    scored total / length**length_penalty (length = generated tokens including EOT); the best ``beams`` other
    expansions stay live. The search stops when ``beams`` hypotheses are finished and none of them is beaten by
    the best live beam's current normalised score, or after ``max_new_tokens`` (live beams then count as
    finished). With ``beams=1`` this is exactly greedy decoding."""
    if beams < 1:
        raise MomError(f"--beams must be ≥ 1, got {beams}")
    if eot is None:
        tok = getattr(model, "tokenizer", None)
        eot = EOT if tok is None else tok.eot_token
    model.eval()
    device = next(model.parameters()).device
    cache = KVCache(model, 1, len(prompt) + max_new_tokens)
    logits_MV = model(torch.tensor([prompt], device=device), cache=cache).logits[:, -1]
    cache.reorder(torch.zeros(beams, dtype=torch.long, device=device))
    logits_MV = logits_MV.expand(beams, -1)
    V = logits_MV.shape[-1]
    scores_M = torch.full((beams,), -math.inf, device=device)
    scores_M[0] = 0.0  # all beams start identical: only one may expand at the first step
    seqs: list[list[int]] = [[] for _ in range(beams)]
    finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens incl. EOT)

    def norm(total: float, length: int) -> float:
        return total / length ** length_penalty

    for step in range(max_new_tokens):
        cand_MV = scores_M[:, None] + torch.log_softmax(logits_MV.float(), dim=-1)
        top_scores, top_idx = cand_MV.view(-1).topk(2 * beams)
        live: list[tuple[float, int, int]] = []  # (total, source beam, token)
        for rank, (s, i) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            src, tok = divmod(i, V)
            if tok == eot:
                if rank < beams:
                    finished.append((norm(s, step + 1), seqs[src] + [eot]))
                continue
            live.append((s, src, tok))
            if len(live) == beams:
                break
        finished = sorted(finished, key=lambda f: f[0], reverse=True)[:beams]
        if len(finished) == beams and finished[-1][0] >= norm(live[0][0], step + 1):
            break
        if step == max_new_tokens - 1:
            finished += [(norm(s, step + 1), seqs[src] + [tok]) for s, src, tok in live]
            break
        index_M = torch.tensor([src for _, src, _ in live], device=device)
        seqs = [seqs[src] + [tok] for _, src, tok in live]
        scores_M = torch.tensor([s for s, _, _ in live], device=device)
        cache.reorder(index_M)
        next_M1 = torch.tensor([[tok] for _, _, tok in live], device=device)
        logits_MV = model(next_M1, cache=cache).logits[:, -1]
    best = max(finished, key=lambda f: f[0])[1]
    return _strip_eot(best, eot)
