"""GLUE-format classification (``mom eval glue``).

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
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mom.data.tasks import ClassificationData, Example, TaskSpec
from mom.errors import MomError
from mom.eval.finetune import Log, TrainParams, forward_at, pad_right, parse_seeds, quiet, text_tokenizer, train_loop
from mom.eval.metrics import glue_metrics, mean_std
from mom.runs import load_model


@dataclass
class GlueParams(TrainParams):
    """Classification fine-tuning: ``max_len`` tokens per example (capped at n_ctx; the report records the
    value used)."""

    max_len: int = 128

    def validate(self) -> None:
        super().validate()
        if self.max_len < 2:
            raise MomError(f"--max-len must be ≥ 2, got {self.max_len}")


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
    """Token ids of each example: ``a`` or ``a + [EOT] + b`` (EOT: ``enc.eot_token``), the longer side trimmed
    first to fit ``max_len``."""
    eot = enc.eot_token
    a_ids = enc.encode_ordinary_batch([e.text_a for e in examples])
    if examples and examples[0].text_b is None:
        return [a[:max_len] or [eot] for a in a_ids]
    b_ids = enc.encode_ordinary_batch([e.text_b or "" for e in examples])
    out = []
    for a, b in zip(a_ids, b_ids):
        budget = max_len - 1
        while len(a) + len(b) > budget:
            if len(a) >= len(b):
                a = a[:-1]
            else:
                b = b[:-1]
        out.append(a + [eot] + b)
    return out


@torch.no_grad()
def _predict(clf: SequenceClassifier, ids: list[list[int]], spec: TaskSpec, batch_size: int, device,
             pad: int) -> list:
    clf.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    out: list = [None] * len(ids)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        idx_BT, len_B = pad_right([ids[r] for r in rows], device, pad)
        y_BC, _ = clf(idx_BT, len_B)
        vals = y_BC[:, 0].float().tolist() if spec.kind == "regression" else y_BC.argmax(-1).tolist()
        for r, v in zip(rows, vals):
            out[r] = v
    return out


def run_glue(ckpt: str | os.PathLike, data: ClassificationData, *, params: GlueParams | None = None,
             seeds: Sequence[int] | str = (0,), device: str | torch.device = "cpu", log: Log = quiet) -> dict:
    """Fine-tune ``ckpt`` on ``data.train`` once per seed and score each dev split; returns the report dict."""
    p = params or GlueParams()
    p.validate()
    seeds = parse_seeds(seeds)
    device = torch.device(device)
    spec = data.spec
    model = load_model(ckpt, "cpu")
    enc = text_tokenizer(model)
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
            idx_BT, len_B = pad_right([train_ids[r] for r in rows], device, enc.eot_token)
            out_BC, aux = clf(idx_BT, len_B)  # noqa: B023 - called within this seed's iteration only
            y_B = y_all[rows].to(device)
            task = (F.mse_loss(out_BC[:, 0].float(), y_B) if spec.kind == "regression"
                    else F.cross_entropy(out_BC.float(), y_B))
            return task + aux

        info = train_loop(clf, len(train_ids), batch_loss, p, seed, log, f"{spec.name} seed {seed}")
        preds = {s: _predict(clf, ids, spec, p.eval_batch_size, device, enc.eot_token) for s, ids in dev_ids.items()}
        metrics = glue_metrics(spec, preds, golds)
        log(f"{spec.name} seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
        runs.append({"seed": seed, "metrics": metrics, **info})
        clf = None  # free this seed's model before the next one loads (the closure above holds the name)
    mean, std = mean_std([r["metrics"] for r in runs])
    return {"task": spec.name, "format": spec.glue_dir, "proxy_of": spec.proxy_of, "data": data.source,
            "model": str(ckpt), "sizes": {"train": len(train), **{s: len(r) for s, r in dev.items()}},
            "params": asdict(p) | {"max_len": max_len}, "seeds": list(seeds), "metrics": list(mean), "mean": mean,
            "std": std, "runs": runs}
