"""Evaluation: perplexity, GLUE-format classification and XSUM-format summarisation (``mom eval ...``).

Perplexity (``mom eval ppl``)
    Sliding windows of the model's context n_ctx, advanced by ``stride`` (default n_ctx/2, at most n_ctx - 1),
    the method of HF's "perplexity of fixed-length models" guide, with exact counting: every token after the
    first is scored once, by the first window that holds it and the token before it, so it sees between
    ``n_ctx - stride`` and ``n_ctx - 1`` tokens of left context (all of them near the start).
    ppl = exp(total NLL / scored tokens). Routing is causal (``causal_routing=True``): a token's probability
    never depends on later tokens, which matters only for expert-choice (MoD) models, whose training-time
    selection looks at the whole sequence.

Classification (``mom eval glue``)
    The GPT-2 recipe: a linear head on the final hidden state (after ``ln_f``) of the last real token of each
    sequence (no pad id is involved: each row's length is known), cross-entropy (MSE for STS-B's regression),
    the whole model fine-tuned with AdamW (weight decay on matrices only), linear warm-up then linear decay, grad
    clipping 1.0, and the model's routing aux loss (balance + z, as configured) added to the task loss. Sentence
    pairs are joined as ``tokens(a) + [<|endoftext|>] + tokens(b)``: one token GPT-2 text never produces, so the
    boundary is unambiguous. Pairs that do not fit ``max_len`` lose tokens from the end of the longer side
    first. Batches are right-padded, so with causal attention a real token never sees a pad; pads do take part
    in expert-choice (MoD) capacity and in the balance statistics. Each seed starts again from the checkpoint;
    the seed fixes the head's initialisation and the data order. With several seeds the report gives the mean
    and the sample standard deviation (ddof = 1).

Summarisation (``mom eval xsum``)
    Prompt ``document + "\\nTL;DR:"``, target ``" " + summary + <|endoftext|>``; the loss covers the target tokens
    only. The document is cut from the *end* to fit (news puts what matters first): n_ctx - |separator| -
    max_new_tokens tokens at most (or ``--max-doc-tokens``); training summaries are cut to max_new_tokens - 1
    tokens plus the end token. Decoding: greedy through :class:`mom.engine.Engine` (KV-cached, batched) or beam
    search (:func:`beam_search`, on the same KV cache, reordered per beam). ROUGE-1/2/L/Lsum F1 from
    ``rouge-score`` with the Porter stemmer; for ROUGE-Lsum both texts are split into sentences by
    :func:`mom.tasks.split_sentences` and joined with newlines (rouge-score's own splitter needs nltk's punkt
    download).

The heads read the final hidden state with ``MoM.forward(rows=(b_N, t_N))`` (:func:`forward_at`): only the
(row, position) pairs that are scored go through ``ln_f`` and the LM head, which also shrinks the (B, T, V)
LM-head matmul to the positions needed — on CPU that matmul dominates a small model's forward.

Metrics are fractions in [0, 1] in the JSON output (ROUGE too); the text output prints them ×100, as GLUE and
XSUM tables do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mom.errors import DataError, MomError
from mom.tasks import ClassificationData, Example, SummaryData, TaskSpec
from mom.tokenizer import EOT, decode_generated

__all__ = [
    "accuracy", "f1_binary", "matthews", "pearson", "spearman", "glue_metrics", "rouge", "perplexity",
    "forward_at", "SequenceClassifier", "TrainParams", "GlueParams", "SummaryParams", "run_glue", "run_xsum",
    "beam_search", "greedy", "summary_example", "lm_eval_adapter", "run_lm_eval", "add_eval_arguments",
]

SUMMARY_SEPARATOR = "\nTL;DR:"
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================================== metrics
def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of predictions equal to the gold label."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(gold, pred))


def f1_binary(pred: Sequence[int], gold: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP; 0 when there is no true positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0))


def matthews(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(gold, pred))


def _correlation(fn, pred: Sequence[float], gold: Sequence[float]) -> float:
    if len(pred) < 2 or np.ptp(np.asarray(pred, dtype=float)) == 0 or np.ptp(np.asarray(gold, dtype=float)) == 0:
        return 0.0  # undefined for a constant side: report no correlation rather than NaN
    return float(fn(pred, gold)[0])


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, pred, gold)


_METRICS = {"accuracy": accuracy, "f1": f1_binary, "mcc": matthews, "pearson": pearson, "spearman": spearman}
_SPLIT_SUFFIX = {"dev": "", "dev_matched": "_m", "dev_mismatched": "_mm"}


def glue_metrics(spec: TaskSpec, predictions: dict[str, Sequence], golds: dict[str, Sequence]) -> dict[str, float]:
    """The task's GLUE metrics on each dev split, plus ``score``: their unweighted mean (the task's GLUE number).

    Keys are the metric names (``accuracy``, ``f1``, ``mcc``, ``pearson``, ``spearman``), suffixed ``_m``/``_mm``
    for MNLI's matched/mismatched dev sets."""
    out: dict[str, float] = {}
    for split in spec.dev_splits:
        for name in spec.metrics:
            out[name + _SPLIT_SUFFIX[split]] = _METRICS[name](predictions[split], golds[split])
    out["score"] = float(np.mean(list(out.values())))
    return out


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE F1 over the pairs (rouge-score, Porter stemmer). Texts are split into sentences and joined
    with newlines, which only ROUGE-Lsum looks at (the others tokenise newlines away)."""
    from rouge_score import rouge_scorer

    from mom.tasks import split_sentences

    if len(predictions) != len(references) or not references:
        raise ValueError("rouge needs as many predictions as references, at least one")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    return {k: v / len(references) for k, v in totals.items()}


def mean_std(runs: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float] | None]:
    """Per-key mean over runs and sample standard deviation (None with a single run)."""
    keys = list(runs[0])
    mean = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    std = {k: float(statistics.stdev([r[k] for r in runs])) for k in keys} if len(runs) > 1 else None
    return mean, std


# ============================================================================================== model access
def load_model(ckpt: str | os.PathLike, device: torch.device | str = "cpu"):
    """A mom model directory or training run (latest checkpoint); CheckpointError if there is none."""
    from mom.analysis import load_model as _load

    return _load(ckpt, device)


def forward_at(model, idx_BT: Tensor, b_N: Tensor, t_N: Tensor, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """Run the model on ``idx_BT`` and return, for the N (row, position) pairs, the final hidden state
    ``hidden_ND`` (after ``ln_f``) and the LM logits ``logits_NV``, plus the aux loss of the whole forward."""
    out = model(idx_BT, rows=(b_N, t_N), **kw)
    return out.hidden[0], out.logits[0], out.aux_loss


def _tokenizer(model):
    from mom.tokenizer import N_VOCAB, tokenizer

    if model.config.vocab_size < N_VOCAB:
        raise MomError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than GPT-2's ({N_VOCAB}): "
                       "text cannot be tokenised for it")
    return tokenizer()


def pick_device(spec: str | None) -> torch.device:
    from mom.analysis import pick_device as _pick

    return _pick(spec)


# ============================================================================================== perplexity
@dataclass
class PerplexityResult:
    tokens: int  # tokens read
    scored: int  # tokens scored (all but the first)
    nll: float  # mean negative log-likelihood, nats per scored token
    ppl: float
    n_ctx: int
    stride: int
    windows: int


def _check_stride(stride: int, n_ctx: int) -> None:
    if n_ctx < 2:
        raise MomError(f"perplexity needs n_ctx ≥ 2, the model has {n_ctx}")
    if not 1 <= stride < n_ctx:
        raise MomError(f"--stride must be in [1, n_ctx - 1 = {n_ctx - 1}], got {stride}")


def sliding_windows(n_tokens: int, n_ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) of each window: tokens [begin, end) are the input; targets first_target ..
    end-1 are scored there (the tokens no earlier window reached). HF's loop, with token 0 never a target.

    ``stride`` is at most n_ctx - 1: a window's first token has no left context inside the window, so
    consecutive windows must share at least one token for every token to be scored (HF's loop with
    stride = n_ctx silently skips each window's first token)."""
    _check_stride(stride, n_ctx)
    out = []
    prev_end = 1  # token 0 has no left context: it is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + n_ctx, n_tokens)
        if end > prev_end:
            out.append((begin, end, prev_end))
        prev_end = max(prev_end, end)
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def perplexity(model, tokens: np.ndarray | Sequence[int], *, stride: int | None = None, batch_size: int = 8,
               causal_routing: bool = True, log: Log = _quiet) -> PerplexityResult:
    """Sliding-window perplexity of ``tokens`` (see the module docstring)."""
    n_ctx = model.config.n_ctx
    # ``is None``, not ``or``: a stride of 0 is a mistake to report, not a request for the default
    stride = max(1, n_ctx // 2) if stride is None else stride
    _check_stride(stride, n_ctx)
    if batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {batch_size}")
    model.eval()
    toks = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if toks.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {toks.numel()}")
    if int(toks.max()) >= model.config.vocab_size:
        raise DataError(f"token id {int(toks.max())} is outside the model's vocabulary ({model.config.vocab_size})")
    device = next(model.parameters()).device
    windows = sliding_windows(toks.numel(), n_ctx, stride)
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        by_len.setdefault(w[1] - w[0], []).append(w)
    total_nll, scored, done = 0.0, 0, 0
    for length, group in by_len.items():
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            idx_BT = torch.stack([toks[b:e] for b, e, _ in batch]).to(device)
            # position j predicts token begin + j + 1; window targets are first_target .. end-1
            b_N = torch.cat([torch.full((e - f,), r) for r, (b, e, f) in enumerate(batch)]).to(device)
            t_N = torch.cat([torch.arange(f - 1 - b, e - 1 - b) for b, e, f in batch]).to(device)
            y_N = idx_BT[b_N, t_N + 1]
            _, logits_NV, _ = forward_at(model, idx_BT, b_N, t_N, causal_routing=causal_routing)
            total_nll += F.cross_entropy(logits_NV.float(), y_N, reduction="sum").item()
            scored += y_N.numel()
            done += len(batch)
            if done == len(windows) or (done // batch_size) % 50 == 0:
                log(f"  windows {done}/{len(windows)}: nll {total_nll / scored:.4f}")
    nll = total_nll / scored
    return PerplexityResult(int(toks.numel()), scored, nll, math.exp(nll), n_ctx, stride, len(windows))


def read_eval_tokens(data: str | os.PathLike, split: str, model) -> tuple[np.ndarray, str]:
    """Tokens to score: a prepared dataset directory or ``.bin`` file (``load_tokens``), or a UTF-8 text file
    (any other suffix), tokenised whole with the GPT-2 BPE."""
    from mom.data import load_tokens

    p = Path(data)
    if not p.exists():
        raise DataError(f"{p}: no such dataset directory or text file")
    if p.is_dir() or p.suffix == ".bin":
        return np.asarray(load_tokens(p, split, vocab_size=model.config.vocab_size)), f"{p} ({split})"
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte offset {e.start}); pass a prepared dataset directory or a "
                        ".txt file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    ids = _tokenizer(model).encode_ordinary(text.replace("\r\n", "\n"))
    return np.asarray(ids, dtype=np.int64), str(p)


# ============================================================================================== fine-tuning
@dataclass
class TrainParams:
    """Fine-tuning hyper-parameters shared by classification and summarisation (the usual GPT-2/BERT recipe)."""

    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of the updates spent warming up linearly
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    max_train: int | None = None  # first N training examples only (quick runs)
    max_eval: int | None = None  # first N evaluation examples of each split

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_train", "max_eval"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        # written so that NaN fails every check (a NaN compares false with everything)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MomError(f"--lr must be a positive number, got {self.lr:g}")
        if not 0 <= self.warmup < 1:
            raise MomError(f"--warmup must be a fraction of the updates in [0, 1), got {self.warmup:g}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise MomError(f"--weight-decay must be a finite number ≥ 0, got {self.weight_decay:g}")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise MomError(f"grad_clip must be a positive number, got {self.grad_clip:g}")


@dataclass
class GlueParams(TrainParams):
    """Classification fine-tuning: ``max_len`` tokens per example (capped at n_ctx; the report records the
    value used)."""

    max_len: int = 128

    def validate(self) -> None:
        super().validate()
        if self.max_len < 2:
            raise MomError(f"--max-len must be ≥ 2, got {self.max_len}")


def _optimizer(module: nn.Module, p: TrainParams) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights, the head's weight) only."""
    from mom.train import decay_split, fused_adamw

    decay, _ = decay_split(module)
    decay = set(decay)
    params = dict(module.named_parameters())
    groups = [{"params": [v for k, v in params.items() if k in decay], "weight_decay": p.weight_decay},
              {"params": [v for k, v in params.items() if k not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=p.lr, fused=fused_adamw(next(module.parameters()).device))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _train_loop(module: nn.Module, n_examples: int, batch_loss: Callable[[list[int]], Tensor], p: TrainParams,
                seed: int, log: Log, what: str) -> dict[str, float]:
    """Shuffled mini-batches for ``p.epochs`` epochs; returns the loss at the start and the end of training
    (mean of the first and of the last ~10% of updates) and the number of updates."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n_examples / p.batch_size)
    total = steps_per_epoch * p.epochs
    warmup = round(p.warmup * total)
    opt = _optimizer(module, p)
    module.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(p.epochs):
        order = torch.randperm(n_examples, generator=gen).tolist()
        for i in range(0, n_examples, p.batch_size):
            step = len(losses)
            for g in opt.param_groups:
                g["lr"] = p.lr * _lr_factor(step, total, warmup)
            loss = batch_loss(order[i:i + p.batch_size])
            if not torch.isfinite(loss):
                raise MomError(f"{what}: the training loss became {loss.item()} at update {step} (lower --lr?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), p.grad_clip)
            opt.step()
            losses.append(loss.item())
        recent = losses[-steps_per_epoch:]
        log(f"{what}: epoch {epoch + 1}/{p.epochs} loss {sum(recent) / len(recent):.4f} "
            f"({len(losses)} updates, {time.perf_counter() - t0:.0f}s)")
    k = max(1, len(losses) // 10)
    return {"train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
            "updates": len(losses), "train_seconds": time.perf_counter() - t0}


def _pad_right(rows: Sequence[Sequence[int]], device) -> tuple[Tensor, Tensor]:
    """(B, T) right-padded ids (pads are EOT; causal attention keeps them away from real tokens) and lengths."""
    T = max(len(r) for r in rows)
    idx_BT = torch.full((len(rows), T), EOT, dtype=torch.long)
    for b, r in enumerate(rows):
        idx_BT[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return idx_BT.to(device), torch.as_tensor([len(r) for r in rows], device=device)


# ============================================================================================== classification
class SequenceClassifier(nn.Module):
    """A MoM language model with a linear head on the final hidden state of each row's last real token."""

    def __init__(self, lm: nn.Module, n_outputs: int):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.d_model, n_outputs)
        nn.init.normal_(self.head.weight, std=lm.config.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx_BT: Tensor, lengths_B: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C) head outputs and the aux (routing balance) loss of the forward."""
        b_B = torch.arange(idx_BT.shape[0], device=idx_BT.device)
        hidden_BD, _, aux = forward_at(self.lm, idx_BT, b_B, lengths_B - 1)
        return self.head(hidden_BD), aux


def encode_examples(examples: Sequence[Example], enc, max_len: int) -> list[list[int]]:
    """Token ids of each example: ``a`` or ``a + [EOT] + b``, the longer side trimmed first to fit ``max_len``."""
    a_ids = enc.encode_ordinary_batch([e.text_a for e in examples])
    if examples and examples[0].text_b is None:
        return [a[:max_len] or [EOT] for a in a_ids]
    b_ids = enc.encode_ordinary_batch([e.text_b or "" for e in examples])
    out = []
    for a, b in zip(a_ids, b_ids):
        budget = max_len - 1
        while len(a) + len(b) > budget:
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        out.append(a + [EOT] + b)
    return out


@torch.no_grad()
def _predict(clf: SequenceClassifier, ids: list[list[int]], spec: TaskSpec, batch_size: int, device) -> list:
    clf.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    out: list = [None] * len(ids)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        idx_BT, len_B = _pad_right([ids[r] for r in rows], device)
        y_BC, _ = clf(idx_BT, len_B)
        vals = y_BC[:, 0].float().tolist() if spec.kind == "regression" else y_BC.argmax(-1).tolist()
        for r, v in zip(rows, vals):
            out[r] = v
    return out


def _seeds(spec: str | Sequence[int]) -> list[int]:
    if not isinstance(spec, str):
        return list(spec)
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise MomError(f"--seeds must be comma-separated integers (e.g. 0,1,2), got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise MomError(f"--seeds must list distinct integers, got {spec!r}")
    return seeds


def run_glue(ckpt: str | os.PathLike, data: ClassificationData, *, params: GlueParams | None = None,
             seeds: Sequence[int] | str = (0,), device: str | torch.device = "cpu", log: Log = _quiet) -> dict:
    """Fine-tune ``ckpt`` on ``data.train`` once per seed and score each dev split; returns the report dict."""
    p = params or GlueParams()
    p.validate()
    seeds = _seeds(seeds)
    device = torch.device(device)
    spec = data.spec
    model = load_model(ckpt, "cpu")
    enc = _tokenizer(model)
    max_len = min(p.max_len, model.config.n_ctx)
    train = data.train[:p.max_train]
    dev = {s: rows[:p.max_eval] for s, rows in data.dev.items()}
    train_ids = encode_examples(train, enc, max_len)
    dev_ids = {s: encode_examples(rows, enc, max_len) for s, rows in dev.items()}
    golds = {s: [e.label for e in rows] for s, rows in dev.items()}
    if spec.kind == "regression":
        y_all = torch.tensor([float(e.label) for e in train])
    else:
        y_all = torch.tensor([int(e.label) for e in train])
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        clf = SequenceClassifier(load_model(ckpt, device), spec.n_outputs).to(device)

        def batch_loss(rows: list[int]) -> Tensor:
            idx_BT, len_B = _pad_right([train_ids[r] for r in rows], device)
            out_BC, aux = clf(idx_BT, len_B)
            y_B = y_all[rows].to(device)
            task = (F.mse_loss(out_BC[:, 0].float(), y_B) if spec.kind == "regression"
                    else F.cross_entropy(out_BC.float(), y_B))
            return task + aux

        info = _train_loop(clf, len(train_ids), batch_loss, p, seed, log, f"{spec.name} seed {seed}")
        preds = {s: _predict(clf, ids, spec, p.eval_batch_size, device) for s, ids in dev_ids.items()}
        metrics = glue_metrics(spec, preds, golds)
        log(f"{spec.name} seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
        runs.append({"seed": seed, "metrics": metrics, **info})
        clf = None  # free this seed's model before the next one loads (the closure above holds the name)
    mean, std = mean_std([r["metrics"] for r in runs])
    return {"task": spec.name, "format": spec.glue_dir, "proxy_of": spec.proxy_of, "data": data.source,
            "model": str(ckpt), "sizes": {"train": len(train), **{s: len(r) for s, r in dev.items()}},
            "params": asdict(p) | {"max_len": max_len}, "seeds": list(seeds), "metrics": list(mean), "mean": mean,
            "std": std, "runs": runs}


# ============================================================================================== summarisation
def summary_example(doc_ids: list[int], summary_ids: list[int] | None, sep_ids: list[int], n_ctx: int,
                    max_new_tokens: int, max_doc_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """(prompt, target) token ids: prompt = document cut from the end to fit, + separator; target = summary
    cut to ``max_new_tokens - 1`` tokens + EOT (empty when ``summary_ids`` is None, for generation)."""
    budget = n_ctx - len(sep_ids) - max_new_tokens
    if max_doc_tokens is not None:
        budget = min(budget, max_doc_tokens)
    if budget < 1:
        raise MomError(f"no room for the document: n_ctx {n_ctx} - separator {len(sep_ids)} - "
                       f"--max-new-tokens {max_new_tokens} leaves {budget} tokens")
    prompt = doc_ids[:budget] + sep_ids
    target = [] if summary_ids is None else summary_ids[:max_new_tokens - 1] + [EOT]
    return prompt, target


def _lm_batch_loss(model, seqs: list[tuple[list[int], list[int]]], device) -> Tensor:
    """Mean cross-entropy of the target tokens (the prompt is context only) plus the aux loss."""
    rows = [prompt + target[:-1] for prompt, target in seqs]  # the last target token is never an input
    idx_BT, _ = _pad_right(rows, device)
    b_N = torch.cat([torch.full((len(t),), b) for b, (_, t) in enumerate(seqs)]).to(device)
    t_N = torch.cat([torch.arange(len(pr) - 1, len(pr) - 1 + len(t)) for pr, t in seqs]).to(device)
    y_N = torch.cat([torch.as_tensor(t) for _, t in seqs]).to(device)
    _, logits_NV, aux = forward_at(model, idx_BT, b_N, t_N)
    return F.cross_entropy(logits_NV.float(), y_N) + aux


def _strip_eot(tokens: Sequence[int], eot: int = EOT) -> list[int]:
    tokens = list(tokens)
    return tokens[:tokens.index(eot)] if eot in tokens else tokens


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations (without the end token) through the KV-cached :class:`~mom.engine.Engine`, in
    batches of similar prompt lengths (left-padded; each row decodes as it would alone)."""
    from mom.engine import Engine, SamplingParams

    engine = Engine(model)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        for r, g in zip(rows, engine.generate([prompts[r] for r in rows], params)):
            out[r] = _strip_eot(g.tokens)
    return out


def _reorder_cache(cache, index_K: Tensor) -> None:
    """Make row k of every cache slot a copy of row ``index_K[k]`` (beam bookkeeping; may change the batch size)."""
    for slot in cache.slots.values():
        slot.k_BHSd = slot.k_BHSd.index_select(0, index_K)
        slot.v_BHSd = slot.v_BHSd.index_select(0, index_K)
        slot.valid_BS = slot.valid_BS.index_select(0, index_K)
    cache.pad_B = cache.pad_B.index_select(0, index_K)
    cache.real_BS = cache.real_BS.index_select(0, index_K)


@torch.no_grad()
def beam_search(model, prompt: list[int], beams: int, max_new_tokens: int, *, length_penalty: float = 1.0,
                eot: int = EOT) -> list[int]:
    """Beam search over one prompt on the KV cache; returns the best continuation without the end token.

    HF's algorithm (``early_stopping=False``): each step ranks the top 2·beams expansions of the live beams by
    total log-probability; an expansion ending in EOT among the top ``beams`` becomes a finished hypothesis,
    scored total / length**length_penalty (length = generated tokens including EOT); the best ``beams`` other
    expansions stay live. The search stops when ``beams`` hypotheses are finished and none of them is beaten by
    the best live beam's current normalised score, or after ``max_new_tokens`` (live beams then count as
    finished). With ``beams=1`` this is exactly greedy decoding."""
    from mom.engine import KVCache

    if beams < 1:
        raise MomError(f"--beams must be ≥ 1, got {beams}")
    model.eval()
    device = next(model.parameters()).device
    cache = KVCache(model, 1, len(prompt) + max_new_tokens)
    logits_KV = model(torch.tensor([prompt], device=device), cache=cache).logits[:, -1]
    _reorder_cache(cache, torch.zeros(beams, dtype=torch.long, device=device))
    logits_KV = logits_KV.expand(beams, -1)
    V = logits_KV.shape[-1]
    scores_K = torch.full((beams,), -math.inf, device=device)
    scores_K[0] = 0.0  # all beams start identical: only one may expand at the first step
    seqs: list[list[int]] = [[] for _ in range(beams)]
    finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens incl. EOT)

    def norm(total: float, length: int) -> float:
        return total / length ** length_penalty

    for step in range(max_new_tokens):
        cand_KV = scores_K[:, None] + torch.log_softmax(logits_KV.float(), dim=-1)
        top_scores, top_idx = cand_KV.view(-1).topk(2 * beams)
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
        index_K = torch.tensor([src for _, src, _ in live], device=device)
        seqs = [seqs[src] + [tok] for _, src, tok in live]
        scores_K = torch.tensor([s for s, _, _ in live], device=device)
        _reorder_cache(cache, index_K)
        next_K1 = torch.tensor([[tok] for _, _, tok in live], device=device)
        logits_KV = model(next_K1, cache=cache).logits[:, -1]
    best = max(finished, key=lambda f: f[0])[1]
    return _strip_eot(best, eot)


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
             seeds: Sequence[int] | str = (0,), device: str | torch.device = "cpu", log: Log = _quiet,
             keep_predictions: bool = False) -> dict:
    """Fine-tune ``ckpt`` on ``data.train`` (per seed), summarise ``data.test`` and score ROUGE."""
    p = params or SummaryParams()
    p.validate()
    seeds = _seeds(seeds)
    device = torch.device(device)
    model = load_model(ckpt, "cpu")
    enc = _tokenizer(model)
    n_ctx = model.config.n_ctx
    sep = enc.encode_ordinary(SUMMARY_SEPARATOR)
    train, test = data.train[:p.max_train], data.test[:p.max_eval]

    def encode(rows, with_summary: bool):
        docs = enc.encode_ordinary_batch([r.document for r in rows])
        sums = ([None] * len(rows) if not with_summary
                else enc.encode_ordinary_batch([" " + r.summary.strip() for r in rows]))
        return [summary_example(d, s, sep, n_ctx, p.max_new_tokens, p.max_doc_tokens) for d, s in zip(docs, sums)]

    train_seqs = encode(train, True)
    test_prompts = [prompt for prompt, _ in encode(test, False)]
    runs = []
    predictions: list[list[str]] = []
    for seed in seeds:
        torch.manual_seed(seed)
        lm = load_model(ckpt, device)
        info = _train_loop(lm, len(train_seqs), lambda rows: _lm_batch_loss(lm, [train_seqs[r] for r in rows], device),
                           p, seed, log, f"xsum seed {seed}")
        t0 = time.perf_counter()
        if p.beams == 1:
            outs = greedy(lm, test_prompts, p.max_new_tokens, p.eval_batch_size)
        else:
            outs = [beam_search(lm, pr, p.beams, p.max_new_tokens, length_penalty=p.length_penalty)
                    for pr in test_prompts]
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


# ============================================================================================== lm-eval-harness
def lm_eval_adapter(model, *, batch_size: int = 8, max_gen_toks: int = 256):
    """An ``lm_eval.api.model.LM`` over a MoM model, for lm-eval-harness ≥ 0.4 (an optional dependency).

    * ``loglikelihood``: log p(continuation | context) and whether the continuation is the greedy one, on the
      last ``n_ctx + 1`` tokens of context + continuation (the context loses its beginning; HF's ``hf`` model
      does the same). Trailing spaces of the context move to the continuation, and the continuation's tokens are
      those of ``tokens(context + continuation)`` after ``tokens(context)``, as lm-eval's HF model tokenises.
    * ``loglikelihood_rolling``: lm-eval's own rolling windows (``get_rolling_token_windows``: ``<|endoftext|>``
      before the first token, disjoint predictions, full context for each).
    * ``generate_until``: greedy through the KV-cached engine, the prompt cut from the left to leave room for
      ``max_gen_toks``; the text is cut at the first stop string (``until``). Sampling arguments are refused.

    Routing is causal throughout (``causal_routing=True``)."""
    try:
        from lm_eval.api.model import LM
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    except ImportError:
        raise MomError("lm-eval is not installed: pip install 'lm-eval>=0.4.5' "
                       "(or the extra: pip install 'mixture-of-modules[lmeval]')") from None
    if batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {batch_size}")
    enc = _tokenizer(model)
    n_ctx = model.config.n_ctx
    device = next(model.parameters()).device
    model.eval()

    def score(pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) → (Σ log p(continuation), every continuation token is the argmax)."""
        out: list[tuple[float, bool]] = []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            seqs = []
            for ctx, cont in chunk:
                if not cont:
                    raise MomError("lm-eval asked for the likelihood of an empty continuation")
                if len(cont) > n_ctx:
                    raise MomError(f"a continuation of {len(cont)} tokens does not fit n_ctx={n_ctx}")
                seqs.append(((ctx or [EOT]) + cont)[-(n_ctx + 1):])
            idx_BT, _ = _pad_right([s[:-1] for s in seqs], device)
            # the continuation's tokens are the last len(cont) of each sequence, predicted one position earlier
            b_N = torch.cat([torch.full((len(c),), b) for b, (_, c) in enumerate(chunk)]).to(device)
            t_N = torch.cat([torch.arange(len(s) - 1 - len(c), len(s) - 1)
                             for s, (_, c) in zip(seqs, chunk)]).to(device)
            y_N = torch.cat([torch.as_tensor(c) for _, c in chunk]).to(device)
            with torch.no_grad():
                _, logits_NV, _ = forward_at(model, idx_BT, b_N, t_N, causal_routing=True)
            logp_N = torch.log_softmax(logits_NV.float(), -1).gather(1, y_N[:, None])[:, 0]
            hit_N = logits_NV.argmax(-1) == y_N
            start = 0
            for _, c in chunk:
                out.append((logp_N[start:start + len(c)].sum().item(), bool(hit_N[start:start + len(c)].all())))
                start += len(c)
        return out

    def encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = enc.encode_ordinary(context + continuation)
        ctx = enc.encode_ordinary(context)
        return ctx, whole[len(ctx):]

    class MomLM(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return score([encode_pair(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=enc.encode_ordinary(r.args[0]), prefix_token=EOT, max_seq_len=n_ctx, context_len=1)]
                out.append(sum(lp for lp, _ in score(windows)) if windows else 0.0)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for r in requests:
                context, kwargs = r.args
                kwargs = dict(kwargs or {})
                if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) not in (0, 0.0, None):
                    raise MomError("the mom lm-eval adapter decodes greedily; the task asked for sampling")
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                new = int(kwargs.get("max_gen_toks", max_gen_toks))
                if new >= n_ctx:
                    raise MomError(f"max_gen_toks {new} leaves no room for a prompt in n_ctx={n_ctx}")
                prompt = (enc.encode_ordinary(context) or [EOT])[-(n_ctx - new):]
                text = decode_generated(enc, greedy(model, [prompt], new)[0])
                cuts = [text.index(s) for s in until if s and s in text]
                out.append(text[:min(cuts)] if cuts else text)
            return out

    return MomLM()


def _check_limit(limit: float | None) -> float | None:
    """``limit`` as lm-eval should get it: None, a fraction in (0, 1), or an int ≥ 1 (2.0 from the command line
    becomes 2, so the report says 2). Negative and zero limits crash inside lm-eval with an unrelated message,
    and 2.5 would silently mean 2."""
    if limit is None:
        return None
    if not (0 < limit < 1 or (limit >= 1 and math.isfinite(limit) and limit == int(limit))):
        raise MomError(f"--limit must be a whole number of examples ≥ 1 or a fraction in (0, 1), got {limit:g}")
    return limit if limit < 1 else int(limit)


def run_lm_eval(ckpt: str | os.PathLike, tasks: Sequence[str], *, include_path: str | os.PathLike | None = None,
                limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 8,
                device: str | torch.device = "cpu") -> dict:
    """Run lm-eval-harness tasks (built-in ones, or the YAMLs under ``include_path`` only) on a checkpoint.

    ``limit``: examples per task, a whole number ≥ 1 or a fraction in (0, 1) of each task (lm-eval reads a
    value below 1 as a fraction and truncates anything else to an integer)."""
    limit = _check_limit(limit)
    if num_fewshot is not None and num_fewshot < 0:
        raise MomError(f"--num-fewshot must be ≥ 0, got {num_fewshot}")
    if batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {batch_size}")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local task data only: never reach for the Hub
    adapter = lm_eval_adapter(load_model(ckpt, device), batch_size=batch_size)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise DataError(f"{include_path}: --include-path must be a directory of lm-eval task YAML files")
    manager = TaskManager(include_path=None if include_path is None else str(include_path),
                          include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise DataError(f"unknown lm-eval task(s) {', '.join(unknown)}"
                        + (f" in {include_path}" if include_path is not None else ""))
    results = simple_evaluate(model=adapter, tasks=list(tasks), task_manager=manager, limit=limit,
                              num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0)
    return {"model": str(ckpt), "tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot,
            "results": results["results"], "n_samples": results.get("n-samples", {})}


# ============================================================================================== CLI
def _fmt(mean: dict[str, float], std: dict[str, float] | None, runs: list[dict]) -> list[str]:
    lines = []
    for k, m in mean.items():
        if k == "score" and len(mean) == 2:
            continue  # a single-metric task: its score is that metric
        spread = f" ± {100 * std[k]:.2f}" if std else ""
        values = ", ".join(f"{100 * r['metrics'][k]:.2f}" for r in runs)
        per = f"   (seeds: {values})" if len(runs) > 1 else ""
        lines.append(f"  {k:<12} {100 * m:6.2f}{spread}{per}")
    return lines


def _print_report(report: dict, as_json: bool, header: str) -> None:
    if as_json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return
    print(header)
    print("\n".join(_fmt(report["mean"], report["std"], report["runs"])))
    r0 = report["runs"][0]
    print(f"  train loss {r0['train_loss_first']:.4f} → {r0['train_loss_last']:.4f} over {r0['updates']} updates "
          f"(seed {r0['seed']})")


def cli_ppl(args: argparse.Namespace, overrides) -> int:
    if args.max_tokens is not None and args.max_tokens < 2:
        raise MomError(f"--max-tokens must be ≥ 2, got {args.max_tokens}")
    if args.batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    from mom.analysis import resolve_data_dir, resolve_model_dir

    ckpt = resolve_model_dir(args.ckpt)  # a missing checkpoint is named first, as by every other command
    data = args.data
    if data is None:  # the built-in corpus, checked before the model loads (a given path is read_eval_tokens' to check)
        data = resolve_data_dir(None, "perplexity", "DIR|FILE (a dataset directory from 'mom prepare --out DIR', "
                                "a .bin token file or a UTF-8 text file)")
    device = pick_device(args.device)
    model = load_model(ckpt, device)
    if args.stride is not None:
        _check_stride(args.stride, model.config.n_ctx)  # before reading and tokenising the data
    tokens, source = read_eval_tokens(data, args.split, model)
    if args.max_tokens is not None:
        tokens = tokens[:args.max_tokens]
    res = perplexity(model, tokens, stride=args.stride, batch_size=args.batch_size,
                     causal_routing=not args.train_routing, log=_quiet if args.json else _stderr)
    report = {"model": str(args.ckpt), "data": source, **asdict(res),
              "routing": "training (sequence-level)" if args.train_routing else "causal"}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{source}: perplexity {res.ppl:.3f} (nll {res.nll:.4f} nats/token over {res.scored:,} tokens; "
              f"n_ctx {res.n_ctx}, stride {res.stride}, {res.windows} windows)")
    return 0


def _params(cls, args) -> TrainParams:
    fields = {k: getattr(args, k) for k in cls.__dataclass_fields__ if getattr(args, k, None) is not None}
    return cls(**fields)


def cli_glue(args: argparse.Namespace, overrides) -> int:
    from mom.tasks import load_classification

    device = pick_device(args.device)
    params = _params(GlueParams, args)
    params.validate()
    seeds = _seeds(args.seeds)
    n_ctx = load_model(args.ckpt).config.n_ctx  # fail on a missing checkpoint before reading data
    if args.max_len is not None and args.max_len > n_ctx:
        # the default (128) is capped silently; a value the user typed is worth a word (the report says n_ctx)
        _stderr(f"mom: note: --max-len {args.max_len} is more than the model's n_ctx; using {n_ctx}")
    data = load_classification(args.task, args.data)
    report = run_glue(args.ckpt, data, params=params, seeds=seeds, device=device,
                      log=_quiet if args.json else _stderr)
    sizes = ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items())
    _print_report(report, args.json, f"{report['task']} ({sizes}; {len(seeds)} seed(s)) — {args.ckpt}")
    return 0


def cli_xsum(args: argparse.Namespace, overrides) -> int:
    from mom.analysis import check_output_file, write_atomic
    from mom.tasks import SUMMARY_PROXIES, load_xsum, news_xsum

    device = pick_device(args.device)
    params = _params(SummaryParams, args)
    params.validate()
    seeds = _seeds(args.seeds)
    if args.predictions is not None:
        check_output_file(args.predictions, "--predictions")  # now, not after fine-tuning and decoding
    load_model(args.ckpt)
    if args.task is not None:
        if args.task.lower() not in SUMMARY_PROXIES:
            raise DataError(f"unknown summarisation task '{args.task}'; built in: {', '.join(SUMMARY_PROXIES)} "
                            "(or give --data FILE.jsonl|DIR)")
        data = news_xsum()
    else:
        data = load_xsum(args.data)
    report = run_xsum(args.ckpt, data, params=params, seeds=seeds, device=device,
                      log=_quiet if args.json else _stderr, keep_predictions=args.predictions is not None)
    if args.predictions is not None:
        rows = report.pop("predictions")
        write_atomic(args.predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    sizes = ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items())
    decoding = "greedy" if params.beams == 1 else f"beam {params.beams}"
    title = f"{args.task or 'xsum'} ({sizes}; {decoding}; {len(seeds)} seed(s)) — {args.ckpt}"
    _print_report(report, args.json, title)
    return 0


def cli_lm_eval(args: argparse.Namespace, overrides) -> int:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise MomError("--tasks needs at least one lm-eval task name")
    report = run_lm_eval(args.ckpt, names, include_path=args.include_path, limit=args.limit,
                         num_fewshot=args.num_fewshot, batch_size=args.batch_size, device=pick_device(args.device))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for task, metrics in report["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len")
        print(f"{task}: {shown}")
    return 0


def cli_export_proxy(args: argparse.Namespace, overrides) -> int:
    from mom.tasks import export_proxy

    sizes = export_proxy(args.task, args.out, overwrite=args.force)
    fmt = {"rt-polarity": "SST-2 tsv", "bible-para": "MRPC tsv", "news-xsum": "XSUM jsonl"}[args.task.lower()]
    print(f"wrote {args.task} ({fmt}: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + f") to {args.out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (or a training run)")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress lines are silenced)")


def _finetune_args(p: argparse.ArgumentParser, batch: int, eval_batch: int) -> None:
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--eval-batch-size", type=int, default=eval_batch)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of updates for linear warm-up")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean ± std (default 0)")
    p.add_argument("--max-train", type=int, default=None, metavar="N", help="use the first N training examples")
    p.add_argument("--max-eval", type=int, default=None, metavar="N", help="score the first N evaluation examples")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``mom eval ppl|glue|xsum|lm-eval|export-proxy``."""
    sub = parser.add_subparsers(dest="eval_command", required=True, parser_class=type(parser),
                                metavar="{ppl,glue,xsum,lm-eval,export-proxy}")

    p = sub.add_parser("ppl", help="sliding-window perplexity on a prepared dataset or a text file")
    _common(p)
    p.add_argument("--data", default=None, metavar="DIR|FILE",
                   help="prepared dataset directory or .bin (mom prepare), or a UTF-8 text file "
                        "(default: data/builtin if prepared)")
    p.add_argument("--split", default="val", help="split of a dataset directory (default val)")
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens, 1 to n_ctx - 1 (default n_ctx/2)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score the first N tokens only")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--train-routing", action="store_true",
                   help="expert-choice models: the training-time (whole-sequence) selection instead of the causal rule")
    p.set_defaults(func=cli_ppl, overrides=())

    g = sub.add_parser("glue", help="fine-tune a classification head on a GLUE-format task and report its metric")
    _common(g)
    g.add_argument("--task", required=True,
                   help="cola, sst2, mrpc, stsb, qqp, mnli (mnli-m, mnli-mm), qnli, rte, wnli; or the offline "
                        "proxies rt-polarity, bible-para (no --data)")
    g.add_argument("--data", default=None, metavar="DIR", help="the task's GLUE directory (train.tsv, dev.tsv)")
    _finetune_args(g, 16, 64)
    g.add_argument("--max-len", type=int, default=None,
                   help="tokens per example (default 128); capped at the model's n_ctx, with a note on stderr "
                        "when a larger value is given; the report records the value used")
    g.set_defaults(func=cli_glue, overrides=())

    x = sub.add_parser("xsum", help="fine-tune on document → summary, generate, report ROUGE")
    _common(x)
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="FILE|DIR",
                     help="XSUM-format .jsonl (document, summary), or a directory with train.jsonl + test.jsonl")
    src.add_argument("--task", help="offline proxy: news-xsum")
    _finetune_args(x, 8, 16)
    x.add_argument("--beams", type=int, default=1, help="1 = greedy (KV-cached engine), >1 = beam search")
    x.add_argument("--max-new-tokens", type=int, default=64)
    x.add_argument("--max-doc-tokens", type=int, default=None, help="cut documents to N tokens (default: fill n_ctx)")
    x.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: score / length**penalty (a finite number; default 1.0)")
    x.add_argument("--predictions", metavar="FILE", default=None,
                   help="write every summary to this .jsonl (its directory must exist; checked before fine-tuning)")
    x.set_defaults(func=cli_xsum, overrides=())

    h = sub.add_parser("lm-eval", help="run lm-eval-harness tasks (e.g. local task YAMLs) on a checkpoint")
    _common(h)
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include-path", default=None, metavar="DIR",
                   help="a directory of task YAMLs; only those tasks are indexed (fast, offline)")
    h.add_argument("--limit", type=float, default=None,
                   help="examples per task: a whole number N ≥ 1, or a fraction in (0, 1) of each task")
    h.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (≥ 0; default: the task's)")
    h.add_argument("--batch-size", type=int, default=8, help="sequences per forward when scoring (≥ 1)")
    h.set_defaults(func=cli_lm_eval, overrides=())

    e = sub.add_parser("export-proxy", help="write an offline proxy in its real format (GLUE tsv / XSUM jsonl)")
    e.add_argument("--task", required=True, choices=["rt-polarity", "bible-para", "news-xsum"])
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--force", action="store_true", help="replace the task's files already in --out")
    e.set_defaults(func=cli_export_proxy, overrides=())
    return parser
