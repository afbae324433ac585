"""The closed-form T² laws: Chinchilla L(N, D), Approach 1's L(N, D, k), Approach 2's Beta links.

Losses are evaluated as a log-sum-exp of log-terms (as Chinchilla's fit does), which stays finite
for N and D in the trillions and gives cheap analytic gradients for the fitters.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, expit

FloatArray = NDArray[np.float64]


def chinchilla_loss(
    params: ArrayLike, tokens: ArrayLike, *, E: float, A: float, alpha: float, B: float, beta: float
) -> FloatArray:
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    n = np.asarray(params, dtype=float)
    d = np.asarray(tokens, dtype=float)
    return np.asarray(E + A * n ** (-alpha) + B * d ** (-beta), dtype=float)


def t2_loss(
    params: ArrayLike,
    tokens: ArrayLike,
    k: ArrayLike,
    *,
    E: float,
    A: float,
    alpha: float,
    B: float,
    beta: float,
    G: float,
    gamma: float,
) -> FloatArray:
    """Approach 1: L(N, D, k) = E + A / N^alpha + B / D^beta + G / k^gamma (mean -log pass@k)."""
    base = chinchilla_loss(params, tokens, E=E, A=A, alpha=alpha, B=B, beta=beta)
    return np.asarray(base + G * np.asarray(k, dtype=float) ** (-gamma), dtype=float)


def beta_links(
    loss: ArrayLike,
    *,
    theta0: float,
    theta1: float,
    theta2: float,
    theta3: float,
    theta4: float,
) -> tuple[FloatArray, FloatArray]:
    """Approach 2: (a, b) of the per-question Beta from the loss, a = mu nu and b = (1 - mu) nu.

    mu(L) = theta2 / (1 + exp(theta1 (L - theta0))) and nu(L) = exp(theta3 + theta4 L).
    """
    lval = np.asarray(loss, dtype=float)
    mu = theta2 * expit(-theta1 * (lval - theta0))
    nu = np.exp(np.clip(theta3 + theta4 * lval, -50.0, 50.0))
    mu = np.clip(mu, 1e-300, 1.0 - 1e-12)
    return mu * nu, (1.0 - mu) * nu


def beta_pass_at_k(a: ArrayLike, b: ArrayLike, k: ArrayLike) -> FloatArray:
    """Acc(k) = 1 - B(a, b + k) / B(a, b), broadcast over a, b and k."""
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    return np.asarray(
        -np.expm1(betaln(a_arr, b_arr + np.asarray(k, dtype=float)) - betaln(a_arr, b_arr))
    )
