"""Routers that learn: the LM loss reaches every router parameter (K = 1 included, not under the paper code's rule);
the kept-weight rules, the step-aware and normalised router inputs, the layer-map preferences."""

import random

import pytest
import torch

from mom.config.model import PRESETS, MoMConfig, preset
from mom.model.model import MoM
from mom.model.routers import layer_map_bias, select
from tests.conftest import tiny_config

SMALL = dict(vocab_size=97, n_ctx=32, d_model=32, n_head=4, router_hidden=16)
OPTIONS = [dict(), dict(router_step="bias"), dict(router_step="embed", router_norm="layernorm"),
           dict(router_step="both", router_norm="rmsnorm"), dict(route_weights="probs"),
           dict(router_step="both", router_init="layer_map", router_init_bias=3.0),
           dict(router_step="both", router_norm="centered")]


def _random_configs(n: int, seed: int = 0) -> dict[str, MoMConfig]:
    """Token choice K = 1, 2, 3 and expert choice, GRU and MLP, SKIP on and off, with and without each option."""
    rng, out = random.Random(seed), {}
    while len(out) < n:
        selection = rng.choice(["token", "token", "token", "expert"])
        skip = True if selection == "expert" else rng.random() < 0.6
        n_attn, n_ffn, steps = rng.randint(2, 4), rng.randint(2, 4), rng.randint(1, 3)
        k = rng.randint(1, min(3, min(n_attn, n_ffn) + int(skip)))
        fields = dict(router=rng.choice(["gru", "mlp"]), selection=selection, skip=skip, n_attn=n_attn, n_ffn=n_ffn,
                      steps=steps, top_k=k, capacity=0.5, **rng.choice(OPTIONS))
        name = "-".join(f"{v}" for v in fields.values())
        out[name] = tiny_config(**fields)
    return out


ROUTED_PRESETS = {name: preset(name).replace(**SMALL) for name in PRESETS
                  if not preset(name).is_vanilla and preset(name).router != "fixed"}
CASES = {**{f"preset-{k}": v for k, v in ROUTED_PRESETS.items()},
         **{f"preset-{k}-options": v.replace(router_step="both", router_norm="rmsnorm")
            for k, v in ROUTED_PRESETS.items() if k in ("layerskip", "moe", "mod")},
         **_random_configs(16)}


def _lm_grads(cfg: MoMConfig) -> tuple[dict, float]:
    """Gradients of the LM loss alone (no aux losses) of a fresh model, and the RMS of the module pools' gradients."""
    torch.manual_seed(0)
    model = MoM(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    model(idx, idx).loss.backward()
    pool = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if ".pool." in n])
    routers = {n: p.grad for n, p in model.named_parameters() if ".router_" in n}
    return routers, pool.square().mean().sqrt().item()


def _rms(g: torch.Tensor) -> float:
    return g.square().mean().sqrt().item()


@pytest.mark.parametrize("name", CASES)
def test_lm_loss_alone_gives_every_router_parameter_a_gradient(name):
    """Relative to the RMS gradient of the module pools: each router's gradient (all its tensors) RMS > 1e-4, and each
    tensor's > 1e-6. (In a fresh model the residual stream is ~0.02 per element, which scales the gradients of the
    routers' first-layer weights; the smallest tensor ratio over these cases is 2.6e-6, the smallest router ratio
    1.8e-4. The paper code's rule at K = 1 gives ≤ 2e-8 for every tensor: see the next test.)"""
    cfg = CASES[name]
    routers, pool_rms = _lm_grads(cfg)
    assert routers, "no router parameters"
    per_router: dict[str, list] = {}
    for n, g in routers.items():
        if cfg.steps == 1 and n.endswith("gru.weight_hh"):
            continue  # one step: the GRU state it multiplies is always the zero initial state
        assert g is not None, n
        assert _rms(g) > 1e-6 * pool_rms, n
        per_router.setdefault(n.rsplit(".router_", 1)[0] + n.split(".router_", 1)[1].split(".")[0], []).append(g)
    for router, gs in per_router.items():
        assert _rms(torch.cat([g.flatten() for g in gs])) > 1e-4 * pool_rms, router


@pytest.mark.parametrize("name", ["layerskip", "K1-all-modules"])
def test_the_paper_codes_rule_gives_k1_routers_no_lm_gradient(name):
    """Renormalising one kept weight makes it exactly 1: the LM loss cannot reach the router (the test above fails
    under this rule, which is why ``route_weights='auto'`` keeps the router probability at K = 1)."""
    cfg = (ROUTED_PRESETS["layerskip"] if name == "layerskip" else tiny_config(top_k=1, steps=3))
    for rule, learns in (("renorm", False), ("auto", True), ("probs", True)):
        routers, pool_rms = _lm_grads(cfg.replace(route_weights=rule))
        largest = max(_rms(g) for g in routers.values()) / pool_rms
        if learns:
            assert largest > 1e-4, (rule, largest)
        else:
            assert largest < 1e-7, (rule, largest)  # round-off only: d(p/p)/dp


def test_kept_weight_rules():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    allowed = torch.ones(4, dtype=torch.bool)
    probs = logits.softmax(-1)
    for k, rule, want in ((1, "auto", probs[:, :1]), (1, "renorm", torch.ones(1, 1)), (1, "probs", probs[:, :1]),
                          (2, "auto", probs[:, :2] / probs[:, :2].sum()), (2, "renorm", probs[:, :2] / probs[:, :2].sum()),
                          (2, "probs", probs[:, :2])):
        cfg = tiny_config(n_attn=3, temperature=1.0, top_k=k, route_weights=rule)
        route = select(logits, allowed, torch.arange(3), cfg, "attn", 1)
        torch.testing.assert_close(route.w_TK, want, msg=f"K={k} {rule}")
        assert route.idx_TK.tolist() == [[0, 1][:k]]


def test_step_embedding_reaches_only_its_step_and_norms_make_routers_scale_invariant():
    cfg = tiny_config(router="mlp", router_step="embed", router_norm="layernorm", steps=2)
    router = MoM(cfg).chunks[0].router_attn
    x = torch.randn(5, cfg.d_model)
    before = [router(x, None, h)[0] for h in range(2)]
    with torch.no_grad():
        router.step_embed[1].normal_(0, 3.0)
    after = [router(x, None, h)[0] for h in range(2)]
    assert torch.equal(before[0], after[0]) and not torch.allclose(before[1], after[1])
    for norm in ("layernorm", "rmsnorm"):  # the router reads norm(x): the residual stream's scale does not matter
        r = MoM(tiny_config(router_norm=norm)).chunks[0].router_ffn
        torch.testing.assert_close(r(x, None, 0)[0], r(7.5 * x, None, 0)[0], rtol=1e-4, atol=1e-5)
    plain = MoM(tiny_config()).chunks[0].router_ffn
    assert not torch.allclose(plain(x, None, 0)[0], plain(7.5 * x, None, 0)[0])


def test_step_bias_shifts_the_logits_of_its_step():
    cfg = tiny_config(router="gru", router_step="bias", steps=2)
    router = MoM(cfg).chunks[0].router_attn
    x = torch.randn(4, cfg.d_model)
    with torch.no_grad():
        router.step_bias[1, 2] = 5.0
    l0, h0 = router(x, None, 0)
    l1, _ = router(x, h0, 1)
    with torch.no_grad():
        router.step_bias.zero_()
    r0, g0 = router(x, None, 0)
    r1, _ = router(x, g0, 1)
    torch.testing.assert_close(l0, r0)
    torch.testing.assert_close(l1 - r1, torch.tensor([0.0, 0.0, 5.0, 0.0]).expand(4, -1))


@pytest.mark.parametrize("name, half, want", [
    # MoM_P (H = 6 ≥ N = 4): module h at step h, SKIP after the last module
    ("tiny-mom", "attn", [[0], [1], [2], [3], [4], [4]]),
    # MoM_E (H < N = 4): contiguous groups of modules; at H = 1 the whole pool (top-3 picks among it)
    ("tiny-mom-e", "ffn", [[0, 1, 2, 3]]),
    ("tiny-mom-e-k2", "ffn", [[0, 1], [2, 3]]),
    # layer-skip (diagonal): the step's own module over SKIP
    ("layerskip", "attn", [[h] for h in range(6)]),
    # MoE: a grouped step's group is its own experts, preferred alike
    ("moe", "ffn", [list(range(4 * h, 4 * h + 4)) for h in range(6)]),
    # no SKIP and more steps than modules: no preference after the last module
    ("no-skip", "attn", [[0], [1], [2], []]),
    # N_A ≠ N_F: each half maps its own pool (FFN layers past N_F were dropped by the layer map)
    ("na-nf", "ffn", [[0], [1], [2], [2]]),
    # smaller pools than layers (chunk_layers = 4): step h prefers the module of chunk layer h, SKIP where its half
    # was dropped (attention modules come from layers 0 and 2, FFN modules from 0, 1, 2)
    ("smaller-attn", "attn", [[0], [2], [1], [2]]),
    ("smaller-ffn", "ffn", [[0], [1], [2], [3]]),
])
def test_layer_map_choices(name, half, want):
    cfg = {"no-skip": tiny_config(n_attn=3, steps=4, skip=False),
           "na-nf": tiny_config(n_attn=3, n_ffn=2, steps=4),
           "smaller-attn": tiny_config(n_attn=2, n_ffn=3, steps=4, chunk_layers=4),
           "smaller-ffn": tiny_config(n_attn=2, n_ffn=3, steps=4, chunk_layers=4)}.get(name) or preset(name)
    assert [cfg.layer_map_choices(half, h) for h in range(cfg.steps)] == want


def test_layer_map_bias_leads_by_router_init_bias_in_scaled_logits():
    cfg = preset("tiny-mom").replace(router_step="bias", router_init="layer_map", router_init_bias=4.0)
    bias = layer_map_bias(cfg, "attn")
    assert bias.shape == (6, 5)
    assert torch.equal(bias / cfg.temperature, 4.0 * torch.eye(5)[[0, 1, 2, 3, 4, 4]])
    assert MoM(cfg.replace(**SMALL)).chunks[0].router_ffn.step_bias.abs().sum() > 0
    assert not layer_map_bias(cfg.replace(router_init="random"), "attn").any()  # zero-initialised otherwise


# ---------------------------------------------------------------------------------------------- centered input
def _centered_model(seed: int = 0) -> MoM:
    torch.manual_seed(seed)
    model = MoM(tiny_config(n_attn=3, n_ffn=3, steps=3, top_k=2, router_step="both", router_norm="centered"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".router_" in n and n.endswith(("out.weight", "step_embed")):
                p.normal_(0, 1.0)
    return model


def test_centered_router_tracks_the_shared_direction_in_training_only():
    """``router_norm='centered'``: the running mean of a step's router input follows the tokens' mean in training
    (momentum 0.1: within 1% after 60 batches of inputs that share one direction) and stays put in eval."""
    from mom.model.routers import centering_mean

    torch.manual_seed(0)
    center_HD, shared_D = torch.zeros(2, 8), torch.randn(8) * 5
    for _ in range(60):
        x_TD = shared_D + 0.1 * torch.randn(64, 8)
        before = center_HD[1].clone()
        mean_D = centering_mean(center_HD, x_TD, 1, training=True, momentum=0.1)
        assert torch.equal(mean_D, before)  # a batch is centred by the mean as it stood before it
    assert (center_HD[1] - shared_D).norm() < 0.01 * shared_D.norm()
    assert torch.equal(center_HD[0], torch.zeros(8))  # another step's mean is its own
    frozen = center_HD.clone()
    centering_mean(center_HD, torch.randn(64, 8), 1, training=False, momentum=0.1)
    assert torch.equal(center_HD, frozen)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_centered_router_momentum_is_how_far_the_mean_moves_per_batch(momentum):
    """``router_center_momentum``: after one training batch the running mean is (1 − m)·before + m·(batch mean),
    for every step of both routers; m = 1 is the previous batch's mean."""
    torch.manual_seed(0)
    model = MoM(tiny_config(n_attn=3, n_ffn=3, steps=3, top_k=2, router_step="both", router_norm="centered",
                            router_center_momentum=momentum)).train()
    seen: dict[str, list] = {}
    for name, router in ((n, m) for n, m in model.named_modules() if getattr(m, "center_HD", None) is not None):
        router.center_HD.normal_(0, 1.0)
        real = router.router_input

        def spy(x_TD, step, real=real, name=name, router=router):
            seen.setdefault(name, []).append((step, router.center_HD[step].clone(), x_TD.detach().mean(0)))
            return real(x_TD, step)

        router.router_input = spy
    buffers = dict(model.named_buffers())
    model(torch.randint(0, model.config.vocab_size, (2, 16)))
    assert seen
    for name, calls in seen.items():
        assert sorted(step for step, *_ in calls) == [0, 1, 2]
        for step, before_D, mean_D in calls:
            torch.testing.assert_close(buffers[f"{name}.center_HD"][step], (1 - momentum) * before_D + momentum * mean_D)


def test_centered_router_never_lets_a_token_see_other_tokens_of_its_batch():
    """Training mode included (where the running mean moves): a sequence's logits are the same alone as in a batch
    with another sequence, and an eval forward leaves every running mean as it was."""
    a, b = _centered_model(), _centered_model()
    for m in (a, b):
        for n, buf in m.named_buffers():
            if n.endswith("center_HD"):
                buf.copy_(torch.linspace(-1, 1, buf.numel()).view_as(buf))
    idx = torch.randint(0, a.config.vocab_size, (2, 16))
    both, alone = a(idx).logits, b(idx[:1]).logits
    torch.testing.assert_close(both[:1], alone, rtol=0, atol=1e-5)
    moved = [n for (n, x), (_, y) in zip(a.named_buffers(), b.named_buffers()) if n.endswith("center_HD")
             and not torch.equal(x, y)]
    assert moved  # the two batches moved the means differently: the check above was not vacuous
    a.eval()
    kept = {n: x.clone() for n, x in a.named_buffers()}
    a(idx)
    assert all(torch.equal(kept[n], x) for n, x in a.named_buffers())
