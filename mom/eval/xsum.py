"""XSUM-format summarisation (``mom eval xsum``).

Prompt ``document + "\nTL;DR:"``, target ``" " + summary + <|endoftext|>``; the loss covers the target tokens
only. The document is cut from the *end* to fit (news puts what matters first): n_ctx - |separator| -
max_new_tokens tokens at most (or ``--max-doc-tokens``); training summaries are cut to max_new_tokens - 1
tokens plus the end token. Decoding: greedy through :class:`mom.inference.engine.Engine` (KV-cached, batched) or beam
search (:func:`mom.inference.beam.beam_search`, on the same KV cache, reordered per beam). ROUGE-1/2/L/Lsum F1 from
``rouge-score`` with the Porter stemmer; for ROUGE-Lsum both texts are split into sentences by
:func:`mom.data.tasks.split_sentences` and joined with newlines (rouge-score's own splitter needs nltk's punkt
download).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mom.data.tasks import SummaryData
from mom.data.tokenizer import EOT, decode_generated
from mom.errors import MomError
from mom.eval.finetune import Log, TrainParams, forward_at, pad_right, parse_seeds, quiet, text_tokenizer, train_loop
from mom.eval.metrics import ROUGE_TYPES, mean_std, rouge
from mom.inference.beam import beam_search, greedy
from mom.runs import load_model

SUMMARY_SEPARATOR = "\nTL;DR:"


# ============================================================================================== summarisation
def summary_example(doc_ids: list[int], summary_ids: list[int] | None, sep_ids: list[int], n_ctx: int,
                    max_new_tokens: int, max_doc_tokens: int | None = None,
                    eot: int = EOT) -> tuple[list[int], list[int]]:
    """(prompt, target) token ids: prompt = document cut from the end to fit, + separator; target = summary
    cut to ``max_new_tokens - 1`` tokens + ``eot`` (the tokenizer's end of text; empty when ``summary_ids`` is
    None, for generation)."""
    budget = n_ctx - len(sep_ids) - max_new_tokens
    if max_doc_tokens is not None:
        budget = min(budget, max_doc_tokens)
    if budget < 1:
        raise MomError(f"no room for the document: n_ctx {n_ctx} - separator {len(sep_ids)} - "
                       f"--max-new-tokens {max_new_tokens} leaves {budget} tokens")
    prompt = doc_ids[:budget] + sep_ids
    target = [] if summary_ids is None else summary_ids[:max_new_tokens - 1] + [eot]
    return prompt, target


def _lm_batch_loss(model, seqs: list[tuple[list[int], list[int]]], device, pad: int) -> Tensor:
    """Mean cross-entropy of the target tokens (the prompt is context only) plus the aux loss."""
    rows = [prompt + target[:-1] for prompt, target in seqs]  # the last target token is never an input
    idx_BT, _ = pad_right(rows, device, pad)
    b_N = torch.cat([torch.full((len(t),), b) for b, (_, t) in enumerate(seqs)]).to(device)
    t_N = torch.cat([torch.arange(len(pr) - 1, len(pr) - 1 + len(t)) for pr, t in seqs]).to(device)
    y_N = torch.cat([torch.as_tensor(t) for _, t in seqs]).to(device)
    _, logits_NV, aux = forward_at(model, idx_BT, b_N, t_N)
    return F.cross_entropy(logits_NV.float(), y_N) + aux


@dataclass
class SummaryParams(TrainParams):
    """Fine-tuning + decoding hyper-parameters for XSUM-format summarisation."""

    batch_size: int = 8
    eval_batch_size: int = 16
    beams: int = 1
    max_new_tokens: int = 64
    max_doc_tokens: int | None = None
    length_penalty: float = 1.0

    def validate(self) -> None:
        super().validate()
        for name in ("beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.max_doc_tokens is not None and self.max_doc_tokens < 1:
            raise MomError(f"--max-doc-tokens must be ≥ 1, got {self.max_doc_tokens}")
        # NaN would make every finished hypothesis score NaN and the choice among them arbitrary
        if not math.isfinite(self.length_penalty):
            raise MomError(f"--length-penalty must be a finite number, got {self.length_penalty:g}")


def run_xsum(ckpt: str | os.PathLike, data: SummaryData, *, params: SummaryParams | None = None,
             seeds: Sequence[int] | str = (0,), device: str | torch.device = "cpu", log: Log = quiet,
             keep_predictions: bool = False) -> dict:
    """Fine-tune ``ckpt`` on ``data.train`` (per seed), summarise ``data.test`` and score ROUGE."""
    p = params or SummaryParams()
    p.validate()
    seeds = parse_seeds(seeds)
    device = torch.device(device)
    model = load_model(ckpt, "cpu")
    enc = text_tokenizer(model)
    n_ctx = model.config.n_ctx
    sep = enc.encode_ordinary(SUMMARY_SEPARATOR)
    train, test = data.train[:p.max_train], data.test[:p.max_eval]

    def encode(rows, with_summary: bool):
        docs = enc.encode_ordinary_batch([r.document for r in rows])
        sums = ([None] * len(rows) if not with_summary
                else enc.encode_ordinary_batch([" " + r.summary.strip() for r in rows]))
        return [summary_example(d, s, sep, n_ctx, p.max_new_tokens, p.max_doc_tokens, enc.eot_token)
                for d, s in zip(docs, sums)]

    train_seqs = encode(train, True)
    test_prompts = [prompt for prompt, _ in encode(test, False)]
    runs = []
    predictions: list[list[str]] = []
    for seed in seeds:
        torch.manual_seed(seed)
        lm = load_model(ckpt, device)
        def batch_loss(rows: list[int], lm=lm) -> Tensor:
            return _lm_batch_loss(lm, [train_seqs[r] for r in rows], device, enc.eot_token)

        info = train_loop(lm, len(train_seqs), batch_loss, p, seed, log, f"xsum seed {seed}")
        t0 = time.perf_counter()
        if p.beams == 1:
            outs = greedy(lm, test_prompts, p.max_new_tokens, p.eval_batch_size)
        else:
            outs = [beam_search(lm, pr, p.beams, p.max_new_tokens, length_penalty=p.length_penalty,
                                eot=enc.eot_token) for pr in test_prompts]
        texts = [decode_generated(enc, o).strip() for o in outs]
        scores = rouge(texts, [r.summary for r in test])
        log(f"xsum seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in scores.items())
            + f" ({time.perf_counter() - t0:.0f}s decoding)")
        runs.append({"seed": seed, "metrics": scores, **info, "decode_seconds": time.perf_counter() - t0})
        predictions.append(texts)
        lm = None  # free this seed's model before the next one loads (the closure above holds the name)
    mean, std = mean_std([r["metrics"] for r in runs])
    report = {"task": "xsum", "data": data.source, "model": str(ckpt), "sizes": data.sizes() | {
        "train": len(train), "test": len(test)}, "skipped_rows": data.skipped, "params": asdict(p),
        "separator": SUMMARY_SEPARATOR, "seeds": list(seeds), "metrics": list(ROUGE_TYPES), "mean": mean,
        "std": std, "runs": runs,
        "examples": [{"id": r.id, "reference": r.summary, "prediction": predictions[0][i]}
                     for i, r in enumerate(test[:3])]}
    if keep_predictions:
        report["predictions"] = [{"id": r.id, "reference": r.summary, **{f"seed{s}": predictions[j][i]
                                  for j, s in enumerate(seeds)}} for i, r in enumerate(test)]
    return report
