"""Unbiased pass@k and maj@k estimators from sample counts.

pass@k works in log space with `gammaln` so that n up to 1e5 and beyond (and k up to n) never
builds a binomial coefficient. maj@k is exact (a small dynamic programme over answer classes)
where that is cheap and a seeded Monte-Carlo estimate otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import comb, lgamma

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln

FloatArray = NDArray[np.float64]
_DIRECT_TERMS = 64  # below this many factors the product form is cheap and exact to ~1e-15


def _as_counts(x: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if np.any(~np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be non-negative integers")
    return arr


def log_one_minus_pass_at_k(n: ArrayLike, c: ArrayLike, k: ArrayLike) -> FloatArray:
    """log(C(n-c, k) / C(n, k)): the log-probability that k draws without replacement all fail.

    Broadcasts over n, c and k; -inf where n - c < k (some draw must succeed).
    """
    n_, c_, k_ = np.broadcast_arrays(_as_counts(n, "n"), _as_counts(c, "c"), _as_counts(k, "k"))
    if np.any(c_ > n_):
        raise ValueError("c must not exceed n")
    if np.any(k_ > n_):
        raise ValueError("k must not exceed n (the unbiased estimator needs k <= n samples)")
    fail = n_ - c_
    possible = fail >= k_
    safe_fail = np.where(possible, fail, k_)  # keeps gammaln arguments >= 1 where masked out
    log_ratio = (
        gammaln(safe_fail + 1.0)
        - gammaln(safe_fail - k_ + 1.0)
        - gammaln(n_ + 1.0)
        + gammaln(n_ - k_ + 1.0)
    )
    # gammaln differences lose ~log10(n lg n) digits, which matters for tiny pass rates; where
    # min(c, k) is small use the exact product C(n-c,k)/C(n,k) = prod_{i<min(c,k)} (1 - max/(n-i)).
    short = np.minimum(c_, k_)
    direct = possible & (short <= _DIRECT_TERMS)
    if np.any(direct):
        i = np.arange(_DIRECT_TERMS, dtype=np.float64)
        nd, kd, cd, sd = (x[direct][:, None] for x in (n_, k_, c_, short))
        other = np.where(cd <= kd, kd, cd)
        with np.errstate(divide="ignore", invalid="ignore"):  # masked-out factors
            terms = np.where(i < sd, np.log1p(-other / np.maximum(nd - i, 1.0)), 0.0)
        log_ratio = np.array(log_ratio, dtype=np.float64, copy=True)
        log_ratio[direct] = terms.sum(axis=1)
    return np.where(possible, log_ratio, -np.inf)


def pass_at_k(n: ArrayLike, c: ArrayLike, k: ArrayLike) -> float | FloatArray:
    """Unbiased pass@k = 1 - C(n-c, k)/C(n, k) (Chen et al. 2021), vectorised over n, c, k.

    Uses -expm1(log ratio) so tiny pass rates keep their relative precision. Returns a float when
    every input is a scalar. Raises ValueError for negative/non-integer counts, c > n or k > n.
    """
    out = 0.0 - np.expm1(log_one_minus_pass_at_k(n, c, k))  # 0.0 - x: no negative zeros
    return float(out) if out.ndim == 0 else out


def _exact_cost(others: list[int], gold_count: int, k: int) -> int:
    """Rough count of array operations the exact maj@k programme needs."""
    m = len(others)
    return sum(m * (min(j, k) + 1) for j in range(1, min(gold_count, k) + 1))


def _maj_exact(gold_count: int, others: list[int], k: int) -> float:
    """Sum over the gold class's draw j of P(gold draws j, every other class <= j) / (1 + ties)."""
    n = gold_count + sum(others)
    log_total = lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1)
    m = len(others)
    result = 0.0
    for j in range(1, min(gold_count, k) + 1):
        rest = k - j
        if rest > m * j:  # the others cannot absorb k - j draws without one exceeding j
            continue
        # w[s, t]: summed weight of ways other classes draw s in total with t of them tied at j.
        w = np.zeros((rest + 1, m + 1))
        w[0, 0] = 1.0
        for c_i in others:
            new = np.zeros_like(w)
            for x in range(min(c_i, j, rest) + 1):
                weight = float(comb(c_i, x))
                if x < j:
                    new[x:, :] += weight * w[: rest + 1 - x, :]
                else:
                    new[x:, 1:] += weight * w[: rest + 1 - x, :-1]
            w = new
        ties = np.arange(m + 1)
        tie_share = float(np.sum(w[rest] / (1.0 + ties)))
        if tie_share > 0.0:
            log_gold = lgamma(gold_count + 1) - lgamma(j + 1) - lgamma(gold_count - j + 1)
            result += float(np.exp(np.log(tie_share) + log_gold - log_total))
    return min(max(result, 0.0), 1.0)


def _maj_monte_carlo(gold_count: int, others: list[int], k: int, seed: int, draws: int) -> float:
    rng = np.random.default_rng(seed)
    colors = np.array([gold_count, *others], dtype=np.int64)
    sample = rng.multivariate_hypergeometric(colors, k, size=draws)
    top = sample.max(axis=1)
    tied = (sample == top[:, None]).sum(axis=1)
    won = sample[:, 0] == top
    return float(np.mean(np.where(won, 1.0 / tied, 0.0)))


def maj_at_k(
    counts: Mapping[str, int],
    gold: str,
    k: int,
    *,
    seed: int = 0,
    exact_limit: int = 20_000,
    mc_draws: int = 20_000,
) -> float:
    """P(the plurality answer of k draws without replacement is `gold`), ties counted fractionally.

    `counts` maps each distinct answer to how many of the n samples gave it. Exact when the
    dynamic programme needs at most `exact_limit` array steps and binomials fit in a float;
    otherwise a Monte-Carlo estimate from `mc_draws` seeded draws (standard error <= 0.004).
    """
    values = {str(key): int(v) for key, v in counts.items()}
    if any(v < 0 for v in values.values()):
        raise ValueError("answer counts must be non-negative")
    n = sum(values.values())
    if k < 1 or k > n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    gold_count = values.get(gold, 0)
    if gold_count == 0:
        return 0.0
    others = sorted((v for key, v in values.items() if key != gold and v > 0), reverse=True)
    if not others:
        return 1.0
    too_big = lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) > 650.0  # C(n, k) > 1e282
    if not too_big and _exact_cost(others, gold_count, k) <= exact_limit:
        return _maj_exact(gold_count, others, k)
    return _maj_monte_carlo(gold_count, others, k, seed, mc_draws)


def _free_pool_weights(pool: int, size: int) -> FloatArray:
    """C(pool, s) for s = 0..size: the ways to draw s from classes that can never tie (Vandermonde
    merges any number of them, so they cost one array, not one pass each)."""
    s = np.arange(size + 1, dtype=np.float64)
    out = np.zeros(size + 1)
    ok = s <= pool
    out[ok] = np.exp(gammaln(pool + 1.0) - gammaln(s[ok] + 1.0) - gammaln(pool - s[ok] + 1.0))
    return out


def maj_curve(gold_count: int, others: list[int], k_max: int, *, abstained: int = 0) -> FloatArray:
    """Exact maj@k for k = 1..k_max at once: P(k draws without replacement vote for gold).

    The vote is `controller.aggregate.vote`'s: abstentions (`abstained` samples, no answer) do
    not vote, a draw of only abstentions answers nothing (wrong), and ties go to the answer
    seen first. In a uniformly random draw order each of t tied answers is first with
    probability 1/t, so a tie with gold counts 1/(1 + other tied answers), exactly.

    For gold drawn j times the other classes must each draw at most j. Classes holding fewer
    than j samples (and the abstentions) can never reach j, so they merge into one pool
    (Vandermonde); the rest go through a small programme over (draws, ties at j).
    Returns acc[k - 1]. Needs C(n, k_max) below ~1e300 (n up to about a thousand samples).
    """
    n = gold_count + sum(others) + abstained
    if k_max < 1 or k_max > n:
        raise ValueError(f"k_max must be in [1, n={n}], got {k_max}")
    if any(c < 0 for c in others) or gold_count < 0 or abstained < 0:
        raise ValueError("answer counts must be non-negative")
    ks = np.arange(1, k_max + 1, dtype=np.float64)
    log_total = gammaln(n + 1.0) - gammaln(ks + 1.0) - gammaln(n - ks + 1.0)
    if float(log_total.max()) > 690.0:
        raise ValueError(f"C({n}, k) overflows a float for k up to {k_max}; lower k_max")
    acc = np.zeros(k_max)
    for j in range(1, min(gold_count, k_max) + 1):
        size = k_max - j  # draws left for the other classes, for the largest k
        big = [c for c in others if c >= j]
        pool = n - gold_count - sum(big)
        w = np.zeros((size + 1, len(big) + 1))
        w[:, 0] = _free_pool_weights(pool, size)
        for c_i in big:
            new = np.zeros_like(w)
            for x in range(min(j, size) + 1):
                weight = float(comb(c_i, x))
                if x < j:
                    new[x:, :] += weight * w[: size + 1 - x, :]
                else:
                    new[x:, 1:] += weight * w[: size + 1 - x, :-1]
            w = new
        share = w @ (1.0 / (1.0 + np.arange(len(big) + 1)))  # share[s], s = k - j
        k_idx = np.arange(j, k_max + 1)  # k values with s = k - j >= 0
        log_gold = lgamma(gold_count + 1) - lgamma(j + 1) - lgamma(gold_count - j + 1)
        with np.errstate(divide="ignore"):
            acc[k_idx - 1] += np.exp(np.log(share[k_idx - j]) + log_gold - log_total[k_idx - 1])
    return np.clip(acc, 0.0, 1.0)
