"""Routers: which modules each token takes at each assembly step, with what weight.

A router maps the residual stream x_t (before LayerNorm) to N+1 logits (the last is SKIP):

* :class:`GRURouter` — the paper's: ``h' = GRUCell(x_t, h)``, logits ``W_o h'``; the state h is carried over
  the H steps of a block and starts at zero for every block.
* :class:`MLPRouter` — the stateless baseline: ``W_2 ReLU(W_1 x_t)``.
* :class:`LinearRouter` — Mixture-of-Depths' score ``W x_t``, used raw by :func:`select_scores`.
* ``fixed`` routing and any half whose step has a single candidate and no SKIP need no router at all: the
  route is static (every token takes module h with weight 1), see :meth:`MoMConfig.is_static`.

Both learned routers take the options of :class:`Router`: a normalised input (``router_norm``: LayerNorm, RMSNorm,
or ``centered`` — a running mean over tokens subtracted, then RMSNorm) and the step index (``router_step``: a step
embedding added to the input, a per-step logit bias, or both).

:func:`select` turns logits into a :class:`Route`: candidates outside the step's set are masked,
``g = softmax(logits / τ)``, then either token choice (top-K per token; the kept weights per ``route_weights``:
renormalised to sum to 1 as in the paper's code, or the router probabilities themselves, which is what lets a
K = 1 router learn) or expert choice (each candidate module takes the ``capacity`` fraction of a sequence's
tokens with the highest g; weight g, Mixture-of-Depths style). Both produce the same (T, K) index/weight
layout, with index N meaning SKIP, so the dispatchers never see the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mom.config.model import MoMConfig


class Router(nn.Module):
    """What every learned router shares around its own map: the options of ``router_norm`` and ``router_step``.

    The router reads ``u = norm(x_t) + e_h`` (``norm``: its own LayerNorm or RMSNorm, or none, or ``centered``:
    RMSNorm of x_t minus the step's running mean :func:`centering_mean`; ``e_h``: the step
    embedding, (H, D), zero-initialised, or none) and adds ``b_h`` to its logits, the per-step bias (H, N+1),
    zero-initialised or set by ``router_init='layer_map'`` (:func:`layer_map_bias`). The keyword arguments are
    :func:`router_options` of a config; without them the router is the paper's plain one."""

    def __init__(self, d_model: int, n_out: int, *, steps: int = 1, step: str = "none", norm: str = "none",
                 eps: float = 1e-5, bias_HN: Tensor | None = None, center_momentum: float = 0.1):
        super().__init__()
        self.center_momentum = center_momentum
        norms = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm, "centered": nn.RMSNorm}
        self.norm = norms[norm](d_model, eps=eps) if norm in norms else None
        # ``centered``: each step's running mean of the router input over tokens, subtracted before the RMSNorm
        self.register_buffer("center_HD", torch.zeros(steps, d_model) if norm == "centered" else None)
        embed = step in ("embed", "both")
        self.step_embed = nn.Parameter(torch.zeros(steps, d_model)) if embed else None
        if step in ("bias", "both"):
            self.step_bias = nn.Parameter(torch.zeros(steps, n_out) if bias_HN is None else bias_HN.clone())
        else:
            self.step_bias = None

    def router_input(self, x_TD: Tensor, step: int) -> Tensor:
        if self.center_HD is not None:
            x_TD = x_TD - centering_mean(self.center_HD, x_TD, step, self.training, self.center_momentum)
        if self.norm is not None:
            x_TD = self.norm(x_TD)
        return x_TD if self.step_embed is None else x_TD + self.step_embed[step]

    def step_logits(self, logits_TN: Tensor, step: int) -> Tensor:
        return logits_TN if self.step_bias is None else logits_TN + self.step_bias[step]


def centering_mean(center_HD: Tensor, x_TD: Tensor, step: int, training: bool, momentum: float) -> Tensor:
    """``router_norm='centered'``: the mean to subtract from step ``step``'s router input — the running mean as it
    stood before this batch (so a token's route never depends on other tokens of its batch, the future ones
    included); in training the running mean then moves ``momentum`` (``router_center_momentum``) of the way to
    this batch's mean over its tokens. It removes what every token's residual stream shares (the direction the
    first steps of training write into all of them alike), which otherwise leaves a router nothing token-specific
    to route on."""
    mean_D = center_HD[step].clone()
    if training:
        with torch.no_grad():
            center_HD[step].lerp_(x_TD.detach().mean(0).to(center_HD.dtype), momentum)
    return mean_D.to(x_TD.dtype)


class GRURouter(Router):
    recurrent = True

    def __init__(self, d_model: int, hidden: int, n_out: int, std: float, **options):
        super().__init__(d_model, n_out, **options)
        self.gru = nn.GRUCell(d_model, hidden)
        self.out = nn.Linear(hidden, n_out)
        nn.init.normal_(self.out.weight, 0.0, std)
        nn.init.zeros_(self.out.bias)
        self.hidden = hidden

    def forward(self, x_TD: Tensor, h_TR: Tensor | None, step: int = 0) -> tuple[Tensor, Tensor]:
        u_TD = self.router_input(x_TD, step)
        if h_TR is None:
            h_TR = u_TD.new_zeros(u_TD.shape[0], self.hidden)
        h_TR = self.gru(u_TD, h_TR.to(u_TD.dtype))
        return self.step_logits(self.out(h_TR), step), h_TR


class MLPRouter(Router):
    recurrent = False

    def __init__(self, d_model: int, hidden: int, n_out: int, std: float, **options):
        super().__init__(d_model, n_out, **options)
        self.fc = nn.Linear(d_model, hidden)
        self.out = nn.Linear(hidden, n_out)
        for lin in (self.fc, self.out):
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)

    def forward(self, x_TD: Tensor, h: Tensor | None, step: int = 0) -> tuple[Tensor, None]:
        return self.step_logits(self.out(F.relu(self.fc(self.router_input(x_TD, step)))), step), None


def router_options(cfg: MoMConfig, half: str) -> dict:
    """The keyword arguments of :class:`Router` for ``half``'s router under ``cfg``."""
    return dict(steps=cfg.steps, step=cfg.router_step, norm=cfg.router_norm, eps=cfg.layer_norm_eps,
                bias_HN=layer_map_bias(cfg, half), center_momentum=cfg.router_center_momentum)


def layer_map_bias(cfg: MoMConfig, half: str) -> Tensor:
    """(H, N+1) the initial per-step logit bias: zeros, or with ``router_init='layer_map'`` ``router_init_bias · τ``
    on the choices :meth:`MoMConfig.layer_map_choices` gives each step (so their lead in the scaled logits that the
    softmax sees is ``router_init_bias``)."""
    n = getattr(cfg, f"n_{half}")
    bias_HN = torch.zeros(cfg.steps, n + 1)
    if cfg.router_init == "layer_map":
        for h in range(cfg.steps):
            bias_HN[h, cfg.layer_map_choices(half, h)] = cfg.router_init_bias * cfg.temperature
    return bias_HN


class LinearRouter(Router):
    """Mixture-of-Depths' router (Raposo et al. 2024): one linear map d → N+1, stateless; row m scores every token
    for module m, ``r = w_mᵀ x_t + b_m`` (with diagonal candidates, step h reads row h: one linear router per
    block). Its scores are used raw (:func:`select_scores`); ``hidden`` is unused."""

    recurrent = False

    def __init__(self, d_model: int, hidden: int, n_out: int, std: float, **options):
        super().__init__(d_model, n_out, **options)
        self.out = nn.Linear(d_model, n_out)
        nn.init.normal_(self.out.weight, 0.0, std)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_TD: Tensor, h: Tensor | None, step: int = 0) -> tuple[Tensor, None]:
        return self.step_logits(self.out(self.router_input(x_TD, step)), step), None


ROUTERS = {"gru": GRURouter, "mlp": MLPRouter, "linear": LinearRouter}


@dataclass
class Route:
    """One half of one assembly step, over T flattened tokens. Index ``n`` (= number of modules) is SKIP."""

    idx_TK: Tensor  # long (T, K)
    w_TK: Tensor  # float (T, K); 0 on SKIP picks
    n: int  # modules in the pool
    probs_TN: Tensor | None = None  # router probabilities over N+1 choices (None for static routes)
    logits_TN: Tensor | None = None  # masked, temperature-scaled logits (for the z-loss)
    static_module: int | None = None  # every token takes this module with weight 1

    @property
    def picked_TK(self) -> Tensor:
        return self.idx_TK < self.n

    def key_valid(self) -> Tensor:
        """(T,) bool: the token took at least one real module (it exists as a key at this step)."""
        return self.picked_TK.any(-1)

    def module_weights(self) -> Tensor:
        """Weights renormalised over the real picks (used to combine q, k, v); zeros for all-SKIP tokens."""
        w = self.w_TK * self.picked_TK
        return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


def static_route(n_tokens: int, module: int, n: int, device: torch.device) -> Route:
    idx = torch.full((n_tokens, 1), module, dtype=torch.long, device=device)
    return Route(idx_TK=idx, w_TK=torch.ones(n_tokens, 1, device=device), n=n, static_module=module)


def candidate_mask(cfg: MoMConfig, half: str) -> Tensor:
    """(H, N+1) bool: which choices each step allows (the last column is SKIP)."""
    n = getattr(cfg, f"n_{half}")
    mask = torch.zeros(cfg.steps, n + 1, dtype=torch.bool)
    for h in range(cfg.steps):
        mask[h, cfg.candidates(half, h)] = True
    mask[:, n] = cfg.skip
    return mask


def capacity_tokens(capacity: float, T: int) -> int:
    return max(1, min(T, round(capacity * T)))


def top_k(probs_TN: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``probs.topk(k, -1)`` for the few choices of a router (values descending; ties to the lower index).

    For small k as k rounds of max-and-exclude, which the compiler fuses into one pass over (T, N+1): on an H100
    ``topk`` ran as two kernels of ~29 and ~14 µs per route (docs/benchmarks.md). Gradients flow to the picked
    entries, as through ``topk``."""
    if k > 4:
        return probs_TN.topk(k, dim=-1)
    values, indices = [], []
    rest_TN = probs_TN
    for i in range(k):
        v_T, i_T = rest_TN.max(-1)
        values.append(v_T)
        indices.append(i_T)
        if i + 1 < k:
            rest_TN = rest_TN.scatter(-1, i_T.unsqueeze(-1), float("-inf"))
    return torch.stack(values, -1), torch.stack(indices, -1)


def select(logits_TN: Tensor, allowed_N: Tensor, cand_c: Tensor, cfg: MoMConfig, half: str, B: int,
           threshold_c: Tensor | None = None) -> Route:
    """Turn router logits into a route for one step (see module docstring).

    Expert choice looks at the whole sequence, so it cannot decode token by token. With ``threshold_c`` given
    (the causal decode rule), candidate c takes a token iff ``g_c ≥ threshold_c`` — per token, no look-ahead;
    the thresholds are running estimates of the capacity cut-off seen in training (see :func:`capacity_cutoff`).
    """
    n = logits_TN.shape[-1] - 1
    scaled = (logits_TN.float() / cfg.temperature).masked_fill(~allowed_N, float("-inf"))
    probs_TN = scaled.softmax(-1)
    if cfg.selection == "token":
        w_TK, idx_TK = top_k(probs_TN, cfg.k(half))
        if cfg.renormalises(half):
            w_TK = w_TK / w_TK.sum(-1, keepdim=True)
        w_TK = w_TK.masked_fill(idx_TK == n, 0.0)
    else:
        # Expert choice: each candidate module c takes the C tokens of each sequence with the highest g_c.
        T = logits_TN.shape[0] // B
        scores_BTc = probs_TN.view(B, T, -1)[..., cand_c]
        if threshold_c is not None:
            chosen_BTc = scores_BTc >= threshold_c
        else:
            top_BCc = scores_BTc.topk(capacity_tokens(cfg.capacity, T), dim=1).indices
            chosen_BTc = torch.zeros_like(scores_BTc, dtype=torch.bool).scatter_(1, top_BCc, True)
        idx_TK = torch.where(chosen_BTc, cand_c, n).view(B * T, -1)
        w_TK = torch.where(chosen_BTc, scores_BTc, 0.0).view(B * T, -1)
    return Route(idx_TK=idx_TK, w_TK=w_TK, n=n, probs_TN=probs_TN, logits_TN=scaled)


def capacity_cutoff(route: Route, cand_c: Tensor, capacity: float, B: int) -> Tensor:
    """(c,) the router probability of the C-th token of each sequence, averaged over the batch: the value a
    causal per-token threshold must reach to take the same fraction of tokens as expert choice did."""
    return score_cutoff(route.probs_TN, cand_c, capacity, B)


def score_cutoff(scores_TN: Tensor, cand_c: Tensor, capacity: float, B: int) -> Tensor:
    """(c,) the C-th highest score of each candidate in each sequence, averaged over the batch (see
    :func:`capacity_cutoff`; for raw scores, :func:`select_scores`)."""
    T = scores_TN.shape[0] // B
    scores_BTc = scores_TN.view(B, T, -1)[..., cand_c]
    return scores_BTc.topk(capacity_tokens(capacity, T), dim=1).values[:, -1, :].mean(0)


def select_scores(scores_TN: Tensor, allowed_N: Tensor, cand_c: Tensor, capacity: float, B: int,
                  threshold_c: Tensor | None = None) -> Route:
    """Expert choice on raw router scores (``router='linear'``: Mixture-of-Depths as published, Raposo et al.
    2024): candidate c takes the ``capacity`` fraction of each sequence's tokens with the highest score r_c, and
    its pick weighs r_c itself — no softmax, no temperature — so the block adds r·(block(x) − x) and the LM loss
    trains the router through r. With ``threshold_c`` (decoding): c takes a token iff r_c ≥ threshold_c, the
    running estimate of the training cut-off (:func:`score_cutoff`). The route's ``probs_TN`` (for records) is the
    softmax of the allowed scores; ``logits_TN`` the allowed scores (the z-loss)."""
    n = scores_TN.shape[-1] - 1
    scores_TN = scores_TN.float()
    T = scores_TN.shape[0] // B
    scores_BTc = scores_TN.view(B, T, -1)[..., cand_c]
    if threshold_c is not None:
        chosen_BTc = scores_BTc >= threshold_c
    else:
        top_BCc = scores_BTc.topk(capacity_tokens(capacity, T), dim=1).indices
        chosen_BTc = torch.zeros_like(scores_BTc, dtype=torch.bool).scatter_(1, top_BCc, True)
    idx_TK = torch.where(chosen_BTc, cand_c, n).view(B * T, -1)
    w_TK = torch.where(chosen_BTc, scores_BTc, 0.0).view(B * T, -1)
    allowed_TN = scores_TN.masked_fill(~allowed_N, float("-inf"))
    return Route(idx_TK=idx_TK, w_TK=w_TK, n=n, probs_TN=allowed_TN.softmax(-1), logits_TN=allowed_TN)


# ---------------------------------------------------------------------------------------------- aux losses
def balance_stats(route: Route, allowed_N: Tensor, include_skip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-choice pick counts, summed probabilities and the set balanced (masks over N+1), for one route."""
    n1 = route.n + 1
    # A comparison and a sum rather than scatter_add: no atomics with all T·K picks hitting N+1 counters.
    choices_N = torch.arange(n1, device=route.idx_TK.device)
    counts_N = (route.idx_TK.reshape(-1, 1) == choices_N).sum(0).float()
    active_N = allowed_N.clone()
    if not include_skip:
        active_N[-1] = False
    return counts_N, route.probs_TN.sum(0), active_N


def balance_loss(counts_N: Tensor, probsum_N: Tensor, active_N: Tensor) -> Tensor:
    """Switch-style ``N·Σ_i f_i·P_i`` over the active choices: f from the real top-K picks, P the mean router
    probability, both renormalised over the active set (so excluding SKIP does not penalise skipping).
    Equals 1 when picks and probabilities are uniform."""
    a = active_N.to(counts_N.dtype)
    f = counts_N * a
    f = f / f.sum().clamp_min(1.0)
    p = probsum_N * a
    p = p / p.sum().clamp_min(torch.finfo(p.dtype).tiny)
    return a.sum() * (f * p).sum()


def z_loss(route: Route) -> Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the (masked, scaled) router logits."""
    return torch.logsumexp(route.logits_TN, dim=-1).square().mean()


def official_balance(probs: list[Tensor]) -> Tensor:
    """The official code's balance loss (its GPT-2 fork hands the routers' probabilities to a Switch-style
    ``load_balancing_loss_func`` with top-1): the rows of every routed (chunk, step, half) of a forward pass are
    pooled, SKIP counts as one more choice, and

        L = (N+1) · Σ_{i=0}^{N} f_i · P_i,   f_i = (1/R) Σ_r 1[argmax_j g_rj = i],   P_i = (1/R) Σ_r softmax(g_r)_i

    where g_r = softmax(logits_r / τ) is row r's router distribution over the N+1 choices (0 where a step does not
    allow a choice) and R the pooled rows: f counts top-1 picks only (also when K > 1), and P is a second softmax
    of probabilities that are already softmaxed. Rows are pooled over attention and FFN routers alike; a model
    whose halves have different N+1 gets one pool per width and the mean of the pools' losses. ``probs``: each
    routed half's (T, N+1) g."""
    pools: dict[int, list[Tensor]] = {}
    for g_TN in probs:
        pools.setdefault(g_TN.shape[-1], []).append(g_TN)
    losses = []
    for n1, parts in pools.items():
        g_RN = torch.cat(parts)
        f_N = F.one_hot(g_RN.argmax(-1), n1).float().mean(0)
        p_N = g_RN.softmax(-1).mean(0)
        losses.append(n1 * (f_N * p_N).sum())
    return torch.stack(losses).mean()
