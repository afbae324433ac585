"""Beta-binomial fits recover known parameters; the scaled Beta's series matches quadrature."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import integrate, stats

from controller.scaling.beta import BetaFit, fit_beta_binomial, fit_beta_binomial_report


def _counts(
    a: float, b: float, p_max: float, questions: int, n: int, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Counts for questions whose rates sit on the Beta's quantiles (no difficulty-sampling noise,
    so recovery within 5% tests the estimator, not luck); only the binomial draws are random."""
    rng = np.random.default_rng(seed)
    p = p_max * stats.beta.ppf((np.arange(questions) + 0.5) / questions, a, b)
    samples = np.full(questions, n)
    return samples, rng.binomial(samples, p)


def test_plain_beta_recovered_within_5_percent_with_mostly_unsolved_questions() -> None:
    n, c = _counts(0.25, 40.0, 1.0, questions=4000, n=2000, seed=0)
    assert np.mean(c == 0) > 0.3  # the zero-heavy regime of hard tasks
    fit = fit_beta_binomial(n, c, scaled=False)
    assert fit.p_max == 1.0
    assert fit.a == pytest.approx(0.25, rel=0.05)
    assert fit.b == pytest.approx(40.0, rel=0.05)


def test_scaled_beta_recovered_within_5_percent() -> None:
    n, c = _counts(1.5, 2.0, 0.4, questions=1000, n=500, seed=2)
    report = fit_beta_binomial_report(n, c)  # auto: the likelihood ratio must pick the scaled Beta
    fit = report.fit
    assert fit.scaled
    assert report.log_likelihood > report.log_likelihood_plain
    assert fit.p_max == pytest.approx(0.4, rel=0.05)
    assert fit.a == pytest.approx(1.5, rel=0.05)
    assert fit.b == pytest.approx(2.0, rel=0.05)


def test_auto_keeps_the_plain_beta_when_scaling_does_not_help() -> None:
    n, c = _counts(0.5, 5.0, 1.0, questions=500, n=200, seed=2)
    assert not fit_beta_binomial(n, c).scaled


def test_pass_at_k_closed_form_and_scaled_series_match_quadrature() -> None:
    for fit in (BetaFit(0.3, 20.0), BetaFit(0.7, 2.0, 0.4), BetaFit(2.0, 3.0, 0.95)):
        for k in (1, 7, 100, 5000):
            exact, _ = integrate.quad(
                lambda q, k=k, fit=fit: (
                    (1 - (1 - fit.p_max * q) ** k) * stats.beta.pdf(q, fit.a, fit.b)
                ),
                0,
                1,
                limit=500,
                points=[1e-6, 1e-4, 1e-2],
            )
            assert fit.pass_at_k(k) == pytest.approx(exact, rel=1e-5, abs=1e-9)
    assert BetaFit(0.3, 20.0).pass_at_k(1) == pytest.approx(0.3 / 20.3)
    assert np.all(np.diff(BetaFit(0.7, 2.0, 0.4).pass_at_k(np.arange(1, 200))) > 0)


def test_fit_is_deterministic_and_validates_input() -> None:
    n, c = _counts(0.7, 2.0, 0.5, questions=300, n=100, seed=3)
    assert fit_beta_binomial(n, c, seed=5) == fit_beta_binomial(n, c, seed=5)
    with pytest.raises(ValueError):
        fit_beta_binomial([10, 10], [11, 0])
    with pytest.raises(ValueError):
        fit_beta_binomial([], [])
