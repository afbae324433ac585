"""Fitting T² curves to pass@k counts: Approach 1 (loss), Approach 2 (accuracy), per-model Beta.

Targets are built per checkpoint on a fixed k grid, using only k <= the fewest samples any
question of that checkpoint has (the unbiased estimator needs k <= n).

The loss target is the mean over questions of -log pass_i@k, with each per-question estimate
floored at 1/(n_floor + 1), where n_floor is the fewest samples any question of the fitted table
has (stored in curves.json). A question never solved has a rate we can only bound below
~1/(n+1) (Laplace's rule of succession gives exactly that for c = 0), so the floor keeps its
-log finite instead of dropping the question (which would bias the loss toward easy questions).
One floor for the whole table, rather than 1/(n_i + 1) per question, makes it a common detection
limit: with per-question floors a checkpoint that happened to get 10^6 samples would look ~3 nats
harder than one with 128 samples on exactly the same unsolved questions (on the Pythia file the
per-question floor raised the extrapolation error from 15% to 20%).

`metric` chooses what "accuracy at k" means: `pass` (pass@k, a perfect verifier) from the
correct counts, or `maj` (majority vote of k samples) from per-question answer counts
(`load_answers`); the same laws are fitted to either. maj@k saturates where votes stop helping,
which Approach 1's floor E can express and Approach 2's Beta form (which tends to 1) cannot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar
from scipy.special import betaln

from controller.scaling.beta import fit_beta_binomial_report
from controller.scaling.curves import (
    AccuracyParams,
    BetaModel,
    Curves,
    DataInfo,
    LossParams,
    PowerLaw,
)
from controller.scaling.data import Cell, CountTable
from controller.scaling.estimators import maj_at_k, pass_at_k
from controller.scaling.laws import beta_links, chinchilla_loss
from controller.scaling.optimize import MultiStartResult, Progress, multistart_minimize

FloatArray = NDArray[np.float64]
K_GRID: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
FLOOR_RULE = "per-question pass@k floored at 1/(n_floor+1) before -log; n_floor = min samples"
MIN_LOSS = 1e-4  # -log pass@k below this (pass@k > 0.9999) is treated as 1e-4
HUBER_DELTA = 0.1  # on log residuals: quadratic within 10% relative error, linear beyond
LOSS_STARTS = 256
ACCURACY_STARTS = 64
MIN_CORRECT = 50  # checkpoints with fewer correct samples in total are left out of Approach 2
METRICS: tuple[str, ...] = ("pass", "maj")


class FitError(ValueError):
    """The data cannot support the requested fit (e.g. a single checkpoint for a law in N, D)."""


# ---- targets ------------------------------------------------------------------------------------


def usable_k(cell: Cell, k_grid: Sequence[int] = K_GRID) -> list[int]:
    """The grid's k values every question of the cell has enough samples for."""
    smallest = float(np.min(cell.samples))
    return [k for k in k_grid if k <= smallest]


def floor_samples(cells: Sequence[Cell]) -> int:
    """n_floor: the fewest samples any question has; pass@k is floored at 1/(n_floor + 1)."""
    return int(min(float(np.min(c.samples)) for c in cells))


@lru_cache(maxsize=200_000)
def _maj_rate(counts: tuple[tuple[str, int], ...], gold: str, k: int) -> float:
    return maj_at_k(dict(counts), gold, k)


def question_rates(cell: Cell, ks: Sequence[int], metric: str = "pass") -> FloatArray:
    """Per-question accuracy at each k (questions × ks): unbiased pass@k or maj@k.

    maj@k needs the cell's answer counts; a sample with no extractable answer counts as one
    more answer class (it can win the vote, and is then wrong).
    """
    if metric == "pass":
        k_arr = np.asarray(ks, dtype=float)[None, :]
        return np.asarray(pass_at_k(cell.samples[:, None], cell.correct[:, None], k_arr))
    if metric != "maj":
        raise FitError(f"unknown metric '{metric}' (use {', '.join(METRICS)})")
    if cell.answers is None or cell.gold is None:
        raise FitError(
            f"maj@k needs answer counts (an answers .jsonl file); '{cell.model}' has only "
            "correct counts"
        )
    rows = []
    for counts, gold in zip(cell.answers, cell.gold, strict=True):
        items = tuple(sorted(counts.items()))
        rows.append([_maj_rate(items, gold, int(k)) for k in ks])
    return np.asarray(rows, dtype=float).reshape(len(cell.answers), len(ks))


def cell_neg_log_pass(
    cell: Cell, ks: Sequence[int], n_floor: int, metric: str = "pass"
) -> FloatArray:
    """Mean over questions of -log max(acc_i@k, 1/(n_floor + 1)) for each k (all k <= min n)."""
    p = question_rates(cell, ks, metric)
    return np.asarray(-np.log(np.maximum(p, 1.0 / (n_floor + 1.0))).mean(axis=0))


def cell_pass(cell: Cell, ks: Sequence[int], metric: str = "pass") -> FloatArray:
    """Mean over questions of the unbiased pass_i@k (or maj_i@k): the measured accuracy."""
    return np.asarray(question_rates(cell, ks, metric).mean(axis=0))


def accuracy_floor(cell: Cell) -> float:
    """The smallest per-checkpoint accuracy the counts can resolve (for log-space residuals)."""
    return 1.0 / (float(np.sum(cell.samples)) + 1.0)


def task_loss(cell: Cell) -> float:
    """-log of the checkpoint's mean pass@1: Approach 2's stand-in for the pretraining loss."""
    return float(-np.log(max(float(cell_pass(cell, [1])[0]), accuracy_floor(cell))))


@dataclass(frozen=True)
class Points:
    params: FloatArray
    tokens: FloatArray
    k: FloatArray
    y: FloatArray


def loss_points(
    cells: Sequence[Cell], n_floor: int, k_grid: Sequence[int] = K_GRID, metric: str = "pass"
) -> Points:
    rows: list[tuple[float, float, float, float]] = []
    for cell in cells:
        ks = usable_k(cell, k_grid)
        if ks:
            for k, y in zip(ks, cell_neg_log_pass(cell, ks, n_floor, metric), strict=True):
                # a checkpoint solving everything has loss 0; keep log-space residuals finite
                rows.append((cell.params, cell.tokens, float(k), max(float(y), MIN_LOSS)))
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return Points(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


# ---- log-sum-exp least squares (Approach 1 and Chinchilla's L(N, D)) ----------------------------


def _huber(r: FloatArray, delta: float) -> tuple[FloatArray, FloatArray]:
    absr = np.abs(r)
    value = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    return value, np.clip(r, -delta, delta)


def lse_objective(
    log_vars: FloatArray, log_y: FloatArray, *, fixed_log_e: float | None = None
) -> Callable[[FloatArray], tuple[float, FloatArray]]:
    """Huber loss of log(E + sum_j exp(c_j - s_j log v_j)) - log y, with its analytic gradient.

    x = [log E, c_1, s_1, c_2, s_2, ...], or without log E when `fixed_log_e` is given (E is
    then profiled by the caller). Vectorised over rows: one call is a few numpy passes.
    """
    rows = float(log_y.size)

    def fun(x: FloatArray) -> tuple[float, FloatArray]:
        rest = x if fixed_log_e is not None else x[1:]
        log_e = fixed_log_e if fixed_log_e is not None else float(x[0])
        coef, expo = rest[0::2], rest[1::2]
        terms = coef - expo * log_vars
        top = np.maximum(terms.max(axis=1), log_e)
        weights = np.exp(terms - top[:, None])
        w_e = np.exp(log_e - top)
        total = w_e + weights.sum(axis=1)
        resid = top + np.log(total) - log_y
        value, slope = _huber(resid, HUBER_DELTA)
        scale = slope / (total * rows)
        g_terms = weights * scale[:, None]
        grad = np.empty(x.size)
        tail = grad if fixed_log_e is not None else grad[1:]
        tail[0::2] = g_terms.sum(axis=0)
        tail[1::2] = -(g_terms * log_vars).sum(axis=0)
        if fixed_log_e is None:
            grad[0] = float((w_e * scale).sum())
        return float(value.sum() / rows), grad

    return fun


_LOG_E = (-10.0, 3.0)
_COEF = (-5.0, 30.0)
_EXPONENT = (0.0, 2.0)
_G_COEF = (-6.0, 6.0)


def _diagnostics(
    res: MultiStartResult, rows: int, resid: FloatArray, seconds: float
) -> dict[str, object]:
    return {
        "objective": res.fun,
        "huber_delta_log": HUBER_DELTA,
        "points": rows,
        "starts": res.n_starts,
        "starts_converged": res.n_converged,
        "starts_at_best": res.n_near_best,
        "seed": res.seed,
        "rmse_log": float(np.sqrt(np.mean(resid**2))),
        "mean_abs_rel_error": float(np.mean(np.abs(np.expm1(resid)))),
        "seconds": round(seconds, 3),
    }


def _data_info(table: CountTable) -> DataInfo:
    return DataInfo(path=table.path, sha256=table.sha256, rows=table.rows, where=table.where)


def _need_grid(cells: Sequence[Cell], what: str) -> None:
    if len({c.params for c in cells}) < 2 or len({c.tokens for c in cells}) < 2:
        raise FitError(f"{what} needs at least two distinct params and two distinct tokens values")


def fit_loss_points(
    pts: Points, *, n_starts: int = LOSS_STARTS, seed: int = 0, progress: Progress | None = None
) -> tuple[LossParams, MultiStartResult]:
    """The Approach 1 law fitted to (N, D, k, mean -log pass@k) points (Huber on log residuals)."""
    log_vars = np.column_stack([np.log(pts.params), np.log(pts.tokens), np.log(pts.k)])
    objective = lse_objective(log_vars, np.log(pts.y))
    bounds = [_LOG_E, _COEF, _EXPONENT, _COEF, _EXPONENT, _G_COEF, _EXPONENT]
    res = multistart_minimize(
        objective, bounds, n_starts=n_starts, seed=seed, progress=progress, screen_iter=20
    )
    e, a, alpha, b, beta, g, gamma = (float(v) for v in res.x)
    params = LossParams(
        E=np.exp(e), A=np.exp(a), alpha=alpha, B=np.exp(b), beta=beta, G=np.exp(g), gamma=gamma
    )
    return params, res


def fit_loss(
    table: CountTable,
    *,
    n_starts: int = LOSS_STARTS,
    seed: int = 0,
    k_grid: Sequence[int] = K_GRID,
    progress: Progress | None = None,
    metric: str = "pass",
) -> Curves:
    """Approach 1: L(N, D, k) = E + A/N^alpha + B/D^beta + G/k^gamma on the floored -log pass@k."""
    _need_grid(table.cells, "a loss fit")
    n_floor = floor_samples(table.cells)
    pts = loss_points(table.cells, n_floor, k_grid, metric)
    if len(np.unique(pts.k)) < 2:
        raise FitError("a loss fit needs at least two k values (samples >= 2 per question)")
    start = time.perf_counter()
    params, res = fit_loss_points(pts, n_starts=n_starts, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    log_y = np.log(pts.y)
    curves = Curves(approach="loss", parameters=params, data=_data_info(table))
    resid = np.log(_predict_loss(params, pts)) - log_y
    curves.diagnostics.update(
        _diagnostics(res, int(pts.y.size), resid, seconds)
        | {
            "k_grid": list(k_grid),
            "floor": FLOOR_RULE,
            "floor_samples": n_floor,
            "cells": len(table.cells),
            "metric": metric,
        }
    )
    return curves


def _predict_loss(p: LossParams, pts: Points) -> FloatArray:
    return np.asarray(
        p.E
        + p.A * pts.params ** (-p.alpha)
        + p.B * pts.tokens ** (-p.beta)
        + p.G * pts.k ** (-p.gamma)
    )


# ---- Approach 2 --------------------------------------------------------------------------------


def fit_chinchilla(
    params: FloatArray,
    tokens: FloatArray,
    y: FloatArray,
    *,
    seed: int = 0,
    grid: int = 24,
    starts_per_e: int = 6,
    progress: Progress | None = None,
) -> tuple[tuple[float, float, float, float, float], dict[str, object]]:
    """L(N, D) = E + A/N^alpha + B/D^beta with E profiled on a grid in [0, 0.98 min y].

    For each E the other four parameters get a multi-start fit (warm-started from the previous
    E); the best grid E is then polished by a bounded scalar search between its neighbours.
    Returns (E, A, alpha, B, beta) and diagnostics.
    """
    log_vars = np.column_stack([np.log(params), np.log(tokens)])
    log_y = np.log(y)
    e_grid = np.linspace(0.0, 0.98 * float(np.min(y)), grid)
    bounds = [_COEF, _EXPONENT, _COEF, _EXPONENT]
    best: tuple[float, FloatArray, MultiStartResult] | None = None
    warm: list[list[float]] = []
    profile: list[float] = []
    for i, e in enumerate(e_grid):
        objective = lse_objective(
            log_vars, log_y, fixed_log_e=float(np.log(e)) if e > 0 else -np.inf
        )
        res = multistart_minimize(
            objective, bounds, n_starts=starts_per_e, seed=seed + i, x0=warm, tight=True
        )
        warm = [list(res.x)]
        profile.append(res.fun)
        if best is None or res.fun < best[2].fun:
            best = (float(e), res.x, res)
        if progress is not None:
            progress(i + 1, grid, best[2].fun)
    assert best is not None
    # polish E between the grid neighbours of the best point (the profile is smooth in E)
    step = float(e_grid[1] - e_grid[0]) if grid > 1 else 0.0
    if step > 0:
        cache: dict[float, MultiStartResult] = {}
        best_x = list(best[1])

        def profile_at(e_val: float) -> float:
            obj = lse_objective(log_vars, log_y, fixed_log_e=float(np.log(max(e_val, 1e-300))))
            cache[e_val] = multistart_minimize(
                obj, bounds, n_starts=1, seed=seed, x0=[best_x], tight=True
            )
            return cache[e_val].fun

        lo_e = max(best[0] - step, 0.0)
        hi_e = min(best[0] + step, float(e_grid[-1]))
        found = minimize_scalar(profile_at, bounds=(lo_e, hi_e), method="bounded")
        e_val = float(found.x)
        if e_val in cache and cache[e_val].fun < best[2].fun:
            best = (e_val, cache[e_val].x, cache[e_val])
    e, x, res = best
    a, alpha, b, beta = (float(v) for v in x)
    diag = {
        "objective": res.fun,
        "e_grid": [float(v) for v in e_grid],
        "e_profile": [float(v) for v in profile],
        "starts_per_e": starts_per_e,
    }
    return (e, float(np.exp(a)), alpha, float(np.exp(b)), beta), diag


@dataclass(frozen=True)
class AccuracyPoints:
    loss: FloatArray  # L(N, D) of the point's checkpoint
    k: FloatArray
    log_acc: FloatArray


def _accuracy_objective(pts: AccuracyPoints) -> Callable[[FloatArray], float]:
    rows = float(pts.k.size)

    def fun(x: FloatArray) -> float:
        a, b = beta_links(pts.loss, theta0=x[0], theta1=x[1], theta2=x[2], theta3=x[3], theta4=x[4])
        acc = -np.expm1(betaln(a, b + pts.k) - betaln(a, b))
        resid = np.log(np.maximum(acc, 1e-300)) - pts.log_acc
        value, _ = _huber(resid, HUBER_DELTA)
        return float(value.sum() / rows)

    return fun


def fit_links(
    pts: AccuracyPoints,
    *,
    n_starts: int = ACCURACY_STARTS,
    seed: int = 0,
    progress: Progress | None = None,
) -> MultiStartResult:
    """theta0..theta4 of the Beta-regression links fitted to log pass@k at each (L, k) point."""
    lo, hi = float(pts.loss.min()), float(pts.loss.max())
    span = max(hi - lo, 1e-3)
    bounds = [(lo - 2 * span, hi + span), (0.0, 10.0), (1e-6, 1.0), (-12.0, 15.0), (-5.0, 5.0)]
    # accuracy falls about as exp(-L) in the tail: start there, with a wide difficulty spread
    guess = [lo, 1.0, min(1.0, 2.0 * float(np.exp(-lo))), float(np.log(0.3)), 0.0]
    return multistart_minimize(
        _accuracy_objective(pts),
        bounds,
        n_starts=n_starts,
        seed=seed,
        jac=False,
        x0=[guess],
        progress=progress,
    )


ChinchillaLaw = tuple[float, float, float, float, float]  # E, A, alpha, B, beta


def fit_accuracy(
    table: CountTable,
    *,
    n_starts: int = ACCURACY_STARTS,
    seed: int = 0,
    k_grid: Sequence[int] = K_GRID,
    progress: Progress | None = None,
    metric: str = "pass",
) -> Curves:
    """Approach 2: Chinchilla L(N, D), then Beta-regression links from L to pass@k (or maj@k).

    With a `loss` column (our own grid's validation losses) L(N, D) is fitted to the real
    pretraining losses of every checkpoint, as in the paper. Without one (the Pythia file) it
    falls back to a stand-in, each checkpoint's task loss -log(mean pass@1) (floored at
    1/(sum_i n_i + 1)), and says so in the diagnostics. The links map L to a = mu nu,
    b = (1 - mu) nu; they are fitted to the measured per-checkpoint accuracy on the k grid in
    log space, using checkpoints with at least MIN_CORRECT correct samples.
    """
    _need_grid(table.cells, "an accuracy fit")
    start = time.perf_counter()
    cells = _accuracy_cells(table, k_grid)
    stage = max(n_starts // 4, 1)  # progress: the law's starts count as a quarter of the links'
    law, law_diag = _fit_law(
        table, cells, seed, _progress_stage(progress, 0, stage, stage + n_starts)
    )
    pts = _accuracy_points(cells, law, k_grid, metric)
    res = fit_links(
        pts, n_starts=n_starts, seed=seed, progress=_progress_stage(progress, stage, 1, 0)
    )
    curves = _accuracy_curves(table, law, res, pts)
    curves.diagnostics.update(
        _diagnostics(res, int(pts.k.size), _links_residuals(res, pts), time.perf_counter() - start)
        | {
            "k_grid": list(k_grid),
            "chinchilla": law_diag,
            "loss_target": (
                "L(N,D) fitted to the data's loss column (validation loss)"
                if table.has_loss
                else "stand-in: no loss column, so L(N,D) is fitted to -log(mean pass@1), "
                "floored at 1/(sum_i n_i + 1)"
            ),
            "metric": metric,
            "accuracy_floor": "per-checkpoint pass@k floored at 1/(sum_i n_i + 1) before log",
            "cells": len(cells),
            "excluded_cells": sorted({c.model for c in table.cells} - {c.model for c in cells}),
            "min_correct": MIN_CORRECT,
        }
    )
    return curves


def _accuracy_cells(table: CountTable, k_grid: Sequence[int]) -> list[Cell]:
    """The checkpoints whose accuracy the links are fitted to. One with a handful of correct
    samples in total has an unresolvable accuracy: its task loss would be set by how many
    samples were drawn, not by the model."""
    cells = [
        c for c in table.cells if usable_k(c, k_grid) and float(c.correct.sum()) >= MIN_CORRECT
    ]
    if len(cells) < 6:
        raise FitError(f"an accuracy fit needs 6+ checkpoints with >= {MIN_CORRECT} correct")
    return cells


def _progress_stage(
    progress: Progress | None, offset: int, scale: int, total: int
) -> Progress | None:
    """One stage of a two-stage fit's progress: `done` of this stage's `of` becomes
    offset + done·scale/of of `total` (total 0: offset + this stage's own total)."""
    if progress is None:
        return None

    def report(done: int, of: int, best: float) -> None:
        if total:
            progress(offset + done * scale // of, total, best)
        else:
            progress(offset + done, offset + of, best)

    return report


def _fit_law(
    table: CountTable, cells: list[Cell], seed: int, progress: Progress | None
) -> tuple[ChinchillaLaw, dict[str, object]]:
    """Stage 1, Chinchilla's L(N, D): on every checkpoint's real loss when the table has a loss
    column (informative anywhere), else on the stand-in task loss of the usable cells."""
    law_cells = list(table.cells) if table.has_loss else cells
    params = np.array([c.params for c in law_cells])
    tokens = np.array([c.tokens for c in law_cells])
    y = np.array([c.loss if table.has_loss else task_loss(c) for c in law_cells], dtype=float)
    law, diag = fit_chinchilla(params, tokens, y, seed=seed, progress=progress)
    e, a_coef, alpha, b_coef, beta = law
    fitted = e + a_coef * params ** (-alpha) + b_coef * tokens ** (-beta)
    diag["mean_abs_rel_error"] = float(np.mean(np.abs(fitted / y - 1.0)))
    diag["cells"] = len(law_cells)
    return law, diag


def _accuracy_points(
    cells: list[Cell], law: ChinchillaLaw, k_grid: Sequence[int], metric: str
) -> AccuracyPoints:
    """Stage 2's data: each cell's fitted L(N, D) against its measured log accuracy at every
    usable k (floored, so an unsolved cell stays finite)."""
    e, a_coef, alpha, b_coef, beta = law
    loss_rows: list[float] = []
    k_rows: list[int] = []
    acc_rows: list[float] = []
    for cell in cells:
        lval = float(chinchilla_loss(cell.params, cell.tokens, E=e, A=a_coef, alpha=alpha,
                                     B=b_coef, beta=beta))  # fmt: skip
        ks = usable_k(cell, k_grid)
        acc = np.maximum(cell_pass(cell, ks, metric), accuracy_floor(cell))
        loss_rows += [lval] * len(ks)
        k_rows += ks
        acc_rows += list(np.log(acc))
    return AccuracyPoints(np.array(loss_rows), np.array(k_rows, dtype=float), np.array(acc_rows))


def _links_residuals(res: MultiStartResult, pts: AccuracyPoints) -> FloatArray:
    t0, t1, t2, t3, t4 = (float(v) for v in res.x)
    a, b = beta_links(pts.loss, theta0=t0, theta1=t1, theta2=t2, theta3=t3, theta4=t4)
    acc = -np.expm1(betaln(a, b + pts.k) - betaln(a, b))
    return np.asarray(np.log(np.maximum(acc, 1e-300)) - pts.log_acc, dtype=float)


def _accuracy_curves(
    table: CountTable, law: ChinchillaLaw, res: MultiStartResult, pts: AccuracyPoints
) -> Curves:
    e, a_coef, alpha, b_coef, beta = law
    t0, t1, t2, t3, t4 = (float(v) for v in res.x)
    return Curves(
        approach="accuracy",
        parameters=AccuracyParams(
            E=e,
            A=a_coef,
            alpha=alpha,
            B=b_coef,
            beta=beta,
            theta0=t0,
            theta1=t1,
            theta2=t2,
            theta3=t3,
            theta4=t4,
        ),
        data=_data_info(table),
    )


# ---- per-model Beta (and the power-law comparison) ----------------------------------------


def fit_power_law(ks: Sequence[int], acc: FloatArray) -> PowerLaw | None:
    """-log pass@k ~ A k^(-b) by least squares in log-log; None with fewer than two usable k."""
    k_arr = np.asarray(ks, dtype=float)
    ok = (acc > 0) & (acc < 1)
    if ok.sum() < 2:
        return None
    x, yv = np.log(k_arr[ok]), np.log(-np.log(acc[ok]))
    slope, intercept = np.polyfit(x, yv, 1)
    resid = intercept + slope * x - yv
    return PowerLaw(
        A=float(np.exp(intercept)), b=float(-slope), rmse_log=float(np.sqrt(np.mean(resid**2)))
    )


def fit_beta_models(
    table: CountTable,
    *,
    seed: int = 0,
    k_grid: Sequence[int] = K_GRID,
    scaled: bool | None = None,
    progress: Progress | None = None,
) -> Curves:
    """One Beta per model (scaled where it fits clearly better), with the power law alongside."""
    start = time.perf_counter()
    models: dict[str, BetaModel] = {}
    total = len(table.cells)
    for i, cell in enumerate(table.cells):
        report = fit_beta_binomial_report(cell.samples, cell.correct, scaled=scaled, seed=seed)
        ks = usable_k(cell, k_grid)
        acc = cell_pass(cell, ks) if ks else np.array([])
        rmse = None
        ok = (acc > 0) & (acc < 1)
        if ok.sum() >= 1:
            pred = np.asarray(report.fit.pass_at_k(np.asarray(ks, dtype=float)[ok]))
            with np.errstate(divide="ignore"):
                r = np.log(-np.log(np.clip(pred, 1e-300, 1 - 1e-16))) - np.log(-np.log(acc[ok]))
            rmse = float(np.sqrt(np.mean(r**2)))
        models[cell.model] = BetaModel(
            a=report.fit.a,
            b=report.fit.b,
            p_max=report.fit.p_max,
            params=cell.params,
            tokens=cell.tokens,
            n_questions=report.n_questions,
            log_likelihood=report.log_likelihood,
            log_likelihood_plain=report.log_likelihood_plain,
            rmse_log=rmse,
            power_law=fit_power_law(ks, acc) if ks else None,
        )
        if progress is not None:
            progress(i + 1, total, float("nan"))
    curves = Curves(approach="beta", models=models, data=_data_info(table))
    curves.diagnostics.update(
        {
            "k_grid": list(k_grid),
            "seed": seed,
            "scaled": "auto (likelihood-ratio test, chi2 1 dof at 99%)"
            if scaled is None
            else scaled,
            "rmse_metric": "log(-log pass@k) on the k grid, Beta vs power law",
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return curves


def fit_curves(
    table: CountTable,
    approach: str,
    *,
    seed: int = 0,
    n_starts: int | None = None,
    progress: Progress | None = None,
    metric: str = "pass",
) -> Curves:
    """Dispatch on the approach name (as the CLI's --approach) and metric (--metric)."""
    if metric not in METRICS:
        raise FitError(f"unknown metric '{metric}' (use {', '.join(METRICS)})")
    if metric == "maj" and not table.has_answers:
        raise FitError("--metric maj needs per-question answer counts (an answers .jsonl file)")
    if approach == "loss":
        return fit_loss(
            table, seed=seed, n_starts=n_starts or LOSS_STARTS, progress=progress, metric=metric
        )
    if approach == "accuracy":
        return fit_accuracy(
            table,
            seed=seed,
            n_starts=n_starts or ACCURACY_STARTS,
            progress=progress,
            metric=metric,
        )
    if metric != "pass":
        raise FitError("a beta fit models pass@k only (use --metric pass)")
    if approach == "beta":
        return fit_beta_models(table, seed=seed, progress=progress)
    raise FitError(f"unknown approach '{approach}' (use loss, accuracy or beta)")
