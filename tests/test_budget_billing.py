"""The billing seam on the real SQLite ledger: shrink waves, then 429 with Retry-After at the
window's reset; per-request and soft budgets; λ rising with the burn rate; FLOPs pricing."""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server.billing import BudgetProvider, LedgerBilling, UnmeteredBilling, WaveHold
from server.billing.admission import HOLD_RETRY_S, POLL_S
from server.config import AppConfig, hash_key, parse_config
from server.engine.weights import model_sizes, parameter_count
from server.errors import InsufficientQuota

PRICE = {"prompt_per_1m": 1000.0, "completion_per_1m": 2000.0}  # 1e-3 / 2e-3 per token


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, admission_wait: float = 10.0, **tenant: Any) -> AppConfig:
    return parse_config(
        {
            "models": [{"id": "m", "path": str(tmp_path / "model")}],
            "ledger": {
                "backend": "sqlite",
                "path": str(tmp_path / "ledger.sqlite"),
                "admission_wait_s": admission_wait,
            },
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key("acme-key")}],
                    "prices": {"currency": "EUR", "models": {"m": PRICE}},
                    **tenant,
                },
                {"id": "free", "api_keys": [{"sha256": hash_key("free-key")}]},
            ],
        },
        "test",
    )


def noon() -> ManualClock:
    return ManualClock(datetime(2026, 5, 4, 23, 0, 0, tzinfo=UTC).timestamp())


def handle(provider: BudgetProvider, cfg: AppConfig, rid: str) -> LedgerBilling:
    billing = provider.for_request(cfg.tenants[0], "m", rid)
    assert isinstance(billing, LedgerBilling)
    return billing


async def test_waves_shrink_then_429_with_retry_after_at_the_reset(tmp_path: Path) -> None:
    # one sample's worst case: 10 prompt + 10 completion tokens = 0.01 + 0.02 = 0.03 EUR
    cfg = make_config(tmp_path, budgets={"day": {"limit": 0.2, "hard": True}}, admission_wait=0)
    clock = noon()
    provider = BudgetProvider(cfg, clock=clock, publish_metrics=False)
    try:
        b1 = handle(provider, cfg, "r1")
        assert b1.quote(10, 10) == pytest.approx(0.03)
        assert (await b1.reserve(WaveHold(0, 4, 10, 10))).samples == 4  # 0.09
        assert b1.remaining() == pytest.approx(0.2 - 0.09)
        b2 = handle(provider, cfg, "r2")
        assert (await b2.reserve(WaveHold(0, 8, 10, 10))).samples == 5  # shrunk
        b3 = handle(provider, cfg, "r3")
        with pytest.raises(InsufficientQuota) as refused:
            await b3.reserve(WaveHold(0, 1, 10, 10))
        assert refused.value.window == "day"
        # refused while r1's and r2's holds are outstanding: they free budget before midnight
        assert refused.value.retry_after_s == pytest.approx(HOLD_RETRY_S)
        assert "day" in refused.value.message
        # settling at what the engine reported releases the rest: r3 now fits a smaller wave
        first = WaveHold(0, 4, 10, 10)
        cost = await b1.settle(first, prompt_tokens=10, completion_tokens=12)
        assert cost == pytest.approx(0.034)
        await b1.close()
        assert (await b3.reserve(WaveHold(0, 4, 10, 10))).samples == 2
        for b in (b2, b3):
            await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=5)
            await b.close()
        spent = handle(provider, cfg, "burn")
        await spent.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
        with pytest.raises(InsufficientQuota) as gone:  # no holds left: spent until midnight
            await handle(provider, cfg, "r5").reserve(WaveHold(0, 1, 10, 10))
        assert gone.value.retry_after_s == pytest.approx(3600.0)  # 23:00 → midnight UTC
        clock.now += 3600  # the window resets at midnight: full waves again
        b4 = handle(provider, cfg, "r4")
        assert (await b4.reserve(WaveHold(0, 4, 10, 10))).samples == 4
        await b4.close()
    finally:
        await provider.close()


async def test_settle_through_billing_is_idempotent_and_close_releases(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, budgets={"hour": {"limit": 1.0}})
    provider = BudgetProvider(cfg, clock=noon(), publish_metrics=False)
    try:
        b = handle(provider, cfg, "r1")
        await b.reserve(WaveHold(0, 2, 10, 10))
        first = await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=3)
        again = await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=30)
        assert first == again == pytest.approx(0.016)
        await b.reserve(WaveHold(1, 2, 10, 10))
        await b.close()  # wave 1 was never settled (an error in between): its hold goes
        usage = await provider.ledger.usage("acme", cfg.tenants[0].budgets)
        hour = next(u for u in usage if u.name == "hour")
        assert hour.spent_value == pytest.approx(0.016)
        assert hour.reserved_value == pytest.approx(0.0)
    finally:
        await provider.close()


async def test_per_request_budget_caps_the_waves(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, budgets={"request": {"limit": 0.1, "hard": True}})
    provider = BudgetProvider(cfg, clock=noon(), publish_metrics=False)
    try:
        b = handle(provider, cfg, "r1")
        assert (await b.reserve(WaveHold(0, 8, 10, 10))).samples == 4  # 0.09
        await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=30)  # 0.07
        assert (await b.reserve(WaveHold(1, 8, 10, 10))).samples == 1  # 0.1
        await b.settle(WaveHold(1, 1, 0, 0), prompt_tokens=10, completion_tokens=10)
        with pytest.raises(InsufficientQuota) as refused:
            await b.reserve(WaveHold(2, 1, 10, 10))
        assert refused.value.window == "request" and refused.value.retry_after_s is None
        await b.close()
    finally:
        await provider.close()


async def test_soft_budget_allows_and_unpriced_tenants_stay_unmetered(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, budgets={"day": {"limit": 0.01, "hard": False}})
    provider = BudgetProvider(cfg, clock=noon(), publish_metrics=False)
    try:
        b = handle(provider, cfg, "r1")
        assert (await b.reserve(WaveHold(0, 8, 10, 10))).samples == 8
        await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=80)
        assert (await b.reserve(WaveHold(1, 8, 10, 10))).samples == 8
        await b.close()
        assert b.remaining() is None  # no hard limit
        assert isinstance(provider.for_request(cfg.tenants[1], "m", "x"), UnmeteredBilling)
    finally:
        await provider.close()


@pytest.mark.parametrize("mode", ["cap", "spend"])
async def test_lambda_rises_when_the_budget_burns_faster_than_time(
    tmp_path: Path, mode: str
) -> None:
    cfg = make_config(
        tmp_path, budgets={"day": {"limit": 10.0}}, policy="t2", pacing={"mode": mode}
    )
    clock = ManualClock(datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC).timestamp())  # half the day
    provider = BudgetProvider(cfg, clock=clock, publish_metrics=False)
    start = 0.002 / 2e-3  # λ₀: the reference sample price for a 256-token sample, per EUR
    try:
        b = handle(provider, cfg, "warm")
        await b.reserve(WaveHold(0, 1, 10, 10))
        await b.settle(WaveHold(0, 1, 0, 0), prompt_tokens=10, completion_tokens=10)
        await b.close()
        slack = handle(provider, cfg, "a").price_of_compute()
        if mode == "cap":
            assert slack is None  # far below budget × elapsed: a cap adds no pressure
        else:
            assert slack is not None and slack.mode == "spend"
            assert slack.lam < start  # spend mode lowers λ to use the slack
        burn = handle(provider, cfg, "big")
        unheld = WaveHold(0, 1, 0, 0)  # settled without a hold: charged all the same
        await burn.settle(unheld, prompt_tokens=1000, completion_tokens=3500)  # 8 EUR by noon
        hot = handle(provider, cfg, "b").price_of_compute()
        assert hot is not None and hot.mode == mode and hot.unit == "currency"
        assert hot.lam > start  # above budget × elapsed: λ above its start value
    finally:
        await provider.close()


def test_flops_params_from_safetensors_header(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
            "b": {"dtype": "F32", "shape": [8], "data_offsets": [128, 160]},
        }
    ).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(160))
    assert parameter_count(model) == 40.0
    cfg = make_config(tmp_path)
    provider = BudgetProvider(cfg, publish_metrics=False, model_params=model_sizes(cfg.models))
    b = handle(provider, cfg, "r")
    assert b.pricer.cost(3, 2).flops == pytest.approx(2 * 40 * 5)


async def test_a_wave_waits_for_other_holds_to_settle_instead_of_a_false_429(
    tmp_path: Path,
) -> None:
    """Holds of waves in flight cover the budget, but settled spend is far below it: the next
    wave waits for a settlement (woken by it, not by polling) and gets its samples."""
    cfg = make_config(tmp_path, budgets={"day": {"limit": 0.2, "hard": True}}, admission_wait=5)
    provider = BudgetProvider(cfg, clock=noon(), publish_metrics=False)
    try:
        holder = handle(provider, cfg, "holder")
        hold = await holder.reserve(WaveHold(0, 6, 10, 10))  # 0.01 + 6 × 0.02 = 0.13 held
        other = handle(provider, cfg, "other")
        assert (await other.reserve(WaveHold(0, 2, 10, 10))).samples == 2  # 0.05: 0.18 held
        waiting = asyncio.create_task(handle(provider, cfg, "late").reserve(WaveHold(0, 4, 10, 10)))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # refused for now, but only because of the holds
        started = time.monotonic()
        await holder.settle(hold, prompt_tokens=10, completion_tokens=6)  # it used 0.022
        granted = await asyncio.wait_for(waiting, timeout=5)
        assert granted.samples >= 1 and time.monotonic() - started < POLL_S
    finally:
        await provider.close()


async def test_budget_gauges_follow_the_ledger_at_most_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ledger call's figures reach the gauges: the first at once, a burst's later ones
    once METRICS_INTERVAL_S is over (the latest figures, not the first)."""
    from server.billing import gauges

    published: list[tuple[str, str, float]] = []

    def set_budget(tenant: str, window: str, *, remaining: float, **_: float) -> None:
        published.append((tenant, window, remaining))

    monkeypatch.setattr(gauges.metrics, "set_budget", set_budget)
    cfg = make_config(tmp_path, budgets={"day": {"limit": 1.0, "hard": True}})
    provider = BudgetProvider(cfg, clock=noon())
    try:
        billing = handle(provider, cfg, "r1")
        await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
        assert published == [("acme", "day", pytest.approx(0.8))]  # 100 × 2e-3 spent
        await billing.settle(WaveHold(1, 1, 0, 0), prompt_tokens=0, completion_tokens=50)
        await billing.settle(WaveHold(2, 1, 0, 0), prompt_tokens=0, completion_tokens=50)
        assert len(published) == 1  # within the interval: deferred
        await asyncio.sleep(gauges.METRICS_INTERVAL_S + 0.1)
        assert published[1:] == [("acme", "day", pytest.approx(0.6))]
        await billing.close()
    finally:
        await provider.close()


async def test_a_closed_provider_publishes_no_deferred_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred publish dies with its provider: later it would overwrite the gauges of
    whichever provider serves the tenant by then with stale figures."""
    from server.billing import gauges

    published: list[tuple[str, str, float]] = []

    def set_budget(tenant: str, window: str, *, remaining: float, **_: float) -> None:
        published.append((tenant, window, remaining))

    monkeypatch.setattr(gauges.metrics, "set_budget", set_budget)
    cfg = make_config(tmp_path, budgets={"day": {"limit": 1.0, "hard": True}})
    provider = BudgetProvider(cfg, clock=noon())
    billing = handle(provider, cfg, "r1")
    await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
    await billing.settle(WaveHold(1, 1, 0, 0), prompt_tokens=0, completion_tokens=50)  # deferred
    await billing.close()
    await provider.close()
    await asyncio.sleep(gauges.METRICS_INTERVAL_S + 0.1)
    assert published == [("acme", "day", pytest.approx(0.8))]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a timer's effect (a loaded machine may run it late)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_rolling_figures_are_read_again_as_their_spend_slides_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no request to publish them, a rolling window's gauges showed the spend of its last
    request for ever (and the rolling burn alerts on them kept firing): they are read again when
    its oldest spend slides out, until none is left; calendar windows are published with them."""
    from server.billing import gauges

    published: list[tuple[str, float, bool]] = []

    def set_budget(tenant: str, window: str, *, spent: float, rolling: bool, **_: float) -> None:
        published.append((window, spent, rolling))

    monkeypatch.setattr(gauges.metrics, "set_budget", set_budget)
    monkeypatch.setattr(gauges, "REFRESH_MIN_S", 0.05)
    budgets = {"minute": {"limit": 1.0, "rolling": True}, "day": {"limit": 5.0}}
    cfg = make_config(tmp_path, budgets=budgets)
    clock = noon()
    provider = BudgetProvider(cfg, clock=clock)
    try:
        billing = handle(provider, cfg, "r1")
        await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
        await billing.close()
        minute, day = ("minute", pytest.approx(0.2), True), ("day", pytest.approx(0.2), False)
        assert published == [minute, day]
        clock.now += 59.9  # its spend slides out of the minute in 0.1 s: an admin read shows it
        await provider.report(cfg.tenants[0])
        assert published[2:] == [minute, day]
        clock.now += 0.2  # slid out, with no request since
        await until(lambda: len(published) >= 6)
        assert published[4:] == [("minute", 0.0, True), day]
        await asyncio.sleep(0.3)
        assert len(published) == 6  # nothing left to slide out: no more reads
    finally:
        await provider.close()


async def test_a_failed_read_of_rolling_figures_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.billing import gauges

    published: list[float] = []

    def set_budget(tenant: str, window: str, *, spent: float, **_: float) -> None:
        published.append(spent)

    monkeypatch.setattr(gauges.metrics, "set_budget", set_budget)
    monkeypatch.setattr(gauges, "REFRESH_MIN_S", 0.05)
    monkeypatch.setattr(gauges, "REFRESH_RETRY_S", 0.2)
    cfg = make_config(tmp_path, budgets={"hour": {"limit": 1.0, "rolling": True}})
    clock = noon()
    provider = BudgetProvider(cfg, clock=clock)
    try:
        billing = handle(provider, cfg, "r1")
        await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
        await billing.close()
        clock.now += 3599.9
        await provider.report(cfg.tenants[0])  # the next read is due in 0.1 s
        assert published == [pytest.approx(0.2)] * 2
        real_usage = provider.ledger.usage
        failures: list[str] = []

        async def usage_once_down(*args: Any, **kwargs: Any) -> Any:
            if not failures:
                failures.append("store down")
                raise ConnectionError("store down")
            return await real_usage(*args, **kwargs)

        monkeypatch.setattr(provider.ledger, "usage", usage_once_down)
        clock.now += 0.2
        await until(lambda: bool(failures))
        assert "store down" in caplog.text and len(published) == 2
        await until(lambda: len(published) > 2)
        assert published[2:] == [0.0]  # the retry read it
    finally:
        await provider.close()


async def test_rolling_figures_are_unknown_while_the_store_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed read of rolling figures left the last ones shown, so the rolling burn alerts
    kept firing through the outage on spend that may have slid out since: the rolling window's
    spent, remaining and reserved are NaN (Prometheus compares NaN false) until a read succeeds
    again, which restores them. Its limit and the calendar window's figures stay."""
    from prometheus_client import REGISTRY

    from controller.stores import StoreUnavailable
    from server import metrics
    from server.billing import gauges

    def value(name: str, window: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"tenant": "acme", "window": window})

    monkeypatch.setattr(gauges, "REFRESH_MIN_S", 0.05)
    monkeypatch.setattr(gauges, "REFRESH_RETRY_S", 0.2)
    budgets = {"hour": {"limit": 1.0, "rolling": True}, "month": {"limit": 5.0}}  # noon() is 23:00
    cfg = make_config(tmp_path, budgets=budgets)
    clock = noon()
    provider = BudgetProvider(cfg, clock=clock)
    try:
        billing = handle(provider, cfg, "r1")
        await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
        await billing.close()
        clock.now += 3599.9
        await provider.report(cfg.tenants[0])  # the next read is due in 0.1 s
        assert value("t2_budget_spent", "hour") == pytest.approx(0.2)
        real_usage = provider.ledger.usage
        down = [True]
        tries: list[str] = []

        async def usage(*args: Any, **kwargs: Any) -> Any:
            tries.append("read")
            if down[0]:
                raise StoreUnavailable("the ledger's store is unreachable")
            return await real_usage(*args, **kwargs)

        monkeypatch.setattr(provider.ledger, "usage", usage)
        clock.now += 0.2  # its spend slid out, unread
        await until(lambda: len(tries) >= 2)  # the first read and its retry failed
        for name in ("t2_budget_spent", "t2_budget_remaining", "t2_budget_reserved"):
            hour = value(name, "hour")
            assert hour is not None and math.isnan(hour), name
        assert value("t2_budget_limit", "hour") == 1.0
        assert value("t2_budget_rolling", "hour") == 1.0
        assert value("t2_budget_spent", "month") == pytest.approx(0.2)  # calendar: still true
        assert value("t2_budget_remaining", "month") == pytest.approx(4.8)
        exposition = metrics.render_latest()[0].decode()
        assert 't2_budget_spent{tenant="acme",window="hour"} NaN' in exposition
        down[0] = False  # the store is back: the next try reads and restores the figures
        await until(lambda: value("t2_budget_spent", "hour") == 0.0)
        assert value("t2_budget_remaining", "hour") == 1.0
        assert value("t2_budget_reserved", "hour") == 0.0
        assert value("t2_budget_spent", "month") == pytest.approx(0.2)
    finally:
        await provider.close()


async def test_a_read_under_way_as_the_provider_closes_schedules_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Close waits for a read of rolling figures under way (it uses the ledger that closes
    next), and that read schedules no other: it would reopen the ledger of a closed provider and
    publish over whichever provider serves the tenant by then."""
    from server.billing import gauges

    published: list[float] = []

    def set_budget(tenant: str, window: str, *, spent: float, **_: float) -> None:
        published.append(spent)

    monkeypatch.setattr(gauges.metrics, "set_budget", set_budget)
    monkeypatch.setattr(gauges, "REFRESH_MIN_S", 0.05)
    cfg = make_config(tmp_path, budgets={"minute": {"limit": 1.0, "rolling": True}})
    clock = noon()
    provider = BudgetProvider(cfg, clock=clock)
    billing = handle(provider, cfg, "r1")
    await billing.settle(WaveHold(0, 1, 0, 0), prompt_tokens=0, completion_tokens=100)
    await billing.close()
    clock.now += 59.9
    await provider.report(cfg.tenants[0])  # the next read is due in 0.1 s
    real_usage = provider.ledger.usage
    reading = asyncio.Event()

    async def slow_usage(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        await asyncio.sleep(0.2)
        return await real_usage(*args, **kwargs)

    monkeypatch.setattr(provider.ledger, "usage", slow_usage)
    await asyncio.wait_for(reading.wait(), 10)
    await provider.close()
    assert published == [pytest.approx(0.2)] * 3  # the read under way finished first
    await asyncio.sleep(0.5)
    assert len(published) == 3
