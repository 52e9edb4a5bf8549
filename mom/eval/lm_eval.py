"""lm-eval-harness through mom's own adapter: log-likelihoods and greedy generation of a mom model, for local task
YAMLs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

from mom.data.tokenizer import decode_generated
from mom.errors import DataError, MomError
from mom.eval.finetune import forward_at, pad_right, text_tokenizer
from mom.inference.beam import greedy
from mom.runs import load_model


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
    enc = text_tokenizer(model)
    eot = enc.eot_token
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
                seqs.append(((ctx or [eot]) + cont)[-(n_ctx + 1):])
            idx_BT, _ = pad_right([s[:-1] for s in seqs], device, eot)
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
                    token_list=enc.encode_ordinary(r.args[0]), prefix_token=eot, max_seq_len=n_ctx, context_len=1)]
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
                prompt = (enc.encode_ordinary(context) or [eot])[-(n_ctx - new):]
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
