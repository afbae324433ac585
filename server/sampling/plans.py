"""What the sampling loop asks before every wave: which model draws how many samples next.

A `Plan` is a policy over (model, wave) choices. A single model is the trivial route: its
`ModelPlan` always names that model and sizes the wave with the request's `PolicyRun`
(controller.policy). A route's `RoutePlan` follows the T² router (controller.routing.RouteRun),
which may move the question to another candidate between waves. Both stop when a verifier has
found a sample likely right (`stop_at`), so verifier-aware stopping works the same on routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.policy.base import PolicyRun
from controller.routing import CandidatePlan, Route, RouteRun
from server.sampling.route_prices import RoutePrices

Answers = Mapping[str, Sequence[str | None]]  # each model's answers so far, in draw order


@dataclass(frozen=True)
class Step:
    """Draw `wave` samples on `model`, or stop (wave 0) for `reason`."""

    model: str
    wave: int
    reason: str | None = None

    @property
    def stop(self) -> bool:
        return self.wave <= 0


class Plan(Protocol):
    """One request's choice of (model, wave) after every wave."""

    @property
    def predicted_accuracy(self) -> float | None: ...

    @property
    def candidates(self) -> list[CandidatePlan]:
        """What the route predicted for each candidate ([] for a single model)."""
        ...

    def next(self, answers: Answers, confidences: Sequence[float] | None) -> Step: ...


class ModelPlan:
    """The trivial route: every wave on `model`, sized by the request's policy run."""

    def __init__(self, model: str, run: PolicyRun) -> None:
        self.model = model
        self.run = run
        self.candidates: list[CandidatePlan] = []

    @property
    def predicted_accuracy(self) -> float | None:
        return self.run.predicted_accuracy

    def next(self, answers: Answers, confidences: Sequence[float] | None) -> Step:
        decision = self.run.decide(answers.get(self.model, ()), confidences)
        if decision.stop:
            return Step(self.model, 0, decision.reason or "policy")
        return Step(self.model, decision.wave)


class RoutePlan:
    """A route's waves: the router picks the model; a verifier's confident sample stops it."""

    def __init__(self, run: RouteRun, stop_at: float | None = None) -> None:
        self.run = run
        self.stop_at = stop_at

    @classmethod
    def start(
        cls,
        route: Route,
        prices: RoutePrices,
        lam: float,
        allowed: int,
        cheapest_first: bool = False,
        stop_at: float | None = None,
    ) -> RoutePlan:
        """A request's route, its decisions pricing each wave as the ledger bills it: the
        call's prompt (a repeat call's prefix-cache hit), each sample's completion, each
        model's own cap (server.sampling.route_prices)."""
        run = route.start(prices.sample, lam, allowed, cheapest_first, call_costs=prices.call,
                          recall_costs=prices.recall, caps=prices.caps)  # fmt: skip
        return cls(run, stop_at)

    @property
    def predicted_accuracy(self) -> float | None:
        return self.run.predicted_accuracy

    @property
    def candidates(self) -> list[CandidatePlan]:
        return list(self.run.plans)

    def next(self, answers: Answers, confidences: Sequence[float] | None) -> Step:
        current = self.run.current or ""
        if confidences and self.stop_at is not None and max(confidences) >= self.stop_at:
            return Step(current, 0, "verified")
        step = self.run.decide(answers)
        if step.stop:
            return Step(step.model, 0, step.reason or "policy")
        return Step(step.model, step.wave)
