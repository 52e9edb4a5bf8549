"""What the reproduction reads off a trained model: validation loss on the common windows with bits per byte and the
unigram yardstick, FLOPs with the routing it measured, the three memory readings, and the proxies (fine-tuned on
their whole training sets) with their no-learning references."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from mom.data import proxies
from mom.eval.glue import GlueParams, run_glue
from mom.eval.metrics import glue_metrics, rouge
from mom.eval.xsum import SummaryParams, run_xsum
from scripts.reproduce.experiments import PROXY_TASKS, Setting


# ================================================================================================ loss
def _batches(data: Path, setting: Setting, vocab: int, device=None):
    import torch

    from mom.data.tokens import load_tokens
    from mom.train.batches import Batches
    from mom.train.distributed import Dist

    tr = load_tokens(data, "train", vocab_size=vocab)
    va = load_tokens(data, "val", vocab_size=vocab)
    return Batches(tr, va, setting.seq_len, setting.batch, 1, 0, Dist(), device or torch.device("cpu"))


def val_scale_of(data: str, setting: Setting, vocab: int):
    """Bits per byte and the unigram yardstick of exactly the windows ``mom train`` evaluates (same function as the
    training loop's, so a run's ``val_bpb`` and ``unigram_loss`` equal its metrics.jsonl's)."""
    return _val_scale(data, setting.seq_len, setting.batch, setting.eval_tokens, vocab)


@functools.lru_cache(maxsize=8)
def _val_scale(data: str, seq_len: int, batch: int, eval_tokens: int, vocab: int):
    import torch

    from mom.data.tokenizer import data_tokenizer
    from mom.data.tokens import load_tokens
    from mom.train.batches import Batches, val_scale
    from mom.train.distributed import Dist

    tok, known = data_tokenizer(data)
    b = Batches(load_tokens(Path(data), "train", vocab_size=vocab), load_tokens(Path(data), "val", vocab_size=vocab),
                seq_len, batch, 1, 0, Dist(), torch.device("cpu"))
    return val_scale(b, eval_tokens, tok.byte_lengths(vocab), tok.n_vocab if known else vocab)


def val_loss_of(model, setting: Setting, data: Path) -> float:
    """Validation loss on exactly the windows ``mom train`` evaluates (same function, same windows)."""
    import torch

    from mom.train.batches import evaluate

    b = _batches(data, setting, model.config.vocab_size, next(model.parameters()).device)
    with torch.no_grad():
        return evaluate(model, b, setting.eval_tokens, None)


def loss_record(loss: float, data: Path, setting: Setting, vocab: int) -> dict[str, float]:
    """The loss in nats and bits per byte beside the unigram yardstick of the same windows."""
    sc = val_scale_of(str(data), setting, vocab)
    return {"val_loss": loss, "val_bpb": sc.bpb(loss), "unigram_loss": sc.unigram.loss,
            "unigram_bpb": sc.unigram.bpb}


# ================================================================================================ FLOPs, memory
def data_windows(data: Path, split: str, setting: Setting, n: int, vocab: int):
    """(n, T) consecutive windows from the start of a split, as a tensor."""
    import numpy as np
    import torch

    from mom.data.tokens import load_tokens

    tok = load_tokens(data, split, vocab_size=vocab)
    T = setting.seq_len
    n = min(n, len(tok) // T)
    return torch.from_numpy(np.asarray(tok[:n * T], dtype=np.int64).reshape(n, T))


def measure(model, setting: Setting, data: Path, memory: bool) -> dict[str, Any]:
    """Parameters, depth and FLOPs (analytic, with the routing measured on validation windows); with ``memory`` the
    three memory readings (docs/analysis.md) on one ``memory_batch × seq_len`` batch of validation tokens."""
    import torch

    from mom.analysis.memory import measure_cache, measure_memory
    from mom.analysis.routes import usage_from_routes
    from mom.model.flops import count

    cfg = model.config
    device = next(model.parameters()).device
    win = data_windows(data, "val", setting, 4 * setting.memory_batch, cfg.vocab_size).to(device)
    usage = {}
    if not cfg.is_vanilla:
        model.eval()
        routes = []
        with torch.no_grad():
            for i in range(0, win.shape[0], setting.memory_batch):
                routes += model(win[i:i + setting.memory_batch], return_routes=True).routes
        usage = usage_from_routes(routes)
    measured = count(cfg, setting.seq_len, usage=usage or None)
    bound = count(cfg, setting.seq_len)
    out = {"params": bound.params, "active_params": measured.active_params, "depth": cfg.depth, "usage": usage,
           "fwd_flops_per_token": measured.forward_flops_per_token,
           "fwd_flops_per_token_bound": bound.forward_flops_per_token,
           "train_flops_per_token": measured.train_flops_per_token,
           "train_flops_per_token_bound": bound.train_flops_per_token}
    if memory:
        batch = win[:setting.memory_batch]
        mem = measure_memory(model, batch, train=True)
        cache = measure_cache(model, batch)
        out["memory"] = {"shape": list(batch.shape), "method": mem.method, "param_bytes": mem.param_bytes,
                         "forward_peak_bytes": mem.forward_peak_bytes, "train_peak_bytes": mem.train_peak_bytes,
                         "saved_activation_bytes": mem.saved_activation_bytes,
                         "cache_prefill_peak_bytes": cache.prefill_peak_bytes, "cache_bytes": cache.cache_bytes,
                         "attention_cores": cache.attention_cores}
    return out


# ================================================================================================ proxies
@functools.lru_cache(maxsize=None)
def _task(name: str):
    return proxies.news_xsum() if name == "news-xsum" else proxies.load_classification(name, None)


def proxy_metrics(model_dir: Path, setting: Setting, seed: int, device: str) -> dict[str, Any]:
    """Fine-tune on each proxy's training set (the whole set unless the setting caps it) for the setting's epochs,
    with the run's seed, and score the whole evaluation split; metrics are fractions in [0, 1]."""
    out: dict[str, Any] = {}
    common = dict(epochs=setting.proxy_epochs, lr=setting.finetune_lr, batch_size=setting.proxy_batch,
                  max_train=setting.proxy_max_train, max_eval=setting.proxy_max_eval)
    if "rt-polarity" in PROXY_TASKS:
        t0 = time.perf_counter()
        rep = run_glue(model_dir, _task("rt-polarity"), params=GlueParams(**common, max_len=setting.glue_max_len),
                       seeds=[seed], device=device)
        out["rt-polarity"] = {**rep["mean"], "seconds": round(time.perf_counter() - t0, 1), "sizes": rep["sizes"]}
    sp = SummaryParams(**common, beams=1, max_new_tokens=setting.xsum_new_tokens,
                       max_doc_tokens=setting.xsum_doc_tokens)
    t0 = time.perf_counter()
    rep = run_xsum(model_dir, _task("news-xsum"), params=sp, seeds=[seed], device=device)
    m = rep["mean"]
    out["news-xsum"] = {**m, "rouge_avg": (m["rouge1"] + m["rouge2"] + m["rougeL"]) / 3,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "sizes": {"train": rep["sizes"]["train"], "test": rep["sizes"]["test"]}}
    return out


def proxy_baselines(setting: Setting) -> dict[str, Any]:
    """What no training reaches on the same evaluation examples: the constant predictor (the better of always-0 and
    always-1) on ``rt-polarity``, LEAD-1 (the document's first sentence) on ``news-xsum``."""
    from mom.data.tasks import split_sentences

    data = _task("rt-polarity")
    golds = {s: [e.label for e in rows[:setting.proxy_max_eval]] for s, rows in data.dev.items()}
    const = {f"always-{c}": glue_metrics(data.spec, {s: [c] * len(g) for s, g in golds.items()}, golds)
             for c in (0, 1)}
    test = _task("news-xsum").test[:setting.proxy_max_eval]
    lead = [(split_sentences(r.document) or [r.document])[0] for r in test]
    r = rouge(lead, [r.summary for r in test])
    return {"rt-polarity": {"constant_accuracy": max(v["accuracy"] for v in const.values()), **const},
            "news-xsum": {"lead-1": {**r, "rouge_avg": (r["rouge1"] + r["rouge2"] + r["rougeL"]) / 3}}}


def removed_weight_share(report: dict) -> dict[str, float]:
    """Share of the router weight (pruning importance, summed over chunks) that the removed modules had received,
    per half: 0 means the routers never gave those modules any weight, so removing them changes nothing."""
    out = {}
    for half in ("attn", "ffn"):
        total = sum(sum(ch[half]["importance"]) for ch in report["chunks"])
        gone = sum(ch[half]["importance"][m] for ch in report["chunks"] for m in ch[half]["removed"])
        out[half] = gone / total if total > 0 else 0.0
    return out
