"""The grouped dispatch path has no host syncs: forward and backward compile with fullgraph=True.

The default layout is compiled with inductor on every grouped path; the other model options (published baselines,
the official code's switches) are traced whole, forward and backward, by AOTAutograd (``aot_eager``: the graph
capture that fullgraph=True checks, without inductor's minutes of code generation per config)."""

import pytest
import torch

from mom.model.model import MoM
from tests.conftest import tiny_config

BASE = dict(router="gru", skip=True, top_k=2, steps=2, n_attn=3, n_ffn=2, z_coef=1e-3)
OPTIONS = {
    "gru-K2": {},
    "mod-linear-block": dict(router="linear", selection="expert", capacity=0.5, route_unit="block", n_attn=2,
                             n_ffn=2, attn_candidates="diagonal", ffn_candidates="diagonal"),
    "qkv-sum-official-balance-eager": dict(qkv_combine="sum", balance="official", attention="eager"),
}


@pytest.mark.slow
@pytest.mark.parametrize("option", OPTIONS)
def test_compile_fullgraph_forward_backward_matches_eager(option, grouped_path):
    if option != "gru-K2" and grouped_path != "one-by-one":
        pytest.skip("the new options are compiled on the default path; the static paths are covered by gru-K2")
    torch._dynamo.reset()
    cfg = tiny_config(**{**BASE, **OPTIONS[option]})
    eager = MoM(cfg)
    compiled_model = MoM(cfg)
    compiled_model.load_state_dict(eager.state_dict())
    step = torch.compile(compiled_model, fullgraph=True, backend="inductor" if option == "gru-K2" else "aot_eager")
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    out_c = step(idx, idx)
    (out_c.loss + out_c.aux_loss).backward()
    out_e = eager(idx, idx)
    (out_e.loss + out_e.aux_loss).backward()
    assert torch.allclose(out_c.logits, out_e.logits, atol=1e-4)
    for (n, pc), (_, pe) in zip(compiled_model.named_parameters(), eager.named_parameters()):
        assert pc.grad is not None, n
        assert torch.allclose(pc.grad, pe.grad, atol=1e-4), n


ROUTER_OPTIONS = {
    "k1-router-probability": dict(top_k=1, route_weights="auto"),
    "step-bias-layer-map": dict(router_step="bias", router_init="layer_map", router_init_bias=2.0),
    "step-embed-layernorm": dict(router_step="embed", router_norm="layernorm"),
    "both-rmsnorm-mlp": dict(router="mlp", router_step="both", router_norm="rmsnorm", route_weights="probs"),
    "expert-both": dict(selection="expert", router_step="both", router_norm="rmsnorm"),
    "both-centered": dict(router_step="both", router_norm="centered"),
}


@pytest.mark.parametrize("name", ROUTER_OPTIONS)
def test_router_options_trace_as_one_graph(name):
    """Each router option of issue #18 keeps forward and backward one graph (``fullgraph=True``: no host sync, no
    graph break), traced by dynamo alone (no inductor, fast), with the eager values and gradients."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    cfg = tiny_config(z_coef=1e-3, **ROUTER_OPTIONS[name])
    eager, traced = MoM(cfg), MoM(cfg)
    traced.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    step = torch.compile(traced, fullgraph=True, backend=counter)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    outs = []
    for fwd in (step, eager):
        out = fwd(idx, idx)
        (out.loss + out.aux_loss).backward()
        outs.append(out)
    assert counter.frame_count == 1
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=0, atol=1e-5)
    for (n, pc), (_, pe) in zip(traced.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=0, atol=1e-5, msg=n)
    for (n, bc), (_, be) in zip(traced.named_buffers(), eager.named_buffers()):  # running means moved alike
        torch.testing.assert_close(bc, be, rtol=0, atol=1e-6, msg=n)
