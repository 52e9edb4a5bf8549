"""What a training run watches and reports: routing statistics, router collapse, non-finite gradients, the loss
and throughput window between metrics rows, and the :class:`Monitor` that writes them to ``metrics.jsonl``, to
``metrics.csv`` and TensorBoard event files (the same numbers), and to the console."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mom.config.model import HALVES, MoMConfig
from mom.config.train import TrainConfig
from mom.errors import MissingExtraError
from mom.fileio import atomic_write
from mom.model.flops import count, peak_flops
from mom.model.route_health import format_health, mean_health, normalized_entropy, same_path, step_divergence_bits
from mom.runs import METRICS, METRICS_CSV, TENSORBOARD, read_metrics
from mom.train.distributed import Dist, Runtime, full_tensor


def routing_stats(routes) -> list[dict[str, Any]]:
    """Per (chunk, step, half) with a learned router: how the picks spread over the choices.

    ``usage``: fraction of all picks going to module 0 … N-1 and, last, SKIP (sums to 1); ``entropy``: of that
    distribution, in nats (ln(N+1) when uniform); ``skip``: the SKIP share of picks (= usage[-1]); ``skip_all``:
    fraction of tokens whose every pick is SKIP (they bypass the half entirely); ``modules_per_token``: mean
    real modules a token runs (≤ K; what the compute actually is); ``token_share``: fraction of tokens that picked
    each choice (a token's K picks are distinct); ``choices``: real modules the step allows; ``picks``: K;
    ``entropy_norm``: the entropy divided by ln(allowed choices, SKIP included), 0 … 1 (see
    :mod:`mom.model.route_health`)."""
    out = []
    for r in routes or []:
        if r.probs_BTN is None:  # static route: nothing was decided
            continue
        n = r.n_modules
        idx_PK = r.idx_BTK.reshape(-1, r.idx_BTK.shape[-1])
        counts_N = torch.bincount(idx_PK.flatten(), minlength=n + 1).double()
        usage_N = counts_N / counts_N.sum()
        entropy = -(usage_N * usage_N.clamp_min(1e-30).log()).sum()
        skip_PK = idx_PK == n
        allowed_N = (r.probs_BTN.reshape(-1, n + 1) > 0).any(0)  # disallowed choices get probability exactly 0
        out.append({
            "chunk": r.chunk, "step": r.step, "half": r.half,
            "usage": [round(u, 5) for u in usage_N.tolist()],
            "token_share": [round(u, 5) for u in (counts_N / idx_PK.shape[0]).tolist()],
            "choices": int(allowed_N[:n].sum()), "picks": idx_PK.shape[-1],
            "entropy": round(entropy.item(), 5),
            "entropy_norm": _round(normalized_entropy(usage_N.tolist(), int(allowed_N.sum()))),
            "skip": round(usage_N[n].item(), 5),
            "skip_all": round(skip_PK.all(-1).double().mean().item(), 5),
            "modules_per_token": round((~skip_PK).sum(-1).double().mean().item(), 5),
        })
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def routing_health(routes, stats: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per half with a learned router, the :mod:`mom.model.route_health` measures (usage entropy normalised to
    [0, 1], SKIP share, the share of tokens taking the same choices at every step of a chunk, the mean pairwise
    Jensen–Shannon divergence between steps' usage, in bits), each the mean over the chunks. ``stats``: the
    :func:`routing_stats` of the same ``routes``."""
    per_chunk: dict[tuple[int, str], list] = {}
    for r in routes or []:
        if r.probs_BTN is not None:
            per_chunk.setdefault((r.chunk, r.half), []).append(r)
    rows = {(e["chunk"], e["step"], e["half"]): e for e in stats}
    halves: dict[str, list] = {}
    for (c, half), recs in per_chunk.items():
        recs.sort(key=lambda r: r.step)
        steps = [rows[(c, r.step, half)] for r in recs]
        same = None
        if len(recs) > 1:
            picks = [r.idx_BTK.reshape(-1, r.idx_BTK.shape[-1]) for r in recs]
            same = same_path(picks).double().mean().item()
        ents = [e["entropy_norm"] for e in steps if e["entropy_norm"] is not None]
        halves.setdefault(half, []).append({
            "entropy": sum(ents) / len(ents) if ents else None,
            "skip": sum(e["skip"] for e in steps) / len(steps),
            "same_path": same,
            "step_js_bits": step_divergence_bits([e["usage"] for e in steps]),
        })
    return {half: mean_health(parts) for half, parts in halves.items()}


# What to change against a collapsed router (the warning says it; docs/training.md "Router collapse").
COLLAPSE_ADVICE = ("raise --model.balance_coef (now {balance_coef:g}) or --model.z_coef (now {z_coef:g}), lower "
                   "--train.router_lr_mult (now {router_lr_mult:g}), raise --model.temperature (now {temperature:g})"
                   "{norm}")


def layer_map_starts(mcfg: MoMConfig) -> dict[tuple[int, str], set[int]]:
    """Under ``router_init='layer_map'``, each (step, half)'s preferred real modules (the watch's ``expected``)."""
    if mcfg.is_vanilla or mcfg.router_init not in ("layer_map", "auto"):
        return {}
    return {(h, half): {m for m in mcfg.layer_map_choices(half, h) if m < getattr(mcfg, f"n_{half}")}
            for h in range(mcfg.steps) for half in HALVES}


def collapse_advice(mcfg: MoMConfig, tcfg: TrainConfig) -> str:
    norm = ", or centre the router input (--model.router_norm centered)" if mcfg.router_norm != "centered" else ""
    return COLLAPSE_ADVICE.format(balance_coef=mcfg.balance_coef, z_coef=mcfg.z_coef, temperature=mcfg.temperature,
                                  router_lr_mult=tcfg.router_lr_mult, norm=norm)


class CollapseWatch:
    """Router collapse: one module picked by more than ``share`` of the tokens at ``patience`` metrics rows in a
    row. Only steps that allow more real modules than picks count (a layer-skip step that may pick only its own
    module, or K = N, has nothing to collapse). Each episode is reported once. ``expected``: per (routing step,
    half), modules that are the intended start rather than a collapse (``router_init='layer_map'``: the layer
    map's own modules of the step; whether routers leave them shows in the routing health)."""

    def __init__(self, share: float, patience: int, expected: dict[tuple[int, str], set[int]] | None = None) -> None:
        self.share, self.patience = share, patience
        self.expected = expected or {}
        self.streak: dict[tuple, int] = {}

    def update(self, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        warnings, seen = [], set()
        for row in stats:
            if row["choices"] <= row["picks"]:
                continue
            shares = row["token_share"][:-1]  # real modules (the last entry is SKIP)
            m = max(range(len(shares)), key=shares.__getitem__)
            if shares[m] <= self.share or m in self.expected.get((row["step"], row["half"]), ()):
                continue
            key = (row["chunk"], row["step"], row["half"], m)
            seen.add(key)
            self.streak[key] = self.streak.get(key, 0) + 1
            if self.streak[key] == self.patience:
                warnings.append({"chunk": row["chunk"], "routing_step": row["step"], "half": row["half"],
                                 "module": m, "token_share": shares[m], "rows": self.patience})
        self.streak = {k: v for k, v in self.streak.items() if k in seen}
        return warnings

    def state(self) -> list[list]:
        """For checkpoints: a resumed run reports exactly what an uninterrupted one would."""
        return [[*k, v] for k, v in sorted(self.streak.items())]

    def load(self, state: list[list]) -> None:
        self.streak = {tuple(e[:-1]): int(e[-1]) for e in state}


def nonfinite_gradients(model: nn.Module) -> list[str]:
    """Parameters whose gradient holds NaN or Inf; for a module pool's stacked weights, which modules."""
    out = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        bad = ~torch.isfinite(full_tensor(p.grad))  # (FSDP: every process gathers; only on a bad step)
        if not bad.any():
            continue
        if ".pool." in name and p.dim() >= 2 and p.shape[0] > 1:  # leading axis = module index
            mods = bad.flatten(1).any(1).nonzero().flatten().tolist()
            out.append(f"{name} (module{'s' if len(mods) > 1 else ''} {', '.join(map(str, mods))})")
        else:
            out.append(name)
    return out


def describe_fault(loss: float, grad_norm: float, where: list[str], limit: int = 4) -> str:
    parts = [f"loss {loss}" if not math.isfinite(loss) else None,
             f"gradient norm {grad_norm}" if not math.isfinite(grad_norm) else None]
    if where:
        shown = ", ".join(where[:limit]) + (f" and {len(where) - limit} more" if len(where) > limit else "")
        parts.append(f"non-finite gradients in {shown}")
    return "; ".join(p for p in parts if p)


def describe_val(loss: float, bpb: float | None, unigram: float | None) -> str:
    """``val loss 5.2100 nats (1.980 bpb), 1.71 nats below knowing only token frequencies``."""
    text = f"val loss {loss:.4f} nats" + (f" ({bpb:.3f} bpb)" if bpb is not None else "")
    if unigram is not None and math.isfinite(loss):
        gap = unigram - loss
        text += f", {abs(gap):.2f} nats {'below' if gap >= 0 else 'above'} knowing only token frequencies"
    return text


class Window:
    """Sums over the steps since the last metrics row (device tensors: no host sync until the row is written)."""

    def __init__(self) -> None:
        self.reset()
        self.t0 = time.perf_counter()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.pending: dict[str, Tensor] = {}  # the current step's micro-batches, kept apart until it is applied
        self.steps = 0

    @staticmethod
    def _add(into: dict[str, Tensor], key: str, value: Tensor) -> None:
        into[key] = into[key] + value if key in into else value

    def add_micro(self, out, accum: int) -> None:
        for key in ("loss", "aux_loss", "balance_loss", "z_loss"):
            value = getattr(out, key)
            if value is not None:
                self._add(self.pending, key, value.detach().float() / accum)

    def pending_loss(self) -> Tensor:
        """The current step's training objective (LM loss + auxiliary losses)."""
        loss = self.pending["loss"]
        return loss + self.pending["aux_loss"] if "aux_loss" in self.pending else loss

    def add_step(self, grad_norm: Tensor) -> None:
        for key, value in self.pending.items():
            self._add(self.sums, key, value)
        self._add(self.sums, "grad_norm", grad_norm.detach().float())
        self.pending = {}
        self.steps += 1

    def drop_step(self) -> None:
        """A skipped step: its values stay out of the averages."""
        self.pending = {}

    def row(self, step: int, lr: float, tokens: int, dist: Dist, tokens_per_step: int) -> dict[str, Any]:
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys]).double()
        # Losses are averaged over processes; grad_norm is already global (DDP averaged the gradients).
        dist.sum_(vec)
        vec /= dist.world * self.steps
        now = time.perf_counter()
        row = {"type": "train", "step": step, "tokens": tokens, "lr": lr,
               **{k: v for k, v in zip(keys, vec.tolist())},
               "tokens_per_s": round(tokens_per_step * self.steps / max(now - self.t0, 1e-9), 1)}
        self.t0 = now
        self.reset()
        return row


class Speed:
    """Achieved training FLOP/s of a metrics row, and its MFU where the device's peak is known.

    FLOPs are :func:`mom.model.flops.count`'s analytic training FLOPs per token (6 × active matmul parameters +
    attention; every one of the K picks counted as a module run, SKIP picks included, so for a MoM this is an
    upper bound on the work done), as in ``mom bench``. MFU only under bf16 autocast on a CUDA device of
    :data:`mom.model.flops.PEAK_FLOPS`, whose figures are bf16 tensor-core peaks; against all processes' peaks."""

    def __init__(self, mcfg: MoMConfig, seq_len: int, device: torch.device, amp: torch.dtype | None, world: int):
        self.flops_per_token = count(mcfg, seq_len).train_flops_per_token
        peak = peak_flops(device) if amp == torch.bfloat16 else None
        self.peak = peak * world if peak else None

    def of(self, tokens_per_s: float) -> dict[str, float]:
        achieved = self.flops_per_token * tokens_per_s
        out = {"tflops": round(achieved / 1e12, 4)}
        if self.peak:
            out["mfu"] = round(achieved / self.peak, 4)
        return out


def progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=None if sys.stderr.isatty() else True)


# ================================================================================================ TensorBoard, CSV
ROUTING_SCALARS = ("entropy", "skip", "skip_all", "modules_per_token")  # per (chunk, step, half); usage stays in JSON
TRACKED_ROWS = ("train", "val")  # fault and warning rows are events: metrics.jsonl and the console only


def flat_scalars(row: dict[str, Any]) -> dict[str, int | float]:
    """A train or val row's numbers under their metrics.jsonl names (``step`` included), and the routing summary of
    each routed (chunk, step, half) as ``routing.c{chunk}.h{step}.{half}.{stat}`` (stats: :data:`ROUTING_SCALARS`).
    What the CSV columns and the TensorBoard tags hold: the very values of the JSON row."""
    out: dict[str, int | float] = {k: v for k, v in row.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for e in row.get("routing") or []:
        for stat in ROUTING_SCALARS:
            out[f"routing.c{e['chunk']}.h{e['step']}.{e['half']}.{stat}"] = e[stat]
    return out


def tensorboard_tag(kind: str, key: str) -> str:
    """``train/loss``, ``val/loss`` (``val_`` dropped), ``routing/c0.h1.attn/entropy``."""
    if key.startswith("routing."):
        where, stat = key.removeprefix("routing.").rsplit(".", 1)
        return f"routing/{where}/{stat}"
    return f"{kind}/{key.removeprefix('val_') if kind == 'val' else key}"


def tensorboard_wanted(tcfg: TrainConfig) -> bool:
    """``--train.tensorboard``: on, off, or (None) on when the ``tensorboard`` package is installed. Asked for
    explicitly without the package: one error line naming the install command (checked before a run writes)."""
    installed = importlib.util.find_spec("tensorboard") is not None
    if tcfg.tensorboard and not installed:
        raise MissingExtraError("--train.tensorboard true", "tensorboard", "tensorboard")
    return installed if tcfg.tensorboard is None else tcfg.tensorboard


class TensorBoardLog:
    """Event files in ``RUN/tensorboard``: every number of every train and val row at its step, as float64 tensors
    (new-style scalar summaries; TensorBoard plots them as scalars) so they equal metrics.jsonl's exactly. A resumed
    run first tells TensorBoard to drop what the killed run logged after its checkpoint (``purge_step``: a session
    start at that step; a new run's is at step 0, since TensorBoard takes the first start it reads as no restart)."""

    def __init__(self, log_dir: Path, purge_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=30)

    def write(self, row: dict[str, Any]) -> None:
        for key, value in flat_scalars(row).items():
            if key != "step":
                self.writer.add_scalar(tensorboard_tag(row["type"], key), value, row["step"], new_style=True,
                                       double_precision=True)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvLog:
    """``metrics.csv``: one line per train and val row of metrics.jsonl (column ``type``), columns named as in the
    JSON (routing flattened, see :func:`flat_scalars`), floats written exactly (Python's shortest round-trip form).
    Rebuilt from metrics.jsonl when a run starts or resumes, so it always matches it; a column that first appears
    later (the first validation row's) rewrites the file once with the wider header."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]):
        self.path, self.file = path, None
        self.rows = [self._flat(r) for r in rows if r.get("type") in TRACKED_ROWS]
        self.columns: list[str] = []
        self._widen(self.rows)
        self._rewrite()

    @staticmethod
    def _flat(row: dict[str, Any]) -> dict[str, Any]:
        return {"type": row["type"], **flat_scalars(row)}

    def _widen(self, rows: list[dict[str, Any]]) -> bool:
        new = [k for r in rows for k in r if k not in self.columns]
        self.columns += list(dict.fromkeys(new))
        return bool(new)

    def _line(self, rows: list[dict[str, Any]], header: bool = False) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, lineterminator="\n")
        if header:
            w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def _rewrite(self) -> None:
        if self.file is not None:
            self.file.close()
        atomic_write(self.path, self._line(self.rows, header=True))
        self.file = open(self.path, "a", encoding="utf-8", newline="")

    def write(self, row: dict[str, Any]) -> None:
        flat = self._flat(row)
        self.rows.append(flat)
        if self._widen([flat]):
            self._rewrite()
        else:
            self.file.write(self._line([flat]))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def console_line(row: dict[str, Any], max_steps: int, tokens_per_step: int) -> str:
    """A train row as one line, for logs without a progress bar (nohup, SLURM, pipes)."""
    eta_s = (max_steps - row["step"]) * tokens_per_step / max(row["tokens_per_s"], 1e-9)
    eta = f"{eta_s / 3600:.1f}h" if eta_s >= 3600 else f"{eta_s / 60:.1f}m" if eta_s >= 60 else f"{eta_s:.0f}s"
    mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
    aux = f", aux {row['aux_loss']:.4f}" if "aux_loss" in row else ""
    return (f"step {row['step']}/{max_steps}: loss {row['loss']:.4f}{aux}, lr {row['lr']:.2e}, grad norm "
            f"{row['grad_norm']:.3f}, {row['tokens_per_s']:,.0f} tok/s{mfu}, ETA {eta}")


class Monitor:
    """What a run reports, from the main process only: ``metrics.jsonl`` rows (train, val, fault, warning), the same
    train and val numbers in ``metrics.csv`` and TensorBoard (``--train.csv``, ``--train.tensorboard``), console
    lines (printed above the progress bar on a terminal; without a visible bar, one line per metrics row), the
    throughput window and router-collapse warnings."""

    def __init__(self, run_dir: Path, rt: Runtime, mcfg: MoMConfig, tcfg: TrainConfig, start: int,
                 progress: bool, collapse_state: list | None = None, scale=None):
        self.rt, self.main, self.max_steps = rt, rt.dist.is_main, tcfg.max_steps
        self.scale = scale  # mom.train.batches.ValScale of the validation windows (bits per byte, the yardstick)
        self.file = open(run_dir / METRICS, "a", encoding="utf-8") if self.main else None
        self.csv = CsvLog(run_dir / METRICS_CSV, read_metrics(run_dir)) if self.main and tcfg.csv else None
        # Every writer marks a session start (TensorBoard ignores the first it sees, and on each later one drops the
        # events from that step on: those a killed run logged after the checkpoint this run resumes from).
        self.tb = (TensorBoardLog(run_dir / TENSORBOARD, start + 1 if start else 0)
                   if self.main and tensorboard_wanted(tcfg) else None)
        self.bar = progress_bar(progress and self.main, tcfg.max_steps, start)
        self.window = Window()
        self.speed = Speed(mcfg, rt.seq_len, rt.device, rt.amp, rt.dist.world)
        self.collapse = CollapseWatch(tcfg.collapse_share, tcfg.collapse_patience, layer_map_starts(mcfg))
        self.collapse.load(collapse_state or [])
        self.advice = collapse_advice(mcfg, tcfg)
        self.health: dict[str, dict] | None = None  # of the latest metrics row, for the console

    @property
    def bar_visible(self) -> bool:
        return self.bar is not None and not self.bar.disable

    def say(self, msg: str) -> None:
        if not self.main:
            return
        if self.bar_visible:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def log(self, row: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            if row["type"] in TRACKED_ROWS:
                for writer in (self.csv, self.tb):
                    if writer is not None:
                        writer.write(row)

    def train_row(self, step: int, lr: float, tokens: int, routes: list | None) -> None:
        """The metrics row of the steps since the last one (all processes: losses are averaged over them)."""
        row = self.window.row(step, lr, tokens, self.rt.dist, self.rt.tokens_per_step)
        row.update(self.speed.of(row["tokens_per_s"]))
        if routes is not None:
            row["routing"] = routing_stats(routes)
            row["routing_health"] = self.health = routing_health(routes, row["routing"])
            for w in self.collapse.update(row["routing"]):
                self.log({"type": "warning", "kind": "router_collapse", "step": step, **w, "advice": self.advice})
                self.say(f"warning: router collapse at step {step}: chunk {w['chunk']} step {w['routing_step']} "
                         f"{w['half']}: module {w['module']} took {w['token_share']:.0%} of the tokens "
                         f"at {w['rows']} metrics rows in a row; {self.advice}")
        self.log(row)
        health = f" | {format_health(self.health)}" if self.health else ""
        if self.bar_visible:
            mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
            self.bar.set_postfix_str(f"loss {row['loss']:.3f}, {row['tokens_per_s']:,.0f} tok/s{mfu}{health}",
                                     refresh=False)
        else:
            self.say(console_line(row, self.max_steps, self.rt.tokens_per_step) + health)

    def val_row(self, step: int, tokens: int, loss: float, seconds: float) -> float | None:
        """Log a validation loss (nats per token) with its bits per byte and the unigram yardstick of the same
        windows, and the latest routing health; returns the bits per byte."""
        row = {"type": "val", "step": step, "tokens": tokens, "val_loss": loss, "val_ppl": math.exp(min(loss, 50))}
        bpb = None
        if self.scale is not None:
            bpb = self.scale.bpb(loss)
            row.update(val_bpb=bpb, unigram_loss=self.scale.unigram.loss, unigram_bpb=self.scale.unigram.bpb)
        self.log({**row, "seconds": round(seconds, 3)})
        health = f"; routing: {format_health(self.health)}" if self.health else ""
        self.say(f"step {step}: {describe_val(loss, bpb, self.scale.unigram.loss if self.scale else None)}{health}")
        return bpb

    def fault(self, step: int, in_a_row: int, what: str) -> None:
        self.log({"type": "fault", "step": step, "skipped": True, "in_a_row": in_a_row, "what": what})
        self.say(f"step {step}: update skipped ({what})")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for writer in (self.csv, self.tb):
            if writer is not None:
                writer.close()
        self.csv = self.tb = None
        if self.file is not None:
            self.file.close()
            self.file = None
