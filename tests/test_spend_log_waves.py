"""A request's spend-log record counts the waves it drew: a verifier's charge on a wave adds its
cost and tokens to the record but no wave (on SQLite and Redis, through the server's billing)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.budget import Ledger, LedgerStore
from server.billing import BudgetProvider, LedgerBilling, WaveHold
from tests.test_budget_billing import ManualClock, make_config

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
