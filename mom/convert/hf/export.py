"""Export a mom model as a Hugging Face model directory.

``export_hf(model, out)`` writes a directory that ``AutoModelForCausalLM.from_pretrained(out,
trust_remote_code=True)`` and ``AutoTokenizer.from_pretrained(out)`` load without a network (give the tokenizer
``trust_remote_code=True`` too: transformers reads config.json for it, and otherwise asks whether to run the custom
code, then loads the tokenizer all the same):

* ``config.json`` (:class:`MoMHFConfig`: every MoMConfig field, ``auto_map``, ``architectures``), the two
  self-contained files ``configuration_mom.py`` and ``modeling_mom.py`` copied from this package, and
  ``model.safetensors`` holding mom's own tensors under mom's names (the head is tied to ``wte``);
* a vanilla layout (``chunks == 0``) instead as a plain ``GPT2LMHeadModel`` (:func:`mom.convert.gpt2.to_hf`),
  which needs no remote code;
* ``tokenizer.json`` + ``tokenizer_config.json``: the GPT-2 BPE built from the offline files mom's tokenizer uses,
  or the corpus BPE ``tokenizer.json`` a model was trained with; ``generation_config.json`` with its
  ``<|endoftext|>`` as bos/eos/pad; a model card ``README.md``.

The directory is written under a temporary sibling name and renamed into place at the end, so ``out`` is either
complete or untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GenerationConfig

from mom.config.model import MoMConfig
from mom.convert.gpt2 import to_hf
from mom.convert.hf.configuration_mom import MoMHFConfig
from mom.data.tokenizer import EOT, tokenizer, tokenizer_files
from mom.errors import CheckpointError, ConfigError, DataError, MomError
from mom.fileio import dir_mode, fsync_dir, write_json_atomic
from mom.model.model import MoM

__all__ = ["export_hf"]

#: The token mom puts between documents: the exported tokenizer's bos, eos and pad token.
DOCUMENT_END = "<|endoftext|>"
REMOTE_CODE = ("configuration_mom.py", "modeling_mom.py")
AUTO_MAP = {"AutoConfig": "configuration_mom.MoMHFConfig", "AutoModelForCausalLM": "modeling_mom.MoMForCausalLM"}


@dataclass
class _Tokenizer:
    tok: Tokenizer
    name: str  # "GPT-2 BPE" or "corpus BPE"
    source: Path | None  # the tokenizer.json it was read from
    eos_id: int | None  # id of DOCUMENT_END, if the vocabulary has it

    @property
    def size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


def export_hf(model: MoM | str | os.PathLike, out_dir: str | os.PathLike, *,
              tokenizer_files: str | os.PathLike | None = None, metadata: Mapping[str, object] | None = None,
              force: bool = False) -> Path:
    """Write ``model`` (a :class:`MoM` or a mom model directory) as a Hugging Face model directory ``out_dir``.

    ``tokenizer_files``: the corpus BPE ``tokenizer.json`` the model was trained with (or a directory holding
    one); by default the model directory's own ``tokenizer.json`` if it has one, else the GPT-2 BPE.
    ``metadata``: facts about training shown as given in the model card (e.g. ``{"training data": "...",
    "val loss": 3.21}``). ``force``: replace a non-empty ``out_dir``. Returns ``out_dir``.

    Raises :class:`~mom.errors.MomError` (one line) for a source that is not a mom model, an output directory in
    the way, a tokenizer that does not fit the model, or a config value the HF modeling file does not implement.
    """
    source = None if isinstance(model, MoM) else Path(model)
    out = Path(out_dir)
    _check_out_dir(out, source, force)
    model = model if source is None else _load_mom(source)
    tok = _resolve_tokenizer(tokenizer_files, source, model.config)
    eos_id = tok.eos_id if tok is not None else None
    with _staged(out) as tmp:
        if model.config.is_vanilla:
            _write_gpt2(model, tmp, eos_id)
        else:
            _write_mom(model, tmp, eos_id)
        if tok is not None:
            _write_tokenizer(tok, tmp, model.config.n_ctx)
        _write_generation_config(tmp, eos_id)
        (tmp / "README.md").write_text(model_card(model, tok, metadata or {}), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- inputs
def _check_out_dir(out: Path, source: Path | None, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MomError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MomError(f"{out}: exists and is not empty; pass force=True to replace it")
    if source is not None and out.resolve() in (source.resolve(), *source.resolve().parents):
        raise MomError(f"{out}: the export would replace the model it is made from ({source})")


def _load_mom(directory: Path) -> MoM:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    if not ((directory / "config.json").is_file() and (directory / "model.safetensors").is_file()):
        raise CheckpointError(f"{directory}: not a mom model directory (it needs the config.json and "
                              "model.safetensors that mom writes)")
    return MoM.from_pretrained(directory).eval()


def _resolve_tokenizer(files: str | os.PathLike | None, source: Path | None, cfg: MoMConfig) -> _Tokenizer | None:
    """The tokenizer to export (see :func:`export_hf`), checked against the model's vocabulary. None when nothing
    names one and the GPT-2 BPE does not fit the vocabulary (a toy model): the export then has no tokenizer files."""
    if files is not None:
        path = Path(files)
        tok = _corpus_tokenizer(path / "tokenizer.json" if path.is_dir() else path)
    elif source is not None and (source / "tokenizer.json").is_file():
        tok = _corpus_tokenizer(source / "tokenizer.json")
    else:
        tok = _gpt2_tokenizer()
        if tok.size > cfg.vocab_size:
            return None
    if tok.size > cfg.vocab_size:
        where = f" from {tok.source}" if tok.source else ""
        raise DataError(f"the tokenizer ({tok.name}{where}) has {tok.size:,} tokens, more than the model's "
                        f"vocabulary of {cfg.vocab_size:,}: pass the tokenizer.json the model was trained with")
    return tok


def _gpt2_tokenizer() -> _Tokenizer:
    """GPT-2's byte-level BPE from the offline ``encoder.json`` and ``vocab.bpe`` mom's tokenizer is built from."""
    tokenizer()  # mom's own: checks the files' sha256 (a DataError names a missing or altered file)
    files = tokenizer_files()
    tok = Tokenizer(models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"])))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(DOCUMENT_END, special=True)])
    assert tok.token_to_id(DOCUMENT_END) == EOT
    return _Tokenizer(tok, "GPT-2 BPE", None, EOT)


def _corpus_tokenizer(path: Path) -> _Tokenizer:
    """A ``tokenizers`` tokenizer.json (a corpus BPE from ``mom prepare``)."""
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception type for unreadable or foreign files
        raise DataError(f"{path}: not a Hugging Face tokenizers file ({str(e)[:200]})") from None
    return _Tokenizer(tok, "corpus BPE", path, tok.token_to_id(DOCUMENT_END))


# ---------------------------------------------------------------------------------------------- outputs
def _write_gpt2(model: MoM, directory: Path, eos_id: int | None) -> None:
    """A vanilla layout as a plain ``GPT2LMHeadModel``, with the exported tokenizer's special token ids."""
    to_hf(model, directory)
    path = directory / "config.json"
    hf = json.loads(path.read_text(encoding="utf-8"))
    hf.update(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    write_json_atomic(path, hf)


def _write_mom(model: MoM, directory: Path, eos_id: int | None) -> None:
    """config.json, the remote-code files and mom's tensors."""
    try:
        hf_config = MoMHFConfig.from_mom(model.config.to_dict(), bos_token_id=eos_id, eos_token_id=eos_id,
                                         pad_token_id=eos_id)
    except ValueError as e:
        raise ConfigError(f"cannot export '{model.config.name}' for Hugging Face transformers: {e}") from None
    hf_config.architectures = ["MoMForCausalLM"]
    hf_config.auto_map = AUTO_MAP
    hf_config.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    hf_config.to_json_file(directory / "config.json")
    for name in REMOTE_CODE:
        shutil.copyfile(Path(__file__).with_name(name), directory / name)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _write_tokenizer(tok: _Tokenizer, directory: Path, n_ctx: int) -> None:
    """tokenizer.json and the tokenizer_config.json that lets ``AutoTokenizer`` load it as a fast tokenizer."""
    tok.tok.save(str(directory / "tokenizer.json"))
    special = DOCUMENT_END if tok.eos_id is not None else None
    write_json_atomic(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": n_ctx, "bos_token": special,
        "eos_token": special, "pad_token": special, "clean_up_tokenization_spaces": False,
    })


def _write_generation_config(directory: Path, eos_id: int | None) -> None:
    GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id).save_pretrained(directory)


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temporary sibling directory of ``out`` to write into; on success its files are fsynced and it replaces
    ``out`` (an old ``out`` is moved aside first and removed last); on failure it is removed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise MomError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, dir_mode())  # mkdtemp makes it owner-only
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)


def _replace_dir(new: Path, out: Path) -> None:
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / out.name)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- model card
def model_card(model: MoM, tok: _Tokenizer | None, metadata: Mapping[str, object]) -> str:
    """README.md: what the model is, how to load it, its configuration and the training facts given."""
    cfg = model.config
    remote = "" if cfg.is_vanilla else ", trust_remote_code=True"
    rows = [("layout", _layout(cfg)), ("depth", f"{cfg.depth} attention+FFN applications on the longest path")]
    if not cfg.is_vanilla:
        rows.append(("routing", _routing(cfg)))
    rows += [
        ("width", f"d_model {cfg.d_model}, {cfg.n_head} heads, d_ff {cfg.d_ff}, context {cfg.n_ctx} tokens"),
        ("parameters", f"{model.num_params():,} ({model.num_params(include_embeddings=False):,} without the "
                       "token and position embeddings; the head is tied to the token embedding)"),
        ("vocabulary", f"{cfg.vocab_size:,}; tokenizer: " + (f"{tok.name} with {tok.size:,} tokens" if tok else
                                                              "none (no known tokenizer fits this vocabulary)")),
    ]
    training = [(str(k), str(v)) for k, v in metadata.items()]
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- mom",
        "- mixture-of-modules", "---", "",
        f"# {cfg.name}", "",
        ("A vanilla GPT-2 trained with mom, exported as a plain `GPT2LMHeadModel`." if cfg.is_vanilla else
         "A Mixture-of-Modules language model (Gong et al., EMNLP 2024, arXiv:2407.06677) exported from mom: "
         "a pool of attention and FFN modules plus a parameter-free SKIP, assembled per token by routers. "
         "`modeling_mom.py` is a self-contained reference implementation; `config.json` holds every field of "
         "mom's `MoMConfig` and `model.safetensors` mom's own tensors."), "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory"{remote})',
        f'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory"{remote})', "```", "",
        "## Configuration", "", *_table(rows), "",
        "## Training", "",
        *(_table(training) if training else ["No training information was given to the export."]),
    ]
    if cfg.selection == "expert" and not cfg.is_vanilla:
        lines += ["", "## Note", "",
                  "Expert-choice routing picks the top tokens of a whole sequence in training. A causal language "
                  "model cannot look ahead, so this model always routes with mom's causal rule: a module takes a "
                  "token when its router probability reaches a threshold learned in training. Its outputs equal "
                  "mom's with `causal_routing=True`, not mom's training-time forward."]
    return "\n".join(lines) + "\n"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _layout(cfg: MoMConfig) -> str:
    if cfg.is_vanilla:
        return _count(cfg.bottom + cfg.top, "GPT-2 layer")
    block = f"{_count(cfg.n_attn, 'attention module')} + {_count(cfg.n_ffn, 'FFN module')}, H = {cfg.steps} steps"
    return (f"{_count(cfg.bottom, 'bottom layer')} + {_count(cfg.chunks, 'chunk')} × ({block}"
            f"{'; then an anchor layer' if cfg.anchor else ''}) + {_count(cfg.top, 'top layer')}")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _routing(cfg: MoMConfig) -> str:
    if cfg.router == "fixed":
        return "fixed: step h uses module h mod N"
    router = f"{cfg.router.upper()} routers (hidden {cfg.router_hidden}), temperature {cfg.temperature}"
    if cfg.selection == "expert":
        pick = f"expert choice (capacity {cfg.capacity} in training; causal thresholds here)"
    else:
        pick = f"token choice, top-{cfg.k('attn')} attention / top-{cfg.k('ffn')} FFN"
    skip = "SKIP allowed" if cfg.skip else "no SKIP"
    return f"{router}; {pick}; {skip}; candidates {cfg.attn_candidates} / {cfg.ffn_candidates}"
