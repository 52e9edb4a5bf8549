from pathlib import Path

import numpy as np
import pytest
import torch

from mom.config.model import MoMConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(**fields) -> MoMConfig:
    """A small MoM for fast CPU tests (vocab 97, width 32, 4 heads)."""
    base = dict(name="test", vocab_size=97, n_ctx=32, d_model=32, n_head=4, bottom=1, top=1, chunks=1,
                n_attn=3, n_ffn=2, steps=2, top_k=2, anchor=True, router="gru", router_hidden=16, skip=True,
                temperature=1.0)
    base.update(fields)
    return MoMConfig(**base)


def sharpen_routers(model):
    """Sharper routers than the default init, so that routes differ between tokens (and SKIP is taken sometimes):
    router output weights, step biases and step embeddings (the last two start at zero) drawn at N(0, 1), the
    running means of ``router_norm='centered'`` (zero at the start) at N(0, 0.5²). Returns the model."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "router" in n and n.endswith(("out.weight", "step_bias", "step_embed")):
                p.normal_(0, 1.0)
        for n, b in model.named_buffers():
            if n.endswith("center_HD"):
                b.normal_(0, 0.5)
    return model


def counting_compile(monkeypatch):
    """Make ``torch.compile`` trace with dynamo's tracing-only backend, counting compiled frames (fast, no
    inductor); returns the counter. Dynamo's caches are reset first."""
    from torch._dynamo.testing import CompileCounter

    counter, real_compile = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counter))
    torch._dynamo.reset()
    return counter


def train_outputs(models, idx):
    """Forward (with routes) and backward of each model on the same batch; returns their outputs, the gradients
    left in the models."""
    outs = []
    for model in models:
        out = model(idx, idx, return_routes=True)
        (out.loss + out.aux_loss).backward()
        outs.append(out)
    return outs


def param_grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def make_hf_gpt2(tmp_path, *, n_layer=2, n_embd=32, n_head=4, vocab=97, n_positions=32, seed=0):
    """An HF GPT2LMHeadModel with random weights saved to tmp_path (no download)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                  n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # Random LayerNorm affine parameters and biases too, so a mis-mapped tensor cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def write_tokens(d: Path, n_train: int = 20000, n_val: int = 2000, seed: int = 0) -> Path:
    """A nanoGPT-style dataset (train.bin/val.bin, uint16, no meta.json) from a noisy deterministic chain:
    next = (7·prev + 3) mod 97 with probability 0.9, else random — learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("val", n_val)):
        ids = np.empty(n, dtype=np.uint16)
        ids[0] = 1
        noise = rng.random(n) < 0.1
        rand = rng.integers(0, 97, n)
        for i in range(1, n):
            ids[i] = rand[i] if noise[i] else (7 * int(ids[i - 1]) + 3) % 97
        ids.tofile(d / f"{name}.bin")
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A token dataset for training tests (one per test module)."""
    return write_tokens(tmp_path_factory.mktemp("data") / "tok")


@pytest.fixture(params=["one-by-one", "static-bias-in-op", "static-bias-outside-nan-tail"])
def grouped_path(request, monkeypatch):
    """The ways the grouped dispatcher runs. ``one-by-one``: the CPU eager default, each module's single form on
    its slice of the sorted rows. The static paths are those of CUDA and ``torch.compile``: ``bias-in-op`` is the
    grouped op of the CPU fallback; ``bias-outside-nan-tail`` is the CUDA kernel's, with bias and SKIP mask applied
    outside the op and the op's SKIP rows (forward and input gradient) unspecified: here they are filled with
    NaN, so any read of them shows up in the values or gradients."""
    if request.param.startswith("static"):
        monkeypatch.setattr("mom.model.dispatch.groups_one_by_one", lambda x: False)
    if request.param == "static-bias-outside-nan-tail":
        monkeypatch.setattr("mom.model.ops.RAW_TAIL_FILL", float("nan"))
        monkeypatch.setattr("mom.model.modules.bias_outside_gemm", lambda x, w: True)
        monkeypatch.setattr("mom.model.modules.skip_rows_unspecified", lambda x: True)
        monkeypatch.setattr("mom.model.dispatch.skip_rows_unspecified", lambda x: True)
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded, and a shared 2-core machine makes multi-threaded ops crawl (measured:
    a property test took 4.7 s on one thread instead of 15 s on two). Use with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``mom argv`` in this process; assert it failed as a user error: exit 2, one line ``mom: error: …`` on
    stderr, no traceback. Returns the line."""
    from mom.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mom: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


_WORDS = ("the of and to in is was for on with as by at from that this it be are were his her an which or river "
          "mountain city music science history language water light energy planet animal forest king war small large "
          "early modern north south old new first time year people world").split()


def marker(doc: int) -> str:
    """The CJK character only document ``doc`` of :func:`write_text_corpus` holds (its second UTF-8 byte differs
    from every other document's, so no byte pair of it occurs elsewhere)."""
    return chr(0x4E00 + 64 * doc)


def write_text_corpus(d: Path, n_docs: int = 10, seed: int = 0) -> Path:
    """``n_docs`` small .txt documents (~3 KB each) of sentences from a small word list, accented text, numbers and
    the document's own :func:`marker` (four in a row, 40 times): a corpus a byte-level BPE learns ~650 tokens from."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(40):
            words = " ".join(rng.choice(_WORDS, size=int(rng.integers(5, 12))))
            lines.append(f"{words.capitalize()} {marker(i) * 4}. Année {int(rng.integers(1000, 2000))} — ok!")
        (d / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d
