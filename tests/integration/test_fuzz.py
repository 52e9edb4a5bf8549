"""Property-based input fuzzing (hypothesis): configs, the command line, corpus files and prompts.

The bar (issue #8): whatever a user hands ``mom`` — a config field of any value or type, any argv, any file,
any prompt — the outcome is either a result that passes its consistency checks or one :class:`MomError`
line; never another exception (a traceback). Every property below states that for one kind of input.

Runs deterministically (``derandomize=True``) with a small number of examples per property so the file stays
around a minute on 2 CPU cores. ``MOM_FUZZ_EXAMPLES=N`` runs N examples per property instead (the count
recorded in the README came from such a run); ``MOM_FUZZ_REPORT=FILE`` writes the number of cases each
property tried, and how they ended, as JSON when the module finishes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import tempfile
import typing
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mom.cli.main import build_parser, main  # noqa: E402
from mom.config.model import MoMConfig, preset, preset_names  # noqa: E402
from mom.config.train import TrainConfig  # noqa: E402
from mom.data.prepare import prepare  # noqa: E402
from mom.data.tokenizer import EOT, N_VOCAB, tokenizer  # noqa: E402
from mom.data.tokens import DATASET_FILES, load_tokens  # noqa: E402
from mom.errors import ConfigError, DataError, MomError  # noqa: E402
from mom.inference.engine import Engine, SamplingParams  # noqa: E402
from mom.model.model import MoM  # noqa: E402

# ---------------------------------------------------------------------------------------------- settings
# Examples per property in the default (CI) run; MOM_FUZZ_EXAMPLES overrides every one of them.
DEFAULT_EXAMPLES = {
    "config_fields": 400,
    "config_cli_strings": 300,
    "config_extremes": 200,
    "train_config_fields": 300,
    "config_files": 200,
    "cli_argv": 400,
    "cli_train": 80,
    "corpus_prepare": 200,
    "load_tokens": 300,
    "tokenizer_round_trip": 400,
    "engine_prompts": 300,
}
_OVERRIDE = os.environ.get("MOM_FUZZ_EXAMPLES")


def fuzz_settings(prop: str):
    n = int(_OVERRIDE) if _OVERRIDE else DEFAULT_EXAMPLES[prop]
    # deadline=None: example times vary with the load of a shared machine; derandomize: CI sees the same cases
    # every run (no example database; hypothesis still keeps caches in a self-ignored .hypothesis/).
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------- case counting
CASES: dict[str, Counter] = defaultdict(Counter)


def record(prop: str, outcome: str) -> None:
    CASES[prop]["cases"] += 1
    CASES[prop][outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def _fuzz_report():
    # The models here are tiny: one intra-op thread is several times faster than two on a loaded 2-core machine
    # (measured: the engine property took 4.7 s instead of 15 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    path = os.environ.get("MOM_FUZZ_REPORT")
    if path:
        report = {k: dict(v) for k, v in sorted(CASES.items())}
        report["total_cases"] = sum(v["cases"] for v in CASES.values())
        Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def assert_one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg.strip(), f"{type(err).__name__} with an empty message"
    assert "\n" not in msg, f"multi-line error message: {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------- values
def mostly(good: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 8) -> st.SearchStrategy:
    """``good``, and about one time in ``one_in`` ``rare`` (hypothesis leans to one_of's first branch and to
    small numbers, so plain one_of would not give these odds)."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == one_in else good)


INT_EDGES = [0, -1, -7, 2**20, 2**31 - 1, 2**31, 2**63, 10**30, -(10**30)]
FLOAT_EDGES = [0.0, -0.0, -1.0, 1e-300, 5e-324, 1e300, float("inf"), float("-inf"), float("nan")]
NO_NUL_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), NO_NUL_TEXT, st.sampled_from(["2", "true", "none", "nan", ""]),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(-2, 4), max_size=2),
    st.just({}), st.integers(-(2**70), 2**70),
)
# Size fields are drawn from small ranges (plus edges) so that a valid config's forward takes milliseconds.
SMALL_INT = {
    "vocab_size": (-2, 130), "n_ctx": (-2, 24), "d_model": (-2, 48), "n_head": (-2, 8), "d_ff": (-2, 96),
    "router_hidden": (-2, 24), "bottom": (-2, 3), "top": (-2, 3), "chunks": (-2, 3), "n_attn": (-2, 8),
    "n_ffn": (-2, 12), "steps": (-2, 6), "top_k": (-2, 5), "attn_top_k": (-2, 5), "ffn_top_k": (-2, 5),
}


def typed_values(name: str, tp) -> st.SearchStrategy:
    """Values of the field's own type: ordinary, edge and absurd."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is not None:  # X | None
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return st.one_of(st.none(), typed_values(name, inner))
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo, hi = SMALL_INT.get(name, (-3, 40))
        return st.one_of(st.integers(lo, hi), st.sampled_from(INT_EDGES))
    if tp is float:
        return st.one_of(st.floats(0.0, 2.0), st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from(FLOAT_EDGES))
    return NO_NUL_TEXT


def ordinary_values(name: str, tp) -> st.SearchStrategy:
    """Values a user would plausibly write (most of them valid)."""
    origin = typing.get_origin(tp)
    if origin is not None and origin is not typing.Literal:
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return st.one_of(st.none(), ordinary_values(name, inner))
    if tp is int:
        lo, hi = SMALL_INT.get(name, (-3, 40))
        return st.integers(max(lo, 0), hi)
    if tp is float:
        return st.floats(1e-4, 1.0)
    return typed_values(name, tp)


def field_values(name: str, tp) -> st.SearchStrategy:
    # two branches of ordinary values, one of edges and absurd values of the right type, one of wrong types
    return st.one_of(ordinary_values(name, tp), ordinary_values(name, tp), typed_values(name, tp), WRONG_TYPES)


MODEL_TYPES = typing.get_type_hints(MoMConfig)
MODEL_FIELDS = [f.name for f in dataclasses.fields(MoMConfig)]
TRAIN_TYPES = typing.get_type_hints(TrainConfig)
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
SHRINK = dict(vocab_size=97, n_ctx=16, d_model=32, n_head=4, router_hidden=16)


@lru_cache(maxsize=None)
def small_preset(name: str) -> MoMConfig:
    """A preset at toy width (its layout, routing and special case unchanged)."""
    return preset(name).replace(**SHRINK)


PRESETS = preset_names() + ["K3H1S", "K1H4M"]


def field_changes(fields: list[str], types: dict) -> st.SearchStrategy:
    return st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: field_values(n, types[n]) for n in names}))


# ---------------------------------------------------------------------------------------------- model checks
MAX_FORWARD_PARAMS = 2_000_000


def _modules(cfg: MoMConfig) -> int:
    return cfg.bottom + cfg.top + cfg.chunks * (int(cfg.anchor) + cfg.n_attn + cfg.n_ffn + cfg.steps)


def _too_big(cfg: MoMConfig) -> bool:
    """Valid but too large to instantiate for real in a unit test."""
    d, f = cfg.d_model, cfg.d_ff
    layers = cfg.bottom + cfg.top + cfg.chunks * int(cfg.anchor)
    approx = ((cfg.vocab_size + cfg.n_ctx) * d + layers * (4 * d * d + 2 * d * f)
              + cfg.chunks * (cfg.n_attn * 4 * d * d + cfg.n_ffn * 2 * d * f
                              + 2 * cfg.router_hidden * (d + cfg.router_hidden)))
    return _modules(cfg) > 200 or approx > MAX_FORWARD_PARAMS


def check_forward(cfg: MoMConfig, seed: int, B: int, T: int, training: bool, targets: bool) -> str:
    """Build the model and run one forward: finite logits of shape (B, T, V), finite losses."""
    if _too_big(cfg):
        if _modules(cfg) > 200:  # a Python object per module: only the count is absurd, nothing to build
            return "valid_not_built"
        with torch.device("meta"):  # shapes only: every size a valid config allows must make a tensor
            MoM(cfg)
        return "valid_built_on_meta"
    torch.manual_seed(seed)
    model = MoM(cfg).train(training)
    T = max(1, min(T, cfg.n_ctx))
    g = torch.Generator().manual_seed(seed)
    idx_BT = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    with torch.no_grad():
        out = model(idx_BT, targets_BT=idx_BT.roll(-1, 1) if targets else None)
    assert out.logits.shape == (B, T, cfg.vocab_size)
    assert torch.isfinite(out.logits).all(), "non-finite logits from a valid config"
    assert torch.isfinite(out.aux_loss), "non-finite aux loss from a valid config"
    if targets:
        assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    return "valid_forward"


def _json_round_trip(cfg):
    """A valid config survives JSON (strict: no NaN/inf literals) unchanged."""
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False)))
    assert again == cfg


# ============================================================================================== configs
@fuzz_settings("config_fields")
@given(base=st.sampled_from(PRESETS), changes=field_changes(MODEL_FIELDS, MODEL_TYPES),
       how=st.sampled_from(["from_dict", "replace", "init"]), seed=st.integers(0, 2**16),
       B=st.integers(1, 2), T=st.integers(1, 8), training=st.booleans(), targets=st.booleans())
def test_config_fields(base, changes, how, seed, B, T, training, targets):
    """Random values (right type, wrong type, edges) for random fields on top of every preset: a valid config
    builds and runs a forward with finite outputs; an invalid one is one ConfigError line."""
    start = small_preset(base)
    try:
        if how == "from_dict":
            cfg = MoMConfig.from_dict({**start.to_dict(), **changes})
        elif how == "replace":
            cfg = start.replace(**changes)
        else:
            cfg = MoMConfig(**{**start.to_dict(), **changes})
    except ConfigError as e:
        assert_one_line(e)
        record("config_fields", "config_error")
        return
    _json_round_trip(cfg)
    record("config_fields", check_forward(cfg, seed, B, T, training, targets))


NUMERIC_FIELDS = [f for f in MODEL_FIELDS if MODEL_TYPES[f] in (int, float, int | None)]
EXTREMES = st.one_of(st.sampled_from(FLOAT_EDGES + INT_EDGES + [1e-6, 1e-7, 1.0, 1.5, 1e4, 1e6, 1e7, 3.5e38]),
                     st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**64), 2**64))


@fuzz_settings("config_extremes")
@given(base=st.sampled_from(["tiny", "tiny-mom", "mod", "moe", "universal", "layerskip"]),
       field=st.sampled_from(NUMERIC_FIELDS), value=EXTREMES, seed=st.integers(0, 2**16))
def test_config_extremes(base, field, value, seed):
    """One numeric field at an extreme (tiny, huge, negative, float edge): ConfigError, or a model whose
    forward is finite. (test_config_fields changes several fields at once and rarely lands on these.)"""
    try:
        cfg = small_preset(base).replace(**{field: value})
    except ConfigError as e:
        assert_one_line(e)
        record("config_extremes", "config_error")
        return
    record("config_extremes", check_forward(cfg, seed, 2, 8, True, True))


CLI_STRINGS = st.one_of(
    st.integers(-3, 40).map(str), st.integers(0, 8).map(str),
    st.sampled_from(["none", "null", "None", "true", "false", "yes", "off", "nan", "inf", "-inf", "1e3", "1e999",
                     "0x10", "1_0", " 2 ", "2.0", "0.5", "1e-300", "", "-0", "٣", "99999999999999999999",
                     "9" * 5000, "gru", "mlp", "fixed", "expert", "token", "grouped", "loop", "diagonal",
                     "all", "pooled", "include"]),
    NO_NUL_TEXT,
)


@fuzz_settings("config_cli_strings")
@given(base=st.sampled_from(PRESETS),
       changes=st.dictionaries(st.sampled_from(MODEL_FIELDS + ["topk", "n_layer", ""]),
                               CLI_STRINGS, min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_config_cli_strings(base, changes, seed):
    """``--model.FIELD VALUE`` overrides: strings parsed as the field's type, or one ConfigError line."""
    try:
        cfg = small_preset(base).replace(**changes)
    except ConfigError as e:
        assert_one_line(e)
        record("config_cli_strings", "config_error")
        return
    _json_round_trip(cfg)
    record("config_cli_strings", check_forward(cfg, seed, 1, 4, False, True))


@fuzz_settings("train_config_fields")
@given(changes=field_changes(TRAIN_FIELDS, TRAIN_TYPES), strings=st.booleans())
def test_train_config_fields(changes, strings):
    """TrainConfig: valid values give a consistent schedule; anything else is one ConfigError line."""
    if strings:
        changes = {k: str(v) if not isinstance(v, str) else v for k, v in changes.items()}
    try:
        cfg = TrainConfig().replace(**changes)
    except ConfigError as e:
        assert_one_line(e)
        record("train_config_fields", "config_error")
        return
    _json_round_trip(cfg)
    assert 0 <= cfg.warmup <= cfg.max_steps and 0 <= cfg.final_lr <= cfg.lr
    record("train_config_fields", "valid")


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(-2, 2), NO_NUL_TEXT),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(NO_NUL_TEXT, kids, max_size=3)),
    max_leaves=6,
)


@fuzz_settings("config_files")
@given(base=st.sampled_from(["tiny", "tiny-mom", "mod", "moe"]),
       content=st.one_of(
           st.binary(max_size=64),
           JSON_VALUES.map(lambda v: json.dumps(v).encode()),
           field_changes(MODEL_FIELDS, MODEL_TYPES).map(lambda c: ("config", c)),
       ),
       version=st.sampled_from([None, 1, 2, "1", None]),
       as_dir=st.booleans())
def test_config_files(base, content, version, as_dir):
    """A config.json of random bytes, random JSON, or a preset with random fields: loads or one ConfigError line."""
    if isinstance(content, tuple):
        d = {**small_preset(base).to_dict(), **content[1]}
        if version is not None:
            d["format_version"] = version
        content = json.dumps(d).encode()  # NaN/inf become JSON's non-standard literals, as Python writes them
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_bytes(content)
        try:
            from mom.config.model import resolve_config

            cfg = resolve_config(tmp if as_dir else str(path))
        except ConfigError as e:
            assert_one_line(e)
            record("config_files", "config_error")
            return
    assert isinstance(cfg, MoMConfig)
    record("config_files", "valid")


# ============================================================================================== command line
class _Reached(Exception):
    """Raised by the stubs below where a command would start its real, long work: the argv was accepted."""


INPUT_FLAGS = {"--ckpt", "--to-hf", "--from-hf", "--init-from", "--data", "--corpus", "--prompt-file",
               "--include-path", "--config", "--train-config"}
OUTPUT_FLAGS = {"--out", "--predictions"}
TEXT_FLAGS = {"--prompt", "--text", "--stop", "--tasks", "--seeds", "--task", "--split", "--device",
              "--model-overrides"}
GARBAGE_TOKENS = ["--", "-", "--x", "-x", "--model.", "--model", "--train.", "--train.x", "--model.top_k",
                  "--train.max_steps", "=", "--out=", "--json=1", "é", "--config=tiny", "-h", "--help", "x",
                  "--model.top_k=", "--model..", "--.x", "--model.n_head=5", "--train.lr=nan"]
DEVICES = ["cpu", "auto", "cuda", "cuda:0", "mps", "meta", "xyz", "", "cpu:0", "cuda:99"]
INT_STRINGS = st.one_of(st.integers(-3, 40).map(str), st.integers(1, 6).map(str),
                        st.sampled_from(["", "x", "1.5", "nan", "1e3", "0x10", "99999999999999999999999", "-0",
                                         " 3", "-99999999999999999999999"]))
FLOAT_STRINGS = st.one_of(st.floats(-2, 2).map(repr), st.floats(0, 1).map(repr),
                          st.sampled_from(["nan", "inf", "-inf", "1e309", "0", "1", "x", "", "-1e-320"]))
ARG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@dataclasses.dataclass
class _Option:
    flag: str
    kind: str  # "flag" (no value), "one" (one value), "many" (nargs + or *)
    choices: tuple | None
    type: typing.Any


def _options(parser: argparse.ArgumentParser) -> tuple[list[_Option], dict[str, argparse.ArgumentParser]]:
    """The optional arguments of a (sub)parser, and its sub-subcommands (mom eval ...)."""
    opts, subs = [], {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
            continue
        for flag in action.option_strings:
            if flag in ("-h", "--help"):
                continue
            kind = "flag" if action.nargs == 0 else "many" if action.nargs in ("+", "*") else "one"
            opts.append(_Option(flag, kind, tuple(action.choices) if action.choices else None, action.type))
    return opts, subs


def _command_table() -> dict[tuple[str, ...], tuple[list[_Option], list[tuple], tuple[str, ...]]]:
    """(words) -> (options, positional choices, override groups) for every command and eval sub-command."""
    table = {}
    top = build_parser()
    _, subs = _options(top)
    for name, sp in subs.items():
        opts, inner = _options(sp)
        positionals = [tuple(a.choices) for a in sp._actions
                       if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction)]
        if inner:
            for sub_name, ssp in inner.items():
                table[(name, sub_name)] = (_options(ssp)[0], [], tuple(ssp.get_default("overrides") or ()))
        else:
            table[(name,)] = (opts, positionals, tuple(sp.get_default("overrides") or ()))
    return table


COMMANDS = _command_table()


# Values that let a command get somewhere (names are relative to the cli_world fixture's directory).
GOOD_INPUTS = {
    "--ckpt": ["ckpt_mom", "ckpt_vanilla"], "--to-hf": ["ckpt_vanilla", "ckpt_mom"], "--from-hf": ["ckpt_vanilla"],
    "--init-from": ["ckpt_vanilla", "ckpt_mom"], "--data": ["dataset", "dataset/val.bin", "corpus.txt"],
    "--corpus": ["corpus.txt", "docs.jsonl", "prompts.txt"], "--prompt-file": ["prompts.txt"],
    "--include-path": ["empty_dir"], "--config": ["tiny-mom", "tiny", "tiny.json", "mod", "moe", "ckpt_mom"],
    "--train-config": ["default"],
}
GOOD_TEXT = {"--prompt": "The history of", "--text": "The history of", "--stop": ".", "--tasks": "nonexistent_task",
             "--seeds": "0", "--split": "val", "--model-overrides": "n_ctx=8", "--device": "cpu"}
GOOD_OVERRIDES = [("model", "dispatch", "loop"), ("model", "top_k", "1"), ("model", "router", "mlp"),
                  ("train", "max_steps", "1"), ("model", "n_ctx", "16")]


def _value(opt: _Option, inputs: list[str], outputs: list[str], root: str, good: bool) -> st.SearchStrategy:
    if good:
        if opt.choices:
            return st.sampled_from(opt.choices)
        if opt.flag in GOOD_INPUTS:
            return st.sampled_from([n if "/" not in n and not (Path(root) / n).exists() else str(Path(root) / n)
                                    for n in GOOD_INPUTS[opt.flag]])
        if opt.flag in OUTPUT_FLAGS:
            return st.sampled_from(outputs[:3])
        if opt.flag == "--task":
            return st.sampled_from(["rt-polarity", "news-xsum", "sst2"])
        if opt.flag in GOOD_TEXT:
            return st.just(GOOD_TEXT[opt.flag])
        if opt.type is int:
            return st.integers(1, 8).map(str)
        if opt.type is float:
            return st.floats(0.05, 1.0).map(repr)
    garbage = st.sampled_from(["", "x", "-1", "--json", "none"])
    if opt.choices:
        return st.one_of(st.sampled_from(opt.choices), garbage)
    if opt.flag in INPUT_FLAGS:
        return st.one_of(st.sampled_from(inputs), st.sampled_from(inputs), garbage, ARG_TEXT)
    if opt.flag in OUTPUT_FLAGS:
        return st.one_of(st.sampled_from(outputs), st.sampled_from(outputs), garbage)
    if opt.flag == "--device":
        return st.sampled_from(DEVICES)
    if opt.type is int:
        return INT_STRINGS
    if opt.type is float:
        return FLOAT_STRINGS
    if opt.flag in TEXT_FLAGS:
        return st.one_of(ARG_TEXT, st.sampled_from(["The history of", " ", "a=1", "n_ctx=8", "0,1", "0,0"]))
    return st.one_of(ARG_TEXT, garbage)


OVERRIDE_FIELDS = MODEL_FIELDS + ["topk", ""]
OVERRIDE_VALUES = st.one_of(st.integers(-2, 48).map(str), st.integers(1, 4).map(str),
                            st.sampled_from(["none", "true", "false", "nan", "x", "", "99999999999999999999",
                                             "loop", "expert", "mlp", "fixed", "1e-9"]))


@st.composite
def argv_for(draw, inputs: list[str], outputs: list[str], root: str) -> list[str]:
    """A command line: well-formed (real options, values that let the command run) half of the time, else
    wild (any option, any value, garbage tokens, a mangled command)."""
    good = draw(st.booleans())
    words = draw(st.sampled_from(sorted(COMMANDS)))
    opts, positionals, groups = COMMANDS[words]
    argv = list(words)
    if not good and draw(st.integers(0, 4)) == 4:  # a mangled or missing command
        argv = draw(st.sampled_from([[], ["nonsense"], [words[0]], [words[0].upper()], ["--json"]]))
    for choices in positionals:
        if good or draw(st.integers(0, 5)):
            argv.append(draw(st.sampled_from(choices) if good else st.one_of(st.sampled_from(choices),
                                                                             st.sampled_from(["", "x"]))))
    items: list[list[str]] = []
    for _ in range(draw(st.integers(0, 4 if good else 6))):
        pick = draw(st.integers(0, 6 if good else 9))
        if pick <= 5 and opts:
            opt = draw(st.sampled_from(opts))
            value = _value(opt, inputs, outputs, root, good)
            if opt.kind == "flag":
                items.append([opt.flag])
            elif opt.kind == "many":
                items.append([opt.flag, *draw(st.lists(value, min_size=1 if good else 0, max_size=3))])
            elif draw(st.integers(0, 4)) == 4:
                items.append([f"{opt.flag}={draw(value)}"])
            else:
                items.append([opt.flag, draw(value)])
        elif pick <= 7:
            if good:
                usable = [o for o in GOOD_OVERRIDES if o[0] in groups]
                if usable:
                    group, field, v = draw(st.sampled_from(usable))
                    items.append([f"--{group}.{field}", v])
                continue
            group = draw(st.sampled_from(["model", "model", "train"]))
            fields = OVERRIDE_FIELDS if group == "model" else TRAIN_FIELDS + ["maxsteps"]
            items.append([f"--{group}.{draw(st.sampled_from(fields))}", draw(OVERRIDE_VALUES)])
        elif pick == 8:
            items.append([draw(st.sampled_from(GARBAGE_TOKENS))])
        else:
            items.append([draw(ARG_TEXT)])
    # The options argparse insists on: nearly always there in a well-formed line, often in a wild one.
    needed = ["--ckpt", "--out", "--task", "--tasks"]
    if words[0] in ("flops", "memory"):  # --config or --ckpt (one of the two)
        needed = ["--out", draw(st.sampled_from(["--config", "--ckpt"]))]
    elif words[0] == "train":
        needed.append("--config")
    required = [o for o in opts if o.flag in needed]
    for opt in required:
        if (good or draw(st.integers(0, 3))) and not any(opt.flag in i[0] for i in items):
            items.append([opt.flag, draw(_value(opt, inputs, outputs, root, good))])
    if good and words == ("generate",) and not any(i[0] in ("--prompt", "--prompt-file") for i in items):
        items.append(["--prompt", "The history of"])
    if good and words == ("routes",) and not any(i[0] in ("--text", "--data") for i in items):
        items.append(["--text", "The history of"])
    for item in draw(st.permutations(items)):
        argv += item
    return argv


def _stub_heavy_work(monkeypatch) -> None:
    """Stop every command at the point where accepted arguments would start minutes of work."""

    def reached(what):
        def stub(*args, **kwargs):
            raise _Reached(what)
        return stub

    import mom.cli.analyze
    import mom.cli.eval
    import mom.cli.memory
    import mom.cli.train

    # The commands call these through the names their cli modules imported.
    monkeypatch.setattr(mom.cli.train, "train", reached("train"))
    monkeypatch.setattr(mom.cli.analyze, "bench_decode", reached("bench decode"))
    monkeypatch.setattr(mom.cli.analyze, "bench_step", reached("bench step"))
    monkeypatch.setattr(mom.cli.memory, "readings", reached("memory"))
    for name in ("run_glue", "run_xsum", "run_lm_eval"):
        monkeypatch.setattr(mom.cli.eval, name, reached(name))
    def stop_at_builtin(inputs, *args, **kwargs):  # the built-in corpus takes ~30 s to tokenise: stop there
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) or inputs is None else list(inputs)
        if inputs is None or "builtin" in items:
            raise _Reached("prepare builtin")
        return prepare(inputs, *args, **kwargs)

    import mom.cli.data
    import mom.cli.demo_stages
    import mom.train.batches

    for module in (mom.cli.data, mom.cli.demo_stages, mom.train.batches):  # every caller of prepare
        monkeypatch.setattr(module, "prepare", stop_at_builtin)
    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: model)  # --compile: same path, no compile time


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """Inputs the fuzzed command lines may point at: a tiny MoM and a tiny vanilla checkpoint (GPT-2 vocabulary,
    so prompts and --text tokenise into it), a tiny prepared dataset, and files of every kind of garbage."""
    root = tmp_path_factory.mktemp("cli_world")
    torch.manual_seed(0)
    shape = dict(vocab_size=N_VOCAB, n_ctx=32, d_model=16, n_head=2, router_hidden=8)
    MoM(preset("tiny-mom").replace(**shape)).save_pretrained(root / "ckpt_mom")
    MoM(preset("tiny").replace(bottom=2, **shape)).save_pretrained(root / "ckpt_vanilla")
    (root / "corpus.txt").write_text("The history of the world is long.\n\nIt has many parts. " * 40)
    prepare([root / "corpus.txt"], root / "dataset", val_fraction=0.3, progress=False)
    (root / "garbage.bin").write_bytes(bytes(range(256)) * 3 + b"\x01")
    (root / "garbage.json").write_bytes(b"\xff\xfe{not json")
    (root / "prompts.txt").write_text("The history of\n\n  \nOnce upon a time\n")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "empty.txt").write_bytes(b"")
    (root / "docs.jsonl").write_text('{"text": "one"}\n{"txt": 2}\n')
    (root / "empty_dir").mkdir()
    small_preset("tiny").save(root / "tiny.json")
    preset("tiny").replace(bottom=2, **shape).save(root / "train16.json")  # the shape of ckpt_vanilla
    inputs = [str(root / n) for n in ("ckpt_mom", "ckpt_vanilla", "dataset", "dataset/val.bin", "garbage.bin",
                                      "garbage.json", "prompts.txt", "latin1.txt", "empty.txt", "docs.jsonl",
                                      "empty_dir", "tiny.json", "missing", "ckpt_mom/config.json")]
    inputs += ["tiny", "tiny-mom", "mod", "moe", "universal", "layerskip", "builtin", "default", "official-phase1",
               "hf:" + str(root / "ckpt_vanilla"), "hf:" + str(root / "missing"), "K2H1S", "gpt2"]
    return root, inputs


@contextlib.contextmanager
def _chdir(path):  # contextlib.chdir is Python 3.11+; the project supports 3.10
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@fuzz_settings("cli_argv")
@given(data=st.data())
def test_cli_argv(cli_world, data):
    """Any argv: exit 0, or exit 2 with exactly one ``mom: error:`` line on stderr; never a traceback."""
    root, inputs = cli_world
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "file.txt").write_text("not a directory\n")
        (work / "full").mkdir()
        (work / "full" / "keep.txt").write_text("keep\n")
        outputs = [str(work / n) for n in ("out", "out.json", "out.html", "nodir/out.json", "file.txt", "full",
                                           "out.txt", "preds.jsonl")]
        argv = data.draw(argv_for(inputs, outputs, str(root)), label="argv")
        before = _snapshot(root)
        out, err = io.StringIO(), io.StringIO()
        with _chdir(work), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.MonkeyPatch.context() as mp:
            _stub_heavy_work(mp)
            try:
                rc = main(argv)
            except _Reached:
                rc = "reached"
            except SystemExit as e:  # argparse's --help
                assert e.code == 0 and ("-h" in argv or "--help" in argv), f"SystemExit({e.code})"
                rc = "help"
        stderr = err.getvalue()
        assert "Traceback" not in stderr
        assert rc in (0, 2, "reached", "help"), rc
        if rc == 2:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("mom: error: "), stderr
        # The shared checkpoints and dataset are inputs only: no command may change them.
        assert _snapshot(root) == before, f"{argv} modified its inputs"
    record("cli_argv", {0: "exit_0", 2: "exit_2"}.get(rc, rc))



TRAIN_FUZZ_FIELDS = [f for f in TRAIN_FIELDS if f not in ("max_steps", "device", "compile")]  # keep runs short, CPU
SMALL_STRINGS = st.one_of(st.integers(-2, 8).map(str), st.integers(1, 4).map(str),
                          st.sampled_from(["0.5", "1e-3", "none", "true", "x", "", "nan", "inf", "cosine", "constant",
                                           "float32", "bfloat16", "fsdp", "99999999999999999999"]))


def _as_cli(value) -> str:
    return {True: "true", False: "false", None: "none"}.get(value, str(value)) if not isinstance(value, (int, float)) \
        or isinstance(value, bool) else str(value)


def override_strings(fields: list[str], types: dict) -> st.SearchStrategy:
    """(field, string value) pairs as the CLI passes them: mostly a value of the field's type, else garbage."""
    return st.sampled_from(fields).flatmap(lambda f: st.tuples(
        st.just(f), mostly(ordinary_values(f, types[f]).map(_as_cli), SMALL_STRINGS, one_in=4)))


@fuzz_settings("cli_train")
@given(model_over=st.lists(override_strings(MODEL_FIELDS, MODEL_TYPES), max_size=2),
       train_over=st.lists(override_strings(TRAIN_FUZZ_FIELDS, TRAIN_TYPES), max_size=3),
       steps=st.sampled_from(["1", "2"]), data=st.sampled_from(["dataset", "dataset", "garbage.bin", "empty_dir"]),
       init=st.sampled_from([None, None, "ckpt_vanilla", "ckpt_mom", "garbage.json"]),
       resume=mostly(st.just(False), st.just(True)))
def test_cli_train(cli_world, model_over, train_over, steps, data, init, resume):
    """``mom train`` for real (one or two steps of a width-16 model) with random field overrides and inputs:
    exit 0 with a run directory, or exit 2 ending in one ``mom: error:`` line; never a traceback."""
    root, _ = cli_world
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["train", "--config", str(root / "train16.json"), "--data", str(root / data), "--out", str(out),
                "--no-progress", "--train.max_steps", steps, "--train.batch_size", "2", "--train.seq_len", "8",
                "--train.eval_tokens", "64", "--train.eval_interval", "1"]
        if init:
            argv += ["--init-from", str(root / init)]
        if resume:
            argv.append("--resume")
        for k, v in model_over:
            argv += [f"--model.{k}", v]
        for k, v in train_over:
            argv += [f"--train.{k}", v]
        err = io.StringIO()
        with _chdir(tmp), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(argv)
        stderr = err.getvalue()
        assert "Traceback" not in stderr and rc in (0, 2), (rc, stderr)
        if rc == 2:
            lines = stderr.strip().splitlines()
            assert lines[-1].startswith("mom: error: ") and sum(x.startswith("mom: error") for x in lines) == 1, stderr
        else:
            assert (out / "run.json").is_file() or any(out.iterdir())
    record("cli_train", {0: "trained", 2: "exit_2"}[rc])


# ============================================================================================== corpus files
WORDS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def file_bytes(draw, kind: str, clean: bool) -> bytes:
    """Contents of a corpus file: good text, empty, random bytes, huge lines, other encodings, NUL bytes."""
    how = draw(st.sampled_from(["utf8", "huge", "bom", "crlf"] if clean else
                               ["utf8", "empty", "random", "huge", "latin1", "utf16", "bom", "nul", "crlf",
                                "surrogate", "blank"]))
    words = ("t " if clean else "") + draw(WORDS)
    if how == "huge":  # one line of up to ~1M characters (no line break to cut the single-document split at)
        unit = draw(st.sampled_from(["x", "word ", "\u00e9", "1", " ", "\t", "ab\u4e2d"]))
        words = unit * draw(st.integers(1, 200_000)) + words
    text = json_lines(draw, words, clean) if kind == "jsonl" else words
    if how == "empty":
        return b""
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "latin1":
        return ("caf\u00e9 " + text).encode("latin-1", "replace")
    if how == "utf16":
        return ("\ufeff" + text).encode("utf-16-le") if draw(st.booleans()) else text.encode("utf-16")
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if how == "nul":
        return text.encode("utf-8") + b"\x00" + text.encode("utf-8")
    if how == "crlf":
        return text.replace("\n", "\r\n").encode("utf-8") + b"\r\n\r\n" + text.encode("utf-8")
    if how == "surrogate":  # UTF-8-encoded surrogate (CESU-8): not valid UTF-8
        return b"abc \xed\xa0\x80 def"
    if how == "blank":
        return draw(st.sampled_from([b" ", b"\n\n", b"\r\n", b"\t \n"]))
    return text.encode("utf-8")


def json_lines(draw, text: str, clean: bool) -> str:
    kinds = ["text", "empty", "blank", "surrogate"] if clean else [
        "text", "text", "empty", "int", "no_text", "list", "str", "broken", "blank", "null", "surrogate", "nested"]
    rows = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=6))
    out = []
    for r in rows:
        out.append({
            "text": json.dumps({"text": text or "t"}, ensure_ascii=draw(st.booleans())),
            "empty": json.dumps({"text": ""}),
            "int": json.dumps({"text": 3}),
            "no_text": json.dumps({"txt": text}),
            "list": json.dumps([text]),
            "str": json.dumps(text),
            "broken": '{"text": "unterminated',
            "blank": "",
            "null": "null",
            "surrogate": '{"text": "lone \\ud800 surrogate"}',
            "nested": json.dumps({"text": {"a": text}}),
        }[r])
    return "\n".join(out)


NAMES = st.sampled_from(["a.txt", "b.jsonl", "C.TXT", "d.JSONL", "e.md", "f.bin", "g", ".hidden.txt",
                         "sub/h.txt", "sub/i.jsonl", "sub/.j.txt", ".hid/k.txt"])


def _kind(name: str) -> str:
    return "jsonl" if name.lower().endswith(".jsonl") else "txt"


@st.composite
def corpus_case(draw):
    # Half the cases hold only usable files (so that successful runs get checked too), half anything.
    clean = draw(st.booleans())
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    files = {n: draw(file_bytes(_kind(n), clean)) for n in names}
    # What is passed to prepare: the directory, some of the files, a missing path, nothing
    entry = st.one_of(st.just("<dir>"), st.sampled_from(names)) if clean else st.one_of(
        st.just("<dir>"), st.sampled_from(names), st.just("<missing>"))
    # (hypothesis leans to the first branch and to small numbers: the rare cases come last)
    inputs = [] if draw(st.integers(0, 19)) == 19 else draw(st.lists(entry, min_size=1, max_size=3))
    out_state = draw(st.sampled_from(["missing", "missing", "empty", "other_files", "dataset", "file",
                                      "nested_missing"]))
    return files, inputs, out_state


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def check_dataset(out: Path, meta: dict) -> None:
    """A prepared dataset is consistent: ids in the vocabulary, token and document counts equal meta.json's."""
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == meta
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        assert ids.size == meta[f"{split}_tokens"] > 0
        assert int(ids.max()) < meta["vocab_size"] == N_VOCAB
        assert ids[-1] == EOT, "every document ends with <|endoftext|>"
        assert int((ids == EOT).sum()) == meta[f"{split}_documents"]
        assert len(load_tokens(out, split)) == ids.size
    if meta["split"]["method"] == "document":
        assert meta["train_tokens"] + meta["val_tokens"] == sum(s["tokens"] for s in meta["sources"])
        assert meta["train_documents"] + meta["val_documents"] == sum(s["documents"] for s in meta["sources"])


@fuzz_settings("corpus_prepare")
@given(case=corpus_case(),
       val_fraction=mostly(st.floats(0.01, 0.9), st.sampled_from([0.0, 1.0, -0.1, float("nan"), True, "0.1"])),
       seed=st.integers(-5, 2**40), overwrite=st.booleans())
def test_corpus_prepare(case, val_fraction, seed, overwrite):
    """``prepare`` on files of every kind: a consistent dataset, or one MomError line and the output directory
    exactly as it was (no partial or scratch files)."""
    files, inputs, out_state = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        for name, content in files.items():
            (corpus / name).parent.mkdir(parents=True, exist_ok=True)
            (corpus / name).write_bytes(content)
        out = root / ("deep/er/out" if out_state == "nested_missing" else "out")
        if out_state == "file":
            out.write_text("in the way\n")
        elif out_state != "missing" and out_state != "nested_missing":
            out.mkdir()
            if out_state == "other_files":
                (out / "notes.txt").write_text("mine\n")
            if out_state == "dataset":
                for n in DATASET_FILES:
                    (out / n).write_bytes(b"old " + n.encode())
        paths = [str(corpus) if i == "<dir>" else str(root / "missing") if i == "<missing>" else str(corpus / i)
                 for i in inputs]
        before = _tree(root)
        try:
            meta = prepare(paths, out, val_fraction=val_fraction, seed=seed, overwrite=overwrite,
                                    progress=False)
        except MomError as e:
            assert_one_line(e)
            after = _tree(root)
            # Nothing half-written: no new or changed files anywhere (empty parent directories of a missing
            # --out may have been created), no scratch directory left behind.
            files_after = {k: v for k, v in after.items() if v is not None}
            assert files_after == {k: v for k, v in before.items() if v is not None}
            assert not [k for k in after if ".prepare-" in k], after
            record("corpus_prepare", "data_error" if isinstance(e, DataError) else "mom_error")
            return
        check_dataset(out, meta)
        if out_state == "other_files":
            assert (out / "notes.txt").read_text() == "mine\n"
        assert not [k for k in _tree(root) if ".prepare-" in k]
    record("corpus_prepare", "prepared")


def _often(value, *rare):
    """``value`` two times in three, else one of ``rare``."""
    return st.one_of(st.just(value), st.just(value), st.sampled_from(rare))


@st.composite
def token_meta(draw, n_tokens: int) -> bytes | None:
    """A meta.json beside a token file: absent, garbage, or a mom-tokens header with random field values."""
    kind = draw(st.sampled_from(["none", "bytes", "json", "json", "json"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=20))
    meta = {"format": draw(_often("mom-tokens", "other", None)), "format_version": draw(_often(1, 2, "1", None)),
            "dtype": draw(_often("uint16", "int32", None))}
    if draw(st.integers(0, 3)):
        meta["vocab_size"] = draw(st.one_of(st.integers(-2, 70000), st.integers(1, 300),
                                            st.sampled_from(["x", None, 1.5, "50257", [], True, 2**70])))
    for split in ("train", "val"):
        if draw(st.booleans()):
            meta[f"{split}_tokens"] = draw(st.one_of(st.just(n_tokens), st.integers(-1, 40),
                                                     st.sampled_from(["3", None, 2.0])))
    return json.dumps(meta).encode()


@fuzz_settings("load_tokens")
@given(content=st.one_of(st.binary(max_size=64),
                         st.binary(min_size=2, max_size=64).map(lambda b: b[: len(b) // 2 * 2])),
       data=st.data(), split=st.sampled_from(["train", "train", "val", "test", "../x", ""]),
       vocab=st.one_of(st.none(), st.none(), st.integers(-1, 70000)), as_file=st.booleans(), check_ids=st.booleans())
def test_load_tokens(content, data, split, vocab, as_file, check_ids):
    """``load_tokens`` on random bytes (and random meta.json): the tokens, or one DataError line."""
    meta = data.draw(token_meta(len(content) // 2), label="meta.json")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "train.bin").write_bytes(content)
        if meta is not None:
            (d / "meta.json").write_bytes(meta)
        try:
            tokens = load_tokens(d / "train.bin" if as_file else d, split, vocab_size=vocab,
                                          check_ids=check_ids)
        except MomError as e:
            assert_one_line(e)
            record("load_tokens", "data_error")
            return
        assert len(tokens) == len(content) // 2 > 0
        limit = vocab
        if limit is None:
            limit = N_VOCAB
            try:
                m = json.loads(meta) if meta else None
            except (ValueError, UnicodeDecodeError):
                m = None
            if isinstance(m, dict) and m.get("format") == "mom-tokens" and "vocab_size" in m:
                limit = int(m["vocab_size"])
        if check_ids and limit < 65536:
            assert int(np.asarray(tokens).max()) < limit
        del tokens
    record("load_tokens", "loaded")


# ============================================================================================== prompts
UNICODE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)  # any code point but surrogates
PROMPTS = st.one_of(
    UNICODE,
    st.sampled_from(["", " ", "\n", "<|endoftext|>", "The history of", "\u200b", "\U0001f600" * 3, "a\x00b"]),
    st.tuples(UNICODE, st.integers(1, 400)).map(lambda t: (t[0] or "x") * t[1]),  # longer than any n_ctx here
)


@fuzz_settings("tokenizer_round_trip")
@given(text=PROMPTS)
def test_tokenizer_round_trip(text):
    """GPT-2 BPE: every string (no lone surrogates) encodes to ids in the vocabulary and decodes back exactly."""
    enc = tokenizer()
    ids = enc.encode_ordinary(text)
    assert all(0 <= i < N_VOCAB for i in ids) and EOT not in ids
    assert enc.decode(ids) == text
    record("tokenizer_round_trip", "empty" if not ids else "round_trip")


ENGINE_SHAPES = {
    "vocab_size": mostly(st.just(N_VOCAB), st.sampled_from([97, 50304]), one_in=3),
    "n_ctx": st.sampled_from([8, 24, 64]),
}


@lru_cache(maxsize=None)
def engine_model(name: str, vocab_size: int, n_ctx: int) -> MoM:
    torch.manual_seed(0)
    cfg = small_preset(name).replace(vocab_size=vocab_size, n_ctx=n_ctx, d_model=16, n_head=2, router_hidden=8)
    return MoM(cfg).eval()


@fuzz_settings("engine_prompts")
@given(name=st.sampled_from(["tiny", "tiny-mom", "mod", "moe", "universal"]), vocab=ENGINE_SHAPES["vocab_size"],
       n_ctx=ENGINE_SHAPES["n_ctx"],
       prompts=mostly(st.one_of(UNICODE.filter(str.strip), st.lists(UNICODE.filter(str.strip), min_size=1, max_size=3)),
                      st.one_of(PROMPTS, st.lists(PROMPTS, min_size=0, max_size=3),
                                st.lists(st.integers(-2, 50400), min_size=0, max_size=12),
                                st.lists(st.lists(st.integers(-2, 50400), max_size=6), min_size=1, max_size=2)),
                      one_in=3),
       max_new=mostly(st.integers(1, 6), st.sampled_from([0, -1, 64, 10**6])),
       temperature=mostly(st.sampled_from([0.0, 0.8, 1.0, 1.5]),
                          st.sampled_from([-1.0, 1e-30, 1e-300, 5e-324, 1e30, float("inf"), float("nan")]), one_in=4),
       top_k=mostly(st.one_of(st.none(), st.integers(1, 60000)), st.sampled_from([0, -3])),
       top_p=mostly(st.one_of(st.none(), st.floats(0.01, 1.0)), st.sampled_from([0.0, 1.5, float("nan"), 1e-300])),
       seed=mostly(st.one_of(st.none(), st.integers(0, 2**31)), st.sampled_from([-1, 2**63, 2**64, -(2**64)])),
       stop=st.lists(st.sampled_from(["", ".", "\n", "the", "\U0001f600"]), max_size=2),
       use_cache=st.booleans(), stream=st.booleans())
def test_engine_prompts(name, vocab, n_ctx, prompts, max_new, temperature, top_k, top_p, seed, stop, use_cache,
                        stream):
    """Generation from a tiny random model: the requested tokens (or an early eos/stop), or one MomError line
    (empty prompt, prompt + new tokens over n_ctx, ids outside the vocabulary, bad sampling values)."""
    engine = Engine(engine_model(name, vocab, n_ctx), use_cache=use_cache)
    params = SamplingParams(max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop=stop)
    try:
        if stream:
            steps = list(engine.stream(prompts, params))
        else:
            gens = engine.generate(prompts, params)
    except MomError as e:
        assert_one_line(e)
        record("engine_prompts", "mom_error")
        return
    rows = 1 if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)) else len(prompts)
    if stream:
        assert 1 <= len(steps) <= max_new and all(len(s) == rows for s in steps)
        assert all(t is None or 0 <= t < vocab for s in steps for t in s)
    else:
        assert len(gens) == rows
        for g in gens:
            assert all(0 <= t < vocab for t in g.tokens)
            if g.finish_reason == "length":
                assert len(g.tokens) == max_new
            else:
                assert g.finish_reason in ("eos", "stop") and 1 <= len(g.tokens) <= max_new
            assert (g.text is None) == (g.prompt is None)
    record("engine_prompts", "generated")
