"""What the admin API takes, typed: the request bodies (and the spend filter its query
parameters make), strict pydantic models, so NaN, Infinity and a value of the wrong JSON type
are refused, never coerced, and /openapi.json states what each route accepts.

Beside server.api.admin_responses (what it returns); the routes are in server.api.admin and
the modules it includes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from controller.budget import Budgets
from controller.budget.models import RateLimits
from server.config import AlertSettings, ApiKey, TenantConfig, alert_thresholds


class NewTenant(TenantConfig):
    """A tenant made through the admin API: the config file's tenant settings, validated by the
    same model (TenantConfig) and, across the config, by the same checks (its models and routes
    exist, a currency budget has its prices). No keys: they are made with
    POST /admin/tenants/{id}/keys, after. No alert webhook: its HMAC secret would sit in the
    admin store, which holds no secret (keys are stored as digests); Prometheus alerts cover
    the tenant as any other."""

    api_keys: list[ApiKey] = Field(
        default_factory=list, description="not taken: make keys with POST .../keys"
    )
    alerts: AlertSettings | None = Field(
        default=None, description="not taken: webhooks are configured in the file only"
    )

    @field_validator("api_keys", "alerts", mode="before")
    @classmethod
    def _not_through_the_api(cls, value: Any, info: ValidationInfo) -> Any:
        instead = {
            "api_keys": "make its keys with POST /admin/tenants/{id}/keys once it exists",
            "alerts": "alert webhooks are configured in the config file only (their secret "
            "stays out of the admin store)",
        }
        raise PydanticCustomError(
            "unsupported_parameter",
            "'{field}' is not taken by POST /admin/tenants: {instead}",
            {"field": info.field_name, "instead": instead[str(info.field_name)]},
        )


class AlertThresholds(BaseModel):
    # strict, as budgets are: "0.5" is not a number, true not a threshold of 1.0
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    # the range is in the schema too, so the OpenAPI document says what is accepted
    thresholds: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1, max_length=32)

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        return alert_thresholds(values)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)  # as budgets


MAX_GRACE_S = 30 * 86400.0


KeyLabel = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@ -]+$")]
"""A key's label: printable and plain, so it lists, logs and exports as it reads."""


class CreateKey(_Body):
    """A new key: `label` names it (unique among the tenant's live keys not being revoked);
    `expires_at` (Unix seconds) or `expires_in_s` ends it; `budgets` are its own, on top of
    the tenant's."""

    label: KeyLabel
    expires_at: float | None = Field(default=None, gt=0)
    expires_in_s: float | None = Field(default=None, gt=0)
    budgets: Budgets | None = None
    rate_limits: RateLimits | None = None


class RotateKey(_Body):
    """Rotation: a new key with the old one's label (unless given); the old one is revoked
    `grace_s` seconds from now, so clients can switch over."""

    grace_s: float = Field(default=0.0, ge=0, le=MAX_GRACE_S)
    label: KeyLabel | None = None
    expires_at: float | None = Field(default=None, gt=0)
    expires_in_s: float | None = Field(default=None, gt=0)
    budgets: Budgets | None = None
    rate_limits: RateLimits | None = None


class SpendFilter(_Body):
    """Which records: one tenant (default all), key prefix, user, model, and since ≤ time < until
    (Unix seconds)."""

    tenant: str | None = None
    key: str | None = None
    user: str | None = None
    model: str | None = None
    since: float = Field(default=0.0, ge=0)
    until: float | None = Field(default=None, gt=0)
