"""The fast grouped dispatcher equals the plain loop reference, in values and gradients."""

import pytest
import torch

from mom.model.model import MoM
from mom.model.ops import argsort_small, counting_sort, grouped_linear, grouped_mm
from mom.model.routers import top_k
from tests.conftest import param_grads, sharpen_routers, tiny_config, train_outputs

CONFIGS = {
    "gru-K2-H3-skip": dict(router="gru", top_k=2, steps=3, n_attn=3, n_ffn=5, skip=True),
    "mlp-K3-H2-skip": dict(router="mlp", top_k=3, steps=2, n_attn=4, n_ffn=2, skip=True),
    "gru-K2-noskip": dict(router="gru", top_k=2, steps=2, n_attn=2, n_ffn=3, skip=False),
    "expert-choice": dict(router="gru", selection="expert", capacity=0.4, steps=2, n_attn=3, n_ffn=2, skip=True),
    "moe-grouped": dict(router="mlp", steps=2, n_attn=2, n_ffn=6, attn_candidates="diagonal",
                        ffn_candidates="grouped", skip=False, attn_top_k=1, ffn_top_k=2),
    "two-chunks-pooled": dict(chunks=2, steps=2, n_attn=2, n_ffn=3, balance_scope="pooled", z_coef=1e-3),
    # published baselines and the official code's switches
    "mod-linear-block": dict(router="linear", selection="expert", capacity=0.5, route_unit="block", steps=2, n_attn=2,
                             n_ffn=2, attn_candidates="diagonal", ffn_candidates="diagonal", skip=True),
    "block-token-K2": dict(route_unit="block", top_k=2, steps=2, n_attn=3, n_ffn=3, skip=True),
    "qkv-sum-official-balance": dict(qkv_combine="sum", balance="official", top_k=2, steps=2, n_attn=3, n_ffn=2),
    "eager-attention-pack": dict(attention="eager", key_mask="pack", top_k=2, steps=2, n_attn=3, n_ffn=2),
    # the router options of issue #18: K = 1 keeping the router probability, step bias/embedding, input norms
    "gru-K1-step-both-rmsnorm": dict(router="gru", top_k=1, steps=3, n_attn=3, n_ffn=2, router_step="both",
                                     router_norm="rmsnorm"),
    "mlp-K2-embed-layernorm-probs": dict(router="mlp", top_k=2, steps=2, n_attn=3, n_ffn=4, router_step="embed",
                                         router_norm="layernorm", route_weights="probs"),
    "expert-step-bias-layer-map": dict(selection="expert", capacity=0.5, steps=2, n_attn=3, n_ffn=2,
                                       router_step="bias", router_init="layer_map", router_init_bias=2.0),
    "gru-K2-step-both-centered": dict(router="gru", top_k=2, steps=3, n_attn=3, n_ffn=2, router_step="both",
                                      router_norm="centered"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_grouped_equals_loop(name, grouped_path):
    cfg = tiny_config(**CONFIGS[name])
    fast = sharpen_routers(MoM(cfg))
    ref = MoM(cfg.replace(dispatch="loop"))
    ref.load_state_dict(fast.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (3, 19))
    outs = train_outputs((fast, ref), idx)
    assert (outs[0].logits - outs[1].logits).abs().max().item() <= 1e-5
    assert torch.allclose(outs[0].aux_loss, outs[1].aux_loss, atol=1e-6)
    gf, gr = param_grads(fast), param_grads(ref)
    assert gf.keys() == gr.keys()
    for n in gf:
        assert (gf[n] - gr[n]).abs().max().item() <= 1e-5, n
    # The routes really were mixed: several modules used, and (with SKIP) some SKIP picks.
    attn = [r for r in outs[0].routes if r.half == "ffn" and r.probs_BTN is not None]
    assert len(torch.unique(torch.cat([r.idx_BTK.flatten() for r in attn]))) >= 2
    # Routers learn: every router parameter gets a non-zero gradient.
    router_grads = {n: g for n, g in gf.items() if "router" in n}
    assert router_grads, "no router parameters found"
    for n, g in router_grads.items():
        if n.endswith("gru.bias_hh") or "bias" in n:
            continue
        assert g.abs().sum() > 0, n


def test_grouped_mm_matches_per_group_matmul_with_skip_tail():
    A, D, O, N = 23, 8, 12, 4
    x = torch.randn(A, D, requires_grad=True)
    w = torch.randn(N, D, O, requires_grad=True)
    offs = torch.tensor([3, 3, 10, 20], dtype=torch.int32)  # an empty group, and 3 SKIP rows at the end
    y = grouped_mm(x, w, offs)
    ref = torch.cat([x[0:3] @ w[0], x[3:10] @ w[2], x[10:20] @ w[3]])
    assert torch.allclose(y[:20], ref, atol=1e-6)  # the SKIP rows are unspecified
    g = torch.randn(A, O)  # ...and so is their gradient: whatever comes back there is ignored
    dx, dw = torch.autograd.grad(y, (x, w), g)
    rdx, rdw = torch.autograd.grad(ref, (x, w), g[:20])
    assert torch.allclose(dx[:20], rdx[:20], atol=1e-5) and torch.allclose(dw, rdw, atol=1e-5)


def test_gather_module_rows_sums_per_module_without_skip_rows():
    """The per-row parameter gather's backward (one-hot GEMM on CUDA, index_add on CPU): per-module sums, and
    SKIP rows (module N) contribute nothing even when their gradient is NaN."""
    from mom.model.ops import gather_module_rows

    p = torch.randn(3, 5, requires_grad=True)
    mod = torch.tensor([0, 0, 2, 2, 2, 3, 3])  # module 1 unused, two SKIP rows
    rows = gather_module_rows(p, mod)
    assert torch.equal(rows[:5], p.detach()[[0, 0, 2, 2, 2]])
    g = torch.randn(7, 5)
    g[5:] = float("nan")
    (grad,) = torch.autograd.grad(rows, p, g)
    want = torch.stack([g[0:2].sum(0), torch.zeros(5), g[2:5].sum(0)])
    assert torch.allclose(grad, want, atol=1e-6)


def test_group_sums_both_branches_are_segment_sums_ignoring_skip_rows():
    """The per-group sums of sorted rows (the bias gradient of a grouped linear), on the CPU branch (a sum per
    group) and the CUDA one (one-hot GEMM, run here on the CPU): SKIP rows ignored even when they hold NaN."""
    from mom.model.ops import group_sums, group_sums_onehot

    offs = torch.tensor([2, 2, 5], dtype=torch.int32)
    dy = torch.randn(7, 4)
    dy[5:] = float("nan")  # rows 5, 6: SKIP
    want = torch.stack([dy[0:2].sum(0), torch.zeros(4), dy[2:5].sum(0)])
    assert torch.allclose(group_sums(dy, offs), want, atol=1e-6)
    assert torch.allclose(group_sums_onehot(dy, offs), want, atol=1e-6)


def test_bf16_autocast_forward_backward_close_to_fp32():
    """The mixed-precision path (bf16 autocast, as on CUDA) runs through the grouped op and stays close to fp32."""
    cfg = tiny_config(top_k=2, steps=2)
    model = MoM(cfg)
    ref = MoM(cfg)
    ref.load_state_dict(model.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, idx)
    (out.loss + out.aux_loss).backward()
    assert out.logits.dtype == torch.bfloat16
    assert abs(out.loss.item() - ref(idx, idx).loss.item()) < 2e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_grouped_linear_bias_and_gradients():
    A, D, O, N = 21, 8, 4, 3
    x = torch.randn(A, D, requires_grad=True)
    w = torch.randn(N, D, O, requires_grad=True)
    b = torch.randn(N, O, requires_grad=True)
    offs = torch.tensor([5, 5, 17], dtype=torch.int32)  # empty group 1, 4 SKIP rows
    y = grouped_linear(x, w, b, offs)
    ref = torch.cat([x[0:5] @ w[0] + b[0], x[5:17] @ w[2] + b[2], torch.zeros(4, O)])
    assert torch.allclose(y, ref, atol=1e-6)
    g = torch.randn_like(y)
    g[17:] = float("nan")  # what comes back in the SKIP rows is ignored
    got = torch.autograd.grad(y, (x, w, b), g)
    want = torch.autograd.grad(ref, (x, w, b), g)
    for a, r in zip(got, want):
        assert torch.allclose(a, r, atol=1e-5)


def _pool_param_users(model, out) -> dict:
    """For each parameter of a module pool (routed pools and one-module vanilla layers), the names of the autograd
    nodes that take it as an input."""
    pool_params = {p: n for n, p in model.named_parameters() if not n.startswith(("wte", "wpe", "ln_f")) and
                   ".router_" not in n}
    seen, stack, users = set(), [out.logits.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            var = getattr(nxt, "variable", None)
            if var is not None and var in pool_params:
                users.setdefault(pool_params[var], set()).add(node.name())
            stack.append(nxt)
    assert len(users) == len(pool_params)  # every pool parameter was used
    return users


def test_loop_reference_unbinds_each_stacked_parameter_once_per_forward():
    """The single forms take module m's slices from one ``unbind`` per stacked parameter and forward pass, not
    ``weight[m]`` per use: each ``SelectBackward`` of a stacked parameter would add a zero-filled gradient the size of
    the whole stack per use (the loop reference took 1.43× the time at 8 modules on CPU). A vanilla layer (a
    one-module pool) takes a view instead, whose backward copies nothing."""
    cfg = tiny_config(n_attn=3, n_ffn=4, top_k=2, steps=2, dispatch="loop")
    model = MoM(cfg)
    users = _pool_param_users(model, model(torch.randint(0, cfg.vocab_size, (2, 12))))
    assert any(".pool." in name for name in users) and any(name.startswith("bottom.") for name in users)
    for name, nodes in users.items():  # every pool parameter through exactly one unbind (or squeeze)
        assert nodes == {"UnbindBackward0" if ".pool." in name else "SqueezeBackward1"}, (name, nodes)


@pytest.mark.parametrize("dispatch", ["grouped", "loop"])
def test_unpicked_modules_get_zero_gradients_on_every_path(dispatch, grouped_path):
    """Every module of a dispatched half gets a gradient, zero if no token picked it (all picks SKIP here), on
    every path: otherwise AdamW would skip some modules on one device and update them on another."""
    from mom.model.model import ffn_half
    from mom.model.routers import Route

    cfg = tiny_config(n_ffn=3, dispatch=dispatch)
    model = MoM(cfg)
    pool = model.chunks[0].pool
    x = torch.randn(10, cfg.d_model, requires_grad=True)
    route = Route(idx_TK=torch.full((10, 2), 3), w_TK=torch.zeros(10, 2), n=3)
    y = ffn_half(pool.slices(), x, route, model.dispatcher)
    (y.sum() + x.sum()).backward()
    assert y.abs().max() == 0
    for name in ("ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
        g = pool.get_parameter(name).grad
        assert g is not None and g.abs().max() == 0, name


@pytest.mark.parametrize("dispatch", ["grouped", "loop"])
@pytest.mark.parametrize("picks", ["mixed", "all-skip"])
def test_without_gradients_only_picked_modules_run_with_the_same_output(dispatch, picks):
    """Decoding (no gradients) runs only the modules some token picked; with gradients every module runs (see the
    test above). Both give the same output, also when every pick is SKIP (to rounding: without gradients a few
    tokens' picks are summed per module on the host, see ``HostPlan``)."""
    from mom.model.model import ffn_half
    from mom.model.routers import Route

    cfg = tiny_config(n_ffn=4, dispatch=dispatch)
    model = MoM(cfg)
    pool = model.chunks[0].pool
    x = torch.randn(3, cfg.d_model)
    idx = torch.tensor([[0, 4], [2, 0], [4, 4]]) if picks == "mixed" else torch.full((3, 2), 4)
    route = Route(idx_TK=idx, w_TK=torch.rand(3, 2) * (idx < 4), n=4)
    ys = {}
    for grad in (True, False):
        mods, called = pool.slices(), []
        ffn = mods.ffn
        mods.ffn = lambda x_tD, m, called=called, ffn=ffn: called.append(m) or ffn(x_tD, m)
        with torch.set_grad_enabled(grad):
            ys[grad] = ffn_half(mods, x, route, model.dispatcher)
        assert called == ([0, 1, 2, 3] if grad else [0, 2] if picks == "mixed" else []), grad
    torch.testing.assert_close(ys[True].detach(), ys[False], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("idx", [[[2, 0]], [[1, 4]], [[4, 4]], [[3, 1, 1]]],
                         ids=["two-modules", "one-skip", "all-skip", "a-module-twice"])
def test_decoding_one_token_on_the_host_equals_the_sorted_path_exactly(idx):
    """Without gradients, a few assignments are planned on the host (:class:`HostPlan`): a batch-1 decode step sums
    its K picks in the combine's order, so its output is bitwise that of the sorted path. Routers never pick a module
    twice for one token, but a hand-made route may: then each pick still counts."""
    from mom.model.dispatch import GroupedPlan, HostPlan
    from mom.model.model import ffn_half
    from mom.model.routers import Route

    cfg = tiny_config(n_ffn=4)
    model = MoM(cfg)
    x = torch.randn(1, cfg.d_model)
    idx = torch.tensor(idx)
    route = Route(idx_TK=idx, w_TK=torch.rand(idx.shape) * (idx < 4), n=4)
    with torch.no_grad():
        assert isinstance(model.dispatcher.plan(idx, 4), HostPlan)
        host = ffn_half(model.chunks[0].pool.slices(), x, route, model.dispatcher)
    assert isinstance(model.dispatcher.plan(idx, 4), GroupedPlan)  # with gradients: the sorted path
    with torch.no_grad():
        assert isinstance(model.dispatcher.plan(torch.zeros(17, 1, dtype=torch.long), 4), GroupedPlan)  # > 16
    sorted_path = ffn_half(model.chunks[0].pool.slices(), x, route, model.dispatcher).detach()
    if idx.shape[1] == 2:
        assert torch.equal(host, sorted_path)
    else:  # the sorted path runs the repeated module on two copies of the row: the matmul may round differently
        torch.testing.assert_close(host, sorted_path, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sort", [counting_sort, argsort_small])
@pytest.mark.parametrize("A,m", [(0, 3), (1, 3), (57, 5), (2000, 9), (6, 1)])
def test_plan_sorts_are_a_stable_argsort_with_inverse_and_counts(A, m, sort):
    keys = torch.randint(0, m, (A,))
    order, inv, counts = sort(keys, m)
    ref = torch.argsort(keys, stable=True)
    assert torch.equal(order, ref)
    assert torch.equal(inv[ref], torch.arange(A))  # inv inverts order
    assert torch.equal(counts, torch.bincount(keys, minlength=m))


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_router_top_k_equals_topk_in_values_indices_and_gradients(k):
    logits = torch.randn(50, 7, requires_grad=True)
    weights = torch.randn(50, k)
    out = []
    for fn in (lambda p: top_k(p, k), lambda p: p.topk(k, dim=-1)):
        masked = logits.masked_fill(torch.tensor([False] * 5 + [True, False]), float("-inf"))  # a masked choice
        v, i = fn(masked.softmax(-1))
        (g,) = torch.autograd.grad((v * weights).sum(), logits)
        out.append((v, i, g))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.allclose(out[0][2], out[1][2], atol=1e-7)
