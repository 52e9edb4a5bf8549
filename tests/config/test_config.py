"""Config validation, presets, JSON round trip and analytic counts."""

import json

import pytest
import torch

from mom.config.model import MoMConfig, preset, preset_names, resolve_config
from mom.errors import ConfigError
from mom.model.flops import count
from mom.model.model import MoM
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_head=5), "n_head \\(5\\) must divide d_model \\(32\\)"),
        (dict(top_k=5), "attn top_k \\(5\\) exceeds the choices at a step \\(3 modules \\+ SKIP\\)"),
        (dict(bottom=-1), "bottom \\(a layer count\\) must be ≥ 0"),
        (dict(steps=0), "steps \\(H\\) must be ≥ 1"),
        (dict(router="lstm"), "router must be one of 'gru', 'mlp', 'fixed', 'linear'"),
        (dict(router="fixed"), "cannot choose SKIP"),
        (dict(temperature=0.0), "temperature must be ≥ 1e-6"),
        # valid configs whose random model gave NaN logits or losses (balance_coef found by tests/test_fuzz.py, the
        # other two when checking every float field at its extremes)
        (dict(temperature=1e-30), "temperature must be ≥ 1e-6"),
        (dict(init_std=1e4), "init_std in \\(0, 1\\]"),
        (dict(balance_coef=3.5e38), "balance_coef must be a number in \\[0, 1e6\\]"),
        (dict(attn_candidates="diagonal", steps=4), "n_attn \\(3\\) must be ≥ steps \\(4\\)"),
        (dict(ffn_candidates="grouped", steps=3, n_ffn=4), "steps \\(3\\) must divide n_ffn \\(4\\)"),
        (dict(selection="expert", skip=False), "needs skip=true"),
        (dict(selection="expert", capacity=1.5), "capacity must be in \\(0, 1\\]"),
        (dict(top_k="2"), "top_k must be an integer"),
        (dict(chunks=0, bottom=0, top=0), "no layers"),
        # published baselines and the official code's switches
        (dict(router="linear"), "router='linear' is Mixture-of-Depths' score .* needs selection='expert'"),
        (dict(route_unit="block"), "route_unit='block' .* n_attn, candidates and top_k must be equal"),
        (dict(route_unit="block", n_ffn=3, router="fixed", skip=False, top_k=1), "router='fixed' has none"),
        (dict(route_unit="blocks"), "route_unit must be one of 'half', 'block'"),
        (dict(qkv_combine="mean"), "qkv_combine must be one of 'weighted', 'sum'"),
        (dict(balance="official", balance_scope="pooled"), "balance='official' pools over the whole model"),
        (dict(balance="switch"), "balance must be one of 'ours', 'official'"),
        (dict(attention="flash"), "attention must be one of 'sdpa', 'eager'"),
        (dict(chunk_layers=2), r"chunk_layers \(2\) must be 0 or ≥ the larger pool"),
        (dict(chunk_layers=-1), "chunk_layers must be ≥ 0"),
        (dict(router_init="layer_map"), "router_init='layer_map' sets the per-step logit bias: it needs router_step "
                                        "'bias' or 'both', got 'none'"),
        (dict(router_init="layer_map", router_step="embed"), "needs router_step 'bias' or 'both', got 'embed'"),
        (dict(router="fixed", skip=False, top_k=1, router_norm="rmsnorm"), "router='fixed' has no learned router"),
        (dict(router_init_bias=0.0), "router_init_bias must be in \\(0, 50\\]"),
        (dict(router_center_momentum=0.0), "router_center_momentum must be in \\(0, 1\\]"),
        (dict(route_weights="softmax"), "route_weights must be one of 'auto', 'renorm', 'probs'"),
        (dict(router_step="steps"), "router_step must be one of 'none', 'bias', 'embed', 'both'"),
    ],
)
def test_invalid_configs_say_what_and_why(fields, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**fields)


def test_all_presets_build_and_counts_match_the_model():
    for name in preset_names() + ["K3H1S", "K1H4M"]:
        cfg = preset(name)
        with torch.device("meta"):
            model = MoM(cfg)
        assert count(cfg).params == model.num_params(), name
        assert count(cfg).depth == cfg.depth


def test_paper_regimes():
    for scale, layers in (("small", 12), ("medium", 24), ("large", 36)):
        vanilla = preset("gpt2" if scale == "small" else f"gpt2-{scale}")
        p, e, e2 = preset(f"mom-p-{scale}"), preset(f"mom-e-{scale}"), preset(f"mom-e-{scale}-k2")
        assert vanilla.depth == layers and p.gpt2_layers == e.gpt2_layers == e2.gpt2_layers == layers
        assert p.depth > vanilla.depth > e.depth
        # the paper's chunk (4 modules + anchor, H = 6, top-2) after one bottom layer; MoM_E with top-3
        assert (p.bottom, p.n_attn, p.steps, p.top_k, p.anchor) == (1, 4, 6, 2, True)
        assert (e.top_k, e2.top_k) == (3, 2) and e.replace(name=e2.name, top_k=2) == e2
        # Equal parameters up to the routers (GRU routers with r=256 add ~0.8M each: < 3% at GPT-2 small).
        assert abs(count(p).params - count(vanilla).params) / count(vanilla).params < 0.03
        assert abs(count(e).params - count(vanilla).params) / count(vanilla).params < 0.03
    g = preset("K3H1S")
    assert (g.top_k, g.steps, g.d_model) == (3, 1, 768)


def test_json_round_trip_and_errors(tmp_path):
    cfg = preset("tiny-mom")
    cfg.save(tmp_path / "c.json")
    assert MoMConfig.load(tmp_path / "c.json") == cfg
    assert resolve_config(str(tmp_path / "c.json")) == cfg
    (tmp_path / "bad.json").write_text(json.dumps({**cfg.to_dict(), "n_heads": 4}))
    with pytest.raises(ConfigError, match="unknown field\\(s\\) n_heads \\(did you mean 'n_head'\\?\\)"):
        MoMConfig.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{\"d_model\": ")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MoMConfig.load(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="unknown preset 'tiny-mo' \\(did you mean 'tiny-mom'"):
        preset("tiny-mo")


def test_version_1_configs_keep_the_kept_weight_rule_they_were_trained_with(tmp_path):
    """``route_weights`` (format version 2) changes what a K = 1 half computes by default: a version-1 file, written
    before the field existed, loads with the rule its model was trained under (the paper code's ``renorm``)."""
    cfg = preset("layerskip")
    old = {k: v for k, v in cfg.to_dict().items() if k != "route_weights"}
    (tmp_path / "v1.json").write_text(json.dumps({"format_version": 1, **old}))
    assert MoMConfig.load(tmp_path / "v1.json") == cfg.replace(route_weights="renorm")
    (tmp_path / "v2.json").write_text(json.dumps({"format_version": 2, **old}))  # current: the default
    assert MoMConfig.load(tmp_path / "v2.json").route_weights == "auto"
    (tmp_path / "none.json").write_text(json.dumps(old))  # a hand-written file without a version: current
    assert MoMConfig.load(tmp_path / "none.json").route_weights == "auto"
    cfg.save(tmp_path / "saved.json")
    assert json.loads((tmp_path / "saved.json").read_text())["format_version"] == 2
    assert MoMConfig.load(tmp_path / "saved.json") == cfg
    (tmp_path / "v9.json").write_text(json.dumps({"format_version": 9, **old}))
    with pytest.raises(ConfigError, match="format_version 9 is not supported \\(expected 1 or 2\\)"):
        MoMConfig.load(tmp_path / "v9.json")


def test_replace_parses_strings_and_keeps_gpt2_ffn_ratio():
    cfg = preset("tiny").replace(top_k="2", skip="false", d_model="64", attn_top_k="none")
    assert cfg.top_k == 2 and cfg.skip is False and cfg.d_ff == 256 and cfg.attn_top_k is None
    with pytest.raises(ConfigError, match="skip must be true or false"):
        preset("tiny").replace(skip="maybe")


def test_wrong_types_and_odd_field_names_are_one_line_errors():
    # found by tests/test_fuzz.py: d_ff=0 (4·d_model) was computed before d_model's type was checked
    with pytest.raises(ConfigError, match="d_model must be an integer, got {}"):
        MoMConfig(d_model={}, d_ff=0)
    for bad in ({"a\nb": 1}, {"x": 1, "\r": 2}):
        with pytest.raises(ConfigError) as e:
            MoMConfig.from_dict(bad)
        assert "\n" not in str(e.value) and "\r" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown model field 'a\\\\nb'"):
        preset("tiny").replace(**{"a\nb": "1"})
    with pytest.raises(ConfigError, match="empty config name"):
        resolve_config(" ")
    # the name becomes runs/<name>: a NUL byte crashed `mom train` making the directory (found while fuzzing)
    for bad in ("a\x00b", "x/y", "", ".."):
        with pytest.raises(ConfigError, match="name must be printable text without '/'"):
            preset("tiny").replace(name=bad)
    # sizes no tensor can have were accepted and failed inside torch (found while fuzzing)
    with pytest.raises(ConfigError, match="n_ctx must be < 2\\*\\*31, got 99999999999999999999"):
        preset("tiny").replace(n_ctx="99999999999999999999")


def test_train_seed_and_size_ranges():
    # found by tests/test_fuzz.py: --train.seed -1 was accepted and mom train failed in numpy's default_rng
    from mom.config.train import TrainConfig

    for bad in (-1, 2**64):
        with pytest.raises(ConfigError, match="seed must be in \\[0, 2\\*\\*64\\)"):
            TrainConfig(seed=bad)
    assert TrainConfig(seed=2**64 - 1).seed == 2**64 - 1
    with pytest.raises(ConfigError, match="batch_size must be < 2\\*\\*31"):  # (found while fuzzing)
        TrainConfig(batch_size=10**20)


def test_earlier_layouts_keep_honest_names():
    assert preset("mom-p-large").depth == 50 and preset("mom-p-large-h33").depth == 48
    assert preset("tiny-mom-e").depth == 3 and preset("tiny-mom-e-k2").depth == 4
    old_mod = preset("mod-gru-halves")
    assert (old_mod.router, old_mod.route_unit, old_mod.capacity) == ("gru", "half", 0.5)
    assert (preset("mod").capacity, preset("mod-50").capacity) == (0.125, 0.5)
    assert preset("moe-full-experts").d_ff == 4 * preset("moe").d_ff


def test_new_fields_default_to_the_earlier_behaviour_and_round_trip(tmp_path):
    cfg = tiny_config()
    assert (cfg.route_unit, cfg.qkv_combine, cfg.balance, cfg.chunk_layers, cfg.attention) == (
        "half", "weighted", "ours", 0, "sdpa")
    assert cfg.layers_per_chunk == 3 and cfg.has_router("ffn")
    block = tiny_config(route_unit="block", n_ffn=3, chunk_layers=5, qkv_combine="sum", balance="official",
                        attention="eager")
    assert not block.has_router("ffn") and block.has_router("attn") and block.gpt2_layers == 1 + 5 + 1 + 1
    block.save(tmp_path / "c.json")
    assert MoMConfig.load(tmp_path / "c.json") == block



def test_mom_presets_carry_the_measured_router_options_and_the_paper_router_is_one_flag_away():
    """Issue #18's choice (docs/results-routers.md): every MoM preset's router knows the step, centres its input and
    starts phase 2 from the layer map; the baselines keep their published routers; the paper's plain GRU is the
    three fields the docs name, set by one override (``--model.routers paper``)."""
    moms = [n for n in preset_names() if n.startswith(("mom-", "tiny-mom"))]
    assert len(moms) >= 10
    for name in moms:
        cfg = preset(name)
        assert (cfg.router_step, cfg.router_norm, cfg.router_init) == ("both", "centered", "auto"), name
    for name in ("tiny", "gpt2", "layerskip", "mod", "moe", "universal"):
        assert preset(name).router_norm == "none", name

    def router_extras(cfg) -> set[str]:
        model = MoM(cfg)
        return {n.rsplit(".", 1)[1] for n, _ in [*model.named_parameters(), *model.named_buffers()]
                if n.endswith(("center_HD", "step_bias", "step_embed"))}

    assert router_extras(preset("tiny-mom")) == {"center_HD", "step_bias", "step_embed"}
    paper = preset("tiny-mom").replace(router_step="none", router_norm="none", router_init="random")
    assert router_extras(paper) == set()
    # ... and one flag away: --model.routers paper sets the three fields (and `mom` sets them back)
    assert preset("tiny-mom").replace(routers="paper") == paper
    assert paper.replace(routers="mom") == preset("tiny-mom")
    assert preset("tiny-mom").replace(routers="paper", router_norm="rmsnorm").router_norm == "rmsnorm"  # fields win
    with pytest.raises(ConfigError, match="routers must be one of 'paper', 'mom', got 'gpt'"):
        preset("tiny-mom").replace(routers="gpt")
    with pytest.raises(ConfigError, match="did you mean 'routers'"):
        preset("tiny-mom").replace(routes="paper")


def test_train_presets_name_their_provenance():
    """official-phase*: the official scripts' schedule (cosine to 0, warm-up 2,000 in the long phase-1 run); the
    presets once called paper-phase* (our warm-up 500 and floor 1e-4) are ours-phase*; the old names say so."""
    from mom.config.train import train_preset

    for phase, steps in ((1, 20000), (2, 5000)):
        off, ours = train_preset(f"official-phase{phase}"), train_preset(f"ours-phase{phase}")
        assert (off.max_steps, off.tokens_per_step, off.seq_len, off.lr, off.final_lr) == (steps, 524288, 1024,
                                                                                           1e-3, 0.0)
        assert (ours.final_lr, ours.warmup) == (1e-4, 500) and (off.beta1, off.beta2, off.weight_decay) == (0.9, 0.95,
                                                                                                            0.1)
        with pytest.raises(ConfigError, match=f"train preset 'paper-phase{phase}' was renamed: use "
                                              f"official-phase{phase}"):
            train_preset(f"paper-phase{phase}")
    assert train_preset("official-phase1").warmup == 2000
