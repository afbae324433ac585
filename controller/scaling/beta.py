"""Per-question difficulty as a Beta distribution, fitted by beta-binomial maximum likelihood.

With p ~ Beta(a, b), pass@k = 1 - E[(1-p)^k] = 1 - B(a, b+k)/B(a, b). Questions never solved
(c = 0) are not dropped or floored: they enter the likelihood as P(0 of n) = B(a, b+n)/B(a, b),
which is exactly what pins the left tail on hard tasks.

When single-attempt rates never approach 1, a plain Beta fits badly; then p = p_max * q with
q ~ Beta(a, b) (Schaeffer et al. 2025). Its likelihood has no closed form, but expanding
(1 - p_max q)^m binomially gives a sum of positive terms E_{J~Bin(m, p_max)}[B(a, b+J)/B(a, b)],
which we evaluate on a window of +-9 standard deviations of J (exact for small m, a fine
Riemann sum otherwise) centred on the summand's peak, so it stays cheap for n in the millions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, digamma, gammaln, logsumexp
from scipy.stats import chi2

from controller.scaling.optimize import multistart_minimize

FloatArray = NDArray[np.float64]

_WINDOW_SD = 9.0
_WINDOW_NODES = 41
# bounds of log a, log b, logit p_max
_LOG_A = (np.log(1e-4), np.log(1e3))
_LOG_B = (np.log(1e-3), np.log(1e8))
_LOGIT_P = (-8.0, 8.0)
# likelihood-ratio threshold (chi^2, 1 dof, 99%) for preferring the scaled Beta
_LR_THRESHOLD = float(chi2.ppf(0.99, 1))


def _binomial_window(
    m: ArrayLike, p: float, a: ArrayLike, b: float
) -> tuple[FloatArray, FloatArray]:
    """Nodes j (rows x nodes) for sum_j Bin(j; m, p) B(a, b + j), and their log-weights.

    The summand peaks where the binomial pmf and the falling B(a, b + j) balance: the root of
    j^2 - s j - p m b = 0 with s = p (m - b) - (1 - p)(a + b), from setting the log-derivative
    to zero (digamma ~ log). Its Laplace width is 1 / sqrt(1/j + 1/(m - j) - 1/(b+j) + 1/(a+b+j)).
    The window spans +-9 widths. Where that holds at most `_WINDOW_NODES` integers the nodes
    are those integers (exact sum); otherwise evenly spaced reals at most 0.45 widths apart
    weighted by the spacing, a Riemann sum of a smooth bell, accurate far below sampling error.
    """
    m_col = np.asarray(m, dtype=float).reshape(-1, 1)
    a_col = np.broadcast_to(np.asarray(a, dtype=float).reshape(-1, 1), m_col.shape)
    s = p * (m_col - b) - (1.0 - p) * (a_col + b)
    peak = np.clip(0.5 * (s + np.sqrt(s * s + 4.0 * p * m_col * b)), 0.0, m_col)
    jp = np.maximum(peak, 0.5)
    curvature = (
        1.0 / jp + 1.0 / np.maximum(m_col - peak, 0.5) - 1.0 / (b + jp) + 1.0 / (a_col + b + jp)
    )
    width = 1.0 / np.sqrt(np.maximum(curvature, 1e-300))
    lo = np.maximum(np.floor(peak - _WINDOW_SD * width) - 1.0, 0.0)
    hi = np.minimum(np.ceil(peak + _WINDOW_SD * width) + 1.0, m_col)
    exact = hi - lo + 1.0 <= _WINDOW_NODES
    stride = np.where(exact, 1.0, (hi - lo) / (_WINDOW_NODES - 1))
    steps = np.arange(_WINDOW_NODES, dtype=float)[None, :]
    j = lo + steps * stride
    valid = j <= hi + 1e-9
    j = np.minimum(j, hi)
    log_pmf = (
        gammaln(m_col + 1.0)
        - gammaln(j + 1.0)
        - gammaln(m_col - j + 1.0)
        + j * np.log(p)
        + (m_col - j) * np.log1p(-p)
    )
    log_w = np.where(valid, log_pmf + np.log(stride), -np.inf)
    return j, log_w


@dataclass(frozen=True)
class BetaFit:
    """Beta(a, b) over per-question success rates, optionally scaled to [0, p_max]."""

    a: float
    b: float
    p_max: float = 1.0

    @property
    def scaled(self) -> bool:
        return self.p_max < 1.0

    @property
    def mean(self) -> float:
        """Expected single-attempt success rate, i.e. pass@1."""
        return self.p_max * self.a / (self.a + self.b)

    def pass_at_k(self, k: ArrayLike) -> float | FloatArray:
        """Expected pass@k over questions: 1 - E[(1 - p)^k] under the fitted distribution."""
        k_arr = np.asarray(k, dtype=float)
        if np.any(k_arr < 0) or np.any(~np.isfinite(k_arr)):
            raise ValueError("k must be finite and non-negative")
        if not self.scaled:
            out = -np.expm1(betaln(self.a, self.b + k_arr) - betaln(self.a, self.b))
        else:
            flat = np.atleast_1d(k_arr).ravel()
            j, log_w = _binomial_window(flat, self.p_max, self.a, self.b)
            log_fail = logsumexp(
                log_w + betaln(self.a, self.b + j) - betaln(self.a, self.b), axis=1
            )
            out = np.clip(-np.expm1(log_fail), 0.0, 1.0).reshape(k_arr.shape)
        out = np.asarray(out, dtype=float)
        return float(out) if out.ndim == 0 else out

    def log_likelihood(self, n: ArrayLike, c: ArrayLike) -> float:
        """Beta-binomial log-likelihood of the counts (n_i, c_i)."""
        n_arr, c_arr = _validated(n, c)
        return float(np.sum(_loglik_terms(n_arr, c_arr, self.a, self.b, self.p_max)))

    @classmethod
    def fit(cls, n: ArrayLike, c: ArrayLike, *, scaled: bool | None = None) -> BetaFit:
        return fit_beta_binomial(n, c, scaled=scaled)


@dataclass(frozen=True)
class BetaFitReport:
    """A fit plus the diagnostics written to curves.json."""

    fit: BetaFit
    log_likelihood: float
    n_questions: int
    log_likelihood_plain: float
    log_likelihood_scaled: float | None
    warnings: list[str] = field(default_factory=list)


def _validated(n: ArrayLike, c: ArrayLike) -> tuple[FloatArray, FloatArray]:
    n_arr = np.atleast_1d(np.asarray(n, dtype=float)).ravel()
    c_arr = np.atleast_1d(np.asarray(c, dtype=float)).ravel()
    if n_arr.shape != c_arr.shape:
        raise ValueError("n and c must have the same length")
    if n_arr.size == 0:
        raise ValueError("need at least one question")
    if np.any(~np.isfinite(n_arr)) or np.any(~np.isfinite(c_arr)):
        raise ValueError("n and c must be finite")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr) or np.any(n_arr < 1):
        raise ValueError("need 0 <= c <= n and n >= 1")
    return n_arr, c_arr


def _loglik_terms(n: FloatArray, c: FloatArray, a: float, b: float, p_max: float) -> FloatArray:
    log_choose = gammaln(n + 1.0) - gammaln(c + 1.0) - gammaln(n - c + 1.0)
    if p_max >= 1.0:
        return log_choose + betaln(c + a, n - c + b) - betaln(a, b)
    j, log_w = _binomial_window(n - c, p_max, c + a, b)
    inner = logsumexp(log_w + betaln(c[:, None] + a, b + j), axis=1) - betaln(a, b)
    return log_choose + c * np.log(p_max) + inner


def _plain_objective(n: FloatArray, c: FloatArray, w: FloatArray | None = None) -> object:
    """Negative mean log-likelihood in (log a, log b) with its analytic gradient; `w` weighs
    each (n, c) row (a count table's multiplicities)."""
    weight = np.ones_like(n) if w is None else w
    size = float(weight.sum())

    def fun(x: FloatArray) -> tuple[float, FloatArray]:
        a, b = np.exp(x)
        ll = betaln(c + a, n - c + b) - betaln(a, b)
        d_ab = digamma(n + a + b)
        da = digamma(c + a) - d_ab - digamma(a) + digamma(a + b)
        db = digamma(n - c + b) - d_ab - digamma(b) + digamma(a + b)
        grad = np.array([(weight * da).sum() * a, (weight * db).sum() * b])
        return -float((weight * ll).sum()) / size, -grad / size

    return fun


def _scaled_objective(n: FloatArray, c: FloatArray) -> object:
    """Negative mean log-likelihood of the scaled Beta in (log a, log b, logit p_max), + gradient.

    The binomial window moves with p_max; its nodes are frozen while differentiating, which is
    exact where the window is integer-spaced and a tiny Riemann error otherwise.
    """
    log_choose = gammaln(n + 1.0) - gammaln(c + 1.0) - gammaln(n - c + 1.0)
    size = float(n.size)
    cc = c[:, None]
    m = (n - c)[:, None]

    def fun(x: FloatArray) -> tuple[float, FloatArray]:
        a, b = np.exp(x[:2])
        p = float(1.0 / (1.0 + np.exp(-x[2])))
        j, log_w = _binomial_window(n - c, p, c + a, b)
        terms = log_w + betaln(cc + a, b + j)
        inner = logsumexp(terms, axis=1)
        ll = log_choose + c * np.log(p) + inner - betaln(a, b)
        weight = np.exp(terms - inner[:, None])  # posterior weight of each node
        d_total = digamma(cc + a + b + j)
        da = np.sum(weight * (digamma(cc + a) - d_total), axis=1) - digamma(a) + digamma(a + b)
        db = np.sum(weight * (digamma(b + j) - d_total), axis=1) - digamma(b) + digamma(a + b)
        dp = c / p + np.sum(weight * (j / p - (m - j) / (1.0 - p)), axis=1)
        grad = np.array([da.sum() * a, db.sum() * b, dp.sum() * p * (1.0 - p)])
        return -float(ll.sum()) / size, -grad / size

    return fun


def _moment_start(n: FloatArray, c: FloatArray, w: FloatArray | None = None) -> list[float]:
    rate = (c + 0.5) / (n + 1.0)
    weight = np.ones_like(rate) if w is None else w
    mean_rate = float(np.average(rate, weights=weight))
    mean = float(np.clip(mean_rate, 1e-6, 1 - 1e-6))
    var = max(float(np.average((rate - mean_rate) ** 2, weights=weight)), 1e-12)
    conc = float(np.clip(mean * (1 - mean) / var - 1.0, 1e-2, 1e6))
    return [np.log(max(mean * conc, 1e-4)), np.log(max((1 - mean) * conc, 1e-3))]


def fit_beta_binomial_report(
    n: ArrayLike, c: ArrayLike, *, scaled: bool | None = None, seed: int = 0, n_starts: int = 4
) -> BetaFitReport:
    """Maximum-likelihood Beta (scaled=False), scaled Beta (True) or the better of both (None).

    With None the scaled Beta is kept only when the likelihood-ratio test says it fits clearly
    better (chi^2 with 1 dof at 99%), or when the plain fit hits a bound.
    """
    n_arr, c_arr = _validated(n, c)
    size = float(n_arr.size)
    warnings: list[str] = []
    if not np.any(c_arr > 0):
        warnings.append("no question was ever solved: the fit only bounds the left tail")
    if np.all(c_arr == n_arr):
        warnings.append("every sample was correct: the fit only bounds the right tail")

    plain_res = multistart_minimize(
        _plain_objective(n_arr, c_arr),  # type: ignore[arg-type]
        [_LOG_A, _LOG_B],
        n_starts=n_starts,
        seed=seed,
        x0=[_moment_start(n_arr, c_arr)],
    )
    a0, b0 = (float(v) for v in np.exp(plain_res.x))
    log_choose = gammaln(n_arr + 1.0) - gammaln(c_arr + 1.0) - gammaln(n_arr - c_arr + 1.0)
    ll_plain = -plain_res.fun * size + float(log_choose.sum())
    plain = BetaFit(a0, b0, 1.0)
    at_bound = any(
        np.isclose(v, lim, atol=1e-6)
        for v, pair in zip(plain_res.x, (_LOG_A, _LOG_B), strict=True)
        for lim in pair
    )
    if scaled is False:
        return BetaFitReport(plain, ll_plain, int(size), ll_plain, None, warnings)

    scaled_objective = _scaled_objective(n_arr, c_arr)

    max_rate = float(np.max((c_arr + 1.0) / (n_arr + 2.0)))
    p_start = float(np.clip(2.0 * max_rate, 0.02, 0.98))
    scale_start = [
        [plain_res.x[0], plain_res.x[1] - np.log(p_start), np.log(p_start / (1 - p_start))],
        [plain_res.x[0], plain_res.x[1], 6.0],
    ]
    scaled_res = multistart_minimize(
        scaled_objective,  # type: ignore[arg-type]
        [_LOG_A, _LOG_B, _LOGIT_P],
        n_starts=2,  # both starts come from the plain fit; the surface is smooth and narrow
        seed=seed + 1,
        x0=scale_start,
    )
    a1, b1 = (float(v) for v in np.exp(scaled_res.x[:2]))
    p1 = float(1.0 / (1.0 + np.exp(-scaled_res.x[2])))
    ll_scaled = -scaled_res.fun * size
    scaled_fit = BetaFit(a1, b1, p1)
    if scaled is True:
        return BetaFitReport(scaled_fit, ll_scaled, int(size), ll_plain, ll_scaled, warnings)
    if 2.0 * (ll_scaled - ll_plain) > _LR_THRESHOLD or (at_bound and ll_scaled > ll_plain):
        return BetaFitReport(scaled_fit, ll_scaled, int(size), ll_plain, ll_scaled, warnings)
    return BetaFitReport(plain, ll_plain, int(size), ll_plain, ll_scaled, warnings)


def fit_beta_binomial(
    n: ArrayLike,
    c: ArrayLike,
    *,
    scaled: bool | None = None,
    seed: int = 0,
    weights: ArrayLike | None = None,
) -> BetaFit:
    """Fit Beta(a, b) (or the [0, p_max]-scaled Beta) to per-question counts by beta-binomial MLE.

    `n` and `c` are samples drawn and correct per question; c = 0 questions are kept. See
    `fit_beta_binomial_report` for the choice rule and diagnostics. `weights` (plain Beta
    only) counts each row that many times: fit a count table without expanding it.
    """
    if weights is None:
        return fit_beta_binomial_report(n, c, scaled=scaled, seed=seed).fit
    if scaled is not False:
        raise ValueError("weights are supported for the plain Beta only (scaled=False)")
    n_arr, c_arr = _validated(n, c)
    w = np.atleast_1d(np.asarray(weights, dtype=float)).ravel()
    if w.shape != n_arr.shape or np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError("weights must be finite, >= 0, one per row, and not all zero")
    res = multistart_minimize(
        _plain_objective(n_arr, c_arr, w),  # type: ignore[arg-type]
        [_LOG_A, _LOG_B],
        n_starts=4,
        seed=seed,
        x0=[_moment_start(n_arr, c_arr, w)],
    )
    a, b = (float(v) for v in np.exp(res.x))
    return BetaFit(a, b, 1.0)
