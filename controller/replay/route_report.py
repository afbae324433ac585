"""One routing set's replay, end to end: routes and baselines on the same draws, as the JSON
`t2serve replay --route --json` prints (names fixed by issue 21; intervals and the `summary`,
controller.replay.route_summary, are extra fields)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.replay.route import (
    LAM_GRID,
    MODES,
    REPLAY_POOL,
    REPLAY_SHRINK,
    Draws,
    FoldCalibrations,
    Point,
    RouteSettings,
    folds,
    replay_routes,
)
from controller.replay.route_baselines import Scored, baselines, mean_interval
from controller.replay.route_summary import summarise
from controller.replay.routing_set import RoutingSet, RoutingSetError


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay on every set."""

    perms: int = 20
    seed: int = 0
    folds: int = 2
    lams: Sequence[float] = LAM_GRID  # in units of 1 / the reference's cost
    descend: bool = True
    single_t2: bool = True
    shrink: float = REPLAY_SHRINK
    pool: bool = REPLAY_POOL


def work(rs: RoutingSet, plan: ReplayPlan) -> int:
    """How many `tick`s `replay_set` reports: questions × route settings."""
    return rs.questions * (1 + (len(rs.models) if plan.single_t2 else 0))


def _r(x: float) -> float:
    return round(float(x), 6)


def _scored(s: Scored) -> dict[str, Any]:
    return {"accuracy": _r(s.accuracy), "cost": _r(s.mean_cost), "accuracy_ci95": s.interval()}


def _point(p: Point, ref_cost: float) -> dict[str, Any]:
    cost = float(p.cost.mean())
    return {
        "mode": p.mode,
        "lam": _r(p.lam),
        "lam_per_reference": _r(p.lam * ref_cost),
        "accuracy": _r(p.correct.mean()),
        "accuracy_ci95": mean_interval(p.correct),
        "predicted_accuracy": _r(p.predicted.mean()),
        "cost": _r(cost),
        "relative_cost": _r(cost / ref_cost),
        "escalated": _r(p.escalated.mean()),
        "share_by_model": {m: _r(v.mean()) for m, v in p.last_model.items()},
    }


def replay_set(
    rs: RoutingSet, plan: ReplayPlan, tick: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """The set's entry of the `sets` object."""
    draws = Draws.make(rs, plan.perms, plan.seed)
    base = baselines(rs, draws)
    ref_model, ref_k, ref = base.reference
    ref_cost = ref.mean_cost
    lams = [g / ref_cost for g in plan.lams]
    if not all(math.isfinite(lam) for lam in lams):
        raise RoutingSetError(
            f"{rs.name}: λ = {max(plan.lams):g} / the reference's cost (${ref_cost:.3g} per "
            "question) is past a float's range; give smaller λ"
        )
    rows = folds(rs.questions, plan.folds, plan.seed)
    every = tuple(m.id for m in rs.models)
    settings = RouteSettings(every, plan.descend, plan.shrink, plan.pool)
    fits = FoldCalibrations(rs, rows, plan.seed)  # each model fitted once per fold, for all routes
    points = replay_routes(rs, draws, rows, settings, lams, MODES, plan.seed, tick, fits)
    t2: list[dict[str, Any]] = []
    if plan.single_t2:
        for model in every:
            settings = RouteSettings((model,), shrink=plan.shrink, pool=plan.pool)
            alone = replay_routes(rs, draws, rows, settings, lams, ("auto",), plan.seed, tick,
                                  fits)  # fmt: skip
            t2 += [{"model": model, **_point(p, ref_cost)} for p in alone]
            for entry in t2[-len(alone) :]:
                entry.pop("mode"), entry.pop("share_by_model"), entry.pop("escalated")
    oracle_k, oracle = _cheapest_best(base.oracle)
    entry = {
        "questions": rs.questions,
        "skipped": list(rs.skipped),
        "extractor": rs.extractor,
        "reference": {"model": ref_model, "k": ref_k, **_scored(ref)},
        "route": [_point(p, ref_cost) for p in points],
        "baselines": {
            "single": [{"model": m, "k": k, **_scored(s)} for m, k, s in base.single],
            "vote_cascade": [
                {"models": list(chain), "k": k, "tau": tau, **_scored(s)}
                for chain, k, tau, s in base.vote_cascade
            ],
            "oracle": {"k": oracle_k, **_scored(oracle)},
            "t2": t2,
        },
    }
    return {**entry, "summary": summarise(entry)}


def _cheapest_best(grid: Sequence[tuple[int, Scored]]) -> tuple[int, Scored]:
    """The oracle's weak k: the cheapest of those within 0.1 pt of the best accuracy."""
    top = max(s.accuracy for _, s in grid)
    return min(((k, s) for k, s in grid if s.accuracy >= top - 0.001), key=lambda e: e[1].mean_cost)
