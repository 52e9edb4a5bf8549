"""Module pruning: exactness when the pruned modules were never chosen, loadable output, `mom prune` errors."""

import json

import numpy as np
import pytest
import torch

from mom.analysis.prune import choose_kept, keep_count, prune, pruned_config
from mom.cli.main import main
from mom.model.model import MoM
from tests.conftest import cli_error, tiny_config

NEVER = -1e9  # a router logit bias that gives a module probability exactly 0


def diversify(model: MoM) -> MoM:
    """Make routing depend on the token. At init the residual stream is tiny (embeddings have std 0.02), so a
    router's hidden state is nearly the same for every token and a few modules win everywhere; larger input and
    output weights spread the picks over all modules."""
    with torch.no_grad():
        for chunk in model.chunks:
            for half in ("attn", "ffn"):
                router = getattr(chunk, f"router_{half}")
                if hasattr(router, "gru"):
                    router.gru.weight_ih.normal_(0.0, 5.0)
                else:
                    router.fc.weight.normal_(0.0, 5.0)
                    router.fc.bias.normal_(0.0, 0.5)
                router.out.weight.normal_(0.0, 1.0)
                if router.step_bias is not None:  # a per-(step, choice) bias: pruning must keep the right columns
                    router.step_bias.normal_(0.0, 1.0)
    return model


def silence(model: MoM, chunk: int, half: str, modules: list[int]) -> None:
    """Make the router of (chunk, half) never choose ``modules``."""
    with torch.no_grad():
        getattr(model.chunks[chunk], f"router_{half}").out.bias[modules] = NEVER


def tokens(n: int, seed: int, vocab: int = 97, T: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fields", [dict(router="gru"), dict(router="mlp", top_k=1), dict(chunks=2, top=0),
                                    dict(router="gru", router_step="both", router_norm="rmsnorm"),
                                    dict(router="gru", router_step="both", router_norm="centered")])
def test_pruning_never_chosen_modules_changes_nothing(fields):
    cfg = tiny_config(n_attn=4, n_ffn=4, **fields)
    model = diversify(MoM(cfg).eval())
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("center_HD"):  # (router_norm='centered': a running mean the pruned model must keep;
                b.normal_(0, 0.01)  # at the residual stream's scale, so routing still depends on the token)
    silenced = {}
    for c in range(cfg.chunks):  # different modules in each chunk: each chunk is pruned on its own
        silenced[(c, "attn")] = [1, 3] if c == 0 else [0, 2]
        silenced[(c, "ffn")] = [2] if c == 0 else [3]
        for (cc, half), mods in silenced.items():
            if cc == c:
                silence(model, c, half, mods)
    pruned, report = prune(model, 0.5, 0.75, "usage", [tokens(16, 1)])
    assert (pruned.config.n_attn, pruned.config.n_ffn) == (2, 3)
    for c, ch in enumerate(report["chunks"]):
        for half in ("attn", "ffn"):
            importance = ch[half]["importance"]
            assert all(importance[m] > 0 for m in ch[half]["kept"])  # the others were used: a real choice
            assert ch[half]["removed"] == silenced[(c, half)]
            assert all(importance[m] == 0 for m in silenced[(c, half)])
    idx = tokens(3, 2)
    with torch.no_grad():
        want, got = model(idx).logits, pruned(idx).logits
    assert (want - got).abs().max().item() <= 1e-5


def test_prune_by_norm_removes_the_smallest_modules():
    model = MoM(tiny_config(n_attn=4, n_ffn=4))
    with torch.no_grad():
        model.chunks[0].pool.attn.c_proj.weight[2].mul_(0.01)
        model.chunks[0].pool.mlp.c_fc.weight[0].zero_()
    _, report = prune(model, 0.75, 0.75, "norm")
    assert report["chunks"][0]["attn"]["removed"] == [2] and report["chunks"][0]["ffn"]["removed"] == [0]
    assert report["tokens_measured"] == 0


def test_expert_choice_thresholds_are_pruned_with_their_modules():
    model = MoM(tiny_config(n_attn=4, n_ffn=4, selection="expert"))
    with torch.no_grad():
        model.chunks[0].threshold_attn.copy_(torch.arange(8.0).view(2, 4))
    pruned, report = prune(model, 0.5, 1.0, "norm")
    kept = report["chunks"][0]["attn"]["kept"]
    assert torch.equal(pruned.chunks[0].threshold_attn, torch.arange(8.0).view(2, 4)[:, kept])
    pruned(tokens(2, 0))  # runs


def test_keep_counts_and_ranking():
    assert [keep_count(4, 0.5), keep_count(4, 0.75), keep_count(3, 0.5), keep_count(4, 1.0), keep_count(10, 0.01)] \
        == [2, 3, 2, 4, 1]
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(Exception, match="must be a fraction in \\(0, 1\\]"):
            keep_count(4, bad)
    assert choose_kept(np.array([0.1, 0.5, 0.1, 0.3]), 2) == [1, 3]
    assert choose_kept(np.array([0.0, 0.0, 0.0]), 2) == [0, 1]  # ties: lower index first


def test_top_k_is_capped_to_what_remains():
    cfg = tiny_config(n_attn=3, n_ffn=3, top_k=3)
    new, notes = pruned_config(cfg, 1, 3)
    assert new.k("attn") == 2 and new.k("ffn") == 3 and new.n_attn == 1
    assert notes == ["attn top_k lowered from 3 to 2: only 1 module(s) + SKIP remain"]


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def ckpt(tmp_path):
    model = diversify(MoM(tiny_config(n_attn=4, n_ffn=4)).eval())
    silence(model, 0, "attn", [0, 2])
    silence(model, 0, "ffn", [1])
    model.save_pretrained(tmp_path / "ck")
    data = tmp_path / "data"
    data.mkdir()
    np.random.default_rng(0).integers(0, 97, 4096).astype(np.uint16).tofile(data / "val.bin")
    (data / "train.bin").write_bytes((data / "val.bin").read_bytes())
    return model, tmp_path / "ck", data


def test_cli_writes_a_loadable_checkpoint_that_trains_further(ckpt, tmp_path, capsys):
    model, ck, data = ckpt
    out = tmp_path / "pruned"
    assert main(["prune", "--ckpt", str(ck), "--attn-keep", "0.5", "--ffn-keep", "0.75", "--data", str(data),
                 "--windows", "4", "--seq-len", "32", "--out", str(out)]) == 0
    assert "attention modules 4 → 2, FFN modules 4 → 3" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data", "pruned"]  # no temporary left behind
    pruned = MoM.from_pretrained(out).eval()
    report = json.loads((out / "prune.json").read_text())
    assert report["chunks"][0]["attn"]["removed"] == [0, 2] and report["chunks"][0]["ffn"]["removed"] == [1]
    idx = tokens(2, 5)
    with torch.no_grad():
        assert (model(idx).logits - pruned(idx).logits).abs().max().item() <= 1e-5
    # `mom train --init-from` continues from it (same layout: every weight is loaded)
    run = tmp_path / "run"
    assert main(["train", "--config", str(out), "--init-from", str(out), "--data", str(data), "--out", str(run),
                 "--no-progress", "--train.max_steps", "2", "--train.batch_size", "2", "--train.seq_len", "16",
                 "--train.warmup_steps", "1", "--train.eval_tokens", "32", "--train.ckpt_interval", "0"]) == 0
    trained = MoM.from_pretrained(run)
    assert trained.config.n_attn == 2 and not torch.equal(trained.wte.weight, pruned.wte.weight)


@pytest.mark.parametrize("keep, message", [
    ("0", "--attn-keep must be a fraction in (0, 1], got 0 (0 would remove every module)"),
    ("1.5", "--attn-keep must be a fraction in (0, 1], got 1.5"),
    ("-1", "--attn-keep must be a fraction in (0, 1]"),
])
def test_cli_bad_fractions(ckpt, tmp_path, capsys, keep, message):
    _, ck, data = ckpt
    assert message in cli_error(capsys, ["prune", "--ckpt", str(ck), "--attn-keep", keep, "--data", str(data),
                              "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_cli_errors(ckpt, tmp_path, capsys):
    model, ck, data = ckpt
    out = str(tmp_path / "o")
    assert "/nonexistent: checkpoint directory not found" in cli_error(capsys,
        ["prune", "--ckpt", "/nonexistent", "--attn-keep", "0.5", "--out", out])
    assert "--data applies only to --by usage" in cli_error(capsys, ["prune", "--ckpt", str(ck), "--by", "norm", "--data", str(data), "--out", out])
    assert "--out must differ" in cli_error(capsys, ["prune", "--ckpt", str(ck), "--by", "norm", "--out", str(ck)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert "exists and is not empty; pass --force" in cli_error(capsys, ["prune", "--ckpt", str(ck), "--by", "norm", "--attn-keep", "0.5", "--out", str(tmp_path / "full")])
    for fields, message in ((dict(chunks=0, bottom=2, top=0), "vanilla model"),
                            (dict(attn_candidates="diagonal", n_attn=2), "pruning needs candidates 'all'"),
                            (dict(router="fixed", skip=False, top_k=1), "pruning needs a learned router")):
        MoM(tiny_config(**fields)).save_pretrained(tmp_path / "other")
        assert message in cli_error(capsys, ["prune", "--ckpt", str(tmp_path / "other"), "--by", "norm", "--attn-keep", "0.5",
                                  "--out", out])
    assert not (tmp_path / "o").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_cli_force_replaces_an_earlier_pruned_checkpoint_and_nothing_else(ckpt, tmp_path, capsys):
    _, ck, _ = ckpt
    out = tmp_path / "o"
    args = ["prune", "--ckpt", str(ck), "--by", "norm", "--out", str(out), "--force"]
    assert main(args + ["--ffn-keep", "0.75"]) == 0
    assert main(args + ["--ffn-keep", "0.5"]) == 0  # replaces the first one
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.safetensors",
                                                        "prune.json"]
    assert MoM.from_pretrained(out).config.n_ffn == 2
    # A directory holding anything else is never replaced, --force or not: a user's files, or the source
    # checkpoint itself when --out is its parent.
    (out / "notes.txt").write_text("mine")
    assert "holds more than a pruned checkpoint (notes.txt)" in cli_error(capsys, args + ["--ffn-keep", "0.5"])
    assert (out / "notes.txt").read_text() == "mine" and MoM.from_pretrained(out).config.n_ffn == 2
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "holds more than a pruned checkpoint (" in cli_error(capsys, ["prune", "--ckpt", str(ck), "--by", "norm", "--ffn-keep", "0.5", "--out", str(tmp_path), "--force"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (ck / "model.safetensors").is_file()
