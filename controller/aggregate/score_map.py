"""A verifier's score map, score → P(correct): isotonic regression on labelled samples,
refreshed from traffic. (In t2serve "calibration" means one thing, fitting a served model's
curves from gold-labelled samples, `t2serve calibrate`; this module is not that.)

Why map scores: a raw verifier score (a reward model's sigmoid, a checker's share of good steps,
a judge's verdict) is not a probability. A stopping rule that says "stop once a sample is right
with probability ≥ 0.9" needs one, and so does a posterior weighted by scores. Isotonic
regression (pool-adjacent-violators) keeps the verifier's order and assumes nothing else; Platt
scaling is the fallback when there are too few labelled samples for the steps to mean much.

Follows scikit-learn's shape: settings kept as given, learned state ends in `_`, `fit` then
`predict`. `to_dict`/`from_dict` store a fit next to a shipped model (score_map.json).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_ISOTONIC = 20  # fewer labelled samples than this: Platt scaling


class IsotonicScoreMap:
    """Monotone non-decreasing map from score to P(correct), clipped to [floor, 1 - floor]."""

    def __init__(self, floor: float = 0.005) -> None:
        self.floor = floor
        self.x_: np.ndarray | None = None
        self.y_: np.ndarray | None = None
        self.n_: int = 0

    def fit(self, scores: Sequence[float], labels: Sequence[int | bool]) -> IsotonicScoreMap:
        x = np.asarray(scores, dtype=float)
        y = np.asarray(labels, dtype=float)
        if x.shape != y.shape or x.size == 0:
            raise ValueError("fit needs as many labels as scores, at least one")
        self.n_ = int(x.size)
        if x.size < MIN_ISOTONIC:
            self.x_, self.y_ = _platt_table(x, y)
            return self
        order = np.argsort(x, kind="mergesort")
        xs, ys = x[order], y[order]
        ux, start = np.unique(xs, return_index=True)  # one block per distinct score
        sums = np.add.reduceat(ys, start)
        counts = np.diff(np.append(start, xs.size)).astype(float)
        means, _, knots = _pav(sums / counts, counts, ux)
        self.x_, self.y_ = knots, means
        return self

    def predict(self, scores: Sequence[float] | float) -> np.ndarray:
        if self.x_ is None or self.y_ is None:
            raise RuntimeError("score map not fitted")
        x = np.atleast_1d(np.asarray(scores, dtype=float))
        p = np.interp(x, self.x_, self.y_)
        return np.clip(p, self.floor, 1 - self.floor)

    def to_dict(self) -> dict[str, Any]:
        if self.x_ is None or self.y_ is None:
            raise RuntimeError("score map not fitted")
        return {
            "kind": "isotonic",
            "n": self.n_,
            "x": [round(float(v), 6) for v in self.x_],
            "y": [round(float(v), 6) for v in self.y_],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicScoreMap:
        fitted = cls()
        x, y = np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=float)
        if x.size == 0 or x.shape != y.shape or np.any(np.diff(x) < 0):
            raise ValueError("a score map needs matching, sorted x and y")
        fitted.x_, fitted.y_, fitted.n_ = x, y, int(data.get("n", x.size))
        return fitted


def _pav(means: np.ndarray, weights: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pool adjacent violators: merge blocks until the means are non-decreasing. Returns each
    block's mean, weight and the block's score midpoint (the interpolation knots)."""
    m: list[float] = []
    w: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for mean, weight, x in zip(means.tolist(), weights.tolist(), xs.tolist(), strict=True):
        m.append(mean)
        w.append(weight)
        lo.append(x)
        hi.append(x)
        while len(m) > 1 and m[-2] > m[-1]:
            total = w[-2] + w[-1]
            m[-2] = (m[-2] * w[-2] + m[-1] * w[-1]) / total
            w[-2] = total
            hi[-2] = hi[-1]
            del m[-1], w[-1], lo[-1], hi[-1]
    knots = (np.asarray(lo) + np.asarray(hi)) / 2
    return np.asarray(m), np.asarray(w), knots


def _platt_table(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A logistic fit of y on x (a few Newton steps, lightly regularised) as a lookup table.
    The slope is kept ≥ 0, as the isotonic fit keeps the verifier's order: a few labels where
    higher scores happened to be wrong give a flat map (their mean), not an inverted one."""
    a, b = 0.0, 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([np.sum((p - y) * x) + 0.01 * a, np.sum(p - y)])
        w = p * (1 - p)
        h = np.array([[np.sum(w * x * x) + 0.01, np.sum(w * x)], [np.sum(w * x), np.sum(w) + 1e-6]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    if a < 0:  # the best non-decreasing logistic is then the constant at the labels' mean
        mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        a, b = 0.0, float(np.log(mean / (1 - mean)))
    grid = np.linspace(float(x.min()), float(x.max()) if x.max() > x.min() else x.min() + 1, 33)
    return grid, 1 / (1 + np.exp(-(a * grid + b)))


class TrafficScoreMap:
    """A shipped fit (or one from a labelled set), refreshed from served traffic.

    Traffic has no gold; a sample is labelled by agreement with its request's answer when that
    answer was clear (`min_agreement` of at least `min_samples` samples agreed). Those labels are
    noisy, so they join the labelled samples in a bounded window and the map is refit every
    `refit_every` new labels; until then the seed fit is used as it is.
    """

    def __init__(
        self,
        seed: IsotonicScoreMap | None = None,
        *,
        window: int = 4096,
        refit_every: int = 256,
        min_agreement: float = 0.75,
        min_samples: int = 4,
    ) -> None:
        self.seed = seed
        self.window = window
        self.refit_every = refit_every
        self.min_agreement = min_agreement
        self.min_samples = min_samples
        self.current_: IsotonicScoreMap | None = seed
        self.seen_: deque[tuple[float, int]] = deque(maxlen=window)
        self.pending_ = 0

    @property
    def fitted(self) -> bool:
        return self.current_ is not None

    def predict(self, scores: Sequence[float]) -> list[float]:
        if self.current_ is None:
            return [min(1.0, max(0.0, float(s))) for s in scores]  # scores taken as given
        return [float(p) for p in self.current_.predict(scores)]

    def observe(
        self, scores: Sequence[float], answers: Sequence[str | None], final: str | None
    ) -> bool:
        """Take one finished request; True when this refit the map."""
        if final is None or len(scores) < self.min_samples:
            return False
        agreeing = sum(1 for a in answers if a == final) / len(answers)
        if agreeing < self.min_agreement:
            return False
        for s, a in zip(scores, answers, strict=True):
            self.seen_.append((float(s), int(a == final)))
        self.pending_ += len(scores)
        if self.pending_ < self.refit_every:
            return False
        self.pending_ = 0
        xs = [s for s, _ in self.seen_]
        ys = [y for _, y in self.seen_]
        if self.seed is not None and self.seed.x_ is not None and self.seed.y_ is not None:
            # the seed fit as pseudo-samples weighted by what it was fit on, capped at the window
            reps = max(1, min(self.window, self.seed.n_) // max(1, self.seed.x_.size))
            for x, y in zip(self.seed.x_.tolist(), self.seed.y_.tolist(), strict=True):
                xs += [x] * reps
                ys += [1] * round(reps * y) + [0] * (reps - round(reps * y))
        if len(set(ys)) < 2:
            return False
        self.current_ = IsotonicScoreMap().fit(xs, ys)
        return True
