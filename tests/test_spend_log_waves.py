"""A request's spend-log record counts the waves it drew: a verifier's charge on a wave adds its
cost and tokens to the record but no wave; a route's waves are each booked to the model that
drew them (`by_model`), and the record names the last wave's model (on SQLite and Redis,
through the server's billing and the stores)."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.budget import Cost, Ledger, LedgerStore
from controller.budget.ledger import SpendEntry, SpendRecord
from server.billing import BudgetProvider, LedgerBilling, WaveHold
from server.config import AppConfig, parse_config
from storage.redis.ledger import RedisStore
from storage.sqlite.ledger import SQLiteStore
from tests.test_budget_billing import PRICE, ManualClock, make_config

NOON = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC).timestamp()


async def test_a_verifier_charge_adds_cost_and_tokens_but_no_wave(
    store: LedgerStore, tmp_path: Path
) -> None:
    cfg = make_config(tmp_path, budgets={"day": {"limit": 10.0}})
    clock = ManualClock(NOON)
    provider = BudgetProvider(
        cfg, clock=clock, ledger=Ledger(store, clock=clock), publish_metrics=False
    )
    billing = provider.for_request(cfg.tenants[0], "m", "r1")
    assert isinstance(billing, LedgerBilling)
    spent = 0.0
    for wave in (0, 1):  # two generation waves, each scored by a verifier
        hold = await billing.reserve(WaveHold(wave, 2, 10, 10))
        spent += await billing.settle(hold, prompt_tokens=10, completion_tokens=12)
        await billing.hold_charge("m", wave, prompt_tokens=30, completion_tokens=2)
        spent += await billing.charge("m", wave, prompt_tokens=30, completion_tokens=2)
    billing.finish("policy", 200, 4)
    await billing.close()

    (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
    assert (record.waves, record.samples) == (2, 4)
    assert (record.prompt_tokens, record.completion_tokens) == (2 * (10 + 30), 2 * (12 + 2))
    assert record.money == pytest.approx(spent)
    await provider.close()


DEAR = {"prompt_per_1m": 10_000.0, "completion_per_1m": 20_000.0}  # ten times PRICE


def route_config(tmp_path: Path) -> AppConfig:
    """Two models a route draws on and a judge; the big one at ten times the others' price."""
    cfg = make_config(tmp_path).model_dump(mode="json", exclude_none=True)
    cfg["models"] = [{"id": m, "path": str(tmp_path / m)} for m in ("small", "big", "judge")]
    cfg["tenants"][0]["prices"] = {"currency": "EUR", "models": {"*": PRICE, "big": DEAR}}
    return parse_config(cfg, "test")


async def test_an_escalated_requests_waves_are_booked_to_the_model_that_drew_each(
    store: LedgerStore, tmp_path: Path
) -> None:
    # a route's request: two waves on the small model, one on the big, each scored by a judge
    cfg = route_config(tmp_path)
    clock = ManualClock(NOON)
    provider = BudgetProvider(
        cfg, clock=clock, ledger=Ledger(store, clock=clock), publish_metrics=False
    )
    billing = provider.for_request(cfg.tenants[0], "small", "r1")
    assert isinstance(billing, LedgerBilling)
    paid: dict[str, float] = {"small": 0.0, "big": 0.0, "judge": 0.0}
    for wave, (model, size) in enumerate((("small", 2), ("small", 3), ("big", 4))):
        billing.use_model(model)
        hold = await billing.reserve(WaveHold(wave, size, 10, 10))
        paid[model] += await billing.settle(hold, prompt_tokens=10, completion_tokens=5 * size)
        await billing.hold_charge("judge", wave, prompt_tokens=30, completion_tokens=2)
        paid["judge"] += await billing.charge("judge", wave, prompt_tokens=30, completion_tokens=2)
    billing.finish("policy", 200, 9)
    await billing.close()

    (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
    assert record.model == "big"  # the last wave's: the model that answered
    assert sorted(record.by_model) == ["big", "judge", "small"]
    small, big, judge = (record.by_model[m] for m in ("small", "big", "judge"))
    assert (small.waves, small.samples, small.prompt_tokens, small.completion_tokens) == (
        2, 5, 20, 25,
    )  # fmt: skip
    assert (big.waves, big.samples, big.prompt_tokens, big.completion_tokens) == (1, 4, 10, 20)
    assert (judge.waves, judge.samples, judge.prompt_tokens, judge.completion_tokens) == (
        0, 0, 90, 6,
    )  # fmt: skip
    for model, part in record.by_model.items():
        assert part.money == pytest.approx(paid[model])
    assert big.money == pytest.approx(10 * (10e-3 + 20 * 2e-3))  # at the big model's price
    # the split sums to the record
    assert sum(p.money for p in record.by_model.values()) == pytest.approx(record.money)
    assert sum(p.samples for p in record.by_model.values()) == record.samples == 9
    assert sum(p.waves for p in record.by_model.values()) == record.waves == 3
    assert sum(p.prompt_tokens for p in record.by_model.values()) == record.prompt_tokens
    await provider.close()


async def test_a_cut_request_trues_up_its_last_models_samples(store: LedgerStore) -> None:
    # wave 1 (big) was held at 4 but the client hung up after 1 of its samples: 3 drawn in all
    ledger = Ledger(store, clock=ManualClock(NOON))
    for wave, (model, size) in enumerate((("small", 2), ("big", 4))):
        entry = SpendEntry(model, size, 10, 5 * size)
        await ledger.settle("acme", None, "r1", wave, Cost(1.0 + wave, 10.0), entry)
    await store.finish_log("acme", "r1", "disconnect", 499, 3)

    (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
    assert record.samples == 3 and record.status == 499
    assert {m: p.samples for m, p in record.by_model.items()} == {"small": 2, "big": 1}
    assert {m: p.money for m, p in record.by_model.items()} == {"small": 1.0, "big": 2.0}


async def test_the_record_names_the_latest_waves_model_whatever_order_settles_land_in(
    store: LedgerStore,
) -> None:
    # wave 0's settle failed and was retried at close, after wave 1's and a verifier's charge
    ledger = Ledger(store, clock=ManualClock(NOON))
    await ledger.settle(
        "acme", None, "r1", 1_000_000, Cost(0.5), SpendEntry("judge", 0, 9, 1, waves=0)
    )
    await ledger.settle("acme", None, "r1", 1, Cost(2.0), SpendEntry("big", 1, 10, 5))
    await ledger.settle("acme", None, "r1", 0, Cost(1.0), SpendEntry("small", 2, 10, 10))
    await ledger.settle("acme", None, "r1", 1, Cost(2.0), SpendEntry("big", 1, 10, 5))  # again

    (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
    assert record.model == "big"
    assert {m: p.money for m, p in record.by_model.items()} == {
        "big": 2.0, "judge": 0.5, "small": 1.0,
    }  # fmt: skip
    assert record.money == pytest.approx(3.5) and record.waves == 2


OLD_SPEND_LOGS = """CREATE TABLE spend_logs (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, time REAL NOT NULL, model TEXT NOT NULL,
    key_prefix TEXT, user TEXT, samples INTEGER NOT NULL, waves INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    money REAL NOT NULL, flops REAL NOT NULL, stop_reason TEXT, status INTEGER,
    PRIMARY KEY (tenant, request_id)
)"""  # the table as files written before the per-model split have it


def _legacy(record: SpendRecord) -> None:
    """An old record reads as all its model's, as it was booked."""
    assert record.model == "small" and list(record.by_model) == ["small"]
    part = record.by_model["small"]
    assert (part.samples, part.waves, part.prompt_tokens, part.completion_tokens) == (5, 2, 8, 9)
    assert (part.money, part.flops) == (3.0, 4.0)


async def test_a_sqlite_file_from_before_the_split_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute(OLD_SPEND_LOGS)
        old.execute(
            "INSERT INTO spend_logs VALUES "
            "('acme', 'old', ?, 'small', NULL, NULL, 5, 2, 8, 9, 3.0, 4.0, 'policy', 200)",
            (NOON,),
        )
        old.commit()
    store = SQLiteStore(path)
    try:
        ledger = Ledger(store, clock=ManualClock(NOON + 1))
        await ledger.settle("acme", None, "new", 0, Cost(1.0), SpendEntry("big", 2, 10, 5))
        old_record, new_record = await store.spend_logs("acme", NOON - 1, NOON + 2)
        _legacy(old_record)
        assert new_record.model == "big" and list(new_record.by_model) == ["big"]
        assert await store.purge_logs(NOON + 2) == 2
        assert await store.spend_logs("acme", 0, NOON + 2) == []
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_records_from_before_the_split_keep_reading(redis_url: str) -> None:
    store = RedisStore(redis_url)
    try:
        base = "{t2:acme}"
        await store.client.hset(f"{base}:log:old", mapping={  # an old script's record
            "time": repr(NOON), "request_id": "old", "model": "small", "key_prefix": "",
            "user": "", "samples": 5, "waves": 2, "prompt_tokens": 8, "completion_tokens": 9,
            "money": "3", "flops": "4", "stop_reason": "policy", "status": 200,
        })  # fmt: skip
        await store.client.zadd(f"{base}:logs", {"old": NOON})
        (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
        _legacy(record)
        await store.finish_log("acme", "old", "policy", 200, 5)  # no breakdown to true up
        (record,) = await store.spend_logs("acme", NOON - 1, NOON + 1)
        _legacy(record)
    finally:
        await store.close()
