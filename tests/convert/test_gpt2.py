"""GPT-2 import/export: our vanilla model equals HF's GPT2LMHeadModel, and decomposition follows the layer map."""

import json

import pytest
import torch

from mom.convert.gpt2 import read_hf, to_hf
from mom.errors import CheckpointError, ConfigError
from mom.model.model import MoM
from tests.conftest import make_hf_gpt2

SHAPES = [
    dict(n_layer=2, n_embd=32, n_head=4),
    dict(n_layer=3, n_embd=48, n_head=3),  # odd head count
    dict(n_layer=4, n_embd=40, n_head=5),  # odd head count, head_dim 8
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}d{s['n_embd']}h{s['n_head']}")
def test_vanilla_logits_equal_hf(tmp_path, shape):
    hf = make_hf_gpt2(tmp_path, **shape)
    ours = MoM.from_gpt2(tmp_path).eval()
    idx = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx).logits
    assert (ref - got).abs().max().item() <= 1e-5


def test_to_hf_round_trip_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    make_hf_gpt2(tmp_path / "hf", n_layer=3, n_embd=48, n_head=3)
    model = MoM.from_gpt2(tmp_path / "hf")
    to_hf(model, tmp_path / "back")
    a = load_file(tmp_path / "hf" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    a = {k: v for k, v in a.items() if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # And HF itself loads what we wrote and computes the same logits.
    transformers = pytest.importorskip("transformers")
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert (hf2(idx).logits - model.eval()(idx).logits).abs().max() <= 1e-5


def test_our_format_round_trip(tmp_path):
    make_hf_gpt2(tmp_path / "hf")
    model = MoM.from_gpt2(tmp_path / "hf")
    model.save_pretrained(tmp_path / "ours")
    again = MoM.from_pretrained(tmp_path / "ours")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["bottom"] == 2


def test_layer_map_places_each_half(tmp_path):
    """Decomposing 1 bottom + chunk(N_A=3, N_F=2, anchor) + 1 top takes 6 layers; each tensor lands where the map says."""
    make_hf_gpt2(tmp_path, n_layer=6)
    from tests.conftest import tiny_config

    cfg = tiny_config(bottom=1, chunks=1, n_attn=3, n_ffn=2, anchor=True, top=1)
    model = MoM.from_gpt2(tmp_path, cfg)
    hf = read_hf(tmp_path)[1]
    sd = model.state_dict()
    assert torch.equal(sd["bottom.0.attn.c_attn.weight"][0], hf[0]["attn.c_attn.weight"])
    for m in range(3):
        assert torch.equal(sd["chunks.0.pool.attn.c_attn.weight"][m], hf[1 + m]["attn.c_attn.weight"])
        assert torch.equal(sd["chunks.0.pool.ln_1.bias"][m], hf[1 + m]["ln_1.bias"])
    for m in range(2):
        assert torch.equal(sd["chunks.0.pool.mlp.c_fc.weight"][m], hf[1 + m]["mlp.c_fc.weight"])
    assert torch.equal(sd["chunks.0.anchor.mlp.c_proj.weight"][0], hf[4]["mlp.c_proj.weight"])
    assert torch.equal(sd["top.0.ln_2.weight"][0], hf[5]["ln_2.weight"])


def test_layout_that_does_not_fit_is_a_clear_error(tmp_path):
    make_hf_gpt2(tmp_path, n_layer=2)
    from tests.conftest import tiny_config

    with pytest.raises(CheckpointError, match="decomposes 6 GPT-2 layers.*has 2"):
        MoM.from_gpt2(tmp_path, tiny_config())
    with pytest.raises(CheckpointError, match="d_model is 32"):
        MoM.from_gpt2(tmp_path, tiny_config(d_model=64, bottom=2, chunks=0, top=0))


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    hf = make_hf_gpt2(tmp_path / "src")
    (tmp_path / "bin").mkdir()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    model = MoM.from_gpt2(tmp_path / "bin").eval()
    idx = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert (model(idx).logits - hf(idx).logits).abs().max() <= 1e-5


def test_smaller_pools_take_spread_layers_of_the_same_chunk(tmp_path):
    """The official pruning ablation's phase 2: pools of 50% attention and 75% FFN modules decomposed from the same
    4 layers per chunk — module i of a pool of N from chunk layer ⌊i·4/N⌋ — so the layout still maps the 6-layer
    GPT-2 it is compared with."""
    from mom.convert.gpt2 import pool_sources, smaller_pools
    from mom.model.flops import count, vanilla_counterpart
    from tests.conftest import tiny_config

    make_hf_gpt2(tmp_path, n_layer=6)
    full = tiny_config(bottom=1, chunks=1, n_attn=4, n_ffn=4, steps=2, anchor=True, top=0)
    cfg = smaller_pools(full, 0.5, 0.75)
    assert (cfg.n_attn, cfg.n_ffn, cfg.chunk_layers, cfg.gpt2_layers) == (2, 3, 4, 6)
    assert pool_sources(2, 4) == [0, 2] and pool_sources(3, 4) == [0, 1, 2] and pool_sources(4, 4) == [0, 1, 2, 3]
    model = MoM.from_gpt2(tmp_path, cfg)
    hf = read_hf(tmp_path)[1]
    sd = model.state_dict()
    for m, layer in enumerate([0, 2]):
        assert torch.equal(sd["chunks.0.pool.attn.c_attn.weight"][m], hf[1 + layer]["attn.c_attn.weight"])
    for m, layer in enumerate([0, 1, 2]):
        assert torch.equal(sd["chunks.0.pool.mlp.c_fc.weight"][m], hf[1 + layer]["mlp.c_fc.weight"])
    assert torch.equal(sd["chunks.0.anchor.ln_1.weight"][0], hf[5]["ln_1.weight"])
    base = vanilla_counterpart(cfg)
    assert base.depth == 6 and count(cfg).params < count(base).params < count(full).params
    with pytest.raises(ConfigError, match="keep fractions must be in"):
        smaller_pools(full, 0.0, 1.0)


def test_narrow_experts_are_carved_out_of_the_dense_ffn(tmp_path):
    """Upcycling the parameter-matched MoE (4 quarter-width experts per step): the experts' hidden units partition
    the layer's FFN, so Σ_e (FFN_e(x) − b) + b is the dense FFN; full-width experts stay exact copies."""
    from mom.config.model import preset
    from mom.convert.upcycle import upcycle_moe
    from tests import reference as ref

    shape = dict(vocab_size=97, n_ctx=32, d_model=32, n_head=4)
    vanilla = MoM(preset("tiny").replace(**shape))
    vanilla.save_pretrained(tmp_path / "van")
    cfg = preset("moe").replace(**shape, d_ff=32)
    upcycle_moe(tmp_path / "van", cfg, tmp_path / "moe")
    moe = MoM.from_pretrained(tmp_path / "moe")
    vs, ms = vanilla.state_dict(), moe.state_dict()
    x = torch.randn(1, 5, 32)
    for h in range(cfg.steps):
        dense = ref.ffn(x, ref.module_params(vs, f"bottom.{h}.", 0))
        bias = vs[f"bottom.{h}.mlp.c_proj.bias"][0]
        parts = [ref.ffn(x, ref.module_params(ms, "chunks.0.pool.", h, e)) - bias for e in cfg.candidates("ffn", h)]
        assert torch.allclose(sum(parts) + bias, dense, atol=1e-5)
        assert torch.equal(ms["chunks.0.pool.attn.c_attn.weight"][h], vs[f"bottom.{h}.attn.c_attn.weight"][0])
    with pytest.raises(ValueError, match="neither copy nor split"):
        upcycle_moe(tmp_path / "van", cfg.replace(d_ff=48), tmp_path / "bad")
