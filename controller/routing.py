"""T² routing: which served model answers a request, with how many samples, and after every
wave whether to stop, draw more on the same model, or move the question to another (a cascade).

Objective. Value a correct answer at 1 and compute at λ per unit of the tenant's cost (FLOPs at
2·N per token, or money: the pacing λ of controller.pacing, which budgets raise). Every choice
maximises predicted accuracy − λ · predicted cost.

What the predictions come from. Each candidate's calibration questions (the ones its served
curves were fitted on, controller.scaling.served) give its Acc(k) and, from `VoteStats`, how
its votes behave: for every vote state s = (n drawn, v1 leader votes, v2 runner-up votes),
- P(s) after n samples, and P(the leader is right | s);
- P(the leader after n + d samples is right | s) for d in LOOKAHEAD (another wave's worth);
- for another candidate B calibrated on the same questions, P(B's k-sample majority is right |
  this model's state s) (`CrossStats`: a line in this model's own P(right | s), fitted across
  its states); without shared questions, B's marginal Acc_B(k).
All are measured by replaying seeded random draw orders of the recorded samples (the server's
draw is such an order); a model's own tables are shrunk toward the curve where a state was
seldom seen. Nothing is tuned
on the questions a benchmark scores: those are held back from calibration.

Decisions (`RouteRun`).
- First wave: for each candidate m and k, the value of drawing k on m and then acting best in
  the state that follows (stop, one more wave, or escalate), averaged over P(s): a one-step
  look-ahead cascade value. The best (m, k) is drawn; every candidate's figures are reported.
- After a wave on m in state s: stop = P(right | s); more = P(right at n + d | s) − λ·c_m·d;
  escalate to B = P(B right after k | s) − λ·c_B·k. The largest wins; easy questions (a clear
  leader on the cheap model) stop there, unsure ones pay for the larger model.

What a wave costs (`RouteRun.wave_cost`). A call's fixed part (its prompt: `call_costs`, or
`recall_costs` for a repeat call on a model already called, 0 when the prompt is a prefix-cache
hit) plus its samples, as the ledger bills a wave (the server's routes pass them:
server.sampling.route_prices); without call costs, only the samples. Each candidate draws at
most its own cap (`caps`), and `allowed` in all.

Moving down (`descend`, on by default). A question may move to any candidate it has not
visited, a cheaper one after a dearer one included (after a split vote of the large model the
small model's votes, as tie-breakers of the last model's, can still settle it). Measured on
real LLM logs both ways (BENCHMARKS.md, "Routing on recorded LLM outputs"): with call costs
priced it is rare, never lowered accuracy, and moved cost by at most 0.07× of the reference.

The final answer (`cascade_answer`). After an escalation the answer is the majority of the
last model's votes; earlier models' votes only break its ties. Why: a question is escalated
exactly when the earlier model's votes were not convincing, and on the shipped pair one vote
of the larger model is worth as much as many of the smaller (on their replays a one-vote
tiny-chain-252k answer is right 0.86 of the time, an 8-of-8 unanimous tiny-chain-31k one
0.85), so pooling votes equally would let the weaker model outvote the stronger. As
tie-breakers they still carry information at no cost. The predictions above score the last
model's own majority, so they are, if anything, conservative about the combined answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from controller.aggregate.vote import count_votes
from controller.pacing import SAMPLE, ComputePrice
from controller.policy.base import top_two

LOOKAHEAD: tuple[int, ...] = (1, 2, 4, 8)
N_MAX = 16
"""Vote states are tabulated up to this many samples per model (the default sample cap)."""
PATHS = 128
"""Random draw orders replayed per calibration question."""
PLAN_CACHE = 256
"""First decisions kept per route (bounded, oldest out)."""
DECISION_CACHE = 1 << 16
"""Later decisions kept per route (bounded, cleared when full): a decision depends only on the
run's settings and the vote state, so a replay's many draw orders reuse them."""
SHRINK = 4.0
POOL = True
"""Pseudo-questions pulling a seldom-seen state's estimate toward the curve's value, through its
leader-votes row first (`pool`, `shrunk`). The server's routes and the route replay use the
same: chosen leave-one-set-out on the two dev sets among shrink ∈ {0.5, 4, 16} × pool ∈ {off,
on}, each set choosing (4, on) alone (controller.replay.route, BENCHMARKS.md "Routing on
recorded LLM outputs"). Before: 0.5 without pooling."""

FloatArray = NDArray[np.float64]


class AccuracyCurve(Protocol):
    """What routing needs of a served model's curves (controller.scaling.served.ServedCurves)."""

    def accuracy(self, k: float) -> float: ...


@dataclass(frozen=True)
class CalibrationQuestion:
    """One calibration question of one model: its key (to align models), gold and answers."""

    key: str
    gold: str
    answers: tuple[str | None, ...]


def _paths(
    q: CalibrationQuestion, n_max: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For PATHS random draw orders of q's answers: (v1, v2, leader right) after each of the
    first n_max draws, each of shape (PATHS, n_max), and the answers' ids (for cross tables)."""
    ids: dict[str, int] = {}
    coded = np.array([-1 if a is None else ids.setdefault(a, len(ids)) for a in q.answers])
    n = min(n_max, len(coded))
    order = np.argsort(rng.random((PATHS, len(coded))), axis=1)[:, :n]
    drawn = coded[order]  # (P, n)
    width = max(1, len(ids))
    onehot = np.zeros((PATHS, n, width), dtype=np.int32)
    rows, steps = np.nonzero(drawn >= 0)
    onehot[rows, steps, drawn[rows, steps]] = 1
    counts = np.cumsum(onehot, axis=1)  # (P, n, A)
    seen = onehot.any(axis=1)
    first = np.where(seen, np.argmax(onehot, axis=1), n)  # first draw of each answer
    score = counts * (n + 1) - first[:, None, :]  # most votes, then earliest seen
    leader = np.argmax(score, axis=2)
    top = np.sort(counts, axis=2)
    v1 = top[:, :, -1]
    v2 = top[:, :, -2] if width > 1 else np.zeros_like(v1)
    gold = ids.get(q.gold, -2)
    right = (leader == gold) & (v1 > 0)
    return v1, v2, right, drawn


def shrunk(
    total: FloatArray,
    weight: FloatArray,
    v1: int,
    v2: int,
    toward: float,
    shrink: float,
    pool: bool = False,
) -> float:
    """A state's rate, `total[v1, v2] / weight[v1, v2]`, shrunk by `shrink` pseudo-questions
    toward `toward` (the curve's value) or, with `pool`, toward the rate of every state with
    the same leader votes v1, itself shrunk toward `toward`. Why pool: the runner-up's votes
    split the calibration questions into many small cells; a rare cell borrows from its
    leader-votes row, which knows more about it than the curve does."""
    if pool:
        row_w, row_t = float(weight[v1].sum()), float(total[v1].sum())
        toward = (row_t + shrink * toward) / (row_w + shrink)
    return (float(total[v1, v2]) + shrink * toward) / (float(weight[v1, v2]) + shrink)


@dataclass(repr=False)
class VoteStats:
    """How one model's votes behave, measured on its calibration questions (module doc)."""

    n_max: int
    weight: FloatArray  # [n, v1, v2]: questions-worth of paths in that state
    right: FloatArray  # [n, v1, v2]: of those, with the leader right
    ahead: dict[int, FloatArray]  # d → [n, v1, v2]: leader right after n + d
    acc: FloatArray  # acc[n]: mean leader-right after n (the curve, as these paths see it)
    questions: int
    keys: tuple[str, ...] = ()
    _state_ids: list[np.ndarray] = field(default_factory=list, repr=False)
    shrink: float = SHRINK
    pool: bool = POOL

    @classmethod
    def fit(
        cls,
        questions: Sequence[CalibrationQuestion],
        n_max: int = N_MAX,
        seed: int = 0,
        shrink: float = SHRINK,
        pool: bool = POOL,
    ) -> VoteStats:
        if not questions:
            raise ValueError("vote statistics need at least one calibration question")
        n_max = min(n_max, min(len(q.answers) for q in questions))
        rng = np.random.default_rng(seed)
        shape = (n_max + 1, n_max + 1, n_max + 1)
        weight, right = np.zeros(shape), np.zeros(shape)
        ahead = {d: np.zeros(shape) for d in LOOKAHEAD if d < n_max}
        w = 1.0 / PATHS
        state_ids: list[np.ndarray] = []
        ns = np.arange(1, n_max + 1)[None, :].repeat(PATHS, axis=0)
        for q in questions:
            v1, v2, ok, _ = _paths(q, n_max, rng)
            np.add.at(weight, (ns, v1, v2), w)
            np.add.at(right, (ns, v1, v2), w * ok)
            for d, table in ahead.items():
                np.add.at(table, (ns[:, :-d], v1[:, :-d], v2[:, :-d]), w * ok[:, d:])
            state_ids.append(np.stack([v1, v2]))
        acc = np.zeros(n_max + 1)
        acc[1:] = right.sum(axis=(1, 2))[1:] / len(questions)
        return cls(n_max, weight, right, ahead, acc, len(questions),
                   tuple(q.key for q in questions), state_ids, shrink, pool)  # fmt: skip

    def p_state(self, n: int) -> list[tuple[int, int, float]]:
        """[(v1, v2, P)] of the states after n draws."""
        table = self.weight[n] / self.questions
        v1, v2 = np.nonzero(table)
        return [(int(a), int(b), float(table[a, b])) for a, b in zip(v1, v2, strict=True)]

    def _shrunk(self, total: FloatArray, n: int, v1: int, v2: int, toward: float) -> float:
        return shrunk(total[n], self.weight[n], v1, v2, toward, self.shrink, self.pool)

    def p_right(self, n: int, v1: int, v2: int) -> float:
        """P(the leader of n draws in state (v1, v2) is right)."""
        if n < 1 or v1 < 1:
            return 0.0
        n = min(n, self.n_max)
        v1, v2 = min(v1, n), min(v2, n - min(v1, n))
        return self._shrunk(self.right, n, v1, v2, float(self.acc[n]))

    def p_right_after(self, n: int, v1: int, v2: int, d: int) -> float | None:
        """P(the leader after d more draws is right | state now); None beyond the table."""
        table = self.ahead.get(d)
        if table is None or n < 1 or n + d > self.n_max:
            return None
        return self._shrunk(table, n, v1, v2, float(self.acc[n + d]))


@dataclass(repr=False)
class CrossStats:
    """P(model B's k-vote majority is right | model A's state), on questions both calibrated.

    Estimated by a line, not cell by cell. For each n and k, B's accuracy in A's states is
    fitted (weighted by how often each state occurs) as a + b · P(A's leader is right | state),
    A's own calibrated estimate: a question A is unsure of is hard for B too. Why: a route moves
    a question exactly in the states whose estimate clears the bar, so per-cell rates, each
    from a few dozen questions, pick their own upward noise (on date_cot1 the cell estimates
    of GPT-4 after a split gpt-3.5-turbo vote were 2–3.5 points above what GPT-4 then scored),
    and shrinking a rare cell toward B's marginal accuracy pulls it up, as questions a weaker
    model splits on are harder than B's average. Two parameters per (n, k) do not chase noise.
    Where no line can be fitted (fewer than three states, or A's estimates all equal) the cell
    rate shrunk as `shrunk` does is used. Measured both ways: BENCHMARKS.md, "Routing on
    recorded LLM outputs"."""

    table: FloatArray  # [n, v1, v2, k]: B's maj@k summed over A's paths in the state
    weight: FloatArray  # [n, v1, v2]
    marginal: FloatArray  # [k]: B's accuracy on the shared questions
    line: FloatArray  # [n, v1, v2, k]: the fitted line's value in each state; NaN: no line
    shrink: float = SHRINK
    pool: bool = POOL

    @classmethod
    def fit(cls, a: VoteStats, b_curves: Mapping[str, FloatArray], k_max: int) -> CrossStats | None:
        """`b_curves`: B's exact per-question maj@k (k = 1..k_max) by question key."""
        shared = [i for i, key in enumerate(a.keys) if key in b_curves]
        if not shared:
            return None
        n = a.n_max
        table = np.zeros((n + 1, n + 1, n + 1, k_max))
        weight = np.zeros((n + 1, n + 1, n + 1))
        ns = np.arange(1, n + 1)[None, :].repeat(PATHS, axis=0)
        w = 1.0 / PATHS
        for i in shared:
            v1, v2 = a._state_ids[i]
            curve = b_curves[a.keys[i]][:k_max]
            np.add.at(weight, (ns, v1, v2), w)
            np.add.at(table, (ns, v1, v2), w * curve[None, None, :])
        marginal = np.mean([b_curves[a.keys[i]][:k_max] for i in shared], axis=0)
        return cls(table, weight, marginal, _lines(a, table, weight), a.shrink, a.pool)

    def p_right(self, n: int, v1: int, v2: int, k: int) -> float:
        n = min(n, self.weight.shape[0] - 1)
        k = min(k, self.table.shape[3])
        on_line = float(self.line[n, v1, v2, k - 1])
        if math.isfinite(on_line):
            return on_line
        toward = float(self.marginal[k - 1])
        table = self.table[n, :, :, k - 1]
        return shrunk(table, self.weight[n], v1, v2, toward, self.shrink, self.pool)


def _lines(a: VoteStats, table: FloatArray, weight: FloatArray) -> FloatArray:
    """CrossStats' fitted values: per n and k, B's rate over A's states regressed (weighted
    least squares) on A's P(right | state), evaluated in every state A reaches; NaN where
    fewer than three states or no spread in A's estimates leave no line to fit."""
    line = np.full(table.shape, np.nan)
    for n in range(1, weight.shape[0]):
        cells = np.argwhere(weight[n] > 0)
        if len(cells) < 3:
            continue
        x = np.array([a.p_right(n, int(v1), int(v2)) for v1, v2 in cells])
        if np.ptp(x) <= 1e-9:
            continue
        w = weight[n][cells[:, 0], cells[:, 1]]
        rates = table[n][cells[:, 0], cells[:, 1]] / w[:, None]  # (cells, k)
        design = np.stack([np.ones_like(x), x], axis=1) * np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(design, rates * np.sqrt(w)[:, None], rcond=None)[0]  # (2, k)
        fitted = np.clip(coef[0][None, :] + x[:, None] * coef[1][None, :], 0.0, 1.0)
        line[n, cells[:, 0], cells[:, 1]] = fitted
    return line


@dataclass(frozen=True)
class RouteCandidate:
    """One model a route may send a question to."""

    model: str
    curve: AccuracyCurve
    stats: VoteStats
    params: float


@dataclass(frozen=True)
class Route:
    """A route's candidates (cheapest first) and their cross-model statistics."""

    id: str
    candidates: tuple[RouteCandidate, ...]
    cross: Mapping[tuple[str, str], CrossStats] = field(default_factory=dict)
    plans: dict[tuple[object, ...], list[CandidatePlan]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """First decisions already planned, by (λ, costs, allowed, ...): requests alike plan once."""
    decisions: dict[tuple[object, ...], tuple[str, int, float | None]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """Later decisions already taken, by the run's settings and vote state (bounded)."""

    def candidate(self, model: str) -> RouteCandidate:
        return next(c for c in self.candidates if c.model == model)

    def escalation(self, src: str, dst: str, n: int, v1: int, v2: int, k: int) -> float:
        """P(dst's k-vote majority is right | src's votes so far)."""
        cross = self.cross.get((src, dst))
        if cross is not None:
            return cross.p_right(n, v1, v2, k)
        return self.candidate(dst).curve.accuracy(k)

    def start(
        self,
        costs: Mapping[str, float],
        lam: float,
        allowed: int,
        cheapest_first: bool = False,
        *,
        call_costs: Mapping[str, float] | None = None,
        recall_costs: Mapping[str, float] | None = None,
        caps: Mapping[str, int] | None = None,
        descend: bool = True,
    ) -> RouteRun:
        """A run for one request: `costs` per sample of each candidate in the tenant's unit,
        `lam` the price of one unit of that cost, `allowed` samples at most in all.
        `cheapest_first`: always start on the first candidate (a classic cascade, as in Yue et
        al.'s mixture-of-thought cascades) instead of on the best plan.
        `call_costs`: what one call (wave) costs on top of its samples (its prompt), per
        candidate; `recall_costs` what a later call on an already-called candidate costs (0
        where the prompt is a prefix-cache hit; default: `call_costs`). `caps`: at most this
        many samples per candidate (what each can draw). `descend`: a question may move to a
        cheaper candidate after a dearer one (module doc)."""
        return RouteRun(self, dict(costs), lam, allowed, cheapest_first,
                        call_costs=call_costs, recall_costs=recall_costs, caps=caps,
                        descend=descend)  # fmt: skip


@dataclass(frozen=True)
class Option:
    """An action's predicted accuracy and cost (cost in the tenant's unit)."""

    accuracy: float
    cost: float
    model: str
    wave: int  # 0 = stop

    def value(self, lam: float) -> float:
        return self.accuracy - lam * self.cost


@dataclass(frozen=True)
class CandidatePlan:
    """What the first decision predicted for starting on one candidate (the `t2.route` entry)."""

    model: str
    first_wave: int
    predicted_accuracy: float
    predicted_cost: float
    value: float


@dataclass(frozen=True)
class RouteStep:
    """Draw `wave` samples on `model`, or stop (wave 0) for `reason`."""

    model: str
    wave: int
    reason: str | None = None

    @property
    def stop(self) -> bool:
        return self.wave == 0


class RouteRun:
    """One request's routing state. `decide(answers_by_model)` after every wave."""

    def __init__(
        self,
        route: Route,
        costs: dict[str, float],
        lam: float,
        allowed: int,
        cheapest_first: bool = False,
        *,
        call_costs: Mapping[str, float] | None = None,
        recall_costs: Mapping[str, float] | None = None,
        caps: Mapping[str, int] | None = None,
        descend: bool = True,
    ) -> None:
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError("the price of compute must be finite and >= 0")
        self.route = route
        self.costs = costs
        self.lam = lam
        self.allowed = allowed
        self.cheapest_first = cheapest_first
        self.call_costs = dict(call_costs or {})
        self.recall_costs = dict(recall_costs) if recall_costs is not None else self.call_costs
        self.caps = {c.model: N_MAX for c in route.candidates} | dict(caps or {})
        self.descend = descend
        self.current: str | None = None
        self.visited: list[str] = []
        self.plans: list[CandidatePlan] = []
        self.predicted_accuracy: float | None = None
        self._key = (
            float(f"{lam:.6g}"),
            tuple(float(f"{costs[c.model]:.6g}") for c in route.candidates),
            allowed,
            tuple(float(f"{self.call_costs.get(c.model, 0.0):.6g}") for c in route.candidates),
            tuple(float(f"{self.recall_costs.get(c.model, 0.0):.6g}") for c in route.candidates),
            tuple(self.caps[c.model] for c in route.candidates),
            descend,
        )

    def fresh(self) -> RouteRun:
        """A new run with these settings, as `Route.start` would make it: a replay starts
        millions alike, and the settings' cache key is the larger part of starting one."""
        run = RouteRun.__new__(RouteRun)  # copy.copy's protocol costs more than the copy
        run.__dict__.update(self.__dict__)
        run.current, run.visited, run.plans, run.predicted_accuracy = None, [], [], None
        return run

    def wave_cost(self, model: str, k: int, called: bool) -> float:
        """Predicted cost of one call drawing k samples on `model`: its prompt (a repeat call's
        when `model` was called before) plus k samples, as the ledger bills a wave."""
        fixed = (self.recall_costs if called else self.call_costs).get(model, 0.0)
        return fixed + self.costs[model] * k

    # -- the options in a state ------------------------------------------------------------------

    def _after(self, model: str, n: int, v1: int, v2: int, left: int) -> Option:
        """The best action in state (n, v1, v2) on `model` with `left` samples allowed."""
        cand = self.route.candidate(model)
        best = Option(cand.stats.p_right(n, v1, v2), 0.0, model, 0)
        for d in LOOKAHEAD:
            if d > min(left, self.caps[model] - n):
                break
            p = cand.stats.p_right_after(n, v1, v2, d)
            if p is None:
                break
            opt = Option(p, self.wave_cost(model, d, True), model, d)
            if opt.value(self.lam) > best.value(self.lam):
                best = opt
        for other in self._others(model):
            for k in range(1, min(left, N_MAX, self.caps[other.model]) + 1):
                p = self.route.escalation(model, other.model, n, v1, v2, k)
                opt = Option(p, self.wave_cost(other.model, k, False), other.model, k)
                if opt.value(self.lam) > best.value(self.lam):
                    best = opt
        return best

    def _others(self, model: str) -> list[RouteCandidate]:
        """Where a question may still move: candidates not yet drawn from (with `descend`
        off, only the dearer ones: those after `model` in the route's order)."""
        names = [c.model for c in self.route.candidates]
        return [
            c
            for i, c in enumerate(self.route.candidates)
            if c.model != model
            and c.model not in self.visited
            and (self.descend or i > names.index(model))
        ]

    def plan(self, model: str, k: int) -> CandidatePlan:
        """Starting on `model` with k samples, then acting best once: expected accuracy, cost."""
        cand = self.route.candidate(model)
        n = min(k, cand.stats.n_max)
        acc, cost = 0.0, self.wave_cost(model, k, False)
        left = self.allowed - k
        self.visited = [model]
        for v1, v2, p in cand.stats.p_state(n):
            opt = self._after(model, n, v1, v2, left)
            acc += p * opt.accuracy
            cost += p * opt.cost
        self.visited = []
        return CandidatePlan(model, k, acc, cost, acc - self.lam * cost)

    # -- deciding --------------------------------------------------------------------------------

    def decide(self, answers: Mapping[str, Sequence[str | None]]) -> RouteStep:
        """The next step given every model's answers so far (in draw order)."""
        drawn = sum(len(a) for a in answers.values())
        left = self.allowed - drawn
        if self.current is None:
            return self._first()
        model = self.current
        mine = answers.get(model, ())
        _, v1, v2 = top_two(mine)
        n = len(mine)
        key = (self._key, model, tuple(self.visited), n, v1, v2, left)
        known = self.route.decisions.get(key)
        if known is None:
            known = self._decide(model, n, v1, v2, left)
            if len(self.route.decisions) >= DECISION_CACHE:
                self.route.decisions.clear()
            self.route.decisions[key] = known
        to, wave, self.predicted_accuracy = known
        if wave == 0:
            return RouteStep(model, 0, "max_samples" if left <= 0 else "marginal_value")
        if to != model:
            self.current = to
            self.visited.append(to)
        return RouteStep(to, wave)

    def _decide(
        self, model: str, n: int, v1: int, v2: int, left: int
    ) -> tuple[str, int, float | None]:
        """(model to draw on, wave (0 = stop), predicted accuracy now) in a vote state."""
        cand = self.route.candidate(model)
        predicted = cand.stats.p_right(n, v1, v2) if v1 else None
        if left <= 0:
            return model, 0, predicted
        opt = self._after(model, min(n, cand.stats.n_max), v1, v2, left)
        return opt.model, min(opt.wave, left), predicted

    def _first(self) -> RouteStep:
        key = self._key
        plans = self.route.plans.get(key)
        if plans is None:
            limit = max(1, min(self.allowed, N_MAX))
            best: dict[str, CandidatePlan] = {}
            for cand in self.route.candidates:
                for k in range(1, min(limit, cand.stats.n_max, self.caps[cand.model]) + 1):
                    plan = self.plan(cand.model, k)
                    if cand.model not in best or plan.value > best[cand.model].value:
                        best[cand.model] = plan
            # a candidate capped at 0 (one sample of it does not fit what the request may
            # spend) has no plan and is never started on
            plans = [best[c.model] for c in self.route.candidates if c.model in best]
            if len(self.route.plans) >= PLAN_CACHE:
                self.route.plans.pop(next(iter(self.route.plans)))
            self.route.plans[key] = plans
        self.plans = plans
        chosen = max(self.plans, key=lambda p: p.value)  # first (cheapest) on ties
        if self.cheapest_first:
            chosen = self.plans[0]
        self.current = chosen.model
        self.visited = [chosen.model]
        return RouteStep(chosen.model, chosen.first_wave)


def route_price(own: float, price: ComputePrice | None, reference: float, unit: str) -> float:
    """λ per unit of cost for a route. `own` is the request's t2 λ per sample, which prices one
    sample of the route's cheapest candidate that costs anything, costing `reference` in `unit`
    (a free model cannot be the yardstick: λ per unit of nothing is infinite); the
    budget's price combines with it as for any policy (Policy.sample_price): a cap only raises
    it, a spend target replaces it. A price in another unit than the route's is not comparable
    and is left out."""
    base = own / reference
    if price is None:
        return base
    if price.unit == SAMPLE:
        paced = price.lam / reference
    elif price.unit == unit:
        paced = price.lam
    else:
        return base
    return max(base, paced) if price.mode == "cap" else paced


def cascade_answer(answers: Mapping[str, Sequence[str | None]], order: Sequence[str]) -> str | None:
    """The final answer (module doc): the last model's majority; earlier models break its ties
    (then the first seen among the tied wins, as `controller.aggregate.vote` breaks ties)."""
    last = [m for m in order if answers.get(m)]
    if not last:
        return None
    votes = count_votes(answers[last[-1]])
    if not votes:
        return None
    top = max(votes.values())
    tied = [a for a, v in votes.items() if v == top]
    if len(tied) == 1:
        return tied[0]
    earlier = count_votes([a for m in last[:-1] for a in answers[m]])
    return max(tied, key=lambda a: earlier.get(a, 0))  # max keeps the first on equal counts


def calibration_questions(
    rows: Sequence[tuple[str, str | None, Sequence[str | None]]],
) -> list[CalibrationQuestion]:
    """(key, gold, answers) rows → calibration questions; rows without gold are skipped."""
    return [CalibrationQuestion(k, g, tuple(a)) for k, g, a in rows if g is not None]


def per_question_majority(q: CalibrationQuestion, k_max: int) -> FloatArray:
    """q's exact maj@k, k = 1..k_max (controller.scaling.estimators.maj_curve)."""
    from controller.scaling.estimators import maj_curve

    votes = count_votes(q.answers)
    abstained = sum(1 for a in q.answers if a is None)
    others = [v for a, v in votes.items() if a != q.gold]
    return maj_curve(votes.get(q.gold, 0), others, k_max, abstained=abstained)


@dataclass(frozen=True)
class RouteMember:
    """A served model as a route sees it: its curve, N and its calibration questions."""

    model: str
    curve: AccuracyCurve
    params: float
    questions: Sequence[CalibrationQuestion]


@dataclass(frozen=True)
class FittedMember:
    """A member with what a route fits for it alone: its vote statistics and its per-question
    majority curves (for other members' cross tables). They depend only on the member, seed,
    shrink and pool, so routes sharing a member can share one fit (`assemble_route`)."""

    member: RouteMember
    stats: VoteStats
    majority: dict[str, FloatArray]

    @classmethod
    def fit(
        cls, m: RouteMember, seed: int = 0, shrink: float = SHRINK, pool: bool = POOL
    ) -> FittedMember:
        stats = VoteStats.fit(m.questions, seed=seed, shrink=shrink, pool=pool)
        k_max = min(N_MAX, min(len(q.answers) for q in m.questions))
        majority = {q.key: per_question_majority(q, k_max) for q in m.questions}
        return cls(m, stats, majority)


def build_route(
    route_id: str,
    members: Sequence[RouteMember],
    seed: int = 0,
    shrink: float = SHRINK,
    pool: bool = POOL,
) -> Route:
    """Fit every member's vote statistics and, for every ordered pair of members calibrated on
    shared questions (matched by key), the cross-model table. `shrink`: pseudo-questions
    pulling a seldom-seen state toward the curve; `pool`: through its leader-votes row first
    (`shrunk`). The defaults (SHRINK, POOL) are the server's and the replay's alike."""
    fitted = [FittedMember.fit(m, seed, shrink, pool) for m in members]
    return assemble_route(route_id, fitted)


def assemble_route(route_id: str, fitted: Sequence[FittedMember]) -> Route:
    """A route over members fitted already (`FittedMember.fit`): only the cross-model tables
    of each ordered pair are fitted here."""
    cross: dict[tuple[str, str], CrossStats] = {}
    for a in fitted:
        for b in fitted:
            if a.member.model == b.member.model:
                continue
            k_max = min(len(v) for v in b.majority.values())
            table = CrossStats.fit(a.stats, b.majority, k_max)
            if table is not None:
                cross[(a.member.model, b.member.model)] = table
    candidates = tuple(
        RouteCandidate(f.member.model, f.member.curve, f.stats, f.member.params) for f in fitted
    )
    return Route(route_id, candidates, cross)


def served_calibration(curves_path: str, model_id: str) -> list[CalibrationQuestion]:
    """The calibration questions a served model's curves were fitted on: the replay file its
    curves.json `serving` entry names, restricted to the documented calibration split
    (controller.scaling.served.split_calibration: even positions) when the entry says so."""
    import json
    from pathlib import Path

    from controller.aggregate.extract import last_number
    from controller.replay.data import load_replay
    from controller.scaling.served import ServedCurvesError, split_calibration

    doc = json.loads(Path(curves_path).read_text())
    entry = (doc.get("serving") or {}).get(model_id) or {}
    data = entry.get("data") or {}
    path = data.get("path")
    if not path:
        raise ServedCurvesError(
            f"model {model_id!r}: curves file {curves_path}: serving.{model_id}.data.path: "
            "missing; a route needs the calibration samples"
        )
    questions, _ = load_replay(path, last_number)
    if data.get("where") == "even positions":
        questions = split_calibration(questions)[0]
    rows = [(_question_key(q.id), q.gold, [s.answer for s in q.samples]) for q in questions]
    return calibration_questions(rows)


def _question_key(replay_id: str) -> str:
    """Replay ids are `<model>-<index>`; the index names the question across models."""
    return replay_id.rsplit("-", 1)[-1]
