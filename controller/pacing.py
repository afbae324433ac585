"""Pacing: the price of compute λ, and the one online controller that moves it.

This is the only pacing module. It holds three things:

- `ComputePrice`: λ and the unit it is priced in, the one meaning of "price of compute" that
  billing hands to policies. Each policy converts it explicitly (`Policy.sample_price`).
- `PacingController`: the integral controller that steers a consumption rate to a target.
- `TenantPacer`: a tenant's `ComputePrice` from its budget windows.

## The controller

Both budget problems in t2serve have the same shape: something is consumed (samples, money)
while something else progresses (questions answered, seconds of a budget window elapsed),
and the consumption per unit of progress must track a target. A single knob trades
consumption for quality: the price of compute λ that the `t2` policy charges itself per
sample (or, for other policies, any knob that can be expressed as a price).

- Average-budget replay: progress = 1 per question, consumption = samples drawn,
  target = B samples per question.
- Per-tenant spend pacing: progress = fraction of the budget window elapsed since the last
  update, consumption = spend since the last update, target = the window's budget (so the
  spend tracks budget × elapsed fraction of the window).

The controller is an integral (dual-ascent) controller in log space:

    λ = λ₀ · exp(gain · surplus / (target · horizon))

where surplus = consumed − target · progress is the cumulative overspend. Overspending raises
the price (fewer samples), underspending lowers it. Because λ is a function of the
cumulative surplus, the surplus stays bounded, so the long-run rate converges to the target
whatever λ₀ was; `horizon` says over how many units of progress an overspend of one unit of
target is to be paid back (larger = smoother, slower). The multiplicative form suits prices
that span orders of magnitude. `headroom()` gives a hard allowance for callers that also
want a cap (e.g. "never more than the unspent budget plus a burst").

The object holds plain floats and does no I/O: the server keeps one per tenant (and may
persist `state()`), the replay harness one per run.

## Budgets are caps
A tenant's budget is a cap, not a quota to burn. In the default `cap` mode `TenantPacer` says
nothing (None) while every window spends no faster than time passes, and once one burns ahead
of pace it returns a λ that only ever raises the policy's own price (`ComputePrice.mode`
"cap": a floor). The opt-in `spend` mode is for a fixed prepaid allotment that should be used
up by the window's end: its λ replaces the policy's own, and falls below it when there is slack.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # types only: the budget package never imports this module back
    from controller.budget.ledger import WindowUsage
    from controller.budget.models import PacingSettings

PriceMode = Literal["cap", "spend"]
PRICE_MODES: tuple[PriceMode, ...] = ("cap", "spend")
SAMPLE = "sample"

REFERENCE_SAMPLE_PRICE = 0.002
"""λ per sample (0.2% of a correct answer) at which the rules without a λ of their own
(Adaptive-Consistency, ESC, margin) behave as their defaults: they scale their knob by
price / REFERENCE_SAMPLE_PRICE. t2 has its own λ (`controller.policy.t2.DEFAULT_LAM`); this
is also the warm start of a tenant's pacing price (`default_initial_price`)."""
TYPICAL_SAMPLE_TOKENS = 256


@dataclass(frozen=True)
class ComputePrice:
    """The price of compute: λ, in value of a correct answer per unit of `unit`.

    `unit` is "sample", or the billing unit a cost is counted in ("currency", "flops",
    "tokens"); a policy turns it into a per-sample price with `per_sample`, which needs the
    cost of one sample in that same unit. `mode` says how it combines with the policy's own
    price: "cap" is a floor under it, "spend" replaces it.
    """

    lam: float
    unit: str = SAMPLE
    mode: PriceMode = "cap"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"a price of compute must be finite and >= 0, got {self.lam!r}")
        if self.mode not in PRICE_MODES:
            raise ValueError(f"price mode must be one of {PRICE_MODES}, got {self.mode!r}")

    def per_sample(self, cost_per_sample: float, cost_unit: str) -> float:
        """λ per sample, for samples that cost `cost_per_sample` in `cost_unit`."""
        if self.unit == SAMPLE:
            return self.lam
        if cost_unit != self.unit:
            raise ValueError(f"a price per {self.unit} cannot price samples costed in {cost_unit}")
        return self.lam * cost_per_sample

    def combine(self, own: float, cost_per_sample: float, cost_unit: str) -> float:
        """The per-sample λ a policy whose own price is `own` (per sample) should use."""
        paced = self.per_sample(cost_per_sample, cost_unit)
        return max(own, paced) if self.mode == "cap" else paced


@dataclass
class PacingState:
    """What must be persisted to resume a controller (e.g. across restarts)."""

    consumed: float
    progress: float
    price: float
    integral: float = 0.0


class PacingController:
    """Steer `consumed / progress` toward `target` by moving a price λ (see module doc).

    Args:
        target: desired consumption per unit of progress (B samples per question, or a
            window's budget when progress is measured in window fractions).
        initial_price: λ₀, the price at zero surplus.
        gain: log-price change when the surplus equals `target · horizon`.
        horizon: progress over which an overspend is paid back; smaller reacts faster.
        min_price, max_price: clamp for λ (a runaway surplus cannot drive it to 0 or ∞).
        increasing: True when a higher knob value means less consumption (a price, λ).
            False for knobs such as a confidence threshold, where the controller should
            lower the knob to consume less.
        integral_gain: > 0 adds a second integral (of the surplus over progress) that drives
            the surplus itself, not only the rate, back to zero. Without it the surplus
            settles where exp(gain · surplus / (target · horizon)) equals λ*/λ₀, so the
            cumulative mean overshoots by that surplus / progress when λ₀ is below the price
            that meets the target. 0 (the default) keeps the plain controller.
    """

    def __init__(
        self,
        target: float,
        initial_price: float = 1.0,
        *,
        gain: float = 1.0,
        horizon: float = 20.0,
        min_price: float = 1e-9,
        max_price: float = 1e9,
        increasing: bool = True,
        integral_gain: float = 0.0,
    ) -> None:
        if not target > 0:
            raise ValueError(f"pacing target must be > 0, got {target}")
        if not initial_price > 0:
            raise ValueError(f"initial price must be > 0, got {initial_price}")
        if not (0 < min_price <= initial_price <= max_price):
            raise ValueError("need 0 < min_price <= initial_price <= max_price")
        if not (gain > 0 and horizon > 0):
            raise ValueError("gain and horizon must be > 0")
        self.target = float(target)
        self.initial_price = float(initial_price)
        self.gain = float(gain)
        self.horizon = float(horizon)
        self.min_price = float(min_price)
        self.max_price = float(max_price)
        self.increasing = increasing
        if integral_gain < 0:
            raise ValueError("integral_gain must be >= 0")
        self.integral_gain = float(integral_gain)
        self.integral = 0.0
        self.consumed = 0.0
        self.progress = 0.0

    @property
    def surplus(self) -> float:
        """Cumulative overspend: consumed − target · progress (negative = money in the bank)."""
        return self.consumed - self.target * self.progress

    @property
    def rate(self) -> float:
        """Consumption per unit of progress so far (the target before any progress)."""
        return self.consumed / self.progress if self.progress > 0 else self.target

    @property
    def price(self) -> float:
        """The knob value to use for the next decision."""
        sign = 1.0 if self.increasing else -1.0
        # a target so small it underflows (a budget of 1e-322) is no reason to divide by zero
        error = self.surplus / max(self.target * self.horizon, sys.float_info.min)
        exponent = sign * self.gain * (error + self.integral_gain * self.integral)
        exponent = max(-700.0, min(700.0, exponent))
        value = self.initial_price * math.exp(exponent)
        return min(self.max_price, max(self.min_price, value))

    def record(self, consumed: float, progress: float = 1.0) -> float:
        """Account for `consumed` spent over `progress` made; return the updated price."""
        if consumed < 0 or progress < 0:
            raise ValueError("consumption and progress must be >= 0")
        self.consumed += consumed
        self.progress += progress
        if self.integral_gain:
            self.integral += self.surplus / (self.target * self.horizon) * progress / self.horizon
        return self.price

    def headroom(self, progress_ahead: float = 1.0, burst: float = 0.0) -> float:
        """Consumption still within target after `progress_ahead` more progress, plus `burst`.

        For an average-samples budget this is "how many samples the next question may take
        without the running mean exceeding B (plus a burst allowance)"; for spend pacing it
        is the budget earned so far that is still unspent.
        """
        return self.target * (self.progress + progress_ahead) - self.consumed + burst

    def state(self) -> PacingState:
        return PacingState(self.consumed, self.progress, self.price, self.integral)

    def restore(self, state: PacingState) -> None:
        """Resume from a persisted state (the price follows from the surplus)."""
        self.consumed = state.consumed
        self.progress = state.progress
        self.integral = state.integral


def default_initial_price(per_token: float) -> float:
    """A starting λ per unit of a budget whose token costs `per_token`: the reference price of
    a sample (REFERENCE_SAMPLE_PRICE of a correct answer) for a sample of TYPICAL_SAMPLE_TOKENS.
    Only a warm start: the pacer moves λ multiplicatively from there."""
    if per_token <= 0:
        return REFERENCE_SAMPLE_PRICE
    return REFERENCE_SAMPLE_PRICE / (TYPICAL_SAMPLE_TOKENS * per_token)


class TenantPacer:
    """A tenant's price of compute from its budget windows.

    For each limited window a `PacingController` is fed consumption = the window's spend
    (settled + held) and progress = the elapsed fraction of the window, with the window's
    limit × `target_fraction` (96%: headroom for a poor λ₀) as target. The tenant's λ is the
    highest over its windows (the tightest budget binds). λ is state-free given the ledger's
    figures, so every replica computes the same λ from the shared ledger; in spend mode each
    new window starts at the λ the previous window ended with (`initial_price` otherwise).

    Rolling windows are always "full" (their spend should sit at the limit), so they use a
    horizon of one window. λ is per unit of the tenant's billing unit; windows in the other
    unit are converted with `unit_ratio` (billing-unit cost per other-unit cost).
    """

    def __init__(self, settings: PacingSettings, initial_prices: dict[str, float]) -> None:
        """`initial_prices`: the default λ₀ per unit (see `default_initial_price`); a configured
        `initial_price` is in the tenant's billing unit and wins for windows in that unit."""
        self.settings = settings
        self.initial_prices = initial_prices
        # window key → (window start, λ₀ used for it, last λ): the warm start for the next window
        self._windows: dict[str, tuple[float, float, float]] = {}

    def window_price(self, usage: WindowUsage, now: float) -> float | None:
        """This window's λ; in cap mode None while the window spends no faster than time."""
        lim = usage.limit
        if not lim.limited:
            return None
        s = self.settings
        start = lim.span.start
        seen = self._windows.get(lim.key)
        lam0 = self.initial_prices.get(lim.unit, 1.0)
        if s.mode == "spend" and seen is not None and not lim.span.rolling:
            lam0 = seen[1] if seen[0] == start else seen[2]
        lam0 = min(s.max_price, max(s.min_price, lam0))
        ctl = PacingController(
            lim.limit * s.target_fraction,
            lam0,
            gain=s.gain,
            horizon=1.0 if lim.span.rolling else s.horizon,
            min_price=s.min_price,
            max_price=s.max_price,
        )
        ctl.consumed = usage.spent_value + usage.reserved_value
        ctl.progress = lim.span.elapsed_fraction(now)
        price = ctl.price
        self._windows[lim.key] = (start, lam0, price)
        if s.mode == "cap" and ctl.surplus <= 0:
            return None  # on or behind pace: a cap adds no pressure
        return price

    def price(
        self,
        usage: Sequence[WindowUsage],
        now: float,
        unit: str,
        unit_ratio: float = 1.0,
    ) -> ComputePrice | None:
        """The tenant's price (per unit of `unit`), or None: pacing off, nothing limited, or
        (cap mode) no window burning ahead of pace."""
        if not self.settings.enabled:
            return None
        if self.settings.initial_price is not None:
            self.initial_prices = {**self.initial_prices, unit: self.settings.initial_price}
        prices: list[float] = []
        for u in usage:
            p = self.window_price(u, now)
            if p is None:
                continue
            if u.limit.unit != unit and unit_ratio > 0:
                p = p / unit_ratio
            prices.append(p)
        if not prices:
            return None
        return ComputePrice(max(prices), unit, self.settings.mode)
