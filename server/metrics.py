"""Prometheus metrics for t2serve: every `t2_*` metric is defined here, and nowhere else.

Why one module: ops dashboards and alert rules (configs/grafana, configs/prometheus) depend on
exact names, units and label sets, so they live beside each other and are tested together.

Conventions: the `t2_` prefix, base units (`_seconds`, `_tokens`), `_total` on counters, and
label values from bounded sets only. Tenants and models must be declared with
`configure_labels()` (the server does so from its config, and again on reload); any other value
is exported as "other", and a missing one as "unknown", so a stray key or user id can never
create new time series. Free-form labels (policy, stop reason) are capped in count.

Multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` is set in the environment *before the
process starts* (prometheus-client picks its value store at import time), every process writes
its samples to files in that directory and `render_latest()` merges them, so several uvicorn
workers add up. Wipe the directory before the workers start (`reset_multiprocess_dir()`); a worker
that exits normally drops its live gauges itself (`mark_process_dead()`, registered at exit).

The in-process vLLM engine registers its own `vllm:*` metrics with prometheus-client's default
registry (vllm/v1/metrics/loggers.py, enabled unless `disable_log_stats`), so `render_latest()`
exposes them on the same endpoint in both modes.

Typical use in the app:

    from server import metrics
    metrics.configure_labels(tenants=cfg.tenant_ids, models=cfg.model_ids)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render_latest()
        return Response(body, media_type=content_type)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast, get_args

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.budget.models import WindowName
from controller.budget.windows import span

__all__ = [
    "BUDGET_WINDOWS",
    "CONTENT_TYPE_LATEST",
    "OTHER",
    "UNKNOWN",
    "add_spend",
    "add_tokens",
    "configure_labels",
    "inc_budget_rejection",
    "inc_settle_replay",
    "is_multiprocess",
    "mark_process_dead",
    "metric_names",
    "observe_answer",
    "observe_request",
    "observe_routed",
    "observe_ttft",
    "render_latest",
    "reset_multiprocess_dir",
    "retain_budgets",
    "set_budget",
    "set_engine_queue_depth",
    "set_engine_ready",
    "set_price_of_compute",
    "set_settles_pending",
    "window_bounds",
]

log = logging.getLogger(__name__)

OTHER = "other"
"""Label value for a tenant/model/… that is not in the configured set."""
UNKNOWN = "unknown"
"""Label value when the caller does not know it (e.g. a request refused before auth)."""

BUDGET_WINDOWS = ("request", "minute", "hour", "day", "month")
"""Budget windows a `window` label may take (issue 6); anything else becomes "other"."""

# `*_created` series double the series count and no dashboard or alert reads them.
disable_created_metrics()

# --- bounded label values ---------------------------------------------------------------------

_SAFE = re.compile(r"[^a-zA-Z0-9_.:/-]+")


class _BoundedLabel:
    """Maps raw values onto a bounded set: the configured values, else the first `cap` seen."""

    def __init__(self, cap: int, allowed: Iterable[str] | None = None) -> None:
        self._cap = cap
        self._allowed: frozenset[str] | None = frozenset(allowed) if allowed is not None else None
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def configure(self, allowed: Iterable[str] | None) -> None:
        with self._lock:
            self._allowed = frozenset(allowed) if allowed is not None else None
            self._seen.clear()

    def allowed(self) -> frozenset[str] | None:
        return self._allowed

    def __call__(self, value: object) -> str:
        if value is None or value == "":
            return UNKNOWN
        text = str(value)
        allowed = self._allowed
        if allowed is not None:
            return text if text in allowed else OTHER
        text = _SAFE.sub("_", text)[:64]
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self._cap:
                self._seen.add(text)
                return text
        return OTHER


_tenant = _BoundedLabel(cap=100)
_model = _BoundedLabel(cap=20)
_policy = _BoundedLabel(cap=16)
_stop_reason = _BoundedLabel(cap=32)
_window = _BoundedLabel(cap=len(BUDGET_WINDOWS), allowed=BUDGET_WINDOWS)


def _policy_kind(policy: str | None) -> str:
    """`fixed:5` and `fixed:8` are one policy kind; k is already in t2_samples_per_request."""
    return _policy(policy.split(":", 1)[0].strip() if policy else None)


def _status(status: int | str | None) -> str:
    try:
        code = int(status)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return UNKNOWN if status is None else OTHER
    return str(code) if 100 <= code <= 599 else OTHER


# --- metric definitions ------------------------------------------------------------------------

_COUNT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128)
_WAVE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
_SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

REQUESTS = Counter(
    "t2_requests",
    "Completion requests by the HTTP status the client got (an error event ends a stream with "
    "the error's status; 499: the client left first).",
    ["tenant", "model", "status"],
)
SAMPLES_PER_REQUEST = Histogram(
    "t2_samples_per_request",
    "Samples the controller drew for one answer (k); a request with n answers or several "
    "prompts observes each.",
    ["tenant", "model", "policy"],
    buckets=_COUNT_BUCKETS,
)
WAVES_PER_REQUEST = Histogram(
    "t2_waves_per_request",
    "Sampling waves the controller ran for one answer.",
    buckets=_WAVE_BUCKETS,
)
STOP_REASONS = Counter(
    "t2_stop_reason",
    "Why the controller stopped sampling, once per answer.",
    ["reason"],
)
TOKENS = Counter(
    "t2_tokens",
    "Tokens billed: prompt tokens the engine computed and completion tokens it generated, "
    "for the samples and for a verifier model's scoring.",
    ["tenant", "model", "kind"],
)
SPEND = Counter(
    "t2_spend",
    "Settled spend, in the configured currency unit or in FLOPs: counted once per settle the "
    "ledger accepted, so it matches the ledger.",
    ["tenant", "unit"],
)
BUDGET_LIMIT = Gauge(
    "t2_budget_limit",
    "Budget limit per tenant and window, in the budget's unit.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_REMAINING = Gauge(
    "t2_budget_remaining",
    "Budget a new request may still reserve: limit - spent - reserved.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_RESERVED = Gauge(
    "t2_budget_reserved",
    "Budget held by in-flight reservations (not yet settled).",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_SPENT = Gauge(
    "t2_budget_spent",
    "Settled spend in the current budget window.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_WINDOW_START = Gauge(
    "t2_budget_window_start_timestamp_seconds",
    "Start of the current budget window (Unix time); with the end, it gives the ideal burn line.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_WINDOW_END = Gauge(
    "t2_budget_window_end_timestamp_seconds",
    "End of the current budget window (Unix time), when the budget resets.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
BUDGET_ROLLING = Gauge(
    "t2_budget_rolling",
    "1 for a rolling budget window (the last minute/hour/day/30 days, bounds ending at the "
    "figures' time), 0 for a calendar one: the burn alerts differ.",
    ["tenant", "window"],
    multiprocess_mode="mostrecent",
)
PRICE_OF_COMPUTE = Gauge(
    "t2_price_of_compute",
    "Pacing shadow price lambda that the t2 policy charges per unit of spend.",
    ["tenant"],
    multiprocess_mode="mostrecent",
)
BUDGET_REJECTIONS = Counter(
    "t2_budget_rejections",
    "Requests refused with 429 insufficient_quota because not even one sample fit the budget.",
    ["tenant"],
)
RATE_LIMITED = Counter(
    "t2_rate_limited",
    "Requests refused with 429 rate_limit_exceeded, by the limit that bound (requests, tokens).",
    ["tenant", "limit"],
)
VOTE_AGREEMENT = Histogram(
    "t2_vote_agreement",
    "Share of samples that agree with the chosen answer (the leader's share).",
    buckets=_SHARE_BUCKETS,
)
PREDICTED_ACCURACY = Histogram(
    "t2_predicted_accuracy",
    "Accuracy the controller predicted for the answer it returned.",
    buckets=_SHARE_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "t2_request_duration_seconds",
    "Wall time of a completion request, from arrival to its last byte, whatever its status.",
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "t2_time_to_first_token_seconds",
    "Wall time from request arrival to the first content chunk of a streamed response, once "
    "per request.",
    buckets=_LATENCY_BUCKETS,
)
ROUTED = Counter(
    "t2_routed_requests",
    "Answers of a route (a model id such as `auto`), by the model that answered and whether "
    "the question was escalated from the route's first choice.",
    ["route", "model", "escalated"],
)
SETTLES_PENDING = Gauge(
    "t2_settles_pending",
    "Settles waiting in this replica's local journal because the ledger's store could not take "
    "them; replayed until it does (the spend is charged then).",
    multiprocess_mode="livemax",  # workers of one replica share the journal file
)
SETTLE_REPLAYS = Counter(
    "t2_settle_replays",
    "Journaled settles offered to the ledger's store again, by outcome: settled (charged now), "
    "duplicate (an earlier try had committed it: not charged again), failed (kept for the "
    "next try).",
    ["outcome"],
)
ENGINE_QUEUE_DEPTH = Gauge(
    "t2_engine_queue_depth",
    "Engine requests submitted by t2serve and not yet finished (all samples of all waves).",
    multiprocess_mode="livesum",
)
ENGINE_READY = Gauge(
    "t2_engine_ready",
    "1 when the engine can serve (what /readyz reports), else 0.",
    multiprocess_mode="livemin",
)

_ALL = (
    REQUESTS,
    SAMPLES_PER_REQUEST,
    WAVES_PER_REQUEST,
    STOP_REASONS,
    TOKENS,
    SPEND,
    BUDGET_LIMIT,
    BUDGET_REMAINING,
    BUDGET_RESERVED,
    BUDGET_SPENT,
    BUDGET_WINDOW_START,
    BUDGET_WINDOW_END,
    BUDGET_ROLLING,
    PRICE_OF_COMPUTE,
    BUDGET_REJECTIONS,
    RATE_LIMITED,
    VOTE_AGREEMENT,
    PREDICTED_ACCURACY,
    REQUEST_DURATION,
    TIME_TO_FIRST_TOKEN,
    ROUTED,
    SETTLES_PENDING,
    SETTLE_REPLAYS,
    ENGINE_QUEUE_DEPTH,
    ENGINE_READY,
)


_BUDGET_GAUGES = (
    BUDGET_LIMIT,
    BUDGET_REMAINING,
    BUDGET_RESERVED,
    BUDGET_SPENT,
    BUDGET_WINDOW_START,
    BUDGET_WINDOW_END,
    BUDGET_ROLLING,
)
_budget_lock = threading.Lock()
_budget_series: set[tuple[str, str]] = set()  # (tenant, window) label pairs published
_lam_series: set[str] = set()  # tenant labels with a published λ


def metric_names() -> frozenset[str]:
    """Every sample name the `t2_*` metrics expose (with `_total`, `_bucket`, … suffixes)."""
    names: set[str] = set()
    for metric in _ALL:
        for family in metric.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
            else:
                names.add(family.name)
    return frozenset(names)


# --- configuration -----------------------------------------------------------------------------


def configure_labels(
    tenants: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    *,
    policies: Iterable[str] | None = None,
) -> None:
    """Declare the configured tenant ids and model names (call at start and on config reload).

    Only these values appear as `tenant`/`model` labels; anything else is exported as "other".
    Until called, the first 100 tenants / 20 models seen are let through, then "other".
    Series for each configured tenant start at zero, so `increase()` sees their first request.
    """
    if tenants is not None:
        tenant_ids = sorted(set(tenants))
        _tenant.configure(tenant_ids)
        for tenant in tenant_ids:
            BUDGET_REJECTIONS.labels(tenant=tenant)
            for unit in ("currency", "flops"):
                SPEND.labels(tenant=tenant, unit=unit)
    if models is not None:
        _model.configure(sorted(set(models)))
    if policies is not None:
        _policy.configure({p.split(":", 1)[0].strip() for p in policies})
    allowed_tenants, allowed_models = _tenant.allowed(), _model.allowed()
    if allowed_tenants is not None and allowed_models is not None:
        for tenant in allowed_tenants:
            for model in allowed_models:
                for kind in ("prompt", "completion"):
                    TOKENS.labels(tenant=tenant, model=model, kind=kind)


# --- recording ---------------------------------------------------------------------------------


def observe_request(
    tenant: str | None, model: str | None, status: int | str, duration_s: float | None = None
) -> None:
    """Count one completion request by the status the client got, and observe its wall time.

    Called once per HTTP request, whatever its status (4xx and 5xx too), by the app's
    RequestMetrics middleware: a slow request that ends in an error is in the latency
    histogram the SLO alert reads, and a request with n answers is one observation."""
    REQUESTS.labels(tenant=_tenant(tenant), model=_model(model), status=_status(status)).inc()
    if duration_s is not None:
        REQUEST_DURATION.observe(max(duration_s, 0.0))


def observe_ttft(ttft_s: float) -> None:
    """Observe a streamed request's time to first content chunk (once per HTTP request)."""
    TIME_TO_FIRST_TOKEN.observe(max(ttft_s, 0.0))


def add_tokens(tenant: str | None, model: str | None, *, prompt: int, completion: int) -> None:
    """Count billed tokens: the sampling loop calls this once per finished wave and once per
    verifier scoring on a model, whether or not the ledger has settled them yet."""
    labels = {"tenant": _tenant(tenant), "model": _model(model)}
    if prompt > 0:
        TOKENS.labels(kind="prompt", **labels).inc(prompt)
    if completion > 0:
        TOKENS.labels(kind="completion", **labels).inc(completion)


def add_spend(tenant: str | None, *, currency: float = 0.0, flops: float = 0.0) -> None:
    """Count settled spend in the unit the tenant is billed in. The ledger billing calls this
    once per settle the ledger accepted (a wave's, a verifier's, or one retried when the
    request closed), so `sum by (tenant) (t2_spend_total)` equals the ledger's spend."""
    label = _tenant(tenant)
    if currency > 0:
        SPEND.labels(tenant=label, unit="currency").inc(currency)
    if flops > 0:
        SPEND.labels(tenant=label, unit="flops").inc(flops)
    if currency < 0 or flops < 0:
        log.warning("negative spend not recorded: currency=%s flops=%s", currency, flops)


def observe_answer(
    *,
    tenant: str | None,
    model: str | None,
    policy: str | None,
    samples: int,
    waves: int,
    stop_reason: str | None,
    agreement: float | None,
    predicted_accuracy: float | None,
) -> None:
    """Record one answer the controller returned: its k, waves, stop reason, vote agreement and
    predicted accuracy. Call once per answer: these are the controller's per-question decisions,
    so a request with n=4 (or four prompts) records four, and the mean k per policy stays a
    mean over questions. Latency and status are per HTTP request (`observe_request`)."""
    tenant_label, model_label = _tenant(tenant), _model(model)
    SAMPLES_PER_REQUEST.labels(
        tenant=tenant_label, model=model_label, policy=_policy_kind(policy)
    ).observe(samples)
    WAVES_PER_REQUEST.observe(waves)
    STOP_REASONS.labels(reason=_stop_reason(stop_reason)).inc()
    if agreement is not None:
        VOTE_AGREEMENT.observe(agreement)
    if predicted_accuracy is not None:
        PREDICTED_ACCURACY.observe(predicted_accuracy)


def observe_routed(route: str, model: str, escalated: bool) -> None:
    """Count one answer of a route by the model that answered (both configured ids)."""
    ROUTED.labels(
        route=_model(route), model=_model(model), escalated="true" if escalated else "false"
    ).inc()


def window_bounds(window: str, now: float, rolling: bool = False) -> tuple[float, float] | None:
    """Bounds of the minute/hour/day/month window at `now`: calendar-aligned in UTC, or for a
    rolling window the last window length up to `now` (controller.budget.windows)."""
    if window not in get_args(WindowName):
        return None
    current = span(cast(WindowName, window), rolling, now)
    return current.start, current.end


def set_budget(
    tenant: str,
    window: str,
    *,
    limit: float,
    remaining: float,
    reserved: float,
    spent: float | None = None,
    window_start: float | None = None,
    window_end: float | None = None,
    rolling: bool = False,
    now: float | None = None,
) -> None:
    """Publish one budget window's state (call after each reserve/settle, or periodically).

    `remaining` is what a new request may still reserve (limit − spent − reserved); `spent`
    defaults to exactly that identity. The window bounds drive the burn-down "ideal line" and
    the calendar windows' burn alerts; by default they are the window's at `now` (a rolling
    window's: the last window length up to it). `rolling` picks which burn alerts apply
    (configs/prometheus/rules/t2serve.yml).
    """
    labels = {"tenant": _tenant(tenant), "window": _window(window)}
    with _budget_lock:
        _budget_series.add((labels["tenant"], labels["window"]))
    BUDGET_ROLLING.labels(**labels).set(1 if rolling else 0)
    BUDGET_LIMIT.labels(**labels).set(limit)
    BUDGET_REMAINING.labels(**labels).set(remaining)
    BUDGET_RESERVED.labels(**labels).set(reserved)
    BUDGET_SPENT.labels(**labels).set(
        spent if spent is not None else max(limit - remaining - reserved, 0.0)
    )
    if window_start is None or window_end is None:
        bounds = window_bounds(window, time.time() if now is None else now, rolling)
        if bounds is None:
            return
        window_start, window_end = bounds
    BUDGET_WINDOW_START.labels(**labels).set(window_start)
    BUDGET_WINDOW_END.labels(**labels).set(window_end)


def set_budget_unknown(tenant: str, window: str) -> None:
    """The window's ledger figures cannot be read now (the store is down): its spent, remaining
    and reserved become NaN until the next `set_budget`. Prometheus compares NaN false, so the
    burn ratio recorded from it raises no burn alert (and resolves one firing) on a figure nobody
    can vouch for; `max by` across replicas skips NaN, so a replica that still reads the ledger
    shows its figure. The limit, bounds and `rolling` stay: they are the config's, not the
    ledger's. Only a series already published is marked: an unknown figure is not a new one."""
    labels = {"tenant": _tenant(tenant), "window": _window(window)}
    with _budget_lock:
        if (labels["tenant"], labels["window"]) not in _budget_series:
            return
        for gauge in (BUDGET_SPENT, BUDGET_REMAINING, BUDGET_RESERVED):
            gauge.labels(**labels).set(math.nan)


def retain_budgets(windows: Mapping[str, Iterable[str]]) -> None:
    """Keep only these tenants' budget series (tenant id → its window names) and their λ: a
    budget or tenant a reload removed must not leave its last figures (and the alerts on them)
    behind. In multiprocess mode prometheus-client keeps a removed series' last value in its
    files, so the series is zeroed first: a zero limit is outside the burn rules and panels."""
    keep = {(_tenant(t), _window(w)) for t, names in windows.items() for w in names}
    tenants = {_tenant(t) for t in windows}
    with _budget_lock:
        gone = _budget_series - keep
        _budget_series.difference_update(gone)
        lams = _lam_series - tenants
        _lam_series.difference_update(lams)
    for tenant_label, window_label in sorted(gone):
        for gauge in _BUDGET_GAUGES:
            if is_multiprocess():
                gauge.labels(tenant=tenant_label, window=window_label).set(0)
            with contextlib.suppress(KeyError):
                gauge.remove(tenant_label, window_label)
    for tenant_label in sorted(lams):
        if is_multiprocess():
            PRICE_OF_COMPUTE.labels(tenant=tenant_label).set(0)
        with contextlib.suppress(KeyError):
            PRICE_OF_COMPUTE.remove(tenant_label)


def set_price_of_compute(tenant: str, lam: float) -> None:
    """Publish the tenant's pacing λ (the shadow price of compute the t2 policy uses)."""
    label = _tenant(tenant)
    with _budget_lock:
        _lam_series.add(label)
    PRICE_OF_COMPUTE.labels(tenant=label).set(lam)


def inc_budget_rejection(tenant: str | None) -> None:
    """Count one 429 insufficient_quota refusal."""
    BUDGET_REJECTIONS.labels(tenant=_tenant(tenant)).inc()


def inc_rate_limited(tenant: str | None, limit: str) -> None:
    """Count one 429 rate_limit_exceeded refusal; `limit` is "requests" or "tokens"."""
    kind = "tokens" if limit == "tokens" else "requests"
    RATE_LIMITED.labels(tenant=_tenant(tenant), limit=kind).inc()


REPLAY_OUTCOMES = ("settled", "duplicate", "failed")


def set_settles_pending(count: int) -> None:
    """Publish how many settles wait in this replica's journal."""
    SETTLES_PENDING.set(count)


def inc_settle_replay(outcome: str, count: int = 1) -> None:
    """Count journaled settles offered again, by outcome (one of REPLAY_OUTCOMES)."""
    if count > 0:
        SETTLE_REPLAYS.labels(outcome=outcome if outcome in REPLAY_OUTCOMES else OTHER).inc(count)


def set_engine_queue_depth(depth: int) -> None:
    """Publish how many engine requests this process has in flight."""
    ENGINE_QUEUE_DEPTH.set(depth)


def set_engine_ready(ready: bool) -> None:
    """Publish engine readiness (drives the "engine not ready" alert)."""
    ENGINE_READY.set(1 if ready else 0)


# --- exposition --------------------------------------------------------------------------------


def is_multiprocess() -> bool:
    """True when prometheus-client stores values in PROMETHEUS_MULTIPROC_DIR files.

    Decided by prometheus-client at import time, so an env var set later in the process (as
    vLLM's own CLI does) cannot make us read files our samples were never written to."""
    return values.ValueClass is not values.MutexValue


def render_latest() -> tuple[bytes, str]:
    """The Prometheus text exposition (t2_* and the engine's vllm:*) and its content type."""
    if is_multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def reset_multiprocess_dir(path: str | os.PathLike[str] | None = None) -> None:
    """Delete stale sample files before workers start; old counters would otherwise add up."""
    directory = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for file in target.glob("*.db"):
        file.unlink(missing_ok=True)


def mark_process_dead(pid: int | None = None) -> None:
    """Drop a finished worker's live gauges (queue depth, readiness); its counters stay.

    Runs by itself when a multiprocess worker exits normally (uvicorn turns SIGTERM into a
    normal exit); call it for a worker that was killed, or its stale readiness would linger."""
    if is_multiprocess():
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid())


if is_multiprocess():
    atexit.register(mark_process_dead)
