"""A tenant's prices, budgets and pacing settings, as they appear in the YAML config.

pydantic with `extra="forbid"`, so a typo (`limt:`) is refused at start with the field's dotted
path rather than silently leaving a tenant unmetered.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Unit = Literal["currency", "flops"]
LimitUnit = Literal["currency", "flops", "tokens"]  # tokens: rate limits only (`tpm`)
WindowName = Literal["minute", "hour", "day", "month"]
WINDOW_NAMES: tuple[WindowName, ...] = ("minute", "hour", "day", "month")


def whole(value: object) -> object:
    """JSON's integers include 1000.0 (JSON Schema says so too): accepted as 1000 in strict
    mode, where 1000.5, "1000" and true stay refused (as server.api.protocol's `Integral`)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


PerMinute = Annotated[int, Field(ge=1), BeforeValidator(whole)]
"""A count per minute; the bound before the validator, so the OpenAPI schema states it."""


class _Strict(BaseModel):
    # NaN and Infinity are never a limit or a price: JSON and YAML both let them through. And
    # no coercion: `"limit": true` is not a limit of 1, nor `"hard": "no"` a soft budget.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ModelPrice(_Strict):
    """Money per 1M tokens for one model; `params` (N) prices FLOPs at 2·N per token."""

    prompt_per_1m: float = Field(default=0.0, ge=0)
    completion_per_1m: float = Field(default=0.0, ge=0)
    params: float | None = Field(
        default=None, gt=0, description="model parameters N (FLOPs = 2·N per token)"
    )


class Prices(_Strict):
    """Per-model prices; the key '*' applies to models not named. Both figures are always kept:
    the money from the per-1M prices and the FLOPs from 2·N per token."""

    currency: str = Field(default="USD", min_length=1, max_length=16)
    models: dict[str, ModelPrice] = Field(default_factory=dict)


class Budget(_Strict):
    """One limit. `hard` refuses (after shrinking waves); soft allows and raises an alert."""

    limit: float = Field(gt=0)
    unit: Unit = "currency"
    hard: bool = True
    rolling: bool = Field(
        default=False,
        description="rolling window (last 60 s/1 h/24 h/30 d) instead of calendar-aligned UTC",
    )


class RequestBudget(_Strict):
    """A ceiling on one request's total cost (all waves)."""

    limit: float = Field(gt=0)
    unit: Unit = "currency"
    hard: bool = True


class Budgets(_Strict):
    """Per-request and per-window budgets of one tenant; any may be omitted."""

    request: RequestBudget | None = None
    minute: Budget | None = None
    hour: Budget | None = None
    day: Budget | None = None
    month: Budget | None = None

    def windows(self) -> list[tuple[WindowName, Budget]]:
        """The configured window budgets, shortest window first."""
        out: list[tuple[WindowName, Budget]] = []
        for name in WINDOW_NAMES:
            budget = getattr(self, name)
            if budget is not None:
                out.append((name, budget))
        return out


class RateLimits(_Strict):
    """Requests and tokens per minute, over a sliding 60 s window (controller.budget.ledger).

    `rpm` counts admitted HTTP requests (`n` > 1 or several prompts are still one request);
    `tpm` counts prompt + completion tokens of every sample, held at the wave's worst case
    (prompt + w × max_tokens) when it is reserved and trued up to what the engine reported when
    it settles. A wave that `tpm` cannot cover in full is shrunk, as a budget does.
    """

    rpm: PerMinute | None = Field(default=None, description="requests per minute")
    tpm: PerMinute | None = Field(default=None, description="prompt + completion tokens per minute")

    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None


class PacingSettings(_Strict):
    """How the tenant's price of compute λ follows its spend (controller.pacing).

    `mode: cap` (the default) treats every budget as a cap: λ only rises above the policy's own
    price while a window spends faster than time passes, and never lowers it. `mode: spend`
    steers spend toward each window's limit (for a prepaid allotment that should be used up):
    its λ replaces the policy's own, so slack buys more samples.

    `initial_price` is λ at zero surplus, per unit of the budget's unit; by default it is t2's
    default λ per sample for a 256-token sample at the tenant's completion price, and each new
    window starts from the λ the previous one ended at. `horizon` is the fraction of the window
    over which an overspend is paid back (smaller reacts faster, larger is smoother).
    """

    enabled: bool = True
    mode: Literal["cap", "spend"] = "cap"
    initial_price: float | None = Field(default=None, gt=0)
    horizon: float = Field(default=0.01, gt=0, le=1)
    gain: float = Field(default=1.0, gt=0)
    target_fraction: float = Field(
        default=0.96,
        gt=0,
        le=1,
        description="pace toward this share of each limit: headroom so a window's last requests "
        "are not refused when spend runs a little ahead",
    )
    min_price: float = Field(default=1e-12, gt=0)
    max_price: float = Field(default=1e12, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PacingSettings:
        if self.min_price > self.max_price:
            raise ValueError("min_price must be <= max_price")
        return self
