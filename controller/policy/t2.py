"""The t2 policy: stop when one more wave is worth less than it costs.

Model. For the two leading answers, θ = the leader's share of their votes. The prior on θ
is a symmetric mixture ½·Beta(a, b) + ½·Beta(b, a): Beta(a, b) is the fitted prior on the
per-question share of the leading answer (`controller.policy.prior`), and the mirror image
covers "the answer leading now is really the runner-up". After votes (v1, v2) the
posterior probability that the current leader is what unlimited sampling would pick is

    q = P(θ > ½ | v1, v2)      (Adaptive-Consistency is the special case a = b = 1)

Value of a wave. Drawing d more votes into the pair and then picking the leader is worth
E[max(q', 1 − q')] − max(q, 1 − q) in the probability of matching unlimited sampling;
we look ahead over d ∈ {1, 2, 4, 8, 16} (one-step look-ahead is zero whenever a single vote
cannot flip the leader, which would stop too early). Votes that go to third answers or
abstain are accounted for by the pair's share f, so d pair votes cost d / f samples. The
gain in accuracy is that probability times the chance that unlimited sampling is right,
estimated by the leader's posterior-mean share (self-consistency's calibration).

Stop rule. Continue while max_d [gain_d · value_per_correct − λ · d/f] is positive, with λ
the per-sample price (`Policy.sample_price`: the policy's own λ, combined with the budget's
`ComputePrice`); otherwise stop with "marginal_value". Caps are enforced by PolicyRun.

Up-front mode (latency-bound callers): k = argmax_k value·Acc(k) − λ·k from the curve
(the served model's measured Acc(k), controller.scaling.served; without one, the prior's
majority-vote curve), drawn in one wave.

Calibrated start. A served model with curves gives t2 its leader prior fitted on calibration
questions, so the first requests already stop where that model's votes are decisive; online
refits stay anchored at it (`initial_prior`), and `load` continues from a persisted table.

Memory. What t2 learns from traffic is a count table of (n, c) pairs, with n capped at
MAX_PAIR_VOTES, so it stays bounded however long it serves; value tables are shared between
policies with the same prior.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy.special import betainc, betaln, gammaln

from controller.pacing import ComputePrice
from controller.policy.base import Caps, Decision, Policy, PolicyRun, spec_number, top_two
from controller.policy.prior import (
    MAX_PAIR_VOTES as MAX_PAIR_VOTES,  # re-exported: the count table's bound
)
from controller.policy.prior import UNIFORM, LeaderPrior, fit_leader_prior, leader_pair

LOOKAHEAD: tuple[int, ...] = (1, 2, 4, 8, 16)
MAX_TABLE = 256
DEFAULT_LAM = 0.0007
"""t2's default λ (value of a correct answer per sample). Chosen by the leave-one-file-out
protocol (`t2serve replay --loo`, controller.replay.loo.choose) with all five dev replay files
as training data. Each dev file's own figures use the λ chosen without it (BENCHMARKS.md).
History: 0.0005 until the Llama-2 files were repaired (2026-12-05), then 0.001; 0.0007 since
numeric dates are zero-padded when answers are normalised (2026-12-07). No λ on the grid is
within 0.2 points of majority-of-all on date Llama-2 (t2 stops before a last draw that could
only tie, which maj@all's earliest-first tie-break then decides), so the rule takes its
fallback: the best worst-file gap, then the fewest samples."""


@lru_cache(maxsize=64)
def _grid(ds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flattened (d, j) grid for d in (0, *ds), j = 0..d, with log C(d, j) and segment starts."""
    all_d = (0, *ds)
    d = np.concatenate([np.full(k + 1, k, dtype=float) for k in all_d])
    j = np.concatenate([np.arange(k + 1, dtype=float) for k in all_d])
    log_binom = gammaln(d + 1) - gammaln(j + 1) - gammaln(d - j + 1)
    starts = np.cumsum([0] + [k + 1 for k in all_d[:-1]])
    return d, j, log_binom, starts


def _values_batch(
    a: float, b: float, v1: np.ndarray, v2: np.ndarray, ds: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Look-ahead values for many vote states at once.

    Returns (values, q): values[s, 0] = max(q, 1 − q) now and values[s, i] = E[max(q', 1 − q')]
    after ds[i − 1] more pair votes, for state s = (v1[s], v2[s]); q[s] = P(leader wins).
    """
    d, j, log_binom, starts = _grid(ds)
    v1c = np.asarray(v1, dtype=float)[:, None]
    v2c = np.asarray(v2, dtype=float)[:, None]
    a1, b1, a2, b2 = a + v1c, b + v2c, b + v1c, a + v2c
    l1 = betaln(a1 + j, b1 + d - j)
    l2 = betaln(a2 + j, b2 + d - j)
    shift = np.maximum(l1[:, :1], l2[:, :1])
    e1 = np.exp(l1 - shift)
    e2 = np.exp(l2 - shift)
    i1 = betainc(b1 + d - j, a1 + j, 0.5)  # P(θ > ½) under component 1's posterior
    i2 = betainc(b2 + d - j, a2 + j, 0.5)
    win = e1 * i1 + e2 * i2
    best = np.maximum(win, (e1 + e2) - win) * np.exp(log_binom)
    norm = e1[:, 0] + e2[:, 0]
    values = np.add.reduceat(best, starts, axis=1) / norm[:, None]
    return values, win[:, 0] / norm


def _values(a: float, b: float, v1: int, v2: int, ds: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """`_values_batch` for one state."""
    values, q = _values_batch(a, b, np.array([v1]), np.array([v2]), ds)
    return values[0], float(q[0])


class ValueTable:
    """Look-ahead values for every vote state with v1 + v2 ≤ size, for one prior.

    Built in one vectorised pass when the prior changes (a refit), so that a decision is a
    table lookup; grows by doubling when a request goes past its size.
    """

    def __init__(self, prior: LeaderPrior, size: int = 16) -> None:
        self.prior = prior
        self.size = size
        v1, v2 = np.meshgrid(np.arange(size + 1), np.arange(size + 1), indexing="ij")
        keep = (v1 + v2 <= size).ravel()
        values = np.zeros(((size + 1) * (size + 1), len(LOOKAHEAD) + 1))
        q = np.zeros((size + 1) * (size + 1))
        vals, qs = _values_batch(prior.a, prior.b, v1.ravel()[keep], v2.ravel()[keep], LOOKAHEAD)
        values[keep] = vals
        q[keep] = qs
        self.values = values.reshape(size + 1, size + 1, -1).tolist()
        self.q = q.reshape(size + 1, size + 1).tolist()

    def lookup(self, v1: int, v2: int) -> tuple[list[float], float]:
        return self.values[v1][v2], self.q[v1][v2]


@lru_cache(maxsize=32)
def value_table(prior: LeaderPrior, size: int) -> ValueTable:
    """The shared table for a prior: policies that start from the same prior (every new
    tenant's t2 starts from the deployment's) hold one between them, not one each."""
    return ValueTable(prior, size)


def leader_probability(prior: LeaderPrior, v1: int, v2: int) -> float:
    """q = P(the current leader is the answer unlimited sampling would pick | v1, v2)."""
    if v1 == 0:
        return 0.0
    return _values(prior.a, prior.b, v1, v2, ())[1]


def majority_curve(prior: LeaderPrior, k_max: int) -> np.ndarray:
    """acc[k] = P(a k-vote majority agrees with unlimited sampling), k = 0..k_max (ties: ½)."""
    out = np.zeros(k_max + 1)
    out[0] = 0.5
    for k in range(1, k_max + 1):
        j = np.arange(k + 1, dtype=float)
        logp = (
            gammaln(k + 1)
            - gammaln(j + 1)
            - gammaln(k - j + 1)
            + betaln(prior.a + j, prior.b + k - j)
            - betaln(prior.a, prior.b)
        )
        p = np.exp(logp)
        # under Beta(a, b) with a ≥ b the leader is "the" answer; fold the mirror case in
        mode_first = prior.a >= prior.b
        wins = np.where(2 * j > k, 1.0, np.where(2 * j == k, 0.5, 0.0))
        acc = float(np.sum(p * wins)) if mode_first else float(np.sum(p * (1 - wins)))
        out[k] = max(acc, 0.5)
    return out


class T2Run(PolicyRun):
    def __init__(self, policy: T2, caps: Caps, lam: float) -> None:
        """`lam`: the price of one sample, in units of value_per_correct."""
        super().__init__(caps)
        self.policy = policy
        self.lam = lam
        self.prior = policy.prior
        self._q: float | None = None
        self._answers: Sequence[str | None] = ()
        self._upfront_done = False

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        p = self.policy
        self._answers = tuple(answers)
        if p.upfront:
            if self._upfront_done or answers:
                self._update_q(answers)
                return Decision.halt("marginal_value")
            self._upfront_done = True
            return Decision.draw(p.upfront_k(self.lam, max(1, allowed)))
        n = len(answers)
        _, v1, v2 = top_two(answers)
        if v1 == 0:
            self._q = None
            return Decision.draw(p.first_wave)
        values, q = p.values(self.prior, v1, v2)
        self._q = q
        answered = n - answers.count(None)
        pair_share = (v1 + v2 + 1.0) / (n + 2.0)
        scale = p.value_per_correct * ((v1 + 1.0) / (answered + 2.0) if p.calibrated else 1.0)
        unit = self.lam / pair_share
        now = values[0]
        best_net, best_d = 0.0, 0
        for i, d in enumerate(LOOKAHEAD, start=1):
            if d > allowed and i > 1:
                break
            net = (values[i] - now) * scale - unit * d
            if net > best_net:
                best_net, best_d = net, d
        if best_d == 0:
            return Decision.halt("marginal_value")
        return Decision.draw(max(1, min(p.wave, math.ceil(best_d / pair_share))))

    def _update_q(self, answers: Sequence[str | None]) -> None:
        _, v1, v2 = top_two(answers)
        self._q = leader_probability(self.prior, v1, v2) if v1 else None

    @property
    def predicted_accuracy(self) -> float | None:
        """P(the answer is right), from the votes and, where the model has them, its curves.

        With the model's calibrated table (`accuracy_given_votes(k, v)`, measured on its
        calibration questions, shrunk towards Acc(k)): that table at the k samples drawn and
        the leader's v votes. Without one: q, the chance the leader is what unlimited sampling
        would pick.
        """
        if self._q is None:
            return None
        table = self.policy.accuracy_given_votes
        if table is None:
            return self._q
        _, v1, _ = top_two(self._answers)
        return float(table(len(self._answers), v1))


class T2(Policy):
    """The t2 policy (see module doc).

    lam: λ, the price of one sample, in units of value_per_correct (a budget's ComputePrice
        can raise it; see `Policy.sample_price`).
    value_per_correct: what a correct answer is worth.
    prior: the starting LeaderPrior (the served model's calibrated one; uniform if unknown).
    refit: refit the prior online from observed questions (`observe`) every `refit_every`
        questions once `min_history` have been seen.
    wave: the largest wave drawn at once (1 = most sample-efficient; larger = lower latency).
    first_wave: samples drawn before any answer has been seen.
    calibrated: scale the gain by the leader's estimated share (see module doc).
    upfront: choose k once from the curve and draw it in one wave.
    curve: Acc(k) for up-front mode; default: the prior's majority-vote curve.
    accuracy_given_votes: (k, leader votes) -> P(right), for `predicted_accuracy`.
    """

    def __init__(
        self,
        lam: float = DEFAULT_LAM,
        *,
        value_per_correct: float = 1.0,
        prior: LeaderPrior = UNIFORM,
        refit: bool = True,
        refit_every: int = 200,
        min_history: int = 20,
        wave: int = 1,
        first_wave: int = 1,
        calibrated: bool = True,
        upfront: bool = False,
        curve: Callable[[int], float] | None = None,
        accuracy_given_votes: Callable[[int, int], float] | None = None,
    ) -> None:
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError("t2 λ must be a finite number >= 0")
        if not (math.isfinite(value_per_correct) and value_per_correct > 0):
            raise ValueError("value_per_correct must be > 0")
        if wave < 1 or first_wave < 1:
            raise ValueError("wave sizes must be >= 1")
        if refit_every < 1 or min_history < 1:
            raise ValueError("refit_every and min_history must be >= 1")
        self.lam = lam
        self.value_per_correct = value_per_correct
        self.prior = prior
        self.initial_prior = prior
        self.refit = refit
        self.refit_every = refit_every
        self.min_history = min_history
        self.wave = wave
        self.first_wave = first_wave
        self.calibrated = calibrated
        self.upfront = upfront
        self.curve = curve
        self.accuracy_given_votes = accuracy_given_votes
        self.counts: Counter[tuple[int, int]] = Counter()
        self.seen = 0
        self._table: ValueTable | None = None
        self.spec = self._spec()

    def _spec(self) -> str:
        """The spec that builds this policy: λ, then every option the factory parses that is
        not at its default, so a label (a replay's row, a log line) says what actually ran."""
        parts = [f"lam={spec_number(self.lam)}"]
        for key, value, default in (
            ("value", self.value_per_correct, 1.0), ("wave", self.wave, 1),
            ("first_wave", self.first_wave, 1), ("refit_every", self.refit_every, 200),
            ("min_history", self.min_history, 20),
        ):  # fmt: skip
            if value != default:
                parts.append(f"{key}={spec_number(value)}")
        for flag, on in (("upfront", self.upfront), ("norefit", not self.refit),
                         ("raw", not self.calibrated)):  # fmt: skip
            if on:
                parts.append(flag)
        return "t2:" + ",".join(parts)

    @property
    def own_sample_price(self) -> float:
        return self.lam

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        return T2Run(self, caps, self.sample_price(price, caps))

    def observe(self, answers: Sequence[str | None]) -> None:
        """Count a finished question's top-two votes; refit the prior on schedule."""
        pair = leader_pair(answers)
        if pair is None:
            return
        self.counts[pair] += 1
        self.seen += 1
        if self.refit and self.seen >= self.min_history and self._on_schedule(self.seen):
            self.prior = fit_leader_prior(self.counts, anchor=self.initial_prior)

    def load(self, counts: Mapping[tuple[int, int], int], prior: LeaderPrior | None = None) -> None:
        """Continue from a learned (n, c) count table (persisted, or merged across replicas)
        and the prior last fitted from it, if any: a policy joining a stream uses the prior
        of the stream's last scheduled refit, as one that saw the whole stream does. Without
        one, the prior is refitted from the table, anchored at the initial prior."""
        self.counts = Counter({(int(n), int(c)): int(v) for (n, c), v in counts.items() if v > 0})
        self.seen = self.counts.total()
        if not self.refit or self.seen < self.min_history:
            self.prior = self.initial_prior
        elif prior is not None:
            self.prior = prior
        else:
            self.prior = fit_leader_prior(self.counts, anchor=self.initial_prior)

    def refit_due(self) -> bool:
        """True right after `observe` refitted (the book then merges the shared table)."""
        return self.refit and self.seen >= self.min_history and self._on_schedule(self.seen)

    def _on_schedule(self, seen: int) -> bool:
        """Refit at min_history·2^k questions, then every refit_every (refits clear the cache)."""
        if seen % self.refit_every == 0:
            return True
        ratio, rem = divmod(seen, self.min_history)
        return rem == 0 and ratio & (ratio - 1) == 0

    def values(self, prior: LeaderPrior, v1: int, v2: int) -> tuple[list[float], float]:
        """Look-ahead values for (v1, v2) over LOOKAHEAD, from the prior's ValueTable."""
        table = self._table
        if table is None or table.prior != prior or v1 + v2 > table.size:
            size = table.size if table is not None and table.prior == prior else 16
            while size < v1 + v2:
                size *= 2
            if size > MAX_TABLE:
                values, q = _values(prior.a, prior.b, v1, v2, LOOKAHEAD)
                return values.tolist(), q
            table = self._table = value_table(prior, size)
        return table.lookup(v1, v2)

    def reset(self) -> None:
        """Forget learned traffic (a fresh tenant)."""
        self.counts.clear()
        self.seen = 0
        self.prior = self.initial_prior

    def accuracy(self, k: int) -> float:
        """Acc(k) used by up-front mode."""
        if self.curve is not None:
            return float(self.curve(k))
        return float(majority_curve(self.prior, k)[k])

    def upfront_k(self, lam: float, k_max: int) -> int:
        """argmax over k in 1..k_max of value·Acc(k) − λ·k (λ per sample; smallest k on ties).

        k_max is capped at MAX_TABLE: the curve is flat long before, and an uncapped request
        (max_samples in the millions) must not make the decision slow.
        """
        k_max = max(1, min(k_max, MAX_TABLE))
        if self.curve is None:
            acc = majority_curve(self.prior, k_max)[1:]
        else:
            acc = np.array([self.curve(k) for k in range(1, k_max + 1)], dtype=float)
        ks = np.arange(1, k_max + 1, dtype=float)
        net = self.value_per_correct * acc - lam * ks
        return int(np.argmax(net)) + 1
