"""The wave loop: ask the policy for a wave, reserve it, draw it, settle it, repeat; then
aggregate the samples into one answer.

Why it lives in server/ and not controller/: it awaits the engine and the ledger. The decisions
it follows (how many to draw, when to stop, which answer wins) are controller/ code; this module
only sequences them, enforces the request's caps (max_samples, max_cost, deadline) and keeps the
token accounting that `usage` and billing both read, so the two can never disagree.

Seams: the engine is reached only through `EngineService`, billing only through the `Billing`
protocol, the policy through `Policy.start` → `PolicyRun.decide`, aggregation through
`controller.aggregate`, and whoever waits on the job through one `RunListener`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable
from typing import Protocol

from controller.aggregate import (
    AggregateResult,
    Candidate,
    Verifier,
    aggregate,
    get_extractor,
    score_candidates,
)
from controller.policy.base import Caps
from server import metrics
from server.billing.protocol import Billing, WaveHold
from server.engine.base import Sample
from server.engine.service import EngineService
from server.errors import APIError, InsufficientQuota, UpstreamTimeout
from server.sampling.job import Outcome, SamplingJob, WaveTally
from server.sampling.policies import PolicyBook

log = logging.getLogger("t2serve.sampling")
VERIFIED_METHODS = ("verifier", "best_of_n")


class RunListener(Protocol):
    """Who waits on a job: told once sampling has begun, and after every wave."""

    def reserved(self) -> None:
        """The first wave was granted: errors from here on reach the client mid-answer."""

    def wave_done(self, wave: int, drawn: int) -> None:
        """Wave `wave` (1-based count) finished; `drawn` samples so far."""


def _status(exc: BaseException | None) -> int:
    """The HTTP status a request leaving the wave loop this way gets (for its spend log)."""
    if exc is None:
        return 200
    if isinstance(exc, APIError):
        return exc.status
    return 499 if isinstance(exc, asyncio.CancelledError) else 500


class Sampler:
    """Runs `SamplingJob`s against one model's engine. Safe to share between requests."""

    def __init__(self, engine: EngineService, policies: PolicyBook) -> None:
        self.engine = engine
        self.policies = policies

    async def run(
        self,
        job: SamplingJob,
        billing: Billing,
        listener: RunListener | None = None,
        verifier: Verifier | None = None,
    ) -> Outcome:
        """Sample until the policy stops (or a cap does), settling each wave; then aggregate
        (scoring the samples with `verifier` for the `verifier` and `best_of_n` methods).

        Cancellation (a client disconnect) aborts the wave in flight and still settles the
        tokens generated so far before the CancelledError propagates.
        """
        out = Outcome(policy=job.policy, cost_unit=billing.unit, prompt_length=job.prompt_tokens)
        policy = self.policies.get(job.tenant, job.model, job.policy)
        price = billing.price_of_compute()
        per_sample = max(billing.quote(job.prompt_tokens, job.max_tokens), 1e-12)
        caps = Caps(max_samples=job.max_samples, cost_per_sample=per_sample, cost_unit=billing.unit)
        run = policy.start(caps, price)
        field = {"field": job.json_field} if job.json_field else {}
        extract = get_extractor(job.extractor, **field)
        drawn: list[Sample] = []
        answers: list[str | None] = []
        started = time.monotonic()
        hard_stop = started + job.timeout_s
        soft_stop = started + job.deadline_ms / 1000 if job.deadline_ms else None
        try:
            while True:
                step = run.decide(answers)
                if step.stop:
                    out.stop_reason = step.reason or "policy"
                    break
                if soft_stop is not None and drawn and time.monotonic() >= soft_stop:
                    out.stop_reason = "deadline"
                    break
                size = min(step.wave, job.max_samples - len(drawn))
                if job.max_cost is not None:
                    size = _fit_cost(billing, size, job, job.max_cost - out.cost)
                    if size < 1:
                        if drawn:
                            out.stop_reason = "max_cost"
                            break
                        size = 1  # the first sample is always tried; the ledger decides if it fits
                asked = WaveHold(out.waves, size, job.prompt_tokens, job.max_tokens)
                try:
                    hold = await billing.reserve(asked)
                except InsufficientQuota:
                    if not drawn:
                        raise  # not even one sample fits: the API answers 429
                    out.stop_reason = "budget"  # ran out mid-request: answer with what we have
                    break
                if listener is not None:
                    listener.reserved()
                limit = hard_stop if soft_stop is None or not drawn else min(hard_stop, soft_stop)
                samples, timed_out = await self._draw(job, hold, limit, billing, out)
                out.waves += 1
                drawn.extend(samples)
                answers.extend(extract(s.text) for s in samples)
                if listener is not None:
                    listener.wave_done(out.waves, len(drawn))
                if timed_out:
                    if not drawn:
                        raise UpstreamTimeout(f"no sample finished within {job.timeout_s:g} s")
                    out.stop_reason = "deadline"
                    break
                if hold.samples < size:
                    out.stop_reason = "budget"  # the ledger shrank the wave: the budget is spent
                    break
        finally:
            out.samples = len(drawn)
            paced = billing.price_of_compute()
            out.price_of_compute = paced.lam if paced is not None else None
            billing.finish(out.stop_reason, _status(sys.exc_info()[1]), out.samples)
            try:
                await _uncancellable(billing.close())
            except Exception:
                log.exception("closing the billing of %s failed", job.request_id)

        if not drawn:
            raise UpstreamTimeout("the engine returned no samples")
        policy.observe(answers)
        result = await _aggregate(job, answers, drawn, verifier)
        chosen = drawn[result.chosen_index if result.chosen_index is not None else 0]
        out.text = chosen.text
        out.logprobs = chosen.logprobs
        out.finish_reason = chosen.finish_reason or "stop"
        out.answer = result.answer
        out.votes = dict(result.votes)
        out.agreement = result.agreement
        out.chosen_index = result.chosen_index
        out.aggregator = result.method
        out.note = result.note
        out.predicted_accuracy = run.predicted_accuracy
        return out

    async def _draw(
        self, job: SamplingJob, hold: WaveHold, deadline: float, billing: Billing, out: Outcome
    ) -> tuple[list[Sample], bool]:
        """Draw one wave and settle it whatever happens; True when the time limit cut it short."""
        engine_id = f"{job.request_id}-w{hold.wave}"
        tally = WaveTally()
        samples: list[Sample] = []
        timed_out = False
        try:
            params = self.engine.params(
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                stop=job.stop,
                seed=job.seed,
                wave=hold.wave,
                options=job.options,
            )
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for sample in self.engine.sample(job.prompt, hold.samples, params, engine_id):
                    tally.prompt_tokens = sample.prompt_tokens_computed
                    tally.completion_tokens += sample.completion_tokens
                    samples.append(sample)
        except TimeoutError:
            timed_out = True
        finally:
            # Abort and settle even when cancelled (a disconnect), and even if cancelled again
            # while doing so: the tenant pays for exactly the tokens the engine generated.
            unfinished = len(samples) < hold.samples
            await _uncancellable(
                self._close_wave(job, hold, engine_id, unfinished, tally, billing, out)
            )
        return samples, timed_out

    async def _close_wave(
        self,
        job: SamplingJob,
        hold: WaveHold,
        engine_id: str,
        unfinished: bool,
        tally: WaveTally,
        billing: Billing,
        out: Outcome,
    ) -> None:
        if unfinished:
            try:
                await self.engine.abort(engine_id)
            except Exception:
                log.exception("aborting %s failed", engine_id)
            # Samples cut off part-way were never delivered, but their tokens were generated:
            # the engine's own per-request figures are the bill.
            usage = self.engine.undelivered_usage(engine_id)
            if usage is not None:
                tally.prompt_tokens = max(tally.prompt_tokens, usage.prompt_tokens_computed)
                tally.completion_tokens = max(tally.completion_tokens, usage.completion_tokens)
        if hold.wave == 0:  # what OpenAI's usage calls cached: the first request's cache hits
            out.cached_prompt_tokens = max(0, job.prompt_tokens - tally.prompt_tokens)
        out.prompt_tokens += tally.prompt_tokens
        out.completion_tokens += tally.completion_tokens
        metrics.add_tokens(
            job.tenant, job.model, prompt=tally.prompt_tokens, completion=tally.completion_tokens
        )
        try:
            cost = await billing.settle(
                hold, prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens
            )
        except Exception:
            log.exception("settling wave %s of %s failed", hold.wave, job.request_id)
            return
        out.cost += cost
        if billing.unit == "currency":
            metrics.add_spend(job.tenant, currency=cost)
        elif billing.unit == "flops":
            metrics.add_spend(job.tenant, flops=cost)


async def _uncancellable(work: Awaitable[None]) -> None:
    """Run `work` to completion; re-raise a cancellation that arrived meanwhile, afterwards."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _fit_cost(billing: Billing, size: int, job: SamplingJob, left: float) -> int:
    """The largest wave ≤ size whose worst case fits in what `max_cost` leaves."""
    while size >= 1 and billing.quote(job.prompt_tokens, size * job.max_tokens) > left:
        size -= 1
    return size


async def _aggregate(
    job: SamplingJob,
    answers: list[str | None],
    drawn: list[Sample],
    verifier: Verifier | None,
) -> AggregateResult:
    """Vote over the drawn samples. Verifier methods score them first; without a verifier, or
    when it fails, they fall back to majority and the result's note says why."""
    scores: list[float] | None = None
    error: str | None = None
    if job.aggregator in VERIFIED_METHODS:
        if verifier is None:
            error = "no verifier is configured for this tenant"
        else:
            scored = await score_candidates(verifier, job.prompt.text, [s.text for s in drawn])
            scores, error = scored.scores, scored.error
    candidates = [
        Candidate(answer=a, logprob=s.mean_logprob, score=scores[i] if scores else None)
        for i, (a, s) in enumerate(zip(answers, drawn, strict=True))
    ]
    return aggregate(candidates, job.aggregator, verifier_error=error)
