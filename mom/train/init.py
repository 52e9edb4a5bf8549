"""``--init-from``: weights from a run or model directory (same layout) or an HF GPT-2, decomposed per the layer map
when the target is a MoM."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mom.config.model import MoMConfig
from mom.convert.gpt2 import check_compatible, decompose, read_hf, router_start, vanilla_layers_of
from mom.data.tokenizer import Tokenizer, load_tokenizer
from mom.errors import CheckpointError, ConfigError
from mom.fileio import read_json
from mom.model.model import MoM
from mom.runs import resolve_model_dir

_NOT_FOUND = "--init-from expects a run or model directory (or hf:DIR), not found"


def _source(spec: str) -> tuple[bool, Path]:
    """(is it an HF GPT-2 directory, its path): ``hf:DIR``, or a directory whose config.json is HF's."""
    is_hf = spec.startswith("hf:")
    if not (spec[3:] if is_hf else spec).strip():  # Path("") would quietly mean the current directory
        raise ConfigError(f"--init-from {spec!r}: empty; give a run or model directory, or hf:DIR")
    path = Path(spec[3:] if is_hf else spec)
    if not is_hf and (path / "config.json").is_file():
        try:
            is_hf = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt2"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
    return is_hf, path


def check_init_tokens(spec: str, vocab_size: int, data_tok: Tokenizer, data_known: bool) -> None:
    """The init source must read tokens as the data writes them: the same vocabulary size as the model, and (a mom
    model directory, whose tokenizer is its tokenizer.json or GPT-2) the data's tokenizer when the data names one.
    An HF GPT-2 directory is checked by its vocabulary size only (HF's own tokenizer.json is not ours)."""
    is_hf, path = _source(spec)
    if is_hf:
        hf = read_json(path / "config.json", "HF config") if (path / "config.json").is_file() else {}
        theirs = hf.get("vocab_size") if isinstance(hf, dict) else None
    else:
        src = resolve_model_dir(spec, _NOT_FOUND)
        src_tok = load_tokenizer(src)
        if data_known and src_tok.sha256 != data_tok.sha256:
            raise ConfigError(f"--init-from {spec}: its tokenizer is {src_tok.name} (sha256 {src_tok.sha256[:12]}…) "
                              f"but the data's is {data_tok.name} ({data_tok.sha256[:12]}…): its embeddings mean "
                              "other tokens; train on data prepared with its tokenizer")
        theirs = MoMConfig.load(src / "config.json").vocab_size
    if isinstance(theirs, int) and theirs != vocab_size:
        of_data = f" (the data's tokenizer {data_tok.name} has {data_tok.n_vocab:,} tokens)" if data_known else ""
        raise ConfigError(f"--init-from {spec}: its vocab_size is {theirs:,} but the model's is {vocab_size:,}"
                          + of_data)


def init_from(model: nn.Module, spec: str) -> str:
    """Copy weights into ``model`` from ``spec`` (see module docstring); returns a one-line description."""
    cfg = model.config
    is_hf, path = _source(spec)
    if is_hf:
        src_cfg, layers, emb = read_hf(path)
        check_compatible(src_cfg, cfg, str(path))
        decompose(layers, emb, model)
        if cfg.is_vanilla:
            return f"loaded HF GPT-2 {path} ({len(layers)} layers)"
        return f"decomposed HF GPT-2 {path} ({len(layers)} layers; {router_start(cfg)})"
    src = MoM.from_pretrained(resolve_model_dir(spec, _NOT_FOUND))
    src_shapes = {k: tuple(v.shape) for k, v in src.state_dict().items()}
    own_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if src_shapes == own_shapes:
        model.load_state_dict(src.state_dict(), source=spec)
        return f"loaded all weights from {spec} (same layout)"
    if not src.config.is_vanilla:
        raise CheckpointError(f"{spec}: its layout ('{src.config.name}') differs from '{cfg.name}' and it is not a "
                              "vanilla model; only a vanilla (chunks=0) model can be decomposed into another layout")
    check_compatible(src.config, cfg, spec)
    layers, emb = vanilla_layers_of(src)
    decompose(layers, emb, model)
    return f"decomposed the {len(layers)}-layer vanilla model {spec} per the layer map ({router_start(cfg)})"
