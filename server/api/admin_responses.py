"""What the admin API returns, typed: one pydantic model per response body, so /openapi.json
states each admin route's shape and the routes cannot drift from it.

The OpenAI-compatible API's bodies are in server.api.protocol; the admin API's request bodies
in server.api.admin_requests, its routes and their logic in server.api.admin and the modules it
includes (admin_tenants, admin_keys, admin_spend). A model here only describes: each route
builds its own (some leave absent fields out with `response_model_exclude_none`, so a field
typed `X | None` may be absent rather than null: its description says so).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_serializer

from controller.budget import Budgets
from controller.budget.models import RateLimits, Unit

# -- tenants ----------------------------------------------------------------------------------

Source = Annotated[
    Literal["file", "api"],
    Field(description="where the tenant is defined: the config file, or POST /admin/tenants"),
]
Conflict = Annotated[
    str | None,
    Field(
        description="set while the config file and the admin API both define this id (a start "
        "on such a file): the file's tenant is in force, the keys made for the API's are "
        "refused and no key of the id is made or changed; says how to resolve it. Else null"
    ),
]


class TenantSummary(BaseModel):
    id: str
    models: list[str] = Field(description="the model ids it may use, or '*'")
    metered: bool = Field(description="whether its requests are priced and budgeted at all")
    budgets: Budgets | None
    rate_limits: RateLimits | None
    source: Source
    conflict: Conflict = None


class TenantList(BaseModel):
    """GET /admin/tenants: the file's tenants, then the API's."""

    object: Literal["list"] = "list"
    data: list[TenantSummary]


class BudgetWindow(BaseModel):
    """One budget window of the tenant, as the ledger has it now, in the window's unit."""

    window: str = Field(description="minute, hour, day or month")
    rolling: bool = Field(description="the last 60 s/1 h/24 h/30 d, not calendar-aligned UTC")
    unit: Unit
    hard: bool | None = Field(description="refuses when spent (null: no limit on this window)")
    limit: float | None = Field(description="null: tracked, not limited")
    spent: float = Field(description="settled, in `unit`")
    spent_money: float
    spent_flops: float
    reserved: float = Field(description="held by waves still running, in `unit`")
    remaining: float | None = Field(description="limit - spent - reserved; null without a limit")
    window_start: float = Field(description="Unix seconds")
    resets_in_s: float


class TenantRates(BaseModel):
    """The tenant's own rpm/tpm and what the last 60 s used of them."""

    rpm: int | None
    tpm: int | None
    requests_last_minute: int | None = Field(description="requests admitted")
    tokens_last_minute: float | None = Field(description="tokens settled plus held")


class MeteredTenantReport(BaseModel):
    """A metered tenant: its budget windows, price of compute and rates, then its settings."""

    id: str
    unit: Unit = Field(description="the unit of its costs and of the price of compute")
    currency: str | None = Field(description="its prices' currency; null without prices")
    metered: Literal[True]
    windows: list[BudgetWindow]
    price_of_compute: float | None = Field(
        description="λ, per `unit`: null while no budget puts a price on compute"
    )
    pacing_mode: Literal["cap", "spend"]
    rate_limits: TenantRates | None
    budgets: Budgets | None
    user_budgets: Budgets | None = Field(description="each end user's (the request's `user`)")
    alert_thresholds: list[float] | None = Field(
        description="fractions of a limit that send an alert; null without a webhook"
    )
    models: list[str] = Field(description="the model ids it may use, or '*'")
    source: Source
    conflict: Conflict = None


class UnmeteredTenantReport(BaseModel):
    """A tenant nothing is billed for: no windows, no price; its settings."""

    id: str
    metered: Literal[False]
    windows: list[BudgetWindow] = Field(description="always empty")
    price_of_compute: None
    budgets: Budgets | None
    user_budgets: Budgets | None = Field(description="each end user's (the request's `user`)")
    rate_limits: RateLimits | None
    alert_thresholds: list[float] | None = Field(
        description="fractions of a limit that send an alert; null without a webhook"
    )
    models: list[str] = Field(description="the model ids it may use, or '*'")
    source: Source
    conflict: Conflict = None


class TenantReport(
    RootModel[
        Annotated[MeteredTenantReport | UnmeteredTenantReport, Field(discriminator="metered")]
    ]
):
    """GET /admin/tenants/{id}, and what creating a tenant or changing its budgets, user
    budgets, rate limits or alerts returns: `metered` tells the two shapes apart."""


class Reloaded(BaseModel):
    """POST /admin/reload: the file was valid and is in force."""

    status: Literal["reloaded"] = "reloaded"
    tenants: list[str] = Field(description="the tenants now served")
    ledger_restart_needed: bool = Field(description="whether `ledger` is among restart_needed")
    restart_needed: list[str] = Field(
        description="changed settings that apply only after a restart (e.g. server.port)"
    )
    in_flight_kept: bool = Field(
        default=True, description="requests already running finish on the config they began on"
    )


class TenantDeleted(BaseModel):
    id: str
    object: str = "tenant.deleted"
    deleted: bool = True


# -- keys -------------------------------------------------------------------------------------


class KeyInfo(BaseModel):
    """A stored API key: never the key itself, its prefix."""

    # The document describes `budgets` and `rate_limits` as the models they are (their
    # serializer below returns a plain dict, which the serialization schema cannot see into).
    model_config = ConfigDict(json_schema_mode_override="validation")

    prefix: str
    label: str
    tenant: str
    status: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    budgets: Budgets | None = Field(
        description="the key's own budgets, on top of the tenant's: only the windows set, each "
        "with its fields as stored"
    )
    rate_limits: RateLimits | None = Field(
        default=None,
        description="the key's own rpm/tpm, on top of the tenant's: only those set; null for none",
    )
    spend: dict[str, float] | None = Field(
        default=None, description="money and FLOPs settled with this key (spend logs' retention)"
    )

    @field_serializer("budgets", "rate_limits")
    def _only_set(self, value: BaseModel | None) -> dict[str, Any] | None:
        """Only the windows and fields that are set, as the store holds them: a plain dump
        would add a null for every window the key does not limit."""
        return None if value is None else value.model_dump(mode="json", exclude_none=True)


class KeyList(BaseModel):
    """GET /admin/tenants/{id}/keys: the tenant's stored keys, each with its spend."""

    object: Literal["list"] = "list"
    data: list[KeyInfo]


class KeyCreated(KeyInfo):
    key: str = Field(description="the key itself: shown once, never stored")
    revokes: KeyInfo | None = None


# -- spend logs and reports -------------------------------------------------------------------


class ModelShare(BaseModel):
    """One model's share of a request's record: the waves it drew (and verifier charges at its
    price)."""

    samples: int
    waves: int
    prompt_tokens: int
    completion_tokens: int
    money: float
    flops: float


class SpendLog(BaseModel):
    """One request's spend-log record."""

    request_id: str
    tenant: str
    time: float = Field(description="the first settle's time (Unix seconds)")
    model: str = Field(
        description="the model of the request's last wave: for a route, the model that answered"
    )
    key_prefix: str | None
    user: str | None
    samples: int
    waves: int
    prompt_tokens: int
    completion_tokens: int
    money: float
    flops: float
    stop_reason: str | None
    status: int | None
    by_model: dict[str, ModelShare] = Field(
        description="the figures split by the model that drew each wave (a route that "
        "escalated has one entry per model; a record from before the split, one: `model`)"
    )


class SpendLogPage(BaseModel):
    object: str = "list"
    data: list[SpendLog]
    next_cursor: str | None


SpendGroup = Literal["day", "model", "key", "user", "tenant"]


class SpendReportRow(BaseModel):
    """One group's sums. Of the five group fields, only the report's `group_by` is in the body
    (the route leaves the others out, never null), first, before the figures."""

    day: str | None = Field(default=None, description="group_by=day: the UTC date, YYYY-MM-DD")
    model: str | None = Field(
        default=None, description="group_by=model: the model that drew the waves"
    )
    key: str | None = Field(
        default=None,
        description="group_by=key: the key prefix; '' for requests without an API-made key",
    )
    user: str | None = Field(
        default=None, description="group_by=user: the request's `user`; '' for none"
    )
    tenant: str | None = Field(default=None, description="group_by=tenant: the tenant id")
    requests: int = Field(
        description="requests in the group; by model, a route that escalated counts in each of "
        "its models' rows"
    )
    samples: int
    waves: int
    prompt_tokens: int
    completion_tokens: int
    money: float = Field(description="in the tenant's currency")
    flops: float


class SpendReport(BaseModel):
    """GET /admin/spend/report as JSON: rows sorted by their group."""

    object: Literal["spend.report"] = "spend.report"
    group_by: SpendGroup
    data: list[SpendReportRow]
