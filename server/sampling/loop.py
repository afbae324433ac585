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
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Protocol

from controller.aggregate import (
    AggregateResult,
    Candidate,
    aggregate,
    get_extractor,
    score_candidates,
)
from controller.aggregate.vote import VERIFIED, count_votes
from controller.policy.base import Caps
from controller.policy.factory import make_policy
from controller.routing import Route, cascade_answer, route_price
from server import metrics
from server.billing.protocol import Billing, WaveHold
from server.engine.base import Sample
from server.engine.service import EngineService
from server.errors import APIError, InsufficientQuota, UpstreamTimeout
from server.sampling.job import Outcome, RoutedJob, RouteReport, SamplingJob, WaveTally
from server.sampling.policies import PolicyBook
from server.verifiers import ServedVerifier

log = logging.getLogger("t2serve.sampling")
VERIFIED_METHODS = VERIFIED


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
    """Runs `SamplingJob`s against the served models' engines (one model's, or a route's
    candidates', switching model between waves). Safe to share between requests."""

    def __init__(
        self, engines: EngineService | Mapping[str, EngineService], policies: PolicyBook
    ) -> None:
        if isinstance(engines, EngineService):
            engines = {engines.model_id: engines}
        self.engines = dict(engines)
        self.engine = next(iter(self.engines.values()))
        self.policies = policies

    def _engine(self, job: SamplingJob) -> EngineService:
        return self.engines.get(job.model, self.engine)

    async def run(
        self,
        job: SamplingJob,
        billing: Billing,
        listener: RunListener | None = None,
        verifier: ServedVerifier | None = None,
    ) -> Outcome:
        """Sample until the policy stops (or a cap does), settling each wave; then aggregate.

        With a `verifier`, each wave's samples are scored as they arrive and its compute billed
        like generation; the policy sees their calibrated P(correct) (verifier-aware stopping),
        the verifier methods use the scores, and any method returns the best-scored sample
        carrying the chosen answer. A verifier failure stops the scoring and the request
        degrades to a majority vote (its note says why); what was spent is still billed.

        Cancellation (a client disconnect) aborts the wave in flight and still settles the
        tokens generated so far before the CancelledError propagates.
        """
        out = Outcome(
            policy=job.policy,
            cost_unit=billing.unit,
            model=job.model,
            prompt_length=job.prompt_tokens,
        )
        policy = await self.policies.get(job.tenant, job.model, job.policy)
        price = billing.price_of_compute()
        per_sample = max(billing.quote(job.prompt_tokens, job.max_tokens), 1e-12)
        caps = Caps(max_samples=job.max_samples, cost_per_sample=per_sample, cost_unit=billing.unit)
        run = policy.start(caps, price)
        field = {"field": job.json_field} if job.json_field else {}
        extract = get_extractor(job.extractor, **field)
        drawn: list[Sample] = []
        answers: list[str | None] = []
        clock = _Clock(job)
        verdicts = _Verdicts(verifier)
        if verifier is not None:
            run.stop_at = verifier.stop_at
            out.verifier = verifier.label
        try:
            while True:
                step = run.decide(answers, verdicts.confidences())
                if step.stop:
                    out.stop_reason = step.reason or "policy"
                    break
                samples, stop = await self._wave(
                    job, self._engine(job), step.wave, len(drawn), clock, billing, out, listener
                )
                drawn.extend(samples)
                answers.extend(extract(s.text) for s in samples)
                await verdicts.score(job, samples, billing, out)
                if stop is not None:
                    out.stop_reason = stop
                    break
        finally:
            await self._close_run(job, billing, out, len(drawn))

        if not drawn:
            raise UpstreamTimeout("the engine returned no samples")
        await self.policies.observe(job.tenant, job.model, policy, answers)
        result = _aggregate(job, answers, drawn, verdicts)
        verdicts.learn(answers, result.answer)
        _fill(out, result, drawn)
        out.predicted_accuracy = run.predicted_accuracy
        return out

    async def run_routed(
        self,
        routed: RoutedJob,
        route: Route,
        billing: Billing,
        listener: RunListener | None = None,
    ) -> Outcome:
        """A routed request (controller.routing): each wave on the model the route picks; the
        billing charges each wave to the model that drew it; the answer is the cascade's."""
        first = routed.jobs[route.candidates[0].model]
        out = Outcome(
            policy=first.policy,
            cost_unit=billing.unit,
            model=first.model,
            prompt_length=first.prompt_tokens,
        )
        costs, unit = _route_costs(routed, route, billing)
        own = make_policy(first.policy).own_sample_price
        lam = route_price(own, billing.price_of_compute(), costs[first.model], unit)
        run = route.start(costs, lam, first.max_samples, routed.cheapest_first)
        extract = get_extractor(first.extractor)
        answers: dict[str, list[str | None]] = {}
        drawn: dict[str, list[Sample]] = {}
        waves: list[tuple[str, int]] = []
        clock = _Clock(first)
        total = 0
        try:
            while True:
                step = run.decide(answers)
                if step.stop:
                    out.stop_reason = step.reason or "policy"
                    break
                job = routed.jobs[step.model]
                billing.use_model(step.model)
                samples, stop = await self._wave(
                    job, self.engines[step.model], step.wave, total, clock, billing, out, listener
                )
                total += len(samples)
                drawn.setdefault(step.model, []).extend(samples)
                answers.setdefault(step.model, []).extend(extract(s.text) for s in samples)
                waves.append((step.model, len(samples)))
                if stop is not None:
                    out.stop_reason = stop
                    break
        finally:
            await self._close_run(first, billing, out, total)

        if not total:
            raise UpstreamTimeout("the engine returned no samples")
        order = list(dict.fromkeys(m for m, _ in waves))
        last = order[-1]
        answer = cascade_answer(answers, order)
        mine = answers[last]
        result = aggregate([Candidate(answer=a) for a in mine], "majority")
        chosen = next((i for i, a in enumerate(mine) if a == answer), 0)
        _fill(out, result, drawn[last])
        out.answer, out.chosen_index = answer, chosen
        out.text = drawn[last][chosen].text
        out.logprobs = drawn[last][chosen].logprobs
        out.finish_reason = drawn[last][chosen].finish_reason or "stop"
        out.votes = {f"{m}:{a}": v for m in order for a, v in count_votes(answers[m]).items()}
        out.agreement = mine.count(answer) / len(mine) if answer is not None and mine else 0.0
        out.model = last
        out.predicted_accuracy = run.predicted_accuracy
        out.route = RouteReport(
            route=route.id,
            model=last,
            lam=lam,
            cost_unit=unit,
            candidates=list(run.plans),
            waves=waves,
        )
        return out

    async def _wave(
        self,
        job: SamplingJob,
        engine: EngineService,
        wanted: int,
        drawn: int,
        clock: _Clock,
        billing: Billing,
        out: Outcome,
        listener: RunListener | None,
    ) -> tuple[list[Sample], str | None]:
        """Reserve, draw and settle one wave of up to `wanted` samples (`drawn` so far);
        returns its samples and why sampling must stop now (None: the policy may go on).
        Raises before the first sample when not even one fits the budget or arrives in time."""
        if clock.soft_stop is not None and drawn and time.monotonic() >= clock.soft_stop:
            return [], "deadline"
        size = min(wanted, job.max_samples - drawn)
        if job.max_cost is not None:
            size = _fit_cost(billing, size, job, job.max_cost - out.cost)
            if size < 1:
                if drawn:
                    return [], "max_cost"
                size = 1  # the first sample is always tried; the ledger decides if it fits
        asked = WaveHold(out.waves, size, job.prompt_tokens, job.max_tokens)
        try:
            hold = await billing.reserve(asked)
        except InsufficientQuota:
            if not drawn:
                raise  # not even one sample fits: the API answers 429
            return [], "budget"  # ran out mid-request: answer with what we have
        if listener is not None:
            listener.reserved()
        limit = clock.limit(drawn)
        samples, timed_out = await self._draw(job, hold, limit, billing, out, engine)
        out.waves += 1
        if listener is not None:
            listener.wave_done(out.waves, drawn + len(samples))
        if timed_out:
            if not drawn and not samples:
                raise UpstreamTimeout(f"no sample finished within {job.timeout_s:g} s")
            return samples, "deadline"
        if hold.samples < size:
            return samples, "budget"  # the ledger shrank the wave: the budget is spent
        return samples, None

    async def _close_run(
        self, job: SamplingJob, billing: Billing, out: Outcome, drawn: int
    ) -> None:
        out.samples = drawn
        paced = billing.price_of_compute()
        out.price_of_compute = paced.lam if paced is not None else None
        billing.finish(out.stop_reason, _status(sys.exc_info()[1]), out.samples)
        try:
            await _uncancellable(billing.close())
        except Exception:
            log.exception("closing the billing of %s failed", job.request_id)

    async def _draw(
        self,
        job: SamplingJob,
        hold: WaveHold,
        deadline: float,
        billing: Billing,
        out: Outcome,
        engine: EngineService,
    ) -> tuple[list[Sample], bool]:
        """Draw one wave and settle it whatever happens; True when the time limit cut it short."""
        engine_id = f"{job.request_id}-w{hold.wave}"
        tally = WaveTally()
        samples: list[Sample] = []
        timed_out = False
        try:
            params = engine.params(
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                stop=job.stop,
                seed=job.seed,
                wave=hold.wave,
                options=job.options,
            )
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for sample in engine.sample(job.prompt, hold.samples, params, engine_id):
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
                self._close_wave(job, hold, engine_id, unfinished, tally, billing, out, engine)
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
        engine: EngineService,
    ) -> None:
        if unfinished:
            try:
                await engine.abort(engine_id)
            except Exception:
                log.exception("aborting %s failed", engine_id)
            # Samples cut off part-way were never delivered, but their tokens were generated:
            # the engine's own per-request figures are the bill.
            usage = engine.undelivered_usage(engine_id)
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


class _Clock:
    """A request's time limits: the hard timeout, and the soft `deadline_ms` after which no
    new wave starts (the first wave always may)."""

    def __init__(self, job: SamplingJob) -> None:
        started = time.monotonic()
        self.hard_stop = started + job.timeout_s
        self.soft_stop = started + job.deadline_ms / 1000 if job.deadline_ms else None

    def limit(self, drawn: int) -> float:
        if self.soft_stop is None or not drawn:
            return self.hard_stop
        return min(self.hard_stop, self.soft_stop)


def _fill(out: Outcome, result: AggregateResult, drawn: list[Sample]) -> None:
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


def _route_costs(routed: RoutedJob, route: Route, billing: Billing) -> tuple[dict[str, float], str]:
    """Each candidate's worst-case cost of one sample, in the tenant's unit (currency or
    FLOPs); for unmetered tenants, whose unit is tokens, in FLOPs (2·N per token): a token of
    the larger model is not as cheap as one of the smaller."""
    costs: dict[str, float] = {}
    metered = billing.unit in ("currency", "flops")
    for cand in route.candidates:
        job = routed.jobs[cand.model]
        if metered:
            cost = billing.quote(job.prompt_tokens, job.max_tokens, model=cand.model)
        else:
            cost = 2.0 * cand.params * (job.prompt_tokens + job.max_tokens)
        costs[cand.model] = max(cost, 1e-12)
    return costs, billing.unit if metered else "flops"


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


class _Verdicts:
    """One request's verifier scores, wave by wave: scoring, billing the verifier's compute,
    and remembering the first failure (after which nothing more is scored)."""

    def __init__(self, verifier: ServedVerifier | None) -> None:
        self.verifier = verifier
        self.scores: list[float] = []
        self.error: str | None = None
        self.calls = 0

    def confidences(self) -> list[float] | None:
        if self.verifier is None or self.error is not None or not self.scores:
            return None
        return self.verifier.p_correct(self.scores)

    async def score(
        self, job: SamplingJob, samples: list[Sample], billing: Billing, out: Outcome
    ) -> None:
        verifier = self.verifier
        if verifier is None or self.error is not None or not samples:
            return
        spent_before = verifier.spend.tokens
        try:
            scored = await score_candidates(
                verifier, job.prompt.text, [s.text for s in samples], verifier.timeout_s
            )
        finally:
            await _uncancellable(self._bill(job, verifier, spent_before, billing, out))
        if scored.scores is None:
            self.error = scored.error or f"{verifier.name}: failed"
            log.warning("verifier failed for %s: %s", job.request_id, self.error)
        else:
            self.scores.extend(scored.scores)

    async def _bill(
        self,
        job: SamplingJob,
        verifier: ServedVerifier,
        before: int,
        billing: Billing,
        out: Outcome,
    ) -> None:
        """Charge the tokens this call read and wrote (also when it failed part-way)."""
        spend = verifier.spend
        tokens = spend.tokens - before
        out.verifier_tokens = spend.tokens
        if spend.model is None or tokens <= 0:
            return
        self.calls += 1
        try:
            cost = await billing.charge(
                spend.model,
                self.calls,
                prompt_tokens=spend.prompt_tokens - out.verifier_billed_prompt,
                completion_tokens=spend.completion_tokens - out.verifier_billed_completion,
            )
        except Exception:
            log.exception("billing the verifier of %s failed", out.verifier)
            return
        out.verifier_billed_prompt = spend.prompt_tokens
        out.verifier_billed_completion = spend.completion_tokens
        out.cost += cost
        out.verifier_cost += cost
        if billing.unit == "currency":
            metrics.add_spend(job.tenant, currency=cost)
        elif billing.unit == "flops":
            metrics.add_spend(job.tenant, flops=cost)

    def learn(self, answers: list[str | None], final: str | None) -> None:
        """Refresh the calibration from this request (agreement with a clear answer)."""
        if self.verifier is not None and self.error is None and len(self.scores) == len(answers):
            self.verifier.score_map.observe(self.scores, answers, final)


def _aggregate(
    job: SamplingJob, answers: list[str | None], drawn: list[Sample], verdicts: _Verdicts
) -> AggregateResult:
    """Vote over the drawn samples with their scores. Verifier methods without a verifier, or
    whose verifier failed, fall back to majority and the result's note says why."""
    error = verdicts.error
    complete = error is None and verdicts.verifier is not None
    scores = verdicts.scores if complete and len(verdicts.scores) == len(drawn) else None
    if job.aggregator in VERIFIED_METHODS and verdicts.verifier is None:
        error = "no verifier is configured for this tenant"
    candidates = [
        Candidate(answer=a, logprob=s.mean_logprob, score=scores[i] if scores else None)
        for i, (a, s) in enumerate(zip(answers, drawn, strict=True))
    ]
    result = aggregate(candidates, job.aggregator, verifier_error=error)
    if error is not None and verdicts.verifier is not None and not result.degraded:
        note = f"verifier failed ({error}); the returned text is the first with the answer"
        result = replace(result, note=note)
    return result
