"""Compute-optimal (N, D, k) under train and inference budgets, against Chinchilla's choice.

Paper form: maximise predicted pass@k subject to 6ND <= C_train and 2Nk <= C_inf (FLOPs per
served token). Pass@k rises with D and k, so both budgets bind: D = C_train/(6N) and
k = floor(C_inf/(2N)), a one-dimensional search over N with jumps where k changes.
Deployment form: 6ND + 2NkTQ <= C_total over the model's life (Q queries of T tokens each).
Both are solved by a dense log grid then local refinement per integer k (k >= 1).
For a loss fit "predicted accuracy" is exp(-L), and maximising it is minimising the loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar

from controller.scaling.curves import AccuracyParams, Curves, LossParams
from controller.scaling.laws import beta_links, beta_pass_at_k, chinchilla_loss, t2_loss

FloatArray = NDArray[np.float64]
CHINCHILLA_TOKENS_PER_PARAM = 20.0
N_MIN = 1e6  # smallest model the planner considers (params)
N_MAX = 1e13
D_MIN = 1e6  # fewest training tokens considered
GRID = 2000
K_MAX = 1e15
"""Most samples per query the deployment planner searches: a budget that affords more is
already past any curve's saturation, and counts beyond 2^53 are not whole numbers as floats."""


class PlanError(ValueError):
    """The budgets admit no model, or the curves cannot be planned with."""


@dataclass(frozen=True)
class Choice:
    params: float
    tokens: float
    k: int
    tokens_per_param: float
    pass_at_k: float
    loss: float | None
    train_flops: float
    inference_flops: float  # per served token (paper form) or over the lifetime (deployment)


@dataclass(frozen=True)
class Plan:
    form: str
    approach: str
    budget: dict[str, float]
    t2: Choice
    chinchilla: Choice
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gain_pass_at_k"] = self.t2.pass_at_k - self.chinchilla.pass_at_k
        out["overtraining_ratio"] = self.t2.tokens_per_param / self.chinchilla.tokens_per_param
        return out


def _scorer(curves: Curves) -> tuple[Any, Any]:
    """Vectorised (pass@k, loss-or-None) of (N, D, k) arrays for a loss or accuracy fit."""
    p = curves.parameters
    if isinstance(p, LossParams):
        kw = p.model_dump()

        def loss_fn(n: FloatArray, d: FloatArray, k: FloatArray) -> FloatArray:
            return t2_loss(n, d, k, **kw)

        return (lambda n, d, k: np.exp(-loss_fn(n, d, k))), loss_fn
    if isinstance(p, AccuracyParams):

        def acc(n: FloatArray, d: FloatArray, k: FloatArray) -> FloatArray:
            lval = chinchilla_loss(n, d, E=p.E, A=p.A, alpha=p.alpha, B=p.B, beta=p.beta)
            a, b = beta_links(
                lval,
                theta0=p.theta0,
                theta1=p.theta1,
                theta2=p.theta2,
                theta3=p.theta3,
                theta4=p.theta4,
            )
            return beta_pass_at_k(a, b, k)

        return acc, None
    raise PlanError(
        "plan needs a loss or accuracy fit (they depend on N and D); "
        f"this curves file is '{curves.approach}'"
    )


def _choice(curves: Curves, n: float, d: float, k: int, infer: float) -> Choice:
    score, loss_fn = _scorer(curves)
    arr = (np.array([n]), np.array([d]), np.array([float(k)]))
    loss = float(loss_fn(*arr)[0]) if loss_fn is not None else None
    return Choice(
        params=n,
        tokens=d,
        k=int(k),
        tokens_per_param=d / n,
        pass_at_k=float(score(*arr)[0]),
        loss=loss,
        train_flops=6.0 * n * d,
        inference_flops=infer,
    )


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise PlanError(f"{name} must be a positive finite number, got {value}")


def _best_n_for_k(score: Any, k: int, lo: float, hi: float, tokens_of: Any) -> tuple[float, float]:
    """Maximise score over N in [lo, hi] at fixed k (log-N bounded search, ends included)."""

    def neg(u: float) -> float:
        n = math.exp(u)
        return -float(score(np.array([n]), np.array([tokens_of(n, k)]), np.array([float(k)]))[0])

    candidates = [(neg(math.log(lo)), lo), (neg(math.log(hi)), hi)]
    if hi > lo * (1 + 1e-9):
        res = minimize_scalar(
            neg, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-7}
        )
        candidates.append((float(res.fun), math.exp(float(res.x))))
    f, n = min(candidates)
    return n, -f


def plan_paper(
    curves: Curves,
    train_flops: float,
    inference_flops: float,
    *,
    n_min: float = N_MIN,
    d_min: float = D_MIN,
) -> Plan:
    """T² optimum with 6ND <= C_train and 2Nk <= C_inf, and Chinchilla (20 tokens/param, k=1).

    `n_min`/`d_min` bound the search below (defaults suit LLMs; our own grid is 3e4-4e5)."""
    N_MIN, D_MIN = n_min, d_min  # the module defaults, overridden per call
    _positive("--min-params", n_min)
    _positive("--min-tokens", d_min)
    _positive("--train-flops", train_flops)
    _positive("--inference-flops", inference_flops)
    score, _ = _scorer(curves)
    n_hi = min(N_MAX, inference_flops / 2.0, train_flops / (6.0 * D_MIN))
    if n_hi < N_MIN:
        raise PlanError(
            f"budgets too small: C_inf={inference_flops:g} and C_train={train_flops:g} admit "
            f"at most {n_hi:.3g} params at k=1, below the smallest model considered ({N_MIN:.0e})"
        )

    def tokens_of(n: float, _k: int) -> float:
        return train_flops / (6.0 * n)

    def k_of(n: FloatArray) -> FloatArray:
        return np.maximum(np.floor(inference_flops / (2.0 * n) * (1 + 1e-12)), 1.0)

    grid = np.geomspace(N_MIN, n_hi, GRID)
    ks = k_of(grid)
    values = score(grid, train_flops / (6.0 * grid), ks)
    i = int(np.nanargmax(values))
    # For a fixed k the optimum is often the piece's right end N = C_inf/(2k) (the largest model
    # that still affords k samples): score those ends for every k (or a dense log sample of k).
    k_top = int(k_of(np.array([N_MIN]))[0])
    k_all = (
        np.arange(1, k_top + 1, dtype=float)
        if k_top <= 2_000_000
        else np.unique(np.round(np.geomspace(1, k_top, 200_000)))
    )
    n_ends = np.minimum(inference_flops / (2.0 * k_all), n_hi)
    end_values = score(n_ends, train_flops / (6.0 * n_ends), k_all)
    top_ends = k_all[np.argsort(end_values)[-5:]]
    nearby = {int(k) + j for k in (ks[i], *top_ends) for j in range(-3, 4) if int(k) + j >= 1}
    best: tuple[float, float, int] = (float(values[i]), float(grid[i]), int(ks[i]))
    for k in nearby:
        lo = max(N_MIN, inference_flops / (2.0 * (k + 1)) * (1 + 1e-9))
        hi = min(n_hi, inference_flops / (2.0 * k))
        if hi < lo:
            continue
        n, v = _best_n_for_k(score, k, lo, hi, tokens_of)
        if v > best[0]:
            best = (v, n, k)
    _, n_opt, k_opt = best
    t2 = _choice(curves, n_opt, tokens_of(n_opt, k_opt), k_opt, 2.0 * n_opt * k_opt)
    notes: list[str] = []
    n_c = math.sqrt(train_flops / (6.0 * CHINCHILLA_TOKENS_PER_PARAM))
    if 2.0 * n_c > inference_flops:
        n_c = inference_flops / 2.0
        notes.append("Chinchilla's N capped by the inference budget at k=1")
    chin = _choice(curves, n_c, CHINCHILLA_TOKENS_PER_PARAM * n_c, 1, 2.0 * n_c)
    budget = {"train_flops": train_flops, "inference_flops": inference_flops}
    return Plan("paper", curves.approach, budget, t2, chin, notes)


def plan_deployment(
    curves: Curves,
    total_flops: float,
    queries: float,
    tokens_per_query: float,
    *,
    n_min: float = N_MIN,
    d_min: float = D_MIN,
) -> Plan:
    """T² optimum with 6ND + 2NkTQ <= C_total, and Chinchilla (20 tokens/param, k=1) alike."""
    N_MIN, D_MIN = n_min, d_min  # the module defaults, overridden per call
    for name, value in (
        ("--min-params", n_min),
        ("--min-tokens", d_min),
        ("--total-flops", total_flops),
        ("--queries", queries),
        ("--tokens-per-query", tokens_per_query),
    ):
        _positive(name, value)
    score, _ = _scorer(curves)
    serve = 2.0 * tokens_per_query * queries  # inference FLOPs per parameter per sample

    def k_max(n: float) -> int:
        k = (total_flops - 6.0 * n * D_MIN) / (serve * n) * (1 + 1e-12)
        return math.floor(min(k, K_MAX))

    def tokens_of(n: float, k: int) -> float:
        return (total_flops - serve * n * k) / (6.0 * n)

    # the largest N that still trains on D_MIN tokens and serves k = 1
    n_hi = min(N_MAX, total_flops / (6.0 * D_MIN + serve))
    if n_hi < N_MIN or k_max(N_MIN) < 1:
        raise PlanError(
            f"budget too small: C_total={total_flops:g} cannot train a {N_MIN:.0e}-param model on "
            f"{D_MIN:.0e} tokens and serve {queries:g} queries x {tokens_per_query:g} tokens at k=1"
        )
    best: tuple[float, float, int] = (-np.inf, N_MIN, 1)
    for n in np.geomspace(N_MIN, n_hi, 400):
        top = k_max(float(n))
        if top < 1:
            continue
        ks = np.unique(np.round(np.geomspace(1, top, 60)))
        vals = score(np.full(ks.size, n), (total_flops - serve * n * ks) / (6.0 * n), ks)
        j = int(np.nanargmax(vals))
        if vals[j] > best[0]:
            best = (float(vals[j]), float(n), int(ks[j]))
    # refine: alternate exact integer k around the optimum and continuous N at that k
    _, n_opt, k_opt = best
    for _ in range(4):
        top = k_max(n_opt)
        lo_k, hi_k = max(1, int(k_opt / 1.3) - 2), min(top, int(k_opt * 1.3) + 2)
        ks = np.arange(lo_k, hi_k + 1, max(1, (hi_k - lo_k) // 4000), dtype=float)
        vals = score(
            np.full(ks.size, n_opt), (total_flops - serve * n_opt * ks) / (6.0 * n_opt), ks
        )
        k_opt = int(ks[int(np.nanargmax(vals))])
        n_cap = min(n_hi, total_flops / (6.0 * D_MIN + serve * k_opt))
        n_opt, _ = _best_n_for_k(score, k_opt, N_MIN, max(n_cap, N_MIN), tokens_of)
    t2 = _choice(curves, n_opt, tokens_of(n_opt, k_opt), k_opt, serve * n_opt * k_opt)
    # Chinchilla: D = 20 N, k = 1: 120 N^2 + serve N = C_total
    a = 6.0 * CHINCHILLA_TOKENS_PER_PARAM
    n_c = (-serve + math.sqrt(serve * serve + 4.0 * a * total_flops)) / (2.0 * a)
    chin = _choice(curves, n_c, CHINCHILLA_TOKENS_PER_PARAM * n_c, 1, serve * n_c)
    budget = {"total_flops": total_flops, "queries": queries, "tokens_per_query": tokens_per_query}
    return Plan("deployment", curves.approach, budget, t2, chin, [])
