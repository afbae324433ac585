"""The t2 prior: a Beta on the per-question share of the leading answer, refitted from traffic.

Per finished question we keep (n, c): n = votes for the top two answers, c = votes for the
leader. A beta-binomial fit of those pairs gives Beta(a, b) for the leader's share θ. The
fit is valid on traffic that an adaptive policy stopped early: the stopping rule depends
only on the observed votes, so it multiplies the likelihood by a factor free of θ
(the likelihood principle) and the maximum-likelihood Beta is unchanged.

The fit itself is `controller.scaling.beta.fit_beta_binomial` (one concept, one module).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln

from controller.policy.base import top_two
from controller.scaling.beta import fit_beta_binomial

MAX_PAIR_VOTES = 64
"""Finished questions with more top-two votes are scaled down to this many (c in proportion)
before they enter a count table, which so holds at most ~2,100 distinct pairs."""


@dataclass(frozen=True)
class LeaderPrior:
    """Beta(a, b) on the leader's share of the top two answers (a ≥ b: leaders usually lead)."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


UNIFORM = LeaderPrior(1.0, 1.0)
"""The cold-start prior before any traffic: Adaptive-Consistency's uniform Beta(1, 1)."""


def leader_pair(answers: Sequence[str | None]) -> tuple[int, int] | None:
    """A finished question's (n, c): top-two votes and leader votes, n capped at MAX_PAIR_VOTES;
    None when no sample answered."""
    _, v1, v2 = top_two(answers)
    if v1 == 0:
        return None
    n, c = v1 + v2, v1
    if n > MAX_PAIR_VOTES:
        n, c = MAX_PAIR_VOTES, round(c * MAX_PAIR_VOTES / n)
    return n, c


def anchor_pairs(prior: LeaderPrior, weight: int, n: int = 8) -> list[tuple[int, int]]:
    """`weight` pseudo-questions of n votes whose folded leader counts follow `prior`.

    They keep the fit anchored where traffic carries no information about the spread: a
    stream stopped after one vote per question says "leaders always lead" (all pairs are
    (1, 1)), and an unanchored maximum-likelihood fit would then never draw a second sample.
    """
    c = np.arange(n + 1, dtype=float)
    logp = (
        betaln(prior.a + c, prior.b + n - c)
        - betaln(prior.a, prior.b)
        + np.array([math.log(math.comb(n, int(k))) for k in c])
    )
    p = np.exp(logp)
    folded = np.zeros(n + 1)
    for k in range(n + 1):
        folded[max(k, n - k)] += p[k]
    counts = np.round(folded * weight).astype(int)
    return [(n, k) for k in range(n + 1) for _ in range(counts[k])]


def fit_leader_prior(
    pairs: Iterable[tuple[int, int]] | Mapping[tuple[int, int], int],
    anchor: LeaderPrior = UNIFORM,
    anchor_weight: int = 10,
) -> LeaderPrior:
    """Fit Beta(a, b) to (n, c) pairs (n = top-two votes, c = leader votes); skips n = 0.

    `pairs` is a list of pairs or a count table {(n, c): questions}: the fit is weighted, so
    its cost grows with the distinct pairs, not with the questions seen.
    `anchor_weight` pseudo-questions drawn from `anchor` (the cold-start prior) regularise
    the fit (see anchor_pairs); their weight fades as traffic accumulates.
    """
    table: Counter[tuple[int, int]] = Counter()
    if isinstance(pairs, Mapping):
        table.update({k: int(v) for k, v in pairs.items() if k[0] > 0 and v > 0})
    else:
        table.update(p for p in pairs if p[0] > 0)
    if table.total() < 2:
        return anchor
    if anchor_weight > 0:
        table.update(anchor_pairs(anchor, anchor_weight))
    keys = list(table)
    n = np.array([k[0] for k in keys], dtype=float)
    c = np.array([k[1] for k in keys], dtype=float)
    w = np.array([table[k] for k in keys], dtype=float)
    # the leader's share can reach 1: plain Beta
    fit = fit_beta_binomial(n, c, scaled=False, weights=w)
    a, b = float(fit.a), float(fit.b)
    return LeaderPrior(max(a, 1e-3), max(b, 1e-3))
