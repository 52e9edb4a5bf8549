"""What people expect of generation: text streamed per row that joins to the generated text exactly, timing and
finish reasons, a log line before compiling, sliding-window generation past n_ctx, labelled streaming of several
prompts from the command line, one default temperature."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from mom.config.model import preset
from mom.data.tokenizer import tokenizer
from mom.errors import MomError
from mom.inference.engine import DEFAULT_TEMPERATURE, Engine, SamplingParams, StreamTexts
from mom.model.model import MoM
from tests.conftest import counting_compile, tiny_config

PROMPTS = ["The history of", "Once upon a time there was"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoM(tiny_config(vocab_size=50257, n_ctx=24)).eval()


@pytest.mark.parametrize("stop", [[], [" the", "e"], ["zz"]])
def test_streamed_text_joins_to_the_generated_text(model, stop):
    engine = Engine(model)
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, stop=stop)
    want = engine.generate(PROMPTS, p)
    got: dict[int, str] = {0: "", 1: ""}
    results: list = []
    for b, piece in engine.stream_text(PROMPTS, p, results=results):
        assert piece
        got[b] += piece
    assert [got[0], got[1]] == [g.text for g in want]
    assert [g.tokens for g in results] == [g.tokens for g in want]
    assert [g.finish_reason for g in results] == [g.finish_reason for g in want]


def test_stream_text_holds_back_unfinished_characters():
    """A character split over tokens decodes to U+FFFD until its last byte arrives: never streamed."""
    tok = tokenizer()
    text = "語彙 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    ids = tok.encode_ordinary(text)
    assert len(ids) > len(text.split())  # the rare characters take several tokens each

    class FakeEngine:
        eot = tok.eot_token

        def decode(self, ids):
            return tok.decode(ids)

    texts, pieces = StreamTexts(FakeEngine(), SamplingParams()), []
    for t in ids:
        pieces.append(texts.add(0, t))
    pieces += [p for _, p in texts.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_generations_report_time_tokens_per_second_and_finish_reasons(model):
    gens = Engine(model).generate(PROMPTS, max_new_tokens=5, temperature=0)
    for g in gens:
        assert g.finish_reason in ("length", "eos", "stop") and g.seconds > 0 and g.compile_seconds == 0
        assert g.tokens_per_s == pytest.approx(len(g.tokens) / g.seconds)
    assert SamplingParams().temperature == DEFAULT_TEMPERATURE == 1.0


def test_a_compile_is_announced_once_per_new_batch_size(model, monkeypatch):
    counting_compile(monkeypatch)
    said: list[str] = []
    engine = Engine(model, compile=True, log=said.append)
    g = engine.generate([[1, 2, 3]], max_new_tokens=3, temperature=0)[0]
    engine.generate([[4, 5]], max_new_tokens=3, temperature=0)
    assert len(said) == 1 and said[0].startswith("compiling the decode step")
    assert g.compile_seconds > 0
    engine.generate([[1], [2]], max_new_tokens=3, temperature=0)  # a second batch size compiles once more
    assert len(said) == 2


def _window_reference(model, prompt: list[int], n: int, window: int) -> list[int]:
    """Greedy tokens with the sliding rule spelled out: the context grows to n_ctx, then keeps its last `window`
    tokens; every step recomputes the whole context."""
    ctx, out = list(prompt), []
    for _ in range(n):
        with torch.no_grad():
            t = int(model(torch.tensor([ctx]), causal_routing=True).logits[0, -1].argmax())
        out.append(t)
        ctx.append(t)
        if len(ctx) > model.config.n_ctx:
            ctx = ctx[-window:]
    return out


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return MoM(tiny_config(n_ctx=12)).eval()  # vocabulary 97: cheap to recompute


@pytest.mark.parametrize("window", [1, 7, 11])
def test_sliding_window_generation_goes_past_n_ctx(small, window):
    model, n_ctx = small, small.config.n_ctx
    prompts = [[7, 8, 9, 10, 11], [3, 4]]
    want = [_window_reference(model, p, 3 * n_ctx, window) for p in prompts]
    for use_cache in (True, False):
        got = Engine(model, use_cache=use_cache).generate(prompts, max_new_tokens=3 * n_ctx, temperature=0,
                                                          slide=window, ignore_eos=True)
        assert [g.tokens for g in got] == want, use_cache
    long_prompt = list(range(1, 2 * n_ctx))  # longer than the context: starts from its last `window` tokens
    got = Engine(model).generate([long_prompt], max_new_tokens=4, temperature=0, slide=window, ignore_eos=True)
    assert got[0].tokens == _window_reference(model, long_prompt[-window:], 4, window)


@pytest.mark.parametrize("slide, message", [(24, "slide window 24 must be smaller than the context n_ctx=24"),
                                            (99, "slide window 99 must be smaller"), (0, "slide must be ≥ 1")])
def test_bad_slide_windows(model, slide, message):
    with pytest.raises(MomError, match=re.escape(message)):
        Engine(model).generate([[1, 2]], max_new_tokens=30, slide=slide)


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    MoM(preset("tiny-mom").replace(d_model=32, n_head=4, n_ctx=64)).save_pretrained(d)
    return d


def _mom(*args):
    return subprocess.run([sys.executable, "-m", "mom.cli", *map(str, args)], capture_output=True, text=True)


def test_streaming_two_prompts_prints_labelled_lines_of_the_same_text(ckpt):
    args = ["generate", "--ckpt", ckpt, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "40",
            "--seed", "3", "--top-k", "50"]
    plain, streamed = _mom(*args), _mom(*args, "--stream")
    assert plain.returncode == 0 and streamed.returncode == 0, streamed.stderr
    texts = plain.stdout.split("-" * 40 + "\n")[:2]
    rows: dict[str, list[str]] = {"1": [], "2": []}
    for line in streamed.stdout.splitlines():
        m = re.fullmatch(r"\[(\d)\] (.*)", line)
        assert m, line
        rows[m.group(1)].append(m.group(2))
    assert rows["1"] and rows["2"]

    def words(s):
        return s.split()

    assert words(" ".join(rows["1"])) == words(texts[0]) and words(" ".join(rows["2"])) == words(texts[1])
    for r in (plain, streamed):  # the summary on stderr
        last = r.stderr.strip().splitlines()[-1]
        assert re.search(r"generated \d+ tokens for 2 prompts in [\d.]+ s: [\d.]+ tokens/s; finish: \[1\] \w+, "
                         r"\[2\] \w+", last), last


def test_cli_sliding_window_and_its_errors(ckpt):
    r = _mom("generate", "--ckpt", ckpt, "--prompt", "Hello", "--max-new-tokens", "100", "--temperature", "0",
             "--slide")  # past n_ctx=64, keeping n_ctx/2
    assert r.returncode == 0, r.stderr
    assert "generated 100 tokens" in r.stderr or "finish: eos" in r.stderr
    for window, message in (("65", "slide window 65 must be smaller than the context n_ctx=64"),):
        e = _mom("generate", "--ckpt", ckpt, "--prompt", "Hello", "--slide", window)
        lines = e.stderr.strip().splitlines()
        assert e.returncode == 2 and len(lines) == 1 and lines[0].startswith("mom: error: ") and message in lines[0]
    no_slide = _mom("generate", "--ckpt", ckpt, "--prompt", "Hello", "--max-new-tokens", "100")
    assert no_slide.returncode == 2 and "--slide WINDOW generates past it" in no_slide.stderr
