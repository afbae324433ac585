"""The wave loop against a scripted engine and a recording billing handle: caps, budgets,
seeds, one tokenization per request, cancellation that still bills, and a bounded policy book.
Fast: no vLLM (the real-engine paths are covered by the test_server_* and test_engine_* files)."""

from __future__ import annotations

import asyncio
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest

import server.sampling.loop as loop_module
from controller.pacing import ComputePrice
from server.billing import WaveHold
from server.engine.service import EngineService, wave_seed
from server.errors import InsufficientQuota, UpstreamTimeout
from server.sampling import Outcome, PolicyBook, Sampler, SamplingJob
from tests.fakes import ScriptedEngine, cycle


@dataclass
class RecordingBilling:
    """A `Billing` that grants as scripted and records every call."""

    grants: list[int | Exception] = field(default_factory=list)
    unit: str = "tokens"
    reserved: list[WaveHold] = field(default_factory=list)
    settled: list[tuple[WaveHold, int, int]] = field(default_factory=list)
    charged: list[tuple[str, int, int, int]] = field(default_factory=list)
    held_charges: list[tuple[str, int, int, int]] = field(default_factory=list)
    closed: int = 0
    finished: tuple[str | None, int, int] | None = None
    price: ComputePrice | None = None

    models: list[str] = field(default_factory=list)

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        return float(prompt_tokens + completion_tokens)

    def use_model(self, model: str) -> None:
        self.models.append(model)

    async def reserve(self, hold: WaveHold) -> WaveHold:
        self.reserved.append(hold)
        grant = self.grants.pop(0) if self.grants else hold.samples
        if isinstance(grant, Exception):
            raise grant
        return WaveHold(hold.wave, min(grant, hold.samples), hold.prompt_tokens, hold.max_tokens)

    async def settle(self, hold: WaveHold, *, prompt_tokens: int, completion_tokens: int) -> float:
        self.settled.append((hold, prompt_tokens, completion_tokens))
        return float(prompt_tokens + completion_tokens)

    async def hold_charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.held_charges.append((model, wave, prompt_tokens, completion_tokens))

    async def charge(
        self, model: str, wave: int, *, prompt_tokens: int, completion_tokens: int
    ) -> float:
        self.charged.append((model, wave, prompt_tokens, completion_tokens))
        return float(prompt_tokens + completion_tokens)

    def finish(self, stop_reason: str | None, status: int, samples: int) -> None:
        self.finished = (stop_reason, status, samples)

    async def close(self) -> None:
        self.closed += 1

    def remaining(self) -> float | None:
        return None

    def remaining_level(self) -> str | None:
        return None

    def price_of_compute(self) -> ComputePrice | None:
        return self.price

    def rate_limit_headers(self) -> dict[str, str]:
        return {}


def make(engine: ScriptedEngine) -> tuple[Sampler, EngineService]:
    service = EngineService("m", {}, engine)
    return Sampler(service, PolicyBook()), service


def job(service: EngineService, policy: str, **over: Any) -> SamplingJob:
    fields: dict[str, Any] = {
        "request_id": "r",
        "tenant": "t",
        "model": "m",
        "prompt": service.tokenize("Q: 1+1=?"),
        "max_tokens": 16,
        "temperature": 1.0,
        "top_p": None,
        "stop": [],
        "seed": None,
        "policy": policy,
        "aggregator": "majority",
        "extractor": "last_number",
        "max_samples": 16,
        "max_cost": None,
        "deadline_ms": None,
        "timeout_s": 30.0,
        **over,
    }
    return SamplingJob(**fields)


async def test_fixed_k_draws_one_wave_and_bills_exactly_what_was_generated() -> None:
    engine = ScriptedEngine(cycle("A: 2", "A: 2", "A: 3"))
    sampler, service = make(engine)
    billing = RecordingBilling()
    out = await sampler.run(job(service, "fixed:6"), billing)
    assert (out.samples, out.waves, out.answer, out.stop_reason) == (6, 1, "2", "fixed")
    assert out.votes == {"2": 4, "3": 2}
    assert out.text == "A: 2"  # the returned text carries the winning answer
    [(hold, prompt, completion)] = billing.settled
    assert hold.samples == 6 and completion == 6 * 4 and prompt == len("Q: 1+1=?")
    assert (out.prompt_tokens, out.completion_tokens) == (prompt, completion)
    assert billing.closed == 1


async def test_a_waves_samples_count_in_draw_order_whatever_order_they_finish_in() -> None:
    # Each sample is its own engine request, so the short one finishes first; a 1-1 tie and the
    # returned text must still follow draw order, or a seed would not reproduce the answer.
    engine = ScriptedEngine(cycle("A: 10", "A: 2"))
    sampler, service = make(engine)
    out = await sampler.run(job(service, "fixed:2"), RecordingBilling())
    assert out.votes == {"10": 1, "2": 1}
    assert (out.answer, out.text, out.chosen_index) == ("10", "A: 10", 0)


async def test_every_wave_reuses_the_one_tokenized_prompt_and_moves_the_seed() -> None:
    engine = ScriptedEngine(cycle("A: 1", "A: 2"), request_seed=True)
    sampler, service = make(engine)
    the_job = job(service, "esc:2", seed=42, max_samples=8)
    out = await sampler.run(the_job, RecordingBilling())
    assert out.waves >= 2 and len(engine.calls) == out.waves
    assert all(call.prompt is the_job.prompt for call in engine.calls)  # never re-tokenized
    seeds = [c.params.seed for c in engine.calls]
    assert seeds == [wave_seed(42, w) for w in range(out.waves)] and len(set(seeds)) == out.waves
    assert wave_seed(43, 0) - wave_seed(42, 0) not in range(-64, 65)  # nearby seeds stay apart
    unseeded = ScriptedEngine(cycle("A: 1"), request_seed=False)
    sampler, service = make(unseeded)
    await sampler.run(job(service, "fixed:2", seed=42), RecordingBilling())
    assert unseeded.calls[0].params.seed is None  # declared unsupported: not forwarded


async def test_budget_refusal_first_is_raised_and_later_stops_with_what_was_drawn() -> None:
    sampler, service = make(ScriptedEngine(cycle("A: 1", "A: 2")))
    refused = RecordingBilling(grants=[InsufficientQuota("spent", retry_after_s=3.0)])
    with pytest.raises(InsufficientQuota):
        await sampler.run(job(service, "esc:2"), refused)
    assert refused.closed == 1 and not refused.settled
    later = RecordingBilling(grants=[2, InsufficientQuota("spent")])
    out = await sampler.run(job(service, "esc:2"), later)
    assert (out.samples, out.stop_reason) == (2, "budget")
    shrunk = RecordingBilling(grants=[1])  # the ledger granted 1 of 2: the budget is spent
    out = await sampler.run(job(service, "esc:2"), shrunk)
    assert (out.samples, out.stop_reason) == (1, "budget")


async def test_max_cost_fits_the_wave_to_what_is_left() -> None:
    sampler, service = make(ScriptedEngine(cycle("A: 1", "A: 2")))
    billing = RecordingBilling()
    # a wave's worst case is the prompt (8 tokens) + 16 per sample: 60 fits 3 samples, not 4;
    # they cost 8 + 3 × 4 = 20, and the 40 left fit the last 2 samples' worst case (8 + 32)
    out = await sampler.run(job(service, "fixed:5", max_cost=60.0), billing)
    assert [h.samples for h in billing.reserved] == [3, 2]
    assert out.samples == 5 and out.cost == 20 + 16 <= 60.0
    tight = RecordingBilling()
    out = await sampler.run(job(service, "fixed:5", max_cost=30.0), tight)
    assert [h.samples for h in tight.reserved] == [1]  # 8 + 16 ≤ 30; then 8 + 16 > 30 - 12
    assert (out.samples, out.stop_reason) == (1, "max_cost")


async def test_a_cancelled_request_aborts_the_wave_and_still_bills_its_tokens() -> None:
    engine = ScriptedEngine(cycle("x" * 40), token_s=0.01)
    sampler, service = make(engine)
    billing = RecordingBilling()
    task = asyncio.create_task(sampler.run(job(service, "fixed:4", max_tokens=40), billing))
    while not engine.calls:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # about 10 of each sample's 40 tokens
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == ["r-w0"]
    [(_, _, completion)] = billing.settled
    usage = engine.request_usage("r-w0")
    assert usage is not None and 4 * 5 <= completion == usage.completion_tokens < 4 * 40
    assert billing.closed == 1


async def test_a_long_wave_whose_caller_leaves_with_no_sample_logs_the_engine_state(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose timeout matches the server's leaves just before the wave's limit: the
    stall must be logged all the same, or a stalled engine whose clients give up leaves no trace."""
    monkeypatch.setattr(loop_module, "STALL_LOG_S", 0.05)
    engine = ScriptedEngine(cycle("x" * 40), token_s=0.05)
    sampler, service = make(engine)
    billing = RecordingBilling()
    task = asyncio.create_task(sampler.run(job(service, "fixed:2", max_tokens=40), billing))
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [stall] = [r.getMessage() for r in caplog.records if "none of its" in r.getMessage()]
    assert "r-w0" in stall and "caller left" in stall and "1 running" in stall


async def test_no_sample_in_time_is_an_upstream_timeout_and_the_wave_is_settled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = ScriptedEngine(cycle("x" * 40), token_s=0.05)
    sampler, service = make(engine)
    billing = RecordingBilling()
    with pytest.raises(UpstreamTimeout):
        await sampler.run(job(service, "fixed:2", max_tokens=40, timeout_s=0.05), billing)
    assert engine.aborted == ["r-w0"] and len(billing.settled) == 1
    # the log says what the engine held at the limit (its one request still running)
    [stall] = [r.getMessage() for r in caplog.records if "finished in time" in r.getMessage()]
    assert "r-w0" in stall and "1 running" in stall and "1 unfinished" in stall


async def test_the_policy_book_stays_bounded_whatever_specs_clients_send() -> None:
    book = PolicyBook(capacity=64)
    engine = ScriptedEngine(cycle("A: 1", "A: 1", "A: 2"))
    sampler = Sampler(EngineService("m", {}, engine), book)
    service = sampler.engine
    await sampler.run(job(service, "t2"), RecordingBilling())  # warm the shared tables
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(3000):
        spec = f"t2:lam={0.001 + i * 1e-7:.7f}"
        out: Outcome = await sampler.run(job(service, spec, request_id=f"r{i}"), RecordingBilling())
        assert out.samples >= 1
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(book) == 64
    assert grown < 20 * 2**20, f"the policy book grew {grown / 2**20:.1f} MiB over 3,000 specs"
