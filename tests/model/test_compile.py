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
