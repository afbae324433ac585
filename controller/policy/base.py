"""The policy contract: given the answers so far, stop (and why) or draw a wave of w samples.

A `Policy` is long-lived (one per tenant/route; it may learn from finished questions through
`observe`). `Policy.start(caps, price)` returns a `PolicyRun` for one request (`price`, a
`controller.pacing.ComputePrice` or None, is what budgets say compute costs; each policy turns
it into its own knob through `Policy.sample_price`), whose
`decide(answers)` is called with every answer drawn so far, in draw order (None for a sample
that abstained), and returns a `Decision`. The caps are enforced here, once, for every
policy: a policy says what it wants, `PolicyRun.decide` clamps it to what the caps allow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from controller.aggregate.vote import count_votes
from controller.pacing import REFERENCE_SAMPLE_PRICE, SAMPLE, ComputePrice


def spec_number(x: float) -> str:
    """A setting as a policy's `spec` writes it: the shortest decimal that reads back as the
    same float, never an exponent ("0.00005", "100000.1"), so the spec builds the same
    policy again and the API's grammar (numbers without exponents) accepts it."""
    text = format(Decimal(repr(float(x))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


StopReason = Literal[
    "converged",
    "max_samples",
    "max_cost",
    "budget",
    "exhausted",
    "marginal_value",
    "fixed",
    "verified",
]
STOP_REASONS: tuple[str, ...] = (
    "converged",  # the policy's confidence rule is met (adaptive_consistency, esc, margin)
    "max_samples",  # the request's sample cap
    "max_cost",  # the request's cost cap
    "budget",  # the tenant's remaining budget (as affordable samples)
    "exhausted",  # no more samples can be had (the replay ran out of recorded samples)
    "marginal_value",  # t2: one more wave is worth less than it costs
    "fixed",  # fixed:k drew its k
    "verified",  # a sample's calibrated P(correct) reached the verifier's `stop_at`
)


@dataclass(frozen=True)
class Caps:
    """Hard limits for one request.

    max_samples: never draw more than this many samples in total.
    cost_per_sample: cost of one sample in `cost_unit` (a worst-case quote); used by
        max_cost and to turn a price per unit of cost into a price per sample.
    cost_unit: what costs are counted in: "sample" (the default: one per sample), or the
        billing unit ("currency", "flops", "tokens").
    max_cost: total cost cap for the request, in the same unit (None = no cap).
    budget_samples: how many more samples the tenant's remaining budget affords at start
        (None = unlimited).
    """

    max_samples: int
    cost_per_sample: float = 1.0
    cost_unit: str = SAMPLE
    max_cost: float | None = None
    budget_samples: int | None = None

    def __post_init__(self) -> None:
        if self.max_samples < 0:
            raise ValueError("max_samples must be >= 0")
        if not self.cost_per_sample > 0:
            raise ValueError("cost_per_sample must be > 0")

    def remaining(self, drawn: int) -> tuple[int, StopReason]:
        """How many more samples the tightest cap allows, and which cap that is."""
        best: tuple[int, StopReason] = (self.max_samples - drawn, "max_samples")
        if self.max_cost is not None:
            by_cost = int(self.max_cost / self.cost_per_sample + 1e-9) - drawn
            if by_cost < best[0]:
                best = (by_cost, "max_cost")
        if self.budget_samples is not None and self.budget_samples - drawn < best[0]:
            best = (self.budget_samples - drawn, "budget")
        return max(0, best[0]), best[1]


@dataclass(frozen=True)
class Decision:
    """Stop (with a reason from STOP_REASONS) or draw a wave of `wave` more samples."""

    stop: bool
    wave: int = 0
    reason: StopReason | None = None

    @staticmethod
    def draw(wave: int) -> Decision:
        return Decision(False, wave, None)

    @staticmethod
    def halt(reason: StopReason) -> Decision:
        return Decision(True, 0, reason)


def top_two(answers: Sequence[str | None]) -> tuple[str | None, int, int]:
    """(leader, v1, v2): the leading answer (earliest on ties) and the top two vote counts."""
    votes = count_votes(answers)
    leader: str | None = None
    v1 = v2 = 0
    for answer, count in votes.items():
        if count > v1:
            leader, v2, v1 = answer, v1, count
        elif count > v2:
            v2 = count
    return leader, v1, v2


class PolicyRun(ABC):
    """One request's stopping state. Subclasses implement `want`."""

    stop_at: float | None = None
    """Verifier-aware stopping: halt ("verified") once any sample's calibrated P(correct)
    reaches this, whatever the policy's own rule says (None: off). Set by the caller from the
    verifier's config; the threshold is chosen on calibration data, not on the request."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.last_reason: StopReason | None = None

    def decide(
        self, answers: Sequence[str | None], confidences: Sequence[float] | None = None
    ) -> Decision:
        """Stop or draw: the policy's wish, clamped by the caps. `confidences`, when a verifier
        scores the samples as they arrive, is each sample's calibrated P(correct)."""
        drawn = len(answers)
        allowed, cap = self.caps.remaining(drawn)
        if confidences and self.stop_at is not None and max(confidences) >= self.stop_at:
            self.last_reason = "verified"
            return Decision.halt("verified")
        wish = self.want(answers, allowed)
        if wish.stop:
            decision = wish
        elif allowed <= 0:
            decision = Decision.halt(cap)
        else:
            decision = Decision.draw(max(1, min(wish.wave, allowed)))
        self.last_reason = decision.reason
        return decision

    @abstractmethod
    def want(self, answers: Sequence[str | None], allowed: int) -> Decision:
        """The policy's own decision; `allowed` (>= 0) is how many more the caps permit."""

    @property
    @abstractmethod
    def predicted_accuracy(self) -> float | None:
        """Posterior probability that the current leader is what unlimited sampling picks."""


class Policy(ABC):
    """A sampling policy; `spec` is the string it was made from (e.g. "esc:5")."""

    spec: str
    adaptive: bool = True

    @property
    def own_sample_price(self) -> float:
        """λ per sample at which this policy behaves as its own settings say. t2 has its own
        λ; rules without one (Adaptive-Consistency, ESC) stand at the reference price."""
        return REFERENCE_SAMPLE_PRICE

    def sample_price(self, price: ComputePrice | None, caps: Caps) -> float:
        """The per-sample λ to run with: the policy's own, combined with `price` by its mode
        (a cap can only raise it; a spend target replaces it)."""
        if price is None:
            return self.own_sample_price
        return price.combine(self.own_sample_price, caps.cost_per_sample, caps.cost_unit)

    def pressure(self, price: ComputePrice | None, caps: Caps) -> float:
        """How much dearer compute is than this policy's own settings assume (1 = as set)."""
        own = self.own_sample_price
        paced = self.sample_price(price, caps)
        return paced / own if own > 0 else 1.0

    @abstractmethod
    def start(self, caps: Caps, price: ComputePrice | None = None) -> PolicyRun:
        """A run for one request, priced by `price` (None: the policy's own settings)."""

    def observe(self, answers: Sequence[str | None]) -> None:  # noqa: B027 - optional hook
        """Learn from a finished question's drawn answers (t2 refits its prior). Default: no-op."""
