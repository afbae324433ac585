"""pass@k and maj@k against brute-force enumeration of every k-subset of the samples."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.scaling.estimators import maj_at_k, pass_at_k


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_maj_at_k(counts: dict[str, int], gold: str, k: int) -> float:
    samples = [a for a, v in counts.items() for _ in range(v)]
    total = Fraction(0)
    subsets = 0
    for pick in itertools.combinations(range(len(samples)), k):
        drawn = Counter(samples[i] for i in pick)
        top = max(drawn.values())
        winners = [a for a, v in drawn.items() if v == top]
        total += Fraction(1, len(winners)) if gold in winners else 0
        subsets += 1
    return float(total / subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_vectorises_and_is_stable_for_huge_n() -> None:
    n = np.array([100_000, 100_000, 100_000, 100_000])
    c = np.array([0, 1, 3, 50_000])
    k = np.array([100_000, 1, 1_000, 99_999])
    got = pass_at_k(n, c, k)
    assert isinstance(got, np.ndarray)
    exact = [
        1 - comb(int(ni - ci), int(ki)) / comb(int(ni), int(ki))
        for ni, ci, ki in zip(n, c, k, strict=True)
    ]
    np.testing.assert_allclose(got, exact, rtol=1e-9)
    # tiny rates keep their relative precision (no 1 - (1 - eps) cancellation)
    assert pass_at_k(100_000, 1, 1) == pytest.approx(1e-5, rel=1e-12)
    grid = np.asarray(pass_at_k(10_000, 7, np.arange(1, 10_001)))
    assert np.all(np.diff(grid) >= 0) and grid[-1] == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k"), [(5, 6, 1), (5, 2, 6), (-1, 0, 1), (5, 1.5, 2), (float("nan"), 0, 1)]
)
def test_pass_at_k_rejects_bad_counts(n: float, c: float, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    "counts",
    [
        {"a": 4, "b": 3, "c": 2, "d": 1},
        {"a": 2, "b": 2, "c": 2},
        {"a": 1, "b": 5},
        {"a": 3, "x": 1, "y": 1, "z": 1, "w": 1},
    ],
)
def test_maj_at_k_exact_matches_enumeration(counts: dict[str, int]) -> None:
    n = sum(counts.values())
    for gold in counts:
        for k in range(1, n + 1):
            assert maj_at_k(counts, gold, k) == pytest.approx(
                brute_maj_at_k(counts, gold, k), abs=1e-12
            )


def test_maj_at_k_monte_carlo_is_seeded_and_close() -> None:
    counts = {"a": 4, "b": 3, "c": 2, "d": 1}
    exact = brute_maj_at_k(counts, "a", 5)
    mc = maj_at_k(counts, "a", 5, exact_limit=0, seed=3)
    assert mc == maj_at_k(counts, "a", 5, exact_limit=0, seed=3)
    assert mc == pytest.approx(exact, abs=0.015)


def test_maj_at_k_edge_cases() -> None:
    assert maj_at_k({"a": 3, "b": 2}, "zzz", 2) == 0.0
    assert maj_at_k({"a": 3}, "a", 2) == 1.0
    with pytest.raises(ValueError):
        maj_at_k({"a": 3}, "a", 4)
    with pytest.raises(ValueError):
        maj_at_k({"a": 3}, "a", 0)


@given(
    n=st.integers(min_value=1, max_value=100_000),
    frac_c=st.floats(min_value=0, max_value=1),
    frac_k=st.floats(min_value=0, max_value=1),
)
@settings(max_examples=200, deadline=None)
def test_pass_at_k_matches_the_product_form_and_is_monotone(
    n: int, frac_c: float, frac_k: float
) -> None:
    c = int(frac_c * n)
    k = max(1, int(frac_k * n))
    got = pass_at_k(n, c, k)
    # C(n-c, k)/C(n, k) = prod_{i<k} (n-c-i)/(n-i), in logs
    if n - c < k:
        want = 1.0  # every k-subset holds a correct sample
    else:
        want = -np.expm1(float(np.sum(np.log1p(-c / (n - np.arange(k, dtype=float))))))
    assert got == pytest.approx(want, rel=1e-7, abs=1e-12)
    assert 0.0 <= got <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= got
    if c < n:
        assert pass_at_k(n, c + 1, k) >= got
