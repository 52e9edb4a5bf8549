"""Routing statistics against hand-computed values; `mom routes` writes valid PNG / HTML / JSON."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from mom.analysis.routes import RouteStats, route_grid, token_depths, usage_from_routes
from mom.cli.main import main
from mom.model.model import MoM, RouteRecord
from tests.conftest import cli_error, tiny_config

S_A, S_F = 3, 2  # SKIP index of the attention pool (N = 3) and of the FFN pool (N = 2)


def hand_routes() -> list[RouteRecord]:
    """One sequence of 3 tokens, one chunk, 2 steps; attention K = 2 of 3 modules, FFN K = 1 of 2, index N = SKIP.

    token:             t0            t1              t2
    attn step 0   {0, 1} .6/.4    {2, S} 1/0      {1, 2} .5/.5
    attn step 1   {1, 0} .7/.3    {S, S}          {2, S} 1/0
    ffn  step 0   0               S               1
    ffn  step 1   S               S               0
    """
    def rec(step, half, idx, w, n):
        return RouteRecord(0, step, half, torch.tensor([idx]), torch.tensor([w]), None, n)

    return [rec(0, "attn", [[0, 1], [2, S_A], [1, 2]], [[.6, .4], [1., 0.], [.5, .5]], 3),
            rec(0, "ffn", [[0], [S_F], [1]], [[1.], [0.], [1.]], 2),
            rec(1, "attn", [[1, 0], [S_A, S_A], [2, S_A]], [[.7, .3], [0., 0.], [1., 0.]], 3),
            rec(1, "ffn", [[S_F], [S_F], [0]], [[0.], [0.], [1.]], 2)]


def test_statistics_equal_hand_computed_values():
    st = RouteStats(vanilla_layers=1)
    st.add(hand_routes())
    assert st.usage(0, 0, "attn") == pytest.approx([1 / 6, 2 / 6, 2 / 6, 1 / 6])
    assert st.usage(0, 1, "attn") == pytest.approx([1 / 6, 1 / 6, 1 / 6, 3 / 6])
    assert st.usage(0, 0, "ffn") == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert st.usage(0, 1, "ffn") == pytest.approx([1 / 3, 0, 2 / 3])
    assert st.weighted_usage(0, 0, "attn") == pytest.approx([0.6 / 3, 0.9 / 3, 1.5 / 3])
    assert [st.skip_rate(0, s, h) for s, h in ((0, "attn"), (1, "attn"), (0, "ffn"), (1, "ffn"))] \
        == pytest.approx([1 / 6, 3 / 6, 1 / 3, 2 / 3])
    assert [st.skip_all(0, s, h) for s, h in ((0, "attn"), (1, "attn"), (0, "ffn"), (1, "ffn"))] \
        == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert st.modules_per_token(0, 0, "attn") == pytest.approx(5 / 3)
    # halves run: t0 3, t1 1, t2 4 → depth 1 + halves/2
    assert st.depth_histogram() == {1.5: 1, 2.5: 1, 3.0: 1}
    assert st.mean_depth() == pytest.approx(7 / 3)
    # module applications: t0 2+2+1+0, t1 1+0+0+0, t2 2+1+1+1, plus 2 per vanilla layer
    assert st.mean_applications() == pytest.approx(11 / 3 + 2)
    same = np.zeros((3, 3))
    same[0, 1] = same[1, 0] = 2  # t0 at both steps
    same[1, 2] = same[2, 1] = 1  # t2 at step 0
    assert np.array_equal(st.same_step[(0, "attn")], same)
    assert not st.same_step[(0, "ffn")].any()  # K = 1: nothing is picked together
    nxt = np.zeros((4, 4))
    for i, j in ((0, 1), (0, 0), (1, 1), (1, 0), (1, 2), (1, 3), (2, 2), (2, 3)):  # t0 {0,1}→{1,0}; t2 {1,2}→{2,S}
        nxt[i, j] += 1
    nxt[2, 3] += 2  # t1: {2, S} → {S, S}
    nxt[3, 3] += 2
    assert np.array_equal(st.next_step[(0, "attn")], nxt)
    assert np.array_equal(st.next_step[(0, "ffn")], np.array([[0, 0, 1], [1, 0, 0], [0, 0, 1]]))
    assert np.array_equal(token_depths(hand_routes(), 1), [2.5, 1.5, 3.0])


def _entropy_norm(u) -> float:
    u = np.asarray(u, dtype=float)
    return float(-(u[u > 0] * np.log(u[u > 0])).sum() / np.log(len(u)))


def _js_bits(p, q) -> float:
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    m = (p + q) / 2
    kl = lambda a: float((a[a > 0] * np.log2(a[a > 0] / m[a > 0])).sum())  # noqa: E731
    return (kl(p) + kl(q)) / 2


def test_health_per_chunk_equals_hand_computed_values():
    """The routes above, decided by learned routers allowing every choice (probabilities given)."""
    routes = [RouteRecord(r.chunk, r.step, r.half, r.idx_BTK, r.w_BTK, torch.full((1, 3, r.n_modules + 1), 0.1),
                          r.n_modules) for r in hand_routes()]
    st = RouteStats(vanilla_layers=1)
    st.add(routes)
    attn, ffn = st.health(0, "attn"), st.health(0, "ffn")
    ua = ([1 / 6, 2 / 6, 2 / 6, 1 / 6], [1 / 6, 1 / 6, 1 / 6, 3 / 6])
    assert attn["entropy"] == pytest.approx((_entropy_norm(ua[0]) + _entropy_norm(ua[1])) / 2, abs=1e-5)
    assert attn["skip"] == pytest.approx(1 / 3, abs=1e-5)
    assert attn["same_path"] == pytest.approx(1 / 3, abs=1e-5)  # t0: {0, 1} twice; t1 and t2 change
    assert attn["step_js_bits"] == pytest.approx(_js_bits(*ua), abs=1e-5)
    uf = ([1 / 3, 1 / 3, 1 / 3], [1 / 3, 0, 2 / 3])
    assert ffn["same_path"] == pytest.approx(1 / 3, abs=1e-5)  # t1: SKIP twice
    assert ffn["step_js_bits"] == pytest.approx(_js_bits(*uf), abs=1e-5)
    assert json.loads(json.dumps(st.summary()))["chunks"]["chunk0.ffn"]["health"] == ffn
    # static routes (no probabilities: nothing was decided) have no health
    static = RouteStats(1)
    static.add(hand_routes())
    assert set(static.health(0, "attn").values()) == {None}


def test_accumulating_twice_doubles_counts_and_keeps_fractions():
    once, twice = RouteStats(1), RouteStats(1)
    once.add(hand_routes())
    twice.add(hand_routes())
    twice.add(hand_routes())
    assert twice.tokens == 6 and twice.forwards == 2
    assert np.array_equal(twice.same_step[(0, "attn")], 2 * once.same_step[(0, "attn")])
    assert twice.usage(0, 1, "attn") == pytest.approx(once.usage(0, 1, "attn"))
    assert twice.mean_depth() == pytest.approx(once.mean_depth())
    assert json.loads(json.dumps(twice.summary()))["effective_depth"]["histogram"] == {"1.5": 2, "2.5": 2, "3": 2}


def test_route_grid_rows_and_skip_marker():
    labels, idx, w = route_grid(hand_routes())
    assert labels[:3] == ["c0 h0 A #1", "c0 h0 A #2", "c0 h0 F"]
    assert idx.shape == (6, 3) and idx[1].tolist() == [1, -1, 2] and idx[2].tolist() == [0, -1, 1]
    assert w[0].tolist() == pytest.approx([0.6, 1.0, 0.5])


def test_statistics_of_a_real_forward_are_consistent():
    cfg = tiny_config(selection="expert")
    model = MoM(cfg).eval()
    routes = model(torch.randint(0, 97, (2, 16)), return_routes=True).routes
    st = RouteStats(cfg.n_vanilla_layers)
    st.add(routes)
    for (c, s, h) in st.steps:
        assert st.usage(c, s, h).sum() == pytest.approx(1.0)
    usage = usage_from_routes(routes)
    for h in ("attn", "ffn"):
        mean = np.mean([st.modules_per_token(c, s, hh) for (c, s, hh) in st.steps if hh == h])
        assert mean == pytest.approx(usage[h])
    assert cfg.n_vanilla_layers <= st.mean_depth() <= cfg.depth


# ---------------------------------------------------------------------------------------------- CLI
class _Checker(HTMLParser):
    """Collects tags, checks nesting of the elements we write, and notes any non-data external reference."""

    VOID = {"meta", "img", "br", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and not (v or "").startswith("data:"):
                self.external.append(v)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


@pytest.fixture
def ckpt(tmp_path):
    MoM(tiny_config(n_attn=4, n_ffn=4, n_ctx=64)).save_pretrained(tmp_path / "ck")
    data = tmp_path / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, 97, 2048).astype(np.uint16).tofile(data / "val.bin")
    return tmp_path / "ck", data


def test_cli_writes_png_html_and_json(ckpt, tmp_path, capsys):
    import matplotlib.image

    ck, data = ckpt
    common = ["routes", "--ckpt", str(ck), "--data", str(data), "--windows", "3", "--seq-len", "32"]
    assert main([*common, "--out", str(tmp_path / "r.png")]) == 0
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(tmp_path / "r.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    assert main([*common, "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.stack and not checker.external and "script" not in checker.tags
    assert checker.tags.count("table") >= 4 and "img" in checker.tags  # grid, steps, depth, co-occurrence, figure
    assert page.startswith("<!DOCTYPE html>") and "effective depth" in page

    assert main([*common, "--out", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["tokens"] == 3 * 32 and len(r["steps"]) == 2 * 2 and "chunk0.attn" in r["chunks"]
    health = r["chunks"]["chunk0.attn"]["health"]
    assert set(health) == {"entropy", "skip", "same_path", "step_js_bits"}
    assert all(0 <= v <= 1 for v in health.values())
    printed = capsys.readouterr().out
    assert "mean effective depth" in printed and "chunk 0 routing: attn ent" in printed
    assert "Routing health per chunk" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data", "r.html", "r.json", "r.png"]  # no temp files
    # --json prints the same numbers (and nothing else) to stdout, with or without a file
    assert main([*common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == r
    assert main([*common, "--json", "--out", str(tmp_path / "r2.json")]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "r2.json").read_text()) == r


def test_cli_text_input(tmp_path, capsys):
    MoM(tiny_config(vocab_size=50257, d_model=16, n_ctx=64)).save_pretrained(tmp_path / "gpt2vocab")
    out = tmp_path / "t.html"
    assert main(["routes", "--ckpt", str(tmp_path / "gpt2vocab"), "--text", "Modules <assemble> & route.",
                 "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "&lt;" in page and "<assemble>" not in page  # token text is escaped
    _Checker().feed(page)


def test_cli_errors(ckpt, tmp_path, capsys):
    ck, data = ckpt
    assert "unsupported extension '.gif'" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--data", str(data), "--out", str(tmp_path / "r.gif")])
    assert "does not exist" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--data", str(data), "--out", str(tmp_path / "no" / "r.png")])
    assert "checkpoint directory not found" in cli_error(capsys, ["routes", "--ckpt", str(tmp_path / "none"), "--text", "hi", "--out", str(tmp_path / "r.png")])
    assert "outside this model's vocabulary (97)" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--text", "Hello world", "--out", str(tmp_path / "r.png")])
    assert "--text is empty" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--text", "  ", "--out", str(tmp_path / "r.png")])
    assert "exceeds the model's context length" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--data", str(data), "--seq-len", "65", "--out", str(tmp_path / "r.png")])
    assert "give --out FILE (.png, .html or .json) or --json" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--data", str(data)])
    assert "one of the arguments --text --data is required" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--out", str(tmp_path / "r.png")])
    (tmp_path / "dir.png").mkdir()
    assert "is a directory" in cli_error(capsys, ["routes", "--ckpt", str(ck), "--data", str(data), "--windows", "1", "--out", str(tmp_path / "dir.png")])
    MoM(tiny_config(chunks=0, bottom=2, top=0)).save_pretrained(tmp_path / "vanilla")
    assert "nothing is routed" in cli_error(capsys, ["routes", "--ckpt", str(tmp_path / "vanilla"), "--data", str(data), "--out", str(tmp_path / "r.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data", "dir.png", "vanilla"]
