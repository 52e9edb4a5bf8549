"""A deliberately plain GPT-2 written from the equations, independent of mom's code, for equivalence tests."""

import math

import torch
import torch.nn.functional as F


def block(x, p, n_head, eps=1e-5):
    """One pre-norm GPT-2 block. ``p`` maps GPT-2 tensor names (ln_1.weight, attn.c_attn.weight, ...) to tensors."""
    x = x + attention(x, p, n_head, eps)
    return x + ffn(x, p, eps)


def attention(x, p, n_head, eps=1e-5):
    B, T, D = x.shape
    h = F.layer_norm(x, (D,), p["ln_1.weight"], p["ln_1.bias"], eps)
    q, k, v = (h @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]).split(D, dim=-1)
    q, k, v = (t.view(B, T, n_head, D // n_head).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2)) / math.sqrt(D // n_head)
    att = att.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, D)
    return y @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]


def ffn(x, p, eps=1e-5):
    h = F.layer_norm(x, (x.shape[-1],), p["ln_2.weight"], p["ln_2.bias"], eps)
    h = h @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"]
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return h @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]


def module_params(state, prefix, m_attn, m_ffn=None):
    """GPT-2-named tensors of attention module ``m_attn`` and FFN module ``m_ffn`` of a pool at ``prefix``."""
    m_ffn = m_attn if m_ffn is None else m_ffn
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if name.startswith(("ln_1", "attn.")):
            out[name] = v[m_attn]
        elif name.startswith(("ln_2", "mlp.")):
            out[name] = v[m_ffn]
    return out


def embed(state, idx):
    return state["wte.weight"][idx] + state["wpe.weight"][: idx.shape[1]]


def head(state, x, eps=1e-5):
    x = F.layer_norm(x, (x.shape[-1],), state["ln_f.weight"], state["ln_f.bias"], eps)
    return x @ state["wte.weight"].t()


def mixture_of_depths(state, idx, n_layers, n_head, capacity, router="chunks.0.router_attn.out.",
                      pool="chunks.0.pool.", eps=1e-5):
    """Mixture-of-Depths as Raposo et al. (2024) write it, after the embeddings: block l scores every token with its
    own linear router, r = x·w_l + b_l (row l of the router); in each sequence the C = round(capacity·T) tokens with
    the highest r go through the block — attention among those tokens only, in their order, causal — and get
    x + r·(block(x) − x); the others keep x. Returns the hidden states before ln_f."""
    x = embed(state, idx)
    B, T, _ = x.shape
    C = max(1, min(T, round(capacity * T)))
    W, b = state[router + "weight"], state[router + "bias"]
    for layer in range(n_layers):
        p = module_params(state, pool, layer)
        r = x @ W[layer] + b[layer]  # (B, T)
        new = x.clone()
        for s in range(B):
            chosen = r[s].topk(C).indices.sort().values
            xs = x[s, chosen].unsqueeze(0)
            new[s, chosen] = xs[0] + r[s, chosen].unsqueeze(-1) * (block(xs, p, n_head, eps)[0] - xs[0])
        x = new
    return x


def routed_attention(x, idx, w, state, prefix, n_head, n, qkv_sum, eps=1e-5):
    """One routed attention half, token by token: token t's q, k, v are Σ over its real picks m of
    c_attn_m(LN_m(x_t)), each times its weight renormalised over the real picks (``qkv_sum``: times 1, the official
    code's unweighted sum); causal attention in which a token with no real pick is no key (it still sees itself);
    the update is Σ_m w_m c_proj_m(o_t). ``idx``/``w``: (B, T, K) picks (n = SKIP) and weights."""
    B, T, D = x.shape
    qkv = torch.zeros(B, T, 3 * D)
    valid = (idx < n).any(-1)
    for s in range(B):
        for t in range(T):
            picks = [(int(m), float(wk)) for m, wk in zip(idx[s, t], w[s, t]) if m < n]
            total = sum(wk for _, wk in picks)
            for m, wk in picks:
                p = module_params(state, prefix, m)
                h = F.layer_norm(x[s, t], (D,), p["ln_1.weight"], p["ln_1.bias"], eps)
                qkv[s, t] += (h @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]) * (1.0 if qkv_sum else wk / total)
    q, k, v = (t.view(B, T, n_head, D // n_head).transpose(1, 2) for t in qkv.split(D, dim=-1))
    att = (q @ k.transpose(-1, -2)) / math.sqrt(D // n_head)
    seen = torch.ones(T, T).tril().bool() & (valid.unsqueeze(1) | torch.eye(T, dtype=torch.bool)).unsqueeze(1)
    o = (att.masked_fill(~seen, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    out = torch.zeros_like(x)
    for s in range(B):
        for t in range(T):
            for m, wk in zip(idx[s, t].tolist(), w[s, t].tolist()):
                if m < n:
                    p = module_params(state, prefix, m)
                    out[s, t] += wk * (o[s, t] @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"])
    return out


def routed_ffn(x, idx, w, state, prefix, n, eps=1e-5):
    """Σ over each token's real picks m of w_m · FFN_m(x_t)."""
    out = torch.zeros_like(x)
    for s in range(x.shape[0]):
        for t in range(x.shape[1]):
            for m, wk in zip(idx[s, t].tolist(), w[s, t].tolist()):
                if m < n:
                    out[s, t] += wk * ffn(x[s, t].view(1, 1, -1), module_params(state, prefix, 0, m), eps)[0, 0]
    return out


def official_balance(probs):
    """The official code's balance loss by its formula, in loops: every routed half's rows g (router probabilities
    over N+1 choices, SKIP last) pooled; f_i the share of rows whose largest g is i (top-1, first on ties); P_i the
    mean of a second softmax exp(g_i) / Σ_j exp(g_j); loss (N+1)·Σ f_i·P_i; one pool per width, pools averaged."""
    pools = {}
    for g in probs:
        pools.setdefault(g.shape[-1], []).extend(g.reshape(-1, g.shape[-1]))
    losses = []
    for n1, rows in pools.items():
        f, P = [0.0] * n1, [0.0] * n1
        for g in rows:
            g = [float(v) for v in g]
            f[g.index(max(g))] += 1 / len(rows)
            z = sum(math.exp(v) for v in g)
            for i in range(n1):
                P[i] += math.exp(g[i]) / z / len(rows)
        losses.append(n1 * sum(a * b for a, b in zip(f, P)))
    return sum(losses) / len(losses)
