"""Tokens → cost. Every charge carries both figures, money and FLOPs, so the ledger can keep both
and a budget in either unit can be checked against the same record."""

from __future__ import annotations

from dataclasses import dataclass

from controller.budget.models import LimitUnit, ModelPrice, Prices, Unit

PER_MILLION = 1_000_000.0


@dataclass(frozen=True)
class Cost:
    """A charge in both units, and the tokens it is for (what a `tpm` rate limit counts);
    `of(unit)` picks the one a limit is expressed in."""

    money: float = 0.0
    flops: float = 0.0
    tokens: float = 0.0

    def of(self, unit: LimitUnit) -> float:
        if unit == "currency":
            return self.money
        return self.tokens if unit == "tokens" else self.flops

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.money + other.money, self.flops + other.flops, self.tokens + other.tokens)

    def scale(self, factor: float) -> Cost:
        return Cost(self.money * factor, self.flops * factor, self.tokens * factor)


ZERO = Cost()


class Pricer:
    """Prices one model for one tenant. `params` is N for the FLOPs figure (2·N per token) when the
    tenant's price entry does not give it (the server reads it from the model's config)."""

    def __init__(self, prices: Prices | None, model: str, params: float | None = None) -> None:
        entry: ModelPrice | None = None
        if prices is not None:
            entry = prices.models.get(model) or prices.models.get("*")
        self.entry = entry or ModelPrice()
        self.params = self.entry.params or params or 0.0

    def cost(self, prompt_tokens: float, completion_tokens: float) -> Cost:
        money = (
            prompt_tokens * self.entry.prompt_per_1m
            + completion_tokens * self.entry.completion_per_1m
        ) / PER_MILLION
        tokens = prompt_tokens + completion_tokens
        return Cost(money, 2.0 * self.params * tokens, float(tokens))

    def per_token(self, unit: Unit) -> float:
        """What one completion token costs in `unit` (0 when that unit is not priced)."""
        return self.cost(0, 1).of(unit)
