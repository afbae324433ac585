"""What the t2_* metrics count, through the real app on a scripted engine and a SQLite ledger
(docs/observability.md): each HTTP request once, by the status its client was told, and timed
whatever that status; spend exactly as the ledger has it, however its settle went; a verifier's
tokens with the samples'; and no budget gauge outliving its budget. Each test began as a repro of
a metrics audit finding."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from server import metrics
from server.app import create_app
from server.config import hash_key, parse_config
from server.engine.base import Prompt, Sample
from server.errors import EngineDead
from tests.fakes import ScriptedEngine, cycle

ROOT = Path(__file__).resolve().parent.parent
KEY = {"Authorization": "Bearer k-acme"}
PRICES = {"models": {"*": {"prompt_per_1m": 1000.0, "completion_per_1m": 1e6}}}
JUDGE = {"kind": "judge", "name": "grader", "model": "m", "read": "answer",
         "template": "{question}", "max_tokens": 8}  # fmt: skip


def config(tmp: Path, **tenant: Any) -> dict[str, Any]:
    return {
        "models": [{"id": "m", "path": "models/tiny-arith"}],
        "ledger": {"backend": "sqlite", "path": str(tmp / "ledger.sqlite")},
        "defaults": {"policy": "fixed:3", "max_tokens": 40},
        "tenants": [
            {"id": "acme", "api_keys": [{"sha256": hash_key("k-acme")}], "prices": PRICES,
             "budgets": {"day": {"limit": 1e9}}, **tenant},
        ],
    }  # fmt: skip


def total(name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, from a fresh exposition."""
    body, _ = metrics.render_latest()
    want = set(labels.items())
    return sum(
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name and want <= set(s.labels.items())
    )


class Counts:
    """How much chosen samples grew since the start of a test (the registry is per process)."""

    def __init__(self, **queries: tuple[str, dict[str, str]]) -> None:
        self.queries = queries
        self.before = {k: total(name, **labels) for k, (name, labels) in queries.items()}

    def __getitem__(self, key: str) -> float:
        name, labels = self.queries[key]
        return total(name, **labels) - self.before[key]


@contextlib.asynccontextmanager
async def client(
    cfg: dict[str, Any], engine: ScriptedEngine | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(parse_config(cfg), engine=engine or ScriptedEngine(cycle("A: 6")))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t2.test") as http:
            yield http, app


def chat(content: str = "Q: 7+8=?", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


class FailingEngine(ScriptedEngine):
    """Fails after a wave's first sample when the prompt says BOOM (a bug: RuntimeError), or
    before it when it says DIE (the engine died: EngineDead, a 503; after a sample the request
    would answer with it)."""

    async def sample(  # type: ignore[override]
        self, prompt: Prompt, n: int, params: Any, request_id: str
    ) -> AsyncIterator[Sample]:
        if "DIE" in prompt.text:
            raise EngineDead("engine died mid-wave")
        async for sample in super().sample(prompt, n, params, request_id):
            yield sample
            if "BOOM" in prompt.text:
                raise RuntimeError("engine blew up mid-wave")


@pytest.fixture
def quiet() -> Iterator[None]:
    """The failures these tests cause are logged with tracebacks; keep the output readable."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


# -- t2_requests_total and the latency histogram: once per HTTP request, by what the client got --


async def test_an_unhandled_error_counts_as_500_not_as_a_client_that_left(
    tmp_path: Path, quiet: None
) -> None:
    """Starlette answers it outside every middleware: counted as 499 it hid server bugs from
    the 5xx alert."""
    counts = Counts(s500=("t2_requests_total", {"status": "500"}),
                    s499=("t2_requests_total", {"status": "499"}))  # fmt: skip
    async with client(config(tmp_path), FailingEngine(cycle("A: 6"))) as (http, _):
        response = await http.post("/v1/chat/completions", json=chat("BOOM"), headers=KEY)
    assert response.status_code == 500
    assert (counts["s500"], counts["s499"]) == (1, 0)


async def test_a_stream_that_ends_in_an_error_event_counts_as_that_error(
    tmp_path: Path, quiet: None
) -> None:
    """The 200 went out before the engine died; the client (and the spend log) got a 503."""
    counts = Counts(s200=("t2_requests_total", {"status": "200"}),
                    s503=("t2_requests_total", {"status": "503"}))  # fmt: skip
    async with client(config(tmp_path), FailingEngine(cycle("A: 6"))) as (http, _):
        body = chat("DIE", stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=KEY) as r:
            lines = [line async for line in r.aiter_lines()]
    assert r.status_code == 200 and any('"engine_dead"' in line or '"error"' in line
                                        for line in lines)  # fmt: skip
    assert (counts["s200"], counts["s503"]) == (0, 1)


async def test_a_body_over_the_limit_is_counted_as_413(tmp_path: Path) -> None:
    """BodyLimit answers before the app runs: it must sit inside RequestMetrics."""
    counts = Counts(s413=("t2_requests_total", {"status": "413"}))
    async with client(config(tmp_path)) as (http, _):
        headers = {**KEY, "content-type": "application/json"}
        response = await http.post("/v1/chat/completions", content=b"x" * 5 * 2**20,
                                   headers=headers)  # fmt: skip
    assert response.status_code == 413
    assert counts["s413"] == 1


async def test_n_answers_are_one_latency_observation_and_n_controller_ones(
    tmp_path: Path,
) -> None:
    """Latency and status are per HTTP request (one wait for the client); k, waves and the stop
    reason are the controller's per-question decisions, one per answer (docs say so)."""
    counts = Counts(latency=("t2_request_duration_seconds_count", {}),
                    requests=("t2_requests_total", {"tenant": "acme"}),
                    samples=("t2_samples_per_request_count", {"tenant": "acme"}),
                    waves=("t2_waves_per_request_count", {}),
                    stops=("t2_stop_reason_total", {}))  # fmt: skip
    async with client(config(tmp_path)) as (http, _):
        response = await http.post("/v1/chat/completions", json=chat(n=4), headers=KEY)
    assert response.status_code == 200
    assert (counts["latency"], counts["requests"]) == (1, 1)
    assert (counts["samples"], counts["waves"], counts["stops"]) == (4, 4, 4)


async def test_a_stream_observes_its_time_to_first_token_once(tmp_path: Path) -> None:
    counts = Counts(ttft=("t2_time_to_first_token_seconds_count", {}),
                    latency=("t2_request_duration_seconds_count", {}))  # fmt: skip
    async with client(config(tmp_path)) as (http, _):
        body = chat(n=3, stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=KEY) as r:
            _ = [line async for line in r.aiter_lines()]
    assert (counts["ttft"], counts["latency"]) == (1, 1)


async def test_a_request_that_times_out_is_in_the_latency_histogram(tmp_path: Path) -> None:
    """The slowest requests end in 504: left out, the p95 SLO alert never saw them."""
    cfg = config(tmp_path)
    cfg["server"] = {"request_timeout_s": 0.3}
    slow = ScriptedEngine(cycle("A: 6" + "x" * 60), token_s=0.02)
    counts = Counts(latency=("t2_request_duration_seconds_count", {}),
                    over=("t2_request_duration_seconds_bucket", {"le": "0.25"}))  # fmt: skip
    async with client(cfg, slow) as (http, _):
        response = await http.post("/v1/chat/completions", json=chat(max_tokens=64), headers=KEY)
    assert response.status_code == 504
    assert counts["latency"] == 1 and counts["over"] == 0  # observed, and as slow as it was


# -- t2_spend_total and t2_tokens_total: what the ledger billed, exactly once ---------------------


async def day_spent(app: FastAPI) -> float:
    state = app.state.t2
    tenant = state.config.tenants[0]
    usage = await state.billing.ledger.usage("acme", tenant.budgets)
    return float(next(u for u in usage if u.name == "day").spent_value)


async def test_spend_of_a_journaled_settle_is_counted_once_replayed(
    tmp_path: Path, quiet: None
) -> None:
    """The wave's settle failed all its tries and was journaled, and the replay settled it: the
    ledger has the spend, so t2_spend_total must too (it was only counted after an
    on-the-spot settle)."""
    counts = Counts(spend=("t2_spend_total", {"tenant": "acme"}))
    async with client(config(tmp_path)) as (http, app):
        ledger = app.state.t2.billing.ledger
        real, tries = ledger.settle, []

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            tries.append(1)
            if len(tries) <= 4:  # the first try and its 3 retries fail; close() succeeds
                raise ConnectionError("ledger went away")
            return await real(*args, **kwargs)

        ledger.settle = flaky
        response = await http.post("/v1/chat/completions", json=chat(), headers=KEY)
        assert "pending" in response.json()["t2"]["note"]
        pending = app.state.t2.billing.pending
        for _ in range(600):  # the background replay, on a loaded box
            if not pending.pending:
                break
            await asyncio.sleep(0.1)
        spent = await day_spent(app)
    assert spent > 0
    assert counts["spend"] == pytest.approx(spent, rel=1e-9)


async def test_a_settle_whose_reply_was_lost_is_counted_once(tmp_path: Path) -> None:
    """The first try committed and then failed: the retry is the ledger's duplicate, and the
    spend is counted once, as the ledger charged it once."""
    counts = Counts(spend=("t2_spend_total", {"tenant": "acme"}))
    async with client(config(tmp_path)) as (http, app):
        ledger = app.state.t2.billing.ledger
        real = ledger.settle
        lost: list[Any] = []

        async def commit_then_fail(*args: Any, **kwargs: Any) -> Any:
            out = await real(*args, **kwargs)
            if not lost:
                lost.append(out)
                raise ConnectionError("reply lost")
            return out

        ledger.settle = commit_then_fail
        response = await http.post("/v1/chat/completions", json=chat(), headers=KEY)
        assert response.status_code == 200
        spent = await day_spent(app)
    assert lost and spent > 0
    assert counts["spend"] == pytest.approx(spent, rel=1e-9)


async def test_a_verifiers_tokens_and_spend_are_counted(tmp_path: Path) -> None:
    """t2_tokens_total is billed tokens: a judge model's are billed, so they are in it; its spend
    is in t2_spend_total once, as in the ledger."""
    counts = Counts(tokens=("t2_tokens_total", {"tenant": "acme"}),
                    spend=("t2_spend_total", {"tenant": "acme"}))  # fmt: skip
    async with client(config(tmp_path, verifiers=[JUDGE])) as (http, app):
        body = chat(t2={"verifier": "grader", "aggregator": "best_of_n"})
        t2 = (await http.post("/v1/chat/completions", headers=KEY, json=body)).json()["t2"]
        spent = await day_spent(app)
    assert t2["verifier_tokens"] > 0 and t2["verifier_cost"] > 0
    billed = t2["billed_prompt_tokens"] + t2["billed_completion_tokens"] + t2["verifier_tokens"]
    assert counts["tokens"] == billed
    assert counts["spend"] == pytest.approx(spent, rel=1e-9)
    assert counts["spend"] == pytest.approx(t2["cost"], rel=1e-9)


# -- budget gauges: only budgets the config has ----------------------------------------------


async def test_a_budget_a_reload_removes_leaves_no_gauges(tmp_path: Path) -> None:
    """Its last figures stayed forever, and the burn alerts on them kept firing."""
    cfg = config(tmp_path)
    cfg["tenants"][0]["budgets"] = {"day": {"limit": 100, "hard": False},
                                    "hour": {"limit": 50, "hard": False}}  # fmt: skip
    async with client(cfg) as (http, app):
        for _ in range(3):
            await http.post("/v1/chat/completions", json=chat(), headers=KEY)
        await asyncio.sleep(0.4)  # the gauges' deferred publish
        assert total("t2_budget_limit", tenant="acme", window="day") == 100
        reloaded = copy.deepcopy(cfg)
        del reloaded["tenants"][0]["budgets"]["day"]
        app.state.t2.apply(parse_config(reloaded))
        assert total("t2_budget_limit", tenant="acme", window="day") == 0  # gone at once
        await http.post("/v1/chat/completions", json=chat(), headers=KEY)
        await asyncio.sleep(0.4)
        assert total("t2_budget_limit", tenant="acme", window="day") == 0  # and not back
        assert total("t2_budget_spent", tenant="acme", window="day") == 0
        assert total("t2_budget_limit", tenant="acme", window="hour") == 50


async def test_a_rolling_window_is_published_as_one(tmp_path: Path) -> None:
    """The burn alerts tell rolling windows from calendar ones by t2_budget_rolling; a rolling
    window's bounds are the last window length up to its figures' time."""
    cfg = config(tmp_path)
    hour = {"limit": 50, "hard": False, "rolling": True}
    cfg["tenants"][0]["budgets"] = {"day": {"limit": 100, "hard": False}, "hour": hour}
    async with client(cfg) as (http, _):
        before = time.time()
        await http.post("/v1/chat/completions", json=chat(), headers=KEY)
        await asyncio.sleep(0.4)  # the gauges' deferred publish
        assert total("t2_budget_rolling", tenant="acme", window="hour") == 1
        assert total("t2_budget_rolling", tenant="acme", window="day") == 0
        start = total("t2_budget_window_start_timestamp_seconds", tenant="acme", window="hour")
        end = total("t2_budget_window_end_timestamp_seconds", tenant="acme", window="hour")
        assert end - start == pytest.approx(3600) and before <= end <= time.time()
        spent = total("t2_budget_spent", tenant="acme", window="hour")
        assert spent > 0 and spent == total("t2_budget_spent", tenant="acme", window="day")


async def test_a_tenant_a_reload_removes_leaves_no_gauges(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg["tenants"].append({"id": "beta", "api_keys": [{"sha256": hash_key("k-beta")}],
                           "prices": PRICES, "budgets": {"day": {"limit": 7}}})  # fmt: skip
    async with client(cfg) as (http, app):
        beta = {"Authorization": "Bearer k-beta"}
        await http.post("/v1/chat/completions", json=chat(max_tokens=2), headers=beta)
        await asyncio.sleep(0.4)
        assert total("t2_budget_limit", tenant="beta", window="day") == 7
        reloaded = copy.deepcopy(cfg)
        reloaded["tenants"].pop()
        app.state.t2.apply(parse_config(reloaded))
        assert total("t2_budget_limit", tenant="beta") == 0
        assert not [1 for f in text_string_to_metric_families(metrics.render_latest()[0].decode())
                    for s in f.samples if s.name == "t2_price_of_compute"
                    and s.labels.get("tenant") == "beta"]  # fmt: skip


# -- the docs ------------------------------------------------------------------------------------


def test_the_docs_list_every_metric() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    text = text.replace("`…_end_timestamp_seconds`", "`t2_budget_window_end_timestamp_seconds`")
    missing = [f.name for m in metrics._ALL for f in m.describe() if f"`{f.name}" not in text]
    assert missing == []
