"""Budget replay on a simulated clock: does a tenant's daily budget end the day spent, and never
refuse, when the t2 policy is paced by `TenantPacer` (the server's own pacing code)?

It runs the opt-in `spend` pacing mode by default, the one for a prepaid allotment that should
be used up; in the default server mode, `cap`, a budget is only a ceiling and a day with slack
ends mostly unspent (pass `pacing=PacingSettings(mode="cap")` to see that).

A steady stream of `queries` questions arrives evenly over one calendar UTC day (with seeded
jitter); each draws recorded samples from a replay file through the real policy objects. Before
each question the pacer turns the day's spend so far and the elapsed fraction of the day into λ,
exactly as `server.billing` does from the ledger's figures. Each wave's cost is its prompt tokens
plus its samples' tokens, priced; a hard budget shrinks a wave that would not fit and refuses a
question whose first sample would not (counted as a refusal). Simulated days run back to back:
each new day starts at the λ the previous one ended with, like a long-running server.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from controller.aggregate.vote import Candidate, aggregate
from controller.budget.ledger import Limit, WindowUsage
from controller.budget.models import ModelPrice, PacingSettings, Prices
from controller.budget.pricing import Cost, Pricer
from controller.budget.windows import span
from controller.pacing import ComputePrice, PriceMode, TenantPacer, default_initial_price
from controller.policy.base import Caps, Policy
from controller.policy.factory import make_policy
from controller.replay.data import ReplayQuestion

DAY_S = 86400.0
DEFAULT_PRICE = ModelPrice(prompt_per_1m=0.5, completion_per_1m=1.5)


@dataclass
class DayResult:
    """One simulated day: budget against spend, refusals, samples and accuracy."""

    day: int
    budget: float
    spent: float
    queries: int
    refused: int
    shrunk_waves: int
    mean_samples: float
    accuracy: float
    final_price: float
    price_trace: list[tuple[float, float, float]] = field(default_factory=list)  # (t, λ, spent)

    @property
    def spent_fraction(self) -> float:
        return self.spent / self.budget

    def to_json(self) -> dict[str, object]:
        return {
            "day": self.day,
            "budget": self.budget,
            "spent": self.spent,
            "spent_fraction": self.spent_fraction,
            "queries": self.queries,
            "refused": self.refused,
            "shrunk_waves": self.shrunk_waves,
            "mean_samples": self.mean_samples,
            "accuracy": self.accuracy,
            "final_price_of_compute": self.final_price,
        }


@dataclass
class BudgetReplayResult:
    policy: str
    samples_per_query: float
    sample_cost: float
    days: list[DayResult]

    @property
    def last(self) -> DayResult:
        return self.days[-1]

    def to_json(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "samples_per_query": self.samples_per_query,
            "sample_cost": self.sample_cost,
            "days": [d.to_json() for d in self.days],
        }


def parse_budget(spec: str) -> tuple[float | None, float]:
    """`--budget` → (money per day or None, samples per query): "4x" = a budget that fits 4
    samples per query on average; "12.5" = 12.5 currency units per day."""
    text = spec.strip().lower()
    try:
        if text.endswith("x"):
            samples = float(text[:-1])
            if not 0 < samples < math.inf:
                raise ValueError
            return None, samples
        money = float(text)
        if not 0 < money < math.inf:
            raise ValueError
        return money, 0.0
    except ValueError:
        raise ValueError(
            f"--budget {spec!r}: give samples per query as e.g. '4x', "
            "or money per day as e.g. '12.5'"
        ) from None


def mean_sample_tokens(questions: Sequence[ReplayQuestion], default: float = 128.0) -> float:
    known = [s.tokens for q in questions for s in q.samples if s.tokens is not None]
    return float(np.mean(known)) if known else default


def simulate_budget(
    questions: Sequence[ReplayQuestion],
    *,
    policy: str = "t2",
    samples_per_query: float = 4.0,
    queries_per_day: int = 2000,
    days: int = 2,
    budget: float | None = None,
    prompt_tokens: int = 120,
    price: ModelPrice = DEFAULT_PRICE,
    pacing: PacingSettings | None = None,
    max_samples: int = 16,
    hard: bool = True,
    seed: int = 0,
    start: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> BudgetReplayResult:
    """Run `days` simulated days; `budget` (per day) defaults to what `samples_per_query`
    single-sample waves per query cost on average."""
    if not questions:
        raise ValueError("no questions to replay")
    if queries_per_day < 1 or days < 1:
        raise ValueError("queries_per_day and days must be >= 1")
    pricer = Pricer(Prices(models={"*": price}), "replay")
    sample_tokens = mean_sample_tokens(questions)
    one_sample = pricer.cost(prompt_tokens, round(sample_tokens)).money
    daily = budget if budget is not None else samples_per_query * queries_per_day * one_sample
    if not daily > 0:
        raise ValueError("the budget must be > 0 (give prices or --budget)")
    settings = pacing or PacingSettings(mode="spend")
    sim = _Simulation(
        questions=questions,
        pricer=pricer,
        pacer=TenantPacer(
            settings, {"currency": default_initial_price(pricer.per_token("currency"))}
        ),
        policy=make_policy(policy),
        mode=settings.mode,
        rng=np.random.default_rng(seed),
        daily=daily,
        hard=hard,
        queries_per_day=queries_per_day,
        max_samples=max_samples,
        prompt_tokens=prompt_tokens,
        sample_tokens=sample_tokens,
    )
    t0 = (start or datetime(2026, 1, 5, tzinfo=UTC)).timestamp()
    t0 = math.floor(t0 / DAY_S) * DAY_S
    done = 0

    def answered_one() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done)

    results = [_simulate_day(sim, day, t0 + day * DAY_S, answered_one) for day in range(days)]
    return BudgetReplayResult(policy, samples_per_query, one_sample, results)


@dataclass
class _Simulation:
    """What every simulated question shares: the replay, prices, the pacer, the policy (whose
    prior learns across questions and days), the seeded generator and the daily budget."""

    questions: Sequence[ReplayQuestion]
    pricer: Pricer
    pacer: TenantPacer
    policy: Policy
    mode: PriceMode
    rng: np.random.Generator
    daily: float
    hard: bool
    queries_per_day: int
    max_samples: int
    prompt_tokens: int
    sample_tokens: float


@dataclass
class _Answered:
    """One question's waves: the samples drawn (indices and answers), the day's spend after
    them, whether the question was refused and how many of its waves were shrunk."""

    picked: list[int]
    answers: list[str | None]
    spent: float
    refused: bool
    shrunk: int


def _simulate_day(
    sim: _Simulation, day: int, day_start: float, answered_one: Callable[[], None]
) -> DayResult:
    """One calendar day of `queries_per_day` questions at seeded, evenly spread times."""
    n = sim.queries_per_day
    spent = 0.0
    refused = shrunk = drawn_total = correct_total = 0
    trace: list[tuple[float, float, float]] = []
    lam = sim.pacer.initial_prices["currency"]
    offsets = (np.arange(n) + sim.rng.uniform(0, 1, n)) / n
    order = sim.rng.integers(0, len(sim.questions), n)
    for i in range(n):
        now = day_start + float(offsets[i]) * DAY_S
        limit = Limit(span("day", False, now), "currency", sim.daily, sim.hard)
        paced = sim.pacer.price([WindowUsage(limit, Cost(spent, 0.0), Cost())], now, "currency")
        lam = paced.lam if paced is not None else lam
        if i % max(1, n // 200) == 0:
            trace.append((now - day_start, lam, spent))
        question = sim.questions[int(order[i])]
        answered = _answer(sim, question, spent, paced or ComputePrice(lam, "currency", sim.mode))
        spent = answered.spent
        refused += answered.refused
        shrunk += answered.shrunk
        if answered.picked:
            sim.policy.observe(answered.answers)
            drawn_total += len(answered.picked)
            correct_total += int(_correct(question, answered.picked, answered.answers))
        answered_one()
    trace.append((DAY_S, lam, spent))
    return DayResult(
        day=day,
        budget=sim.daily,
        spent=spent,
        queries=n,
        refused=refused,
        shrunk_waves=shrunk,
        mean_samples=drawn_total / n,
        accuracy=correct_total / n,
        final_price=lam,
        price_trace=trace,
    )


def _answer(
    sim: _Simulation, question: ReplayQuestion, spent: float, price: ComputePrice
) -> _Answered:
    """Run the policy on one question's recorded samples, in a seeded order, wave by wave."""
    sample_order = sim.rng.permutation(len(question.samples)).tolist()
    cap = min(sim.max_samples, len(question.samples))
    worst = sim.pricer.cost(sim.prompt_tokens, round(sim.sample_tokens)).money
    run = sim.policy.start(
        Caps(max_samples=cap, cost_per_sample=worst, cost_unit="currency"), price
    )
    answers: list[str | None] = []
    picked: list[int] = []
    refused, shrunk = False, 0
    while True:
        decision = run.decide(answers)
        if decision.stop:
            break
        wave = sample_order[len(picked) : len(picked) + decision.wave]
        if not wave:
            break
        fits, cost = _fit_wave(sim, question, wave, spent)
        if fits == 0:
            refused = not picked
            break
        shrunk += fits < len(wave)
        spent += cost
        picked.extend(wave[:fits])
        answers.extend(question.samples[j].answer for j in wave[:fits])
        if fits < len(wave):
            break
    return _Answered(picked, answers, spent, refused, shrunk)


def _fit_wave(
    sim: _Simulation, question: ReplayQuestion, wave: list[int], spent: float
) -> tuple[int, float]:
    """How many of the wave's samples a hard budget lets through (all of them for a soft one),
    and what those cost: the prompt once plus each sample's recorded tokens, priced."""
    costs = [
        sim.pricer.cost(0, round(question.samples[j].tokens or sim.sample_tokens)).money
        for j in wave
    ]
    fixed = sim.pricer.cost(sim.prompt_tokens, 0).money
    fits = len(wave)
    if sim.hard:
        while fits > 0 and spent + fixed + sum(costs[:fits]) > sim.daily:
            fits -= 1
    return fits, fixed + sum(costs[:fits])


def _correct(question: ReplayQuestion, picked: list[int], answers: list[str | None]) -> bool:
    result = aggregate([Candidate(a) for a in answers])
    if question.gold is not None:
        return result.answer is not None and result.answer == question.gold
    if result.chosen_index is None:
        return False
    return bool(question.samples[picked[result.chosen_index]].correct)
