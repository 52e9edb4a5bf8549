"""Metrics: accuracy, binary F1, MCC, Pearson/Spearman (GLUE's per task), ROUGE (rouge-score, Porter stemmer), mean and
sample standard deviation over seeds."""

from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np

from mom.data.tasks import TaskSpec, split_sentences
from mom.extras import import_extra


def _sklearn_metrics():
    return import_extra("sklearn.metrics", "eval", "GLUE-format evaluation", "scikit-learn")


def _scipy_stats():
    return import_extra("scipy.stats", "eval", "GLUE-format evaluation (STS-B correlations)", "scipy")


# ============================================================================================== metrics
def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of predictions equal to the gold label."""
    return float(_sklearn_metrics().accuracy_score(gold, pred))


def f1_binary(pred: Sequence[int], gold: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP; 0 when there is no true positive."""
    return float(_sklearn_metrics().f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0))


def matthews(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0 when either side is constant."""
    return float(_sklearn_metrics().matthews_corrcoef(gold, pred))


def _correlation(fn, pred: Sequence[float], gold: Sequence[float]) -> float:
    if len(pred) < 2 or np.ptp(np.asarray(pred, dtype=float)) == 0 or np.ptp(np.asarray(gold, dtype=float)) == 0:
        return 0.0  # undefined for a constant side: report no correlation rather than NaN
    return float(fn(pred, gold)[0])


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation(_scipy_stats().pearsonr, pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation(_scipy_stats().spearmanr, pred, gold)


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
    rouge_scorer = import_extra("rouge_score.rouge_scorer", "eval", "ROUGE (XSUM-format evaluation)", "rouge-score")

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
