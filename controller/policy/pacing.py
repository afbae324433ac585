"""One online price controller that steers a consumption rate toward a target.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
        error = self.surplus / (self.target * self.horizon)
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
