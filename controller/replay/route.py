"""Replaying routes over a routing set (controller.replay.routing_set), with cross-fitting.

Why this shape. A route is judged on questions it was not calibrated on: the set's questions
are split into K seeded folds, and each fold is scored by a route built (controller.routing's
`build_route`, from served curves fitted by controller.scaling.served) on the other folds.
Decisions come from the `RouteRun` the server runs, priced as the ledger bills a wave: the
call's prompt plus its samples. Each of `perms` seeded draw orders feeds every model's recorded
samples in that order and never more than were recorded; a null answer abstains.

The same orders also drive the baselines (controller.replay.route_baselines), so every point
of a set's frontier is measured on the same draws with the same dollars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from controller.replay.data import ReplayQuestion, ReplaySample
from controller.replay.routing_set import NOT_RECORDED, RoutingSet, SetModel
from controller.routing import (
    N_MAX,
    POOL,
    SHRINK,
    FittedMember,
    Route,
    RouteMember,
    RouteRun,
    assemble_route,
    calibration_questions,
    cascade_answer,
)
from controller.scaling.served import calibration_width, fit_served, served_curves

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
GOLD = "0"
"""Answers are replayed by their code in the set (controller.replay.routing_set): gold is 0."""
PLACEHOLDER_PARAMS = 1.0
"""N of a model priced in dollars only: served curves need one, dollar routing never reads it."""
LAM_GRID = (0.0, *np.geomspace(0.01, 1000.0, 21).tolist())
"""λ in units of 1 / (the reference's cost per question): a route at g would pay the whole
reference cost for g more accuracy. 0 … 1000 spans GPT-4 × all down to one cheap sample."""
REPLAY_SHRINK = SHRINK
REPLAY_POOL = POOL
"""The replay's shrinkage (controller.routing.shrunk), the server's routes' too (routing's
SHRINK, POOL): chosen leave-one-set-out on the two dev sets among shrink ∈ {0.5, 4, 16} ×
pool ∈ {off, on} by the worst margin of any baseline over the route's envelope: chosen on
gsm8k_pot1 alone it is (4, on), and on date_cot1 alone the same; each set is scored with the
choice made on the other (BENCHMARKS.md)."""
MODES = ("auto", "cascade")
"""auto: start where the plan says; cascade: always start on the cheapest model."""


@dataclass(frozen=True)
class Draws:
    """Seeded draw orders: per model, (perms, Q, S) indices of its recorded samples; slots a
    ragged log did not record come last, so a question's draws run out where its log does."""

    orders: dict[str, IntArray]

    @classmethod
    def make(cls, rs: RoutingSet, perms: int, seed: int) -> Draws:
        rng = np.random.default_rng(seed)
        orders = {}
        for m in rs.models:
            keys = rng.random((perms, rs.questions, m.samples))
            keys[:, m.codes == NOT_RECORDED] = 2.0  # past every recorded sample's key
            orders[m.id] = np.argsort(keys, axis=2)
        return cls(orders)

    @property
    def perms(self) -> int:
        return next(iter(self.orders.values())).shape[0]

    def codes(self, rs: RoutingSet, model: str) -> IntArray:
        """(perms, Q, S): the answer codes in draw order."""
        m = rs.model(model)
        order = self.orders[model]
        return np.take_along_axis(np.broadcast_to(m.codes, order.shape), order, axis=2)

    def costs(self, rs: RoutingSet, model: str) -> FloatArray:
        """(perms, Q, S): each drawn sample's dollars, in draw order."""
        m = rs.model(model)
        order = self.orders[model]
        return np.take_along_axis(np.broadcast_to(m.sample_cost, order.shape), order, axis=2)


def folds(questions: int, k: int, seed: int) -> list[IntArray]:
    """K seeded folds of the question indices (each sorted)."""
    if not 2 <= k <= questions:
        raise ValueError(f"--folds must be between 2 and the number of questions ({questions})")
    perm = np.random.default_rng(seed).permutation(questions)
    return [np.sort(part) for part in np.array_split(perm, k)]


def _code(c: int) -> str | None:
    return None if c < 0 else str(c)


def calibration_rows(m: SetModel, rows: IntArray) -> tuple[IntArray, int]:
    """The rows a model's curves and vote tables are fitted on, and their K (`calibration_width`:
    rows with fewer samples are left out, the others cut to their first K). A whole log keeps
    every row."""
    k = calibration_width(m.recorded[rows].tolist())
    return rows[m.recorded[rows] >= k], k


def calibrate_member(
    rs: RoutingSet,
    rows: IntArray,
    model: str,
    seed: int,
    shrink: float = REPLAY_SHRINK,
    pool: bool = REPLAY_POOL,
) -> FittedMember:
    """One model calibrated on the set's questions `rows` as a served model is: served curves
    (fit_served) plus routing's own vote statistics (FittedMember.fit)."""
    m = rs.model(model)
    use, k = calibration_rows(m, rows)
    replay = [
        ReplayQuestion(rs.ids[i], GOLD, tuple(ReplaySample(_code(int(c)), None, None)
                                              for c in m.codes[i, :k]), int(i) + 1)
        for i in use
    ]  # fmt: skip
    fit = fit_served(replay, model_id=model, params=PLACEHOLDER_PARAMS,
                     calibration=f"{len(use)} questions of {rs.name}", seed=seed)  # fmt: skip
    qs = calibration_questions([(q.id, q.gold, [s.answer for s in q.samples]) for q in replay])
    member = RouteMember(model, served_curves(fit, rs.name), PLACEHOLDER_PARAMS, qs)
    return FittedMember.fit(member, seed, shrink, pool)


def route_over(rs: RoutingSet, fitted: Sequence[FittedMember]) -> Route:
    """The route over calibrated members (build_route's cross-model tables on top)."""
    return assemble_route(f"{rs.name}:{'>'.join(f.member.model for f in fitted)}", fitted)


def calibrate_route(
    rs: RoutingSet,
    rows: IntArray,
    models: Sequence[str],
    seed: int,
    shrink: float = REPLAY_SHRINK,
    pool: bool = REPLAY_POOL,
) -> Route:
    """A route over `models`, calibrated on the set's questions `rows` (calibrate_member)."""
    return route_over(rs, [calibrate_member(rs, rows, m, seed, shrink, pool) for m in models])


@dataclass
class FoldCalibrations:
    """Each model calibrated once per fold, shared by every route replayed over the folds.

    Why: a set's full route and its single-model t2 routes calibrate the same model on the
    same rows with the same seed, so their fits are equal; refitting them per route was most
    of a replay's time (69% on a 5,000-question set)."""

    rs: RoutingSet
    fold_rows: Sequence[IntArray]
    seed: int = 0
    fits: dict[tuple[int, str, float, bool], FittedMember] = field(default_factory=dict)

    def calibration(self, fold: int) -> IntArray:
        """The rows fold `fold` is scored by a route calibrated on: every other fold's."""
        rows = self.fold_rows
        return np.sort(np.concatenate([r for g, r in enumerate(rows) if g != fold]))

    def route(self, fold: int, settings: RouteSettings) -> Route:
        """The route over `settings.models` that scores fold `fold`."""
        fitted = []
        for model in settings.models:
            key = (fold, model, settings.shrink, settings.pool)
            if key not in self.fits:
                rows = self.calibration(fold)
                self.fits[key] = calibrate_member(self.rs, rows, model, self.seed,
                                                  settings.shrink, settings.pool)  # fmt: skip
            fitted.append(self.fits[key])
        return route_over(self.rs, fitted)


@dataclass(frozen=True)
class Prices:
    """What a route's value arithmetic is told, from its calibration questions: the mean
    dollars of a sample and of a call's prompt per model, and each model's sample cap.
    `recall`: a repeat call's prompt (None: as a first call's, as the recorded APIs bill it;
    a server with a prefix cache prices it at the cache hit, server.sampling.route_prices)."""

    sample: dict[str, float]
    call: dict[str, float]
    caps: dict[str, int]
    recall: dict[str, float] | None = None

    @classmethod
    def measure(cls, rs: RoutingSet, rows: IntArray, models: Sequence[str]) -> Prices:
        sample = {}
        for m in models:  # per recorded sample: a ragged log's empty slots cost nothing
            model = rs.model(m)
            spent = float(model.sample_cost[rows].sum() / model.recorded[rows].sum())
            sample[m] = max(spent, 1e-12)
        call = {m: float(rs.model(m).call_cost[rows].mean()) for m in models}
        caps = {m: min(rs.model(m).samples, N_MAX) for m in models}
        return cls(sample, call, caps)

    def for_question(self, rs: RoutingSet, i: int) -> Prices:
        """These prices with each cap cut to what the log recorded for question `i`."""
        caps = {m: min(cap, int(rs.model(m).recorded[i])) for m, cap in self.caps.items()}
        return self if caps == self.caps else replace(self, caps=caps)


@dataclass
class Point:
    """One route setting's outcome, per question (mean over orders) so intervals can be had."""

    mode: str
    lam: float
    correct: FloatArray  # (Q,)
    cost: FloatArray  # (Q,)
    predicted: FloatArray  # (Q,) the first plan's predicted accuracy
    escalated: FloatArray  # (Q,) share of orders that drew on more than one model
    cut_short: FloatArray  # (Q,) share of orders where the log ran out under the route
    last_model: dict[str, FloatArray] = field(default_factory=dict)  # model → (Q,) share


@dataclass(frozen=True)
class RouteSettings:
    """How routes are replayed: which models, start mode, moving down allowed."""

    models: tuple[str, ...]
    descend: bool = True
    shrink: float = REPLAY_SHRINK
    pool: bool = REPLAY_POOL


@dataclass(frozen=True)
class Replayed:
    """One question under one draw order: right or not, dollars, the first plan's predicted
    accuracy, the models in the order used, the waves as (model, samples), and whether the
    route asked for a sample the log does not have (its caps were not the log's)."""

    right: bool
    dollars: float
    predicted: float
    order: list[str]
    waves: list[tuple[str, int]]
    cut_short: bool = False


def run_one(
    route: Route,
    prices: Prices,
    lam: float,
    cheapest_first: bool,
    descend: bool,
    drawn: dict[str, list[str | None]],
    sample_cost: dict[str, FloatArray],
    call_cost: dict[str, float],
    allowed: int | None = None,
) -> Replayed:
    """Replay one question: `drawn` is each model's answers in draw order (None abstains),
    `allowed` the samples allowed in all (default: every model's cap)."""
    allowed = sum(prices.caps.values()) if allowed is None else allowed
    run = route.start(prices.sample, lam, allowed, cheapest_first, call_costs=prices.call,
                      recall_costs=prices.recall, caps=prices.caps, descend=descend)  # fmt: skip
    return walk(run, drawn, WaveDollars(sample_cost, call_cost))


class WaveDollars:
    """What a wave of the recorded draws cost in dollars: its call plus its samples, summed
    once per (model, first draw, samples) for every route setting walking the same draws."""

    def __init__(self, sample_cost: dict[str, FloatArray], call_cost: dict[str, float]) -> None:
        self.sample_cost = sample_cost
        self.call_cost = call_cost
        self.known: dict[tuple[str, int, int], float] = {}

    def __call__(self, model: str, n: int, k: int) -> float:
        key = (model, n, k)
        dollars = self.known.get(key)
        if dollars is None:
            dollars = self.call_cost[model] + float(self.sample_cost[model][n : n + k].sum())
            self.known[key] = dollars
        return dollars


def walk(run: RouteRun, drawn: dict[str, list[str | None]], wave_dollars: WaveDollars) -> Replayed:
    """Drive a fresh `run` over the recorded draws until it stops or the log runs out."""
    answers: dict[str, list[str | None]] = {}
    order: list[str] = []
    waves: list[tuple[str, int]] = []
    dollars = 0.0
    predicted = 0.0
    cut_short = False
    while True:
        step = run.decide(answers)
        if not order:
            plan = next(p for p in run.plans if p.model == step.model)
            predicted = plan.predicted_accuracy
        if step.stop:
            break
        have = answers.setdefault(step.model, [])
        n = len(have)
        k = min(step.wave, len(drawn[step.model]) - n)
        if k < step.wave:
            cut_short = True
        if k <= 0:
            break
        have.extend(drawn[step.model][n : n + k])
        dollars += wave_dollars(step.model, n, k)
        waves.append((step.model, k))
        if step.model not in order:
            order.append(step.model)
    right = cascade_answer(answers, order) == GOLD
    return Replayed(right, dollars, predicted, order, waves, cut_short)


def replay_routes(
    rs: RoutingSet,
    draws: Draws,
    fold_rows: Sequence[IntArray],
    settings: RouteSettings,
    lams: Sequence[float],
    modes: Sequence[str] = MODES,
    seed: int = 0,
    tick: Callable[[int], None] | None = None,
    calibrations: FoldCalibrations | None = None,
) -> list[Point]:
    """Every (mode, λ) point of routes over `settings.models`, each fold scored by a route
    calibrated on the other folds. λ is in dollars⁻¹. `tick(n)` reports finished questions.
    `calibrations`: the models' fits on these folds, shared with other routes (default: new)."""
    if calibrations is None:
        calibrations = FoldCalibrations(rs, fold_rows, seed)
    models = settings.models
    codes = {m: draws.codes(rs, m) for m in models}
    costs = {m: draws.costs(rs, m) for m in models}
    q_all = rs.questions
    perms = draws.perms
    points = {(mode, lam): _empty_point(mode, lam, q_all, models) for mode in modes for lam in lams}
    for f, rows in enumerate(fold_rows):
        calib = calibrations.calibration(f)
        route = calibrations.route(f, settings)
        prices = Prices.measure(rs, calib, models)
        runs: dict[tuple[int, ...], list[RouteRun]] = {}  # a run per setting, copied per walk
        for i in rows:
            call = {m: float(rs.model(m).call_cost[i]) for m in models}
            here = prices.for_question(rs, int(i))
            caps = tuple(here.caps[m] for m in models)  # all a question's prices may change
            if caps not in runs:
                allowed = sum(here.caps.values())
                runs[caps] = [route.start(here.sample, lam, allowed, mode == "cascade",
                                          call_costs=here.call, recall_costs=here.recall,
                                          caps=here.caps, descend=settings.descend)
                              for mode, lam in points]  # fmt: skip
            # per setting: right, dollars, predicted, escalated, cut short, then each model's
            # share of last draws; means over orders, summed as floats (not numpy scalars)
            sums = [[0.0] * (5 + len(models)) for _ in points]
            for p in range(perms):
                drawn = {m: [_code(int(c)) for c in codes[m][p, i] if c != NOT_RECORDED]
                         for m in models}  # fmt: skip
                dollars = WaveDollars({m: costs[m][p, i] for m in models}, call)
                for run, row in zip(runs[caps], sums, strict=True):
                    one = walk(run.fresh(), drawn, dollars)
                    row[0] += one.right / perms
                    row[1] += one.dollars / perms
                    row[2] += one.predicted / perms
                    row[3] += (len(one.order) > 1) / perms
                    row[4] += one.cut_short / perms
                    if one.order:
                        row[5 + models.index(one.order[-1])] += 1 / perms
            for point, row in zip(points.values(), sums, strict=True):
                point.correct[i], point.cost[i], point.predicted[i] = row[:3]
                point.escalated[i], point.cut_short[i] = row[3:5]
                for m, share in zip(models, row[5:], strict=True):
                    point.last_model[m][i] = share
            if tick is not None:
                tick(1)
    return list(points.values())


def _empty_point(mode: str, lam: float, q: int, models: Sequence[str]) -> Point:
    return Point(mode, lam, np.zeros(q), np.zeros(q), np.zeros(q), np.zeros(q), np.zeros(q),
                 {m: np.zeros(q) for m in models})  # fmt: skip
