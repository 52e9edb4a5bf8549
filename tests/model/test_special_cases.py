"""Every special case of the brief is a configuration of the same model, checked against a plain reference."""

import pytest
import torch
import torch.nn.functional as F

import mom.convert.gpt2  # noqa: F401  (registers MoM.from_gpt2, which this file uses when run alone)
from mom.config.model import preset
from mom.model.model import MoM, attention_half
from mom.model.routers import Route, capacity_tokens
from tests import reference as ref
from tests.conftest import make_hf_gpt2, tiny_config

ATOL = 1e-5


def _state(model):
    return {k: v.detach() for k, v in model.state_dict().items()}


def _force_router(model, half, skip_logit):
    """Make every router of ``half`` prefer (skip_logit > 0) or avoid (< 0) SKIP overwhelmingly."""
    with torch.no_grad():
        for chunk in model.chunks:
            r = getattr(chunk, f"router_{half}")
            r.out.weight.zero_()
            r.out.bias.zero_()
            r.out.bias[-1] = skip_logit


def test_fixed_routing_over_decomposed_gpt2_is_gpt2(tmp_path):
    hf = make_hf_gpt2(tmp_path, n_layer=4)
    cfg = tiny_config(bottom=0, top=0, anchor=False, chunks=1, n_attn=4, n_ffn=4, steps=4, router="fixed",
                      skip=False, top_k=1)
    model = MoM.from_gpt2(tmp_path, cfg).eval()
    idx = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        assert (model(idx).logits - hf(idx).logits).abs().max() <= ATOL


def test_universal_is_one_layer_applied_h_times():
    cfg = preset("universal").replace(vocab_size=97, n_ctx=32, d_model=32, n_head=4)
    assert cfg.n_attn == cfg.n_ffn == 1 and cfg.top_k == 1 and cfg.steps == 6
    model = MoM(cfg).eval()
    s = _state(model)
    p = ref.module_params(s, "chunks.0.pool.", 0)
    idx = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        x = ref.embed(s, idx)
        for _ in range(cfg.steps):
            x = ref.block(x, p, cfg.n_head)
        assert (model(idx).logits - ref.head(s, x)).abs().max() <= ATOL


@pytest.fixture
def layerskip():
    cfg = preset("layerskip").replace(vocab_size=97, n_ctx=32, d_model=32, n_head=4, steps=3, n_attn=3, n_ffn=3)
    return MoM(cfg).eval()


def test_layerskip_all_skip_is_identity(layerskip):
    _force_router(layerskip, "attn", 1e4)
    _force_router(layerskip, "ffn", 1e4)
    s = _state(layerskip)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        out = layerskip(idx, return_routes=True)
        assert all((r.idx_BTK == r.n_modules).all() for r in out.routes)
        assert (out.logits - ref.head(s, ref.embed(s, idx))).abs().max() <= ATOL


def test_layerskip_no_skip_is_vanilla(layerskip):
    _force_router(layerskip, "attn", -1e4)
    _force_router(layerskip, "ffn", -1e4)
    s = _state(layerskip)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        x = ref.embed(s, idx)
        for h in range(3):
            x = ref.block(x, ref.module_params(s, "chunks.0.pool.", h), 4)
        assert (layerskip(idx).logits - ref.head(s, x)).abs().max() <= ATOL


def test_moe_is_a_plain_per_token_topk_expert_loop():
    cfg = preset("moe").replace(vocab_size=97, n_ctx=32, d_model=32, n_head=4, steps=2, n_attn=2, n_ffn=8)
    E, K = cfg.n_ffn // cfg.steps, cfg.k("ffn")
    model = MoM(cfg).eval()
    with torch.no_grad():
        model.chunks[0].router_ffn.out.weight.normal_(0, 1.0)
    s = _state(model)
    r = "chunks.0.router_ffn."
    idx = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        x = ref.embed(s, idx)
        for h in range(cfg.steps):
            x = x + ref.attention(x, ref.module_params(s, "chunks.0.pool.", h), 4)
            logits = F.relu(x @ s[r + "fc.weight"].t() + s[r + "fc.bias"]) @ s[r + "out.weight"].t() + s[r + "out.bias"]
            experts = list(range(h * E, (h + 1) * E))
            probs = (logits[..., experts] / cfg.temperature).softmax(-1)
            update = torch.zeros_like(x)
            for b in range(x.shape[0]):
                for t in range(x.shape[1]):
                    w, which = probs[b, t].topk(K)
                    w = w / w.sum()
                    for wk, e in zip(w, which):
                        p = ref.module_params(s, "chunks.0.pool.", 0, experts[e])
                        update[b, t] += wk * ref.ffn(x[b, t].view(1, 1, -1), p)[0, 0]
            x = x + update
        assert (model(idx).logits - ref.head(s, x)).abs().max() <= ATOL


@pytest.mark.parametrize("name", ["mod-50", "mod-gru-halves"])
def test_mod_processes_exactly_capacity_tokens_per_step(name):
    cfg = preset(name).replace(vocab_size=97, n_ctx=64, d_model=32, n_head=4)
    model = MoM(cfg)
    B, T = 3, 40
    out = model(torch.randint(0, 97, (B, T)), return_routes=True)
    C = capacity_tokens(cfg.capacity, T)
    assert C == 20
    assert len(out.routes) == 2 * cfg.steps
    for r in out.routes:
        picked = (r.idx_BTK < r.n_modules).any(-1)  # (B, T)
        assert (picked.sum(1) == C).all(), (r.step, r.half)
        assert set(r.idx_BTK[picked].unique().tolist()) == {r.step}  # step h may only use module h


def test_skipped_token_does_not_change_other_tokens():
    """A token whose attention picks are all SKIP is no key: the others' outputs equal those computed without it.

    The paper's public code keeps such a token in the softmax with a zero key; that variant fails this test."""
    cfg = tiny_config(n_attn=3, top_k=2, skip=True)
    model = MoM(cfg)
    pool = model.chunks[0].pool
    with torch.no_grad():  # O(1) weights so that a leak through the softmax is large, not 1e-4
        for p in pool.parameters():
            p.normal_(0, 0.3)
    B, T, D, j = 1, 8, cfg.d_model, 3
    x = torch.randn(B * T, D)
    idx = torch.randint(0, 3, (T, 2))
    idx[:, 1] = (idx[:, 0] + 1) % 3
    idx[j] = 3  # token j: both picks SKIP
    w = torch.rand(T, 2)
    w = (w / w.sum(-1, keepdim=True)).masked_fill(idx == 3, 0)
    route = Route(idx_TK=idx, w_TK=w, n=3)
    with torch.no_grad():
        y = attention_half(pool.slices(), x, route, B, T, model.dispatcher, mask_keys=True)
        keep = [t for t in range(T) if t != j]
        route_wo = Route(idx_TK=idx[keep], w_TK=w[keep], n=3)
        y_wo = attention_half(pool.slices(), x[keep], route_wo, B, T - 1, model.dispatcher, mask_keys=True)
        assert (y[keep] - y_wo).abs().max() <= ATOL
        assert y[j].abs().max() == 0  # SKIP adds nothing to the skipped token itself
        # The zero-key variant (no key mask) changes the later tokens: the test can tell the two apart.
        y_bug = attention_half(pool.slices(), x, route, B, T, model.dispatcher, mask_keys=False)
        assert (y_bug[keep] - y_wo).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- published baselines
def _sharp(model, std=1.0):
    """Routers whose decisions differ from token to token (random ones at init treat all tokens alike)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "router" in n and n.endswith("out.weight"):
                p.normal_(0, std)
            elif "router" in n and n.endswith("gru.weight_ih"):
                p.mul_(30)


@pytest.mark.parametrize("capacity", [0.5, 0.125])
def test_mod_equals_a_plain_mixture_of_depths(capacity):
    """The `mod` presets (linear router per block, raw scores, one decision for attention and FFN together,
    x + r·(block(x) − x) for the top-capacity tokens) compute the plain reference of Raposo et al., and the router
    learns through r."""
    cfg = preset("mod" if capacity == 0.125 else "mod-50").replace(vocab_size=97, n_ctx=32, d_model=32, n_head=4)
    assert (cfg.router, cfg.route_unit, cfg.selection, cfg.capacity) == ("linear", "block", "expert", capacity)
    model = MoM(cfg).eval()
    assert model.chunks[0].router_ffn is None  # one router per block, not per half
    _sharp(model, 0.3)
    s = _state(model)
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        out = model(idx, return_routes=True)
        want = ref.head(s, ref.mixture_of_depths(s, idx, cfg.steps, cfg.n_head, capacity))
    assert (out.logits - want).abs().max() <= ATOL
    C = capacity_tokens(capacity, 16)
    for r in out.routes:  # the same C tokens per sequence at both halves of a step
        assert ((r.idx_BTK < r.n_modules).sum((1, 2)) == C).all()
    attn, ffn = out.routes[0::2], out.routes[1::2]
    assert all(torch.equal(a.idx_BTK, f.idx_BTK) for a, f in zip(attn, ffn))
    model.train()
    o = model(idx, idx)
    o.loss.backward()
    assert model.chunks[0].router_attn.out.weight.grad[: cfg.steps].abs().sum(1).min() > 0  # every block's row


@pytest.mark.parametrize("qkv_combine", ["weighted", "sum"])
def test_qkv_combine_equals_a_plain_routed_attention(qkv_combine):
    """`qkv_combine='sum'` is the official code's unweighted sum of the picked modules' q, k, v; `weighted` ours:
    each against a token-by-token reference, given the routes the model took."""
    cfg = tiny_config(bottom=0, top=0, anchor=False, n_attn=3, n_ffn=3, steps=2, top_k=2, qkv_combine=qkv_combine)
    model = MoM(cfg).eval()
    _sharp(model)
    with torch.no_grad():
        for p in model.chunks[0].pool.parameters():
            p.normal_(0, 0.3)
    s = _state(model)
    idx = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        out = model(idx, return_routes=True)
        x = ref.embed(s, idx)
        for r in out.routes:
            if r.half == "attn":
                x = x + ref.routed_attention(x, r.idx_BTK, r.w_BTK, s, "chunks.0.pool.", 4, 3, qkv_combine == "sum")
            else:
                x = x + ref.routed_ffn(x, r.idx_BTK, r.w_BTK, s, "chunks.0.pool.", 3)
        assert (out.logits - ref.head(s, x)).abs().max() <= ATOL
        assert any(((r.idx_BTK < 3).sum(-1) == 2).any() for r in out.routes if r.half == "attn")  # real mixes
        other = model.config.replace(qkv_combine="weighted" if qkv_combine == "sum" else "sum")
        twin = MoM(other).eval()
        twin.load_state_dict(model.state_dict())
        assert (twin(idx).logits - out.logits).abs().max() > 1e-3  # the switch matters


def test_official_balance_equals_its_formula():
    """`balance='official'`: pooled over every routed (chunk, step, half), SKIP a choice, top-1 f, a second softmax
    for P — against the formula in loops; pools of different widths (N_A + 1 ≠ N_F + 1) averaged."""
    cfg = tiny_config(chunks=2, n_attn=3, n_ffn=2, steps=2, top_k=2, balance="official", temperature=0.5)
    model = MoM(cfg)
    _sharp(model)
    idx = torch.randint(0, 97, (2, 9))
    out = model(idx, idx, return_routes=True)
    want = ref.official_balance([r.probs_BTN.detach() for r in out.routes])
    assert out.balance_loss.item() == pytest.approx(want, rel=1e-5)
    assert out.aux_loss.item() == pytest.approx(cfg.balance_coef * want, rel=1e-5)
    ours = MoM(cfg.replace(balance="ours"))
    ours.load_state_dict(model.state_dict())
    assert abs(ours(idx, idx).balance_loss.item() - want) > 1e-3
    out.aux_loss.backward()  # P carries gradient to the routers (f does not)
    assert model.chunks[0].router_attn.out.weight.grad.abs().sum() > 0
