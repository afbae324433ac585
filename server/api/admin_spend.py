"""The admin API's spend routes: spend logs (one record per request, paged with cursors) and
spend reports (summed by day, model, key, user or tenant; JSON or CSV). Included by
server.api.admin, whose router authenticates every route.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, cast, get_args

from fastapi import APIRouter, Query, Request, Response

from controller.budget.ledger import SpendRecord
from server.api.admin_common import no_tenant
from server.api.admin_requests import SpendFilter
from server.api.admin_responses import (
    SpendGroup,
    SpendLog,
    SpendLogPage,
    SpendReport,
    SpendReportRow,
)
from server.api.deps import get_state
from server.errors import APIError, echoed
from server.serving import ServingState

router = APIRouter()


MAX_PAGE = 1000
GROUPS: tuple[SpendGroup, ...] = get_args(SpendGroup)


def _filter(
    tenant: str | None,
    key: str | None,
    user: str | None,
    model: str | None,
    since: float,
    until: float | None,
) -> SpendFilter:
    if until is not None and until <= since:  # an empty window reads as "no spend": say so
        raise APIError(
            400,
            f"'until' ({until:g}) must be later than 'since' ({since:g}).",
            param="until",
            code="invalid_value",
        )
    return SpendFilter(tenant=tenant, key=key, user=user, model=model, since=since, until=until)


async def _records(state: ServingState, f: SpendFilter) -> list[SpendRecord]:
    # the tenants in force, and those the admin API deleted: their records are billing records
    deleted = [t.id for t in state.admin.snapshot.tenants if not t.live]
    known = list(dict.fromkeys([*(t.id for t in state.config.tenants), *deleted]))
    if f.tenant is not None and f.tenant not in known:
        raise no_tenant(f.tenant, param="tenant")
    ids = [t for t in known if f.tenant is None or t == f.tenant]
    until = f.until if f.until is not None else state.admin.clock() + 1.0
    records = await state.billing.spend_logs(ids, f.since, until)
    return [
        r
        for r in records
        if (f.key is None or r.key_prefix == f.key)
        and (f.user is None or r.user == f.user)
        and (f.model is None or f.model in r.by_model)  # any model that drew for it
    ]


def _encode_cursor(r: SpendRecord) -> str:
    raw = json.dumps([r.time, r.tenant, r.request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        t, tenant, rid = json.loads(raw)
        return float(t), str(tenant), str(rid)
    except (ValueError, TypeError, OverflowError):
        raise APIError(
            400, "Invalid 'cursor': pass back a next_cursor.", param="cursor", code="invalid_value"
        ) from None


Num = Annotated[float, Query(ge=0, allow_inf_nan=False)]
Text = Annotated[str | None, Query(max_length=256)]


@router.get("/spend/logs")
async def spend_logs(
    request: Request,
    tenant: Text = None,
    key: Text = None,
    user: Text = None,
    model: Text = None,
    since: Num = 0.0,
    until: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
    limit: int = 100,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> SpendLogPage:
    """One record per request (oldest first), `limit` per page; pass `next_cursor` back as
    `cursor` for the next page. `model` selects the records any of whose waves that model drew;
    `by_model` splits each record by model."""
    state = get_state(request)
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(
            400,
            f"'limit' must be between 1 and {MAX_PAGE}, got {echoed(str(limit))}.",
            param="limit",
            code="invalid_value",
        )
    records = await _records(state, _filter(tenant, key, user, model, since, until))
    if cursor is not None:
        after = _decode_cursor(cursor)
        records = [r for r in records if (r.time, r.tenant, r.request_id) > after]
    page = records[:limit]
    more = len(records) > limit
    return SpendLogPage(
        data=[SpendLog.model_validate(asdict(r)) for r in page],
        next_cursor=_encode_cursor(page[-1]) if more and page else None,
    )


def _shares(r: SpendRecord, by_model: bool, model: str | None) -> list[tuple[str, dict[str, Any]]]:
    """What a record adds to a report, as (model, figures): the whole record, or, grouped by
    model or filtered to one, each model's own share (a route's waves on each model it drew)."""
    if not by_model and model is None:
        return [(r.model, {col: getattr(r, col) for col in REPORT_COLUMNS[1:]})]
    return [(m, asdict(part)) for m, part in r.by_model.items() if model in (None, m)]


def _group_of(r: SpendRecord, by: str, model: str) -> str:
    if by == "day":
        return datetime.fromtimestamp(r.time, tz=UTC).strftime("%Y-%m-%d")
    if by == "key":
        return r.key_prefix or ""
    return {"model": model, "user": r.user or "", "tenant": r.tenant}[by]


# the figures summed per group ("requests", "samples", …, "flops"): the report row's own fields
REPORT_COLUMNS = tuple(f for f in SpendReportRow.model_fields if f not in GROUPS)


@router.get(
    "/spend/report",
    response_model=SpendReport,
    response_model_exclude_none=True,  # a row carries only its own group's field
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def spend_report(
    request: Request,
    group_by: str = "day",
    format: str = "json",
    tenant: Text = None,
    key: Text = None,
    user: Text = None,
    model: Text = None,
    since: Num = 0.0,
    until: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
) -> SpendReport | Response:
    """Spend summed by day (UTC), model, key prefix, user or tenant; JSON, or CSV with
    `format=csv`. An empty key or user is a request without one (file keys, no `user`).
    By model (and with `model=`), a request is split by the model that drew each wave: a route
    that escalated counts in each of its models' rows, with that model's share."""
    state = get_state(request)
    if group_by not in GROUPS:
        raise APIError(
            400,
            f"'group_by' must be one of {', '.join(GROUPS)}.",
            param="group_by",
            code="invalid_value",
        )
    if format not in ("json", "csv"):
        raise APIError(400, "'format' must be json or csv.", param="format", code="invalid_value")
    rows: dict[str, dict[str, float]] = {}
    for r in await _records(state, _filter(tenant, key, user, model, since, until)):
        for share_model, share in _shares(r, group_by == "model", model):
            row = rows.setdefault(
                _group_of(r, group_by, share_model), dict.fromkeys(REPORT_COLUMNS, 0)
            )
            row["requests"] += 1
            for col in REPORT_COLUMNS[1:]:
                row[col] += share[col]
    data = [
        SpendReportRow.model_validate({group_by: group, **row})
        for group, row in sorted(rows.items())
    ]
    if format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[group_by, *REPORT_COLUMNS])
        writer.writeheader()
        writer.writerows(r.model_dump(exclude_none=True) for r in data)
        return Response(out.getvalue(), media_type="text/csv")
    return SpendReport(group_by=cast(SpendGroup, group_by), data=data)
