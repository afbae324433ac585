"""What the admin API returns, typed: one pydantic model per response body, so /openapi.json
states each admin route's shape and the routes cannot drift from it.

The OpenAI-compatible API's bodies are in server.api.protocol; the admin API's routes, their
request bodies and their logic in server.api.admin. A model here only describes: each route
builds its own (some leave absent fields out with `response_model_exclude_none`, so a field
typed `X | None` may be absent rather than null: its description says so).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# -- tenants ----------------------------------------------------------------------------------


class TenantDeleted(BaseModel):
    id: str
    object: str = "tenant.deleted"
    deleted: bool = True


# -- keys -------------------------------------------------------------------------------------


class KeyInfo(BaseModel):
    prefix: str
    label: str
    tenant: str
    status: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    budgets: dict[str, Any] | None
    rate_limits: dict[str, Any] | None = None
    spend: dict[str, float] | None = Field(
        default=None, description="money and FLOPs settled with this key (spend logs' retention)"
    )


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
