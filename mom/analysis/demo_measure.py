"""What ``mom demo`` measures after training, as JSON-ready numbers for ``demo.json`` (the report is built from that
file alone, :mod:`mom.analysis.demo_report`): each run read back from its files, the MoM's routing health over the
validation windows, fixed-prompt generations from each model, and the machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from mom.analysis.routes import collect_stats
from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.data.tokens import val_windows
from mom.fileio import read_json
from mom.inference.engine import Engine, SamplingParams
from mom.model.flops import count
from mom.model.route_health import mean_health
from mom.runs import load_model, read_metrics

#: The report's prompts: one for each part of the built-in corpus (Wikipedia leads, Gutenberg books, news).
PROMPTS = ("The city is located in the",
           "Sherlock Holmes looked at me and said",
           "The government announced on Monday that")
GEN_TOKENS = 40
SAMPLING = {"temperature": 0.8, "top_k": 40, "seed": 1234}
HEALTH_KEYS = ("same_path", "skip", "entropy", "step_js_bits")
HALVES = ("attn", "ffn")


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def _measured_usage(train_rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Real modules per token per step of each half, averaged over the last quarter of the routed train rows."""
    routed = [r for r in train_rows if r.get("routing")]
    if not routed:
        return None
    tail = routed[-max(1, len(routed) // 4):]
    usage = {}
    for half in HALVES:
        vals = [e["modules_per_token"] for r in tail for e in r["routing"] if e["half"] == half]
        if vals:
            usage[half] = sum(vals) / len(vals)
    return usage or None


def summarize_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """One finished run as the report needs it: config, size, FLOPs, the validation rows and the train curve."""
    d = Path(run_dir)
    cfg = MoMConfig.load(d / "config.json")
    seq_len = TrainConfig.load(d / "train_config.json").seq_len or cfg.n_ctx
    rows = read_metrics(d)
    val = [r for r in rows if r.get("type") == "val"]
    train = [r for r in rows if r.get("type") == "train"]
    usage = _measured_usage(train)
    bound = count(cfg, seq_len)
    measured = count(cfg, seq_len, usage=usage) if usage else bound
    tokens = max((r["tokens"] for r in rows if "tokens" in r), default=0)
    health = next((r["routing_health"] for r in reversed(train) if r.get("routing_health")), None)
    return {
        "config": cfg.name, "params": bound.params, "depth": cfg.depth, "n_ctx": cfg.n_ctx, "seq_len": seq_len,
        "steps": max((r["step"] for r in rows if "step" in r), default=0), "tokens": tokens,
        "top_k": cfg.top_k, "assembly_steps": cfg.steps, "n_modules": cfg.n_attn,
        "flops_per_token": measured.train_flops_per_token, "flops_per_token_bound": bound.train_flops_per_token,
        "train_flops": measured.train_flops_per_token * tokens, "usage": usage,
        "tokens_per_s": _r(sum(r["tokens_per_s"] for r in train) / len(train), 1) if train else None,
        "val": [{k: _r(r.get(k)) if k not in ("step", "tokens") else r.get(k)
                 for k in ("step", "tokens", "val_loss", "val_bpb", "unigram_loss", "unigram_bpb")} for r in val],
        "train": [{"tokens": r["tokens"], "loss": _r(r["loss"])} for r in train],
        "routing_health_last_train_row": health,
        "init": read_json(d / "run.json", "run info").get("init"),
    }


@torch.no_grad()
def routing_on_val(model_dir: str | os.PathLike, data: str | os.PathLike, seq_len: int, eval_tokens: int,
                   batch: int = 16) -> dict[str, Any]:
    """The MoM's routing health per half (:mod:`mom.model.route_health`, averaged over its chunks) over the
    validation windows its evaluations scored (``eval_tokens`` 0: the whole split)."""
    model = load_model(model_dir)
    windows = eval_tokens // seq_len if eval_tokens else 1 << 30
    idx_WT = val_windows(data, model.config.vocab_size, seq_len, max(1, windows), tokenizer=model.tokenizer)
    stats, _ = collect_stats(model, (idx_WT[i:i + batch] for i in range(0, idx_WT.shape[0], batch)))
    out: dict[str, Any] = {"tokens": int(stats.tokens), "windows": int(idx_WT.shape[0])}
    for half in HALVES:
        parts = [stats.health(c, half) for c in stats.chunks()]
        h = mean_health(parts) if parts else {}
        out[half] = {k: _r(h.get(k)) for k in HEALTH_KEYS}
    return out


def generations(models: dict[str, str | os.PathLike], prompts: Sequence[str] = PROMPTS,
                max_new_tokens: int = GEN_TOKENS) -> dict[str, Any]:
    """A greedy and a sampled continuation (temperature 0.8, top-k 40, fixed seed) of every prompt from every model,
    through the inference engine with the model's own tokenizer (what ``mom generate`` does)."""
    result: dict[str, Any] = {"prompts": list(prompts), "max_new_tokens": max_new_tokens, "sampling": SAMPLING,
                              "models": {}}
    for name, model_dir in models.items():
        model = load_model(model_dir)
        engine = Engine(model)
        longest = max(len(engine.tok.encode_ordinary(p)) for p in prompts)
        n = max(1, min(max_new_tokens, model.config.n_ctx - longest))
        greedy = engine.generate(list(prompts), SamplingParams(max_new_tokens=n, temperature=0.0))
        sampled = engine.generate(list(prompts), SamplingParams(max_new_tokens=n, **SAMPLING))
        result["models"][name] = [{"prompt": p, "greedy": g.text, "sampled": s.text}
                                  for p, g, s in zip(prompts, greedy, sampled)]
    return result


def machine() -> dict[str, Any]:
    """Where the demo ran: cores, processor, torch, and the load average (the box may be shared)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {"cpu_cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(terse=True), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "load_average_1_5_15": load}
