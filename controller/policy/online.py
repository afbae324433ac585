"""`online`: a stopping rule that learns, without labels, from the tenant's finished questions.

Why: a fixed rule (Adaptive-Consistency, t2's top-two Beta) is calibrated for no traffic in
particular; flip rates differ by 4x between workloads (BENCHMARKS.md). A server knows every
finished question's vote histogram, so it can learn how decisive votes are on *this* traffic.

Model. A question's answers have shares s = (s1 ≥ s2 ≥ s3, rest), "rest" being many rare
answers. The prior over s is nonparametric: weights on a fixed grid of share vectors, fitted
by EM (the NPMLE) to finished questions' histograms (top three counts + the others). Answer
labels are exchangeable, so a histogram's likelihood sums over the ways its observed answers
map onto the categories. Questions stopped early are censored, but the stopping rule depends
on observed votes only, so the likelihood is unchanged (the likelihood principle) and the fit
stays honest; a prior anchor (`anchor` pseudo-questions on the flat grid prior) keeps a
stream of early stops from concluding that "leaders always lead".

Decision. The gain of going on is the share (a proxy for the chance of being right, as in
t2's calibration) that drawing the samples the caps still allow is expected to add: the
chance that the strongest other answer overtakes the leader within them, times how much
larger its share is. A near tie or a hopeless question gains little whoever leads, and a
race the remaining draws cannot settle gains little too, so both stop sooner than a
top-two rule lets them. Stop once the gain ≤ τ.

Decided: once the leader leads by more votes than the caps allow to be drawn, no further
draw can change the final majority, so the rule stops whatever its posterior says.

Cold start: until `min_history` questions have finished, the rule *is* Adaptive-Consistency
(C = 0.95), so a new tenant's first questions behave exactly as AC does.

Causality: the prior is refitted only in `observe`, i.e. from questions that finished
before; nothing here ever sees gold.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from scipy.special import logsumexp, ndtr, xlogy

from controller.aggregate.vote import count_votes
from controller.pacing import ComputePrice
from controller.policy.base import Caps, Decision, Policy, PolicyRun, spec_number
from controller.policy.rules import beta_confidence

Histogram = tuple[int, int, int, int]
"""A question's votes: the top three answers' counts (descending) and all other answers'."""

DEFAULT_TAU = 0.0025
"""Chosen by the leave-one-file-out protocol (`t2serve replay --loo`) with all five dev
replay files as training data (each dev file's own figures use the τ chosen without it)."""
GRID_STEP = 20
"""Share grid resolution: shares are multiples of 1/GRID_STEP."""
MAX_HISTOGRAM_VOTES = 64
"""Histograms with more votes are scaled down to this many before they are counted, so a
learned table holds a bounded number of distinct histograms."""
AC_THRESHOLD = 0.95


def histogram(answers: Sequence[str | None]) -> Histogram:
    """Top-three counts (descending) and the count of every other answer; None ignored."""
    counts = sorted(count_votes(answers).values(), reverse=True)
    top = [*counts[:3], 0, 0, 0][:3]
    return top[0], top[1], top[2], sum(counts[3:])


STORE_SUFFIX = "#online"
"""The learned tables of `online` live in the LearnedStore under `<model>#online`, beside
t2's (n, c) table for the model, through the same protocol."""
_BASE = MAX_HISTOGRAM_VOTES + 1


def encode_histogram(h: Histogram) -> tuple[int, int]:
    """A capped histogram as one LearnedStore cell (two ints; reversible: counts ≤ 64)."""
    a, b, c, d = capped(h)
    return a * _BASE + b, c * _BASE + d


def decode_histogram(cell: tuple[int, int]) -> Histogram:
    """The histogram `encode_histogram` stored."""
    (a, b), (c, d) = divmod(int(cell[0]), _BASE), divmod(int(cell[1]), _BASE)
    return a, b, c, d


def capped(h: Histogram) -> Histogram:
    """`h` scaled down to at most MAX_HISTOGRAM_VOTES votes (shares kept)."""
    total = sum(h)
    if total <= MAX_HISTOGRAM_VOTES:
        return h
    scale = MAX_HISTOGRAM_VOTES / total
    a, b, c, d = (round(x * scale) for x in h)
    return a, b, c, d


@lru_cache(maxsize=1)
def share_grid() -> tuple[np.ndarray, np.ndarray]:
    """The grid of share vectors (G, 4) = (s1, s2, s3, rest) and, per (point, category), the
    credit for being the mode ((G, 4); ties split; rest is never the mode)."""
    step = GRID_STEP
    points = [
        (i / step, j / step, k / step, (step - i - j - k) / step)
        for i in range(1, step + 1)
        for j in range(0, i + 1)
        for k in range(0, j + 1)
        if i + j + k <= step
    ]
    s = np.array(points)
    top = s[:, :3]
    is_mode = np.isclose(top, top.max(axis=1, keepdims=True))
    credit = np.zeros_like(s)
    credit[:, :3] = is_mode / is_mode.sum(axis=1, keepdims=True)
    return s, credit


@lru_cache(maxsize=4)
def label_maps(distinct: int) -> np.ndarray:
    """Every way `distinct` observed answers (in count order) map onto categories 0..2 (one
    answer each) or 3 (rest, any number): an (M, distinct) index array."""
    out = [
        m
        for m in itertools.product(range(4), repeat=distinct)
        if len([c for c in m if c < 3]) == len({c for c in m if c < 3})
    ]
    return np.array(out, dtype=int).reshape(len(out), distinct)


def log_likelihoods(h: Histogram) -> np.ndarray:
    """(G, M) log P(the votes' sequence | grid point, label map): one row per grid point."""
    s, _ = share_grid()
    observed = [x for x in h[:3] if x > 0]
    maps = label_maps(len(observed))
    ll = np.zeros((s.shape[0], maps.shape[0]))
    for i, x in enumerate(observed):
        ll += xlogy(x, s[:, maps[:, i]])
        if x > 1:  # rest answers are rare: one seen twice is one of the top three
            ll[:, maps[:, i] == 3] = -np.inf
    ll += xlogy(h[3], s[:, 3])[:, None]
    return ll


@lru_cache(maxsize=8192)
def histogram_log_likelihood(h: Histogram) -> np.ndarray:
    """(G,) log P(a finished question's votes | grid point), summed over label maps. Cached:
    capped histograms are few, so a refit recomputes only the new ones."""
    out = logsumexp(log_likelihoods(h), axis=1)
    out.setflags(write=False)
    return out


def flat_prior() -> np.ndarray:
    """Equal weight on every grid point: the anchor, and the prior before any traffic."""
    s, _ = share_grid()
    return np.full(s.shape[0], 1.0 / s.shape[0])


def fit_share_prior(
    table: Mapping[Histogram, int], anchor: float = 10.0, iterations: int = 60
) -> np.ndarray:
    """NPMLE of the grid weights from finished questions' histograms (EM), with `anchor`
    pseudo-questions spread as the flat prior."""
    base = flat_prior()
    rows = [(h, w) for h, w in table.items() if w > 0 and sum(h) > 0]
    if not rows:
        return base
    log_like = np.stack([histogram_log_likelihood(h) for h, _ in rows])
    like = np.exp(log_like - log_like.max(axis=1, keepdims=True))  # rows scale freely
    weights = np.array([w for _, w in rows], dtype=float)
    pi = base.copy()
    for _ in range(iterations):
        joint = like * pi
        resp = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)
        pi = (weights @ resp + anchor * base) / (weights.sum() + anchor)
    return pi


def leader_is_mode(
    pi: np.ndarray, h: Histogram, remaining: int | None = None
) -> tuple[float, float]:
    """(q, gain) under grid weights `pi`.

    q = P(the current leader is the mode of s | votes). gain = the share (a proxy for the
    chance of being right) that drawing up to `remaining` more samples is expected to add:
    E[P(the strongest other answer overtakes the leader within them)·(s_other − s_leader)],
    the overtaking chance by a normal approximation of the pair's vote difference. With no
    limit (None) it is E[s_mode − s_leader]. A near tie or a hopeless question gains little
    whoever leads; a race the remaining draws cannot settle gains little too.
    """
    if h[0] == 0:
        return 0.0, 1.0
    terms = state_terms(h, remaining)
    total, credited, gained = terms @ pi
    if not total > 0:
        return 0.0, 1.0
    return float(credited / total), max(float(gained / total), 0.0)


@lru_cache(maxsize=4096)
def state_terms(h: Histogram, remaining: int | None) -> np.ndarray:
    """(3, G): per grid point, the vote state's likelihood (up to a constant), its part where
    the leader is the mode, and its expected gain; what `leader_is_mode` weighs by the prior.
    Independent of the prior, so cached across refits, policies and tenants (~8.6 KB each)."""
    s, credit = share_grid()
    observed = [x for x in h[:3] if x > 0]
    ll = log_likelihoods(h)
    maps = label_maps(len(observed))
    like = np.exp(ll - ll.max())
    leader = maps[:, 0]
    out = np.zeros((3, s.shape[0]))
    out[0] = like.sum(axis=1)
    out[1] = (like * credit[:, leader]).sum(axis=1)
    if remaining is not None and remaining <= 0:
        out.setflags(write=False)
        return out
    s_leader = np.where(leader < 3, s[:, np.minimum(leader, 2)], 0.0)  # (G, M)
    rival = np.where(leader == 0, 1, 0)  # the strongest other category (shares are sorted)
    s_rival = s[:, rival]
    if remaining is None:
        overtake = (s_rival > s_leader).astype(float)
    else:
        votes = np.array(observed, dtype=float)
        rival_votes = np.zeros(maps.shape[0])
        for i in range(1, maps.shape[1]):
            rival_votes += np.where(maps[:, i] == rival, votes[i], 0.0)
        lead = votes[0] - rival_votes
        mean = remaining * (s_rival - s_leader)
        sd = np.sqrt(np.maximum(remaining * (s_rival + s_leader - (s_rival - s_leader) ** 2), 1e-9))
        overtake = ndtr((mean - lead) / sd)
    out[2] = (like * overtake * (s_rival - s_leader)).sum(axis=1)
    out.setflags(write=False)
    return out


class OnlineRun(PolicyRun):
    def __init__(self, policy: Online, caps: Caps, tau: float) -> None:
        super().__init__(caps)
        self.policy = policy
        self.tau = tau
        self._q: float | None = None

    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        h = histogram(answers)
        if h[0] == 0:
            self._q = None
            return Decision.draw(1)
        if h[0] - h[1] > allowed:
            self._q = 1.0  # no draw the caps allow can change the majority: nothing to buy
            return Decision.halt("converged")
        p = self.policy
        if p.cold:
            self._q = beta_confidence(h[0], h[1])
            return Decision.halt("converged") if self._q >= AC_THRESHOLD else Decision.draw(1)
        q, gain = p.assess(h, allowed)
        self._q = q
        if gain <= self.tau:
            return Decision.halt("converged")
        return Decision.draw(1)

    @property
    def predicted_accuracy(self) -> float | None:
        return self._q


class Online(Policy):
    """The online rule (see module doc).

    tau: stop once the expected gain of drawing on (see `leader_is_mode`) is at most τ;
        a price of compute scales τ (`pressure`).
    min_history: finished questions before the learned prior replaces Adaptive-Consistency.
    refit_every: refit at min_history·2^k questions, then every `refit_every`.
    anchor: pseudo-questions of the flat prior in every fit.
    """

    def __init__(
        self,
        tau: float = DEFAULT_TAU,
        *,
        min_history: int = 20,
        refit_every: int = 50,
        anchor: float = 10.0,
    ) -> None:
        if not 0 < tau < 1:
            raise ValueError("online τ must be in (0, 1)")
        if min_history < 1 or refit_every < 1:
            raise ValueError("min_history and refit_every must be >= 1")
        self.tau = tau
        self.min_history = min_history
        self.refit_every = refit_every
        self.anchor = anchor
        self.counts: Counter[Histogram] = Counter()
        self.seen = 0
        self.pi = flat_prior()
        self._cache: dict[tuple[Histogram, int], tuple[float, float]] = {}
        self.spec = f"online:{spec_number(tau)}"

    @property
    def cold(self) -> bool:
        """True until the learned prior has been fitted once."""
        return self.seen < self.min_history

    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        tau = min(0.5, self.tau * self.pressure(price, caps))
        return OnlineRun(self, caps, tau)

    def assess(self, h: Histogram, remaining: int) -> tuple[float, float]:
        """(q, gain) for vote state `h` with `remaining` draws allowed, cached until the next
        refit (beyond MAX_HISTOGRAM_VOTES more draws the gain no longer depends on them)."""
        key = (h, min(remaining, MAX_HISTOGRAM_VOTES))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = leader_is_mode(self.pi, h, key[1])
        return hit

    def observe(self, answers: Sequence[str | None]) -> None:
        """Count a finished question's histogram; refit on schedule."""
        h = histogram(answers)
        if h[0] == 0:
            return
        self.counts[capped(h)] += 1
        self.seen += 1
        if self.refit_due():
            self.refit()

    def refit_due(self) -> bool:
        """True when `seen` is on the refit schedule (the server then merges shared state)."""
        seen = self.seen
        if seen < self.min_history:
            return False
        if seen % self.refit_every == 0:
            return True
        ratio, rem = divmod(seen, self.min_history)
        return rem == 0 and ratio & (ratio - 1) == 0

    def refit(self) -> None:
        self.pi = fit_share_prior(self.counts, self.anchor)
        self._cache.clear()

    def load(self, counts: Mapping[Histogram, int]) -> None:
        """Continue from a learned histogram table (persisted, or merged across replicas)."""
        self.counts = Counter({h: int(v) for h, v in counts.items() if v > 0})
        self.seen = self.counts.total()
        if self.cold:
            self.pi = flat_prior()
            self._cache.clear()
        else:
            self.refit()
