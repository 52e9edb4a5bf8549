"""Attention with all-SKIP tokens hidden as keys: the packed form equals the masked one where it matters."""

import pytest
import torch

from mom.model.attention import causal_attention, packed_causal_attention
from mom.model.model import MoM
from tests.conftest import param_grads, tiny_config, train_outputs


@pytest.mark.parametrize("case", ["mixed", "a sequence all valid", "a sequence all invalid"])
def test_packed_equals_masked_on_valid_tokens(case):
    B, T, H, hd = 3, 11, 2, 4
    qkv = torch.randn(B, T, 3 * H * hd, requires_grad=True)
    valid = torch.rand(B, T) > 0.3
    if case == "a sequence all valid":
        valid[1] = True
    elif case == "a sequence all invalid":
        valid[2] = False
    dout = torch.randn(B, T, H * hd) * valid.unsqueeze(-1)  # what the model sends back: 0 for invalid tokens
    outs = []
    for fn in (lambda: causal_attention(qkv, H, valid), lambda: packed_causal_attention(qkv, H, valid)):
        o = fn()
        (g,) = torch.autograd.grad(o, qkv, dout)
        outs.append((o, g))
    (o_mask, g_mask), (o_pack, g_pack) = outs
    assert torch.allclose(o_pack[valid], o_mask[valid], atol=1e-6)
    assert torch.allclose(g_pack, g_mask, atol=1e-6)
    if case == "a sequence all invalid":  # an all-invalid sequence attends within itself: finite, unused
        assert torch.isfinite(o_pack).all()


def test_model_with_packed_keys_equals_masked():
    cfg = tiny_config(top_k=1, n_attn=2)
    masked = MoM(cfg)
    with torch.no_grad():  # attention routers that tell tokens apart (~half of them pick only SKIP)
        for n, p in masked.named_parameters():
            if "router_attn" in n and "weight_ih" in n:
                p.normal_(0, 30.0)
            if "router_attn" in n and n.endswith("out.weight"):
                p.normal_(0, 1.0)
            if "router_attn" in n and n.endswith("out.bias"):
                p[-1] = 1.0
    packed = MoM(cfg.replace(key_mask="pack"))
    packed.load_state_dict(masked.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (3, 19))
    outs = train_outputs((masked, packed), idx)
    skipped = [(r.idx_BTK == r.n_modules).all(-1).float().mean().item() for r in outs[0].routes if r.half == "attn"
               and r.probs_BTN is not None]
    assert 0 < max(skipped) < 1, skipped  # the masks really hid some keys
    assert (outs[0].logits - outs[1].logits).abs().max().item() <= 1e-5
    ga, gb = param_grads(masked), param_grads(packed)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert (ga[n] - gb[n]).abs().max().item() <= 1e-5, n


@pytest.mark.slow
def test_packed_attention_compiles_without_graph_breaks():
    torch._dynamo.reset()
    qkv = torch.randn(2, 9, 24, requires_grad=True)
    valid = torch.rand(2, 9) > 0.3
    valid[1] = True  # an empty segment
    step = torch.compile(lambda x, m: packed_causal_attention(x, 2, m), fullgraph=True)
    o = step(qkv, valid)
    o.sum().backward()
    assert torch.allclose(o[valid], causal_attention(qkv, 2, valid)[valid], atol=1e-5)


def test_decoding_with_packed_keys_uses_the_cache_mask_and_matches():
    from mom.inference.engine import Engine

    cfg = tiny_config(n_ctx=64)
    a = MoM(cfg).eval()
    b = MoM(cfg.replace(key_mask="pack")).eval()
    b.load_state_dict(a.state_dict())
    prompt = torch.randint(0, cfg.vocab_size, (7,)).tolist()
    outs = [Engine(m).generate([prompt], max_new_tokens=12, temperature=0)[0].tokens for m in (a, b)]
    assert outs[0] == outs[1]
