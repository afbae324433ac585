"""A tenant's price of compute λ from its budget windows, via the one pacing controller.

For each limited window, `controller.policy.pacing.PacingController` is fed consumption = the
window's spend (settled + held) and progress = the elapsed fraction of the window, with the
window's limit × `target_fraction` (96%: headroom for a poor λ₀) as target: spend should track
that × the elapsed fraction; λ rises when the budget burns faster than time passes and falls
when there is slack. The tenant's λ is the highest over
its windows (the tightest budget binds). λ is state-free given the ledger's figures, so every
replica computes the same λ from the shared ledger and a restart loses nothing but the warm start:
each new window starts at the λ the previous window ended with (`initial_price` otherwise).

Rolling windows are always "full" (their spend should sit at the limit), so they use a horizon of
one window: λ ranges gently from λ₀/e (nothing spent) to λ₀ (at the limit) and up beyond it.

λ is expressed per unit of the tenant's billing unit; windows in the other unit are converted
with the tenant's price ratio (`unit_ratio` = billing-unit cost per other-unit cost).
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.budget.ledger import WindowUsage
from controller.budget.models import PacingSettings, Unit
from controller.policy.pacing import PacingController

DEFAULT_SAMPLE_PRICE = 0.002  # t2's default λ per sample
TYPICAL_SAMPLE_TOKENS = 256


def default_initial_price(per_token: float) -> float:
    """A starting λ per unit of a budget whose token costs `per_token`: t2's default price of a
    sample (DEFAULT_SAMPLE_PRICE of a correct answer) for a sample of TYPICAL_SAMPLE_TOKENS.
    Only a warm start: the pacer moves λ multiplicatively from there."""
    if per_token <= 0:
        return DEFAULT_SAMPLE_PRICE
    return DEFAULT_SAMPLE_PRICE / (TYPICAL_SAMPLE_TOKENS * per_token)


class TenantPacer:
    """λ for one tenant; keeps only the warm start carried from one window to the next."""

    def __init__(self, settings: PacingSettings, initial_prices: dict[Unit, float]) -> None:
        """`initial_prices`: the default λ₀ per unit (see `default_initial_price`); a configured
        `initial_price` is in the tenant's billing unit and wins for windows in that unit."""
        self.settings = settings
        self.initial_prices = initial_prices
        # window key → (window start, λ₀ used for it, last λ): the warm start for the next window
        self._windows: dict[str, tuple[float, float, float]] = {}

    def window_price(self, usage: WindowUsage, now: float) -> float | None:
        lim = usage.limit
        if not lim.limited:
            return None
        s = self.settings
        start = lim.span.start
        seen = self._windows.get(lim.key)
        lam0 = self.initial_prices.get(lim.unit, 1.0)
        if seen is not None and not lim.span.rolling:
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
        return price

    def price(
        self,
        usage: Sequence[WindowUsage],
        now: float,
        unit: Unit,
        unit_ratio: float = 1.0,
    ) -> float | None:
        """The tenant's λ (per unit of `unit`), or None when pacing is off or nothing is limited."""
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
        return max(prices) if prices else None
