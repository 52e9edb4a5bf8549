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
