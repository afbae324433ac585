"""Billing that cannot overspend or lose spend, through the real sampling loop on both real
ledgers (SQLite, Redis): a verifier's worst case is held before it scores (a hard budget stays
hard under 100 concurrent requests with a judge), its tokens count in tpm, a settle that
committed and then failed is retried without billing twice, a settle that keeps failing is
reported and replayed from the replica's journal, the per-request cap covers the whole HTTP
request, and a cancel during reserve leaks no hold. The engines are scripted (one character =
one token): the engine is not what is under test here."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.aggregate.score_map import TrafficScoreMap
from controller.budget import LedgerStore
from controller.budget.ledger import Hold, Ledger, ReserveOutcome, SettleOutcome
from controller.stores import StoreUnavailable
from server.billing import BudgetProvider
from server.billing.identity import Caller, bind_request
from server.billing.levels import rate_levels
from server.config import AppConfig, TenantConfig, VerifierConfig, hash_key, parse_config
from server.engine.service import EngineService
from server.errors import APIError
from server.sampling import Outcome, PolicyBook, Sampler, SamplingJob
from server.verifiers import JudgeVerifier, ServedVerifier
from tests.fakes import ScriptedEngine, cycle
from tests.test_sampling_loop import job

PRICE = {"prompt_per_1m": 1_000_000.0, "completion_per_1m": 1_000_000.0}  # 1 per token
JUDGE = VerifierConfig(kind="judge", model="judge", read="yes_no", pattern="yes", max_tokens=4)
# a judge that reads a long rubric: its scoring costs several times the samples it scores
RUBRIC = JUDGE.model_copy(update={"template": "Grade it. " * 10 + "{question}{candidate}"})


def config(where: tuple[str, str], wait_s: float = 0.0, **tenant: Any) -> AppConfig:
    backend, place = where
    ledger: dict[str, Any] = {"backend": backend, "admission_wait_s": wait_s}
    ledger.update({"path": place} if backend == "sqlite" else {"redis_url": place})
    return parse_config(
        {
            "models": [{"id": "m", "path": "/nonexistent"}, {"id": "judge", "path": "/none"}],
            "ledger": ledger,
            "tenants": [
                {
                    "id": "acme",
                    "api_keys": [{"sha256": hash_key("k")}],
                    "prices": {"currency": "USD", "models": {"*": PRICE}},
                    **tenant,
                }
            ],
        },
        "test",
    )


class Rig:
    """A generator and a judge on scripted engines, the real loop, the real ledger."""

    def __init__(self, cfg: AppConfig, judge: VerifierConfig = JUDGE) -> None:
        self.cfg = cfg
        self.tenant: TenantConfig = cfg.tenants[0]
        self.provider = BudgetProvider(cfg, publish_metrics=False)
        self.service = EngineService("m", {}, ScriptedEngine(cycle("A: 2")))
        self.judge_cfg = judge
        self.judge = EngineService("judge", {}, ScriptedEngine(cycle("yes")))
        self.sampler = Sampler(self.service, PolicyBook())

    def job(self, rid: str, policy: str = "fixed:4", **over: Any) -> SamplingJob:
        fields = {"request_id": rid, "tenant": "acme", "aggregator": "best_of_n", **over}
        return job(self.service, policy, **fields)

    def verifier(self) -> ServedVerifier:
        scorer = JudgeVerifier(self.judge, self.judge_cfg, "last_number", "judge")
        return ServedVerifier(self.judge_cfg, scorer, TrafficScoreMap())

    async def ask(self, rid: str, **over: Any) -> Outcome | APIError:
        billing = self.provider.for_request(self.tenant, "m", rid)
        try:
            return await self.sampler.run(self.job(rid, **over), billing, verifier=self.verifier())
        except APIError as exc:
            return exc

    async def spent(self) -> float:
        usage = await self.provider.ledger.usage(self.tenant.id, self.tenant.budgets)
        return next(u.spent_value for u in usage if u.name == "day")

    async def holds(self) -> int:
        return await self.provider.ledger.store.reserved_holds(self.tenant.id)


def costs(results: list[Outcome | APIError]) -> float:
    return sum(r.cost for r in results if isinstance(r, Outcome))


async def test_a_judge_never_overspends_a_hard_budget_under_100_requests(
    location: tuple[str, str],
) -> None:
    # one request: 4 samples of "A: 2" (8 prompt + 4 × 4 = 24, all of their worst case) and
    # the judge (108 prompt + 3 reply): about 135; the hard day budget is worth 10 of them.
    # Without the judge's hold, ~58 requests' samples fit and their judges spend ~5.6× it.
    limit = 1350.0
    rig = Rig(config(location, budgets={"day": {"limit": limit, "hard": True}}), RUBRIC)
    try:
        results = await asyncio.gather(*(rig.ask(f"r{i}", max_tokens=4) for i in range(100)))
        answered = [r for r in results if isinstance(r, Outcome)]
        spent = await rig.spent()
        assert 5 <= len(answered) < 100
        assert spent <= limit + 1e-9
        assert costs(results) == pytest.approx(spent, abs=1e-9)
        assert all(r.status == 429 for r in results if isinstance(r, APIError))
        assert await rig.holds() == 0
        degraded = [o for o in answered if o.verifier_cost == 0]  # the samples took the budget
        assert all(o.note and "cannot hold" in o.note for o in degraded)  # a plain vote, said so
    finally:
        await rig.provider.close()


async def test_a_refused_verifier_hold_degrades_to_a_plain_vote(location: tuple[str, str]) -> None:
    # room for one sample's worst case (8 + 16 held; 8 + 4 spent) but not for the judge's
    # worst case on top (12 prompt + 4 reply): 12 + 16 > 26
    rig = Rig(config(location, budgets={"day": {"limit": 26.0, "hard": True}}))
    try:
        out = await rig.ask("only")
        assert isinstance(out, Outcome)
        assert out.aggregator == "majority" and out.verifier_cost == 0 and out.verifier_tokens == 0
        assert out.note is not None and "cannot hold" in out.note
        assert await rig.spent() == pytest.approx(out.cost) and out.cost <= 26.0
    finally:
        await rig.provider.close()


async def test_verifier_tokens_count_in_tpm(location: tuple[str, str]) -> None:
    rig = Rig(config(location, rate_limits={"tpm": 100_000}))
    try:
        out = await rig.ask("tpm")
        assert isinstance(out, Outcome) and out.verifier_tokens > 0
        rates = rate_levels(rig.tenant, Caller())
        usage = await rig.provider.ledger.usage(rig.tenant.id, rig.tenant.budgets, rates=rates)
        tpm = next(u for u in usage if u.limit.kind == "rate")
        billed = out.prompt_tokens + out.completion_tokens + out.verifier_tokens
        assert tpm.spent_value == billed
    finally:
        await rig.provider.close()


def flaky_settle(ledger: Ledger, fail: Callable[[int], bool], commit_first: bool) -> list[int]:
    """Make the ledger's settle raise on the calls `fail` picks (after committing, when
    `commit_first`: the reply was lost, not the write). Returns the call log (waves)."""
    real = ledger.settle
    calls: list[int] = []

    async def settle(*args: Any, **kw: Any) -> SettleOutcome:
        calls.append(args[3])
        if fail(len(calls)):
            if commit_first:
                await real(*args, **kw)
            raise ConnectionError("ledger went away")
        return await real(*args, **kw)

    ledger.settle = settle  # type: ignore[method-assign]
    return calls


async def test_a_settle_that_committed_then_failed_is_not_billed_twice(
    location: tuple[str, str],
) -> None:
    rig = Rig(config(location, budgets={"day": {"limit": 1e6, "hard": True}}))
    try:
        calls = flaky_settle(rig.provider.ledger, lambda n: n in (1, 3), commit_first=True)
        out = await rig.ask("retry", policy="fixed:2", max_samples=4)
        assert isinstance(out, Outcome) and out.verifier_cost > 0
        assert len(calls) == 4 and calls[0] == calls[1] and calls[2] == calls[3]  # same keys
        assert await rig.spent() == pytest.approx(out.cost, abs=1e-9)
        assert out.note is None
    finally:
        await rig.provider.close()


async def test_a_settle_failing_for_good_is_reported_and_replayed_from_the_journal(
    location: tuple[str, str], tmp_path: Path
) -> None:
    cfg = config(location, budgets={"day": {"limit": 1e6, "hard": True}})
    cfg.ledger.pending_settles_path = str(tmp_path / "journal.sqlite")
    rig = Rig(cfg)
    try:
        flaky_settle(rig.provider.ledger, lambda n: n <= 4, commit_first=False)  # 4 tries fail
        out = await rig.ask("lost", policy="fixed:2")
        assert isinstance(out, Outcome)
        assert out.note is not None and "billing of wave 1 is pending" in out.note
        assert "went away" not in out.note  # the store's error (its address) stays in the log
        await rig.provider.pending.replay()  # the background task's pass, now
        assert rig.provider.pending.pending == 0
        generated = out.prompt_tokens + out.completion_tokens
        assert out.cost == pytest.approx(generated + out.verifier_cost)  # pending wave included
        assert await rig.spent() == pytest.approx(out.cost)  # not dropped
        assert await rig.holds() == 0
        # the record the replayed settle completes gets how the request ended (the finish
        # waited in the journal behind it), and the generator's name (the verifier's charge
        # had created it first)
        [record] = await rig.provider.ledger.store.spend_logs("acme", 0, time.time() + 10)
        assert (record.stop_reason, record.status, record.model) == ("fixed", 200, "m")
    finally:
        await rig.provider.close()


async def test_the_per_request_cap_covers_every_answer_of_the_http_request(
    location: tuple[str, str],
) -> None:
    # alone, each of the 4 answers (n=4) fits 5 samples (8 + 5 × 16 ≤ 100) and spends 28: 112 in
    # all, over the cap the request promised; shared, they wait for each other's holds instead
    cap = 100.0
    rig = Rig(config(location, wait_s=5.0, budgets={"request": {"limit": cap, "hard": True}}))

    async def http_request() -> list[Outcome | BaseException]:
        bind_request("chatcmpl-1")  # as the completion service does, once per HTTP request
        ids = [f"chatcmpl-1-0-{c}" for c in range(4)]
        billings = [rig.provider.for_request(rig.tenant, "m", rid) for rid in ids]
        jobs = [rig.job(rid, policy="fixed:8", aggregator="majority") for rid in ids]
        runs = [rig.sampler.run(j, b) for j, b in zip(jobs, billings, strict=True)]
        return list(await asyncio.gather(*runs, return_exceptions=True))

    try:
        results = await asyncio.create_task(http_request(), context=contextvars.copy_context())
        answered = [r for r in results if isinstance(r, Outcome)]
        assert len(answered) >= 3
        total = sum(o.cost for o in answered)
        assert total <= cap + 1e-9
        assert await rig.spent() == pytest.approx(total, abs=1e-9)
    finally:
        await rig.provider.close()


async def test_a_cancel_while_the_ledger_reserves_leaks_no_hold(location: tuple[str, str]) -> None:
    rig = Rig(config(location, budgets={"day": {"limit": 1e6, "hard": True}}))
    ledger = rig.provider.ledger
    real = ledger.store.reserve
    entered = asyncio.Event()

    async def slow_reply(hold: Any) -> Any:  # the hold is written; its reply is slow to come
        out = await real(hold)
        entered.set()
        await asyncio.sleep(0.3)
        return out

    ledger.store.reserve = slow_reply  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(rig.ask("gone"))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await rig.holds() == 0
    finally:
        await rig.provider.close()


def ledger_down_at(store: LedgerStore, calls: set[int]) -> None:
    """Make the store's reserve raise StoreUnavailable, as a backend that cannot be reached
    does, on the calls numbered in `calls` (1 = the first)."""
    real = store.reserve
    made = 0

    async def reserve(hold: Hold) -> ReserveOutcome:
        nonlocal made
        made += 1
        if made in calls:
            raise StoreUnavailable("the test's ledger did not answer")
        return await real(hold)

    store.reserve = reserve  # type: ignore[method-assign]


async def test_a_ledger_down_before_the_first_wave_refuses_with_503_and_charges_nothing(
    location: tuple[str, str],
) -> None:
    rig = Rig(config(location, budgets={"day": {"limit": 1e6, "hard": True}}))
    try:
        ledger_down_at(rig.provider.ledger.store, {1})
        out = await rig.ask("down")
        assert isinstance(out, APIError), out
        assert (out.status, out.code, out.type) == (
            503,
            "ledger_unavailable",
            "service_unavailable",
        )
        assert out.headers["Retry-After"] == "5" and "the test's ledger" not in out.message
        assert await rig.spent() == 0 and await rig.holds() == 0
    finally:
        await rig.provider.close()


async def test_a_ledger_down_mid_request_answers_with_what_was_drawn_and_billed(
    location: tuple[str, str],
) -> None:
    rig = Rig(config(location, budgets={"day": {"limit": 1e6, "hard": True}}))
    try:
        ledger_down_at(rig.provider.ledger.store, {2})  # the second wave's reserve
        billing = rig.provider.for_request(rig.tenant, "m", "mid")
        # Adaptive-Consistency draws one sample a wave: the first is held and drawn
        out = await rig.sampler.run(
            rig.job("mid", "adaptive_consistency", aggregator="majority"), billing
        )
        assert out.stop_reason == "ledger_unavailable" and out.samples == 1
        assert out.answer == "2" and out.cost > 0
        assert await rig.spent() == pytest.approx(out.cost) and await rig.holds() == 0
    finally:
        await rig.provider.close()


async def test_a_ledger_down_for_the_verifier_hold_degrades_to_a_plain_vote(
    location: tuple[str, str],
) -> None:
    rig = Rig(config(location, budgets={"day": {"limit": 1e6, "hard": True}}))
    try:
        ledger_down_at(rig.provider.ledger.store, {2})  # the wave's reserve, then the judge's
        out = await rig.ask("judge")
        assert isinstance(out, Outcome)
        assert out.aggregator == "majority" and out.verifier_cost == 0
        assert out.note is not None and "ledger could not be reached" in out.note
        assert await rig.spent() == pytest.approx(out.cost) and await rig.holds() == 0
    finally:
        await rig.provider.close()
