"""The grouped dispatch path has no host syncs: forward and backward compile with fullgraph=True."""

import pytest
import torch

from mom.model.model import MoM
from tests.conftest import tiny_config


@pytest.mark.slow
def test_compile_fullgraph_forward_backward_matches_eager(grouped_path):
    torch._dynamo.reset()
    cfg = tiny_config(router="gru", skip=True, top_k=2, steps=2, n_attn=3, n_ffn=2, z_coef=1e-3)
    eager = MoM(cfg)
    compiled_model = MoM(cfg)
    compiled_model.load_state_dict(eager.state_dict())
    step = torch.compile(compiled_model, fullgraph=True)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    out_c = step(idx, idx)
    (out_c.loss + out_c.aux_loss).backward()
    out_e = eager(idx, idx)
    (out_e.loss + out_e.aux_loss).backward()
    assert torch.allclose(out_c.logits, out_e.logits, atol=1e-4)
    for (n, pc), (_, pe) in zip(compiled_model.named_parameters(), eager.named_parameters()):
        assert pc.grad is not None, n
        assert torch.allclose(pc.grad, pe.grad, atol=1e-4), n
