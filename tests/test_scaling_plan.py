"""The planner matches an exhaustive grid over (N, integer k); small budgets fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from controller.scaling.curves import AccuracyParams, BetaModel, Curves, LossParams
from controller.scaling.laws import beta_links, beta_pass_at_k, chinchilla_loss, t2_loss
from controller.scaling.plan import N_MIN, PlanError, plan_deployment, plan_paper

LOSS = LossParams(E=0.5, A=400.0, alpha=0.34, B=410.0, beta=0.28, G=2.0, gamma=0.5)
ACC = AccuracyParams(
    E=1.0, A=400.0, alpha=0.34, B=410.0, beta=0.28,
    theta0=3.0, theta1=1.5, theta2=0.8, theta3=1.0, theta4=-0.3,
)  # fmt: skip


def _score(curves: Curves, n: np.ndarray, d: np.ndarray, k: np.ndarray) -> np.ndarray:
    p = curves.parameters
    if isinstance(p, LossParams):
        return np.exp(-t2_loss(n, d, k, **p.model_dump()))
    assert isinstance(p, AccuracyParams)
    lval = chinchilla_loss(n, d, E=p.E, A=p.A, alpha=p.alpha, B=p.B, beta=p.beta)
    a, b = beta_links(
        lval, theta0=p.theta0, theta1=p.theta1, theta2=p.theta2, theta3=p.theta3, theta4=p.theta4
    )
    return beta_pass_at_k(a, b, k)


@pytest.mark.parametrize("params", [LOSS, ACC])
def test_paper_form_matches_dense_grid(params: LossParams | AccuracyParams) -> None:
    curves = Curves(
        approach="loss" if isinstance(params, LossParams) else "accuracy", parameters=params
    )
    c_train, c_inf = 1e19, 4e9
    plan = plan_paper(curves, c_train, c_inf)
    # exhaustive: every integer k, a dense N grid inside each k's feasible range
    best = -np.inf
    for k in range(1, int(c_inf / (2 * N_MIN)) + 1):
        n = np.geomspace(N_MIN, c_inf / (2 * k), 60)
        best = max(best, float(_score(curves, n, c_train / (6 * n), np.full(n.size, k)).max()))
    assert plan.t2.pass_at_k >= best - 1e-9
    assert plan.t2.pass_at_k == pytest.approx(best, rel=1e-3)
    assert 6 * plan.t2.params * plan.t2.tokens <= c_train * (1 + 1e-9)
    assert 2 * plan.t2.params * plan.t2.k <= c_inf * (1 + 1e-9)
    assert plan.t2.k >= 1 and isinstance(plan.t2.k, int)
    assert plan.chinchilla.k == 1
    assert plan.chinchilla.tokens_per_param == pytest.approx(20.0)
    assert plan.t2.pass_at_k >= plan.chinchilla.pass_at_k


def test_deployment_form_matches_dense_grid() -> None:
    curves = Curves(approach="loss", parameters=LOSS)
    total, queries, tpq = 1e20, 1e6, 100.0
    serve = 2 * queries * tpq
    plan = plan_deployment(curves, total, queries, tpq)
    best = -np.inf
    for n in np.geomspace(N_MIN, total / (6e6 + serve), 400):
        k = np.arange(1, int((total - 6e6 * n) / (serve * n)) + 1, dtype=float)
        if k.size:
            vals = _score(curves, np.full(k.size, n), (total - serve * n * k) / (6 * n), k)
            best = max(best, float(vals.max()))
    assert plan.t2.pass_at_k >= best - 1e-9
    assert plan.t2.pass_at_k == pytest.approx(best, rel=1e-3)
    spent = 6 * plan.t2.params * plan.t2.tokens + serve * plan.t2.params * plan.t2.k
    assert spent == pytest.approx(total, rel=1e-6)
    chin = plan.chinchilla
    assert 6 * chin.params * chin.tokens + serve * chin.params == pytest.approx(total, rel=1e-9)


def test_budgets_too_small_and_unplannable_curves_fail_clearly() -> None:
    curves = Curves(approach="loss", parameters=LOSS)
    with pytest.raises(PlanError, match="too small"):
        plan_paper(curves, 1e21, 1e5)
    with pytest.raises(PlanError, match="too small"):
        plan_deployment(curves, 1e12, 1e9, 100)
    with pytest.raises(PlanError, match="positive"):
        plan_paper(curves, -1.0, 1e11)
    beta = Curves(approach="beta", models={"m": BetaModel(a=0.5, b=20.0)})
    with pytest.raises(PlanError, match="loss or accuracy"):
        plan_paper(beta, 1e21, 1e11)


def test_a_lower_search_floor_plans_models_below_a_million_params() -> None:
    """Our own grid's models are 3e4-4e5 params: the default floor refuses their budgets, a
    lower one plans inside them and keeps both budgets."""
    curves = Curves(approach="loss", parameters=LOSS)
    c_train, c_inf = 1.66e12, 1.84e6
    with pytest.raises(PlanError, match="too small"):
        plan_paper(curves, c_train, c_inf)
    plan = plan_paper(curves, c_train, c_inf, n_min=1e4, d_min=1e4)
    assert 1e4 <= plan.t2.params <= c_inf / 2
    assert plan.t2.train_flops <= c_train * (1 + 1e-9)
    assert 2 * plan.t2.params * plan.t2.k <= c_inf * (1 + 1e-9)
    dep = plan_deployment(curves, 2.3e12, 1e5, 28.0, n_min=1e4, d_min=1e4)
    assert dep.t2.train_flops + dep.t2.inference_flops <= 2.3e12 * (1 + 1e-9)
