"""One multi-start L-BFGS-B helper for every fit in this package.

Starts are a seeded Latin hypercube over the bounds (plus any caller-given starting points), so
a fixed seed gives the same fit bit for bit. The best local optimum wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.stats import qmc
from threadpoolctl import ThreadpoolController

FloatArray = NDArray[np.float64]
Objective = Callable[[FloatArray], tuple[float, FloatArray]] | Callable[[FloatArray], float]
Progress = Callable[[int, int, float], None]


@cache
def _threadpools() -> ThreadpoolController:
    """The process's BLAS pools, found once: finding them reads /proc/self/maps, which took
    longer than the small fits it guards (about 2 ms per start; a served t2's prior refit is
    four starts)."""
    return ThreadpoolController()


@dataclass(frozen=True)
class MultiStartResult:
    """The best optimum and how the starts fared (diagnostics for curves.json)."""

    x: FloatArray
    fun: float
    n_starts: int
    n_converged: int
    n_near_best: int  # starts that ended within 1e-6 (relative) of the best: a robustness signal
    seed: int


def multistart_minimize(
    fun: Objective,
    bounds: Sequence[tuple[float, float]],
    *,
    n_starts: int,
    seed: int = 0,
    jac: bool = True,
    x0: Sequence[Sequence[float]] = (),
    progress: Progress | None = None,
    maxiter: int = 500,
    screen_iter: int | None = None,
    polish: int = 8,
    tight: bool = False,
) -> MultiStartResult:
    """Minimise `fun` with L-BFGS-B from `x0` plus seeded Latin-hypercube starts inside `bounds`.

    With jac=True, `fun` returns (value, gradient); otherwise scipy differences it numerically.
    With `screen_iter`, every start first runs that many iterations and only the `polish` best
    continue to convergence: most starts fall into one of a few basins within a few dozen
    iterations, so this keeps the search broad at a fraction of the cost.
    `tight` lowers L-BFGS-B's tolerances for objectives that can approach zero (exact data).
    `progress(done, total, best)` is called after each start.
    """
    options: dict[str, float] = {"ftol": 1e-15, "gtol": 1e-12} if tight else {}
    lo = np.array([b[0] for b in bounds], dtype=float)
    hi = np.array([b[1] for b in bounds], dtype=float)
    starts = [np.clip(np.asarray(s, dtype=float), lo, hi) for s in x0]
    n_random = max(n_starts - len(starts), 0)
    if n_random:
        sampler = qmc.LatinHypercube(d=len(bounds), seed=np.random.default_rng(seed))
        starts += list(qmc.scale(sampler.random(n_random), lo, hi))
    if not starts:
        raise ValueError("multistart_minimize needs at least one start")
    box = list(zip(lo, hi, strict=True))

    def run(x: FloatArray, iters: int) -> tuple[FloatArray, float, bool]:
        # L-BFGS-B's tiny BLAS calls are 10-20x slower when BLAS spreads them over busy cores.
        with np.errstate(all="ignore"), _threadpools().limit(limits=1, user_api="blas"):
            res = minimize(
                fun, x, jac=jac, method="L-BFGS-B", bounds=box, options=options | {"maxiter": iters}
            )
        f = float(res.fun) if np.isfinite(res.fun) else np.inf
        return np.asarray(res.x, dtype=float), f, bool(res.success)

    first = maxiter if screen_iter is None else min(screen_iter, maxiter)
    ends: list[tuple[FloatArray, float, bool]] = []
    best_f = np.inf
    for i, start in enumerate(starts):
        ends.append(run(start, first))
        best_f = min(best_f, ends[-1][1])
        if progress is not None:
            progress(i + 1, len(starts), best_f)
    if screen_iter is not None:
        order = np.argsort([e[1] for e in ends])[:polish]
        for idx in order:
            if not ends[idx][2]:  # stopped by the iteration cap, not converged: continue it
                ends[idx] = run(ends[idx][0], maxiter)
    values = [e[1] for e in ends]
    converged = sum(e[2] for e in ends)
    best_i = int(np.argmin(values))
    best_x: FloatArray | None = ends[best_i][0] if np.isfinite(values[best_i]) else None
    best_f = values[best_i]
    if best_x is None:
        raise RuntimeError("every start of the fit diverged (non-finite objective)")
    tol = 1e-6 * max(abs(best_f), 1e-12)
    near = int(sum(abs(v - best_f) <= tol for v in values))
    return MultiStartResult(best_x, best_f, len(starts), converged, near, seed)
