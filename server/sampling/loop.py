"""The wave loop: ask the plan for a (model, wave), reserve it, draw it, settle it, score it,
repeat; then aggregate the samples into one answer.

One loop serves every request. A single model is the trivial route (`plans.ModelPlan`); a route
is a policy over (model, wave) choices (`plans.RoutePlan`). Verifiers, verifier-aware stopping,
`json_field`, `max_cost`, deadlines and every aggregator work the same on both. A wave that
draws nothing (a budget refusal, `max_cost`, the deadline's soft stop) ends the request with the
answer so far and a `stop_reason` saying why.

Why it lives in server/ and not controller/: it awaits the engine and the ledger. The decisions
it follows (how many to draw, which model, when to stop, which answer wins) are controller/
code; this module only sequences them, enforces the request's caps and keeps the token
accounting (`Spend`) that `usage` and billing both read, so the two can never disagree.

Seams: the engine is reached only through `EngineService`, billing only through the `Billing`
protocol, the plan through `Plan.next`, aggregation through `controller.aggregate`, and
whoever waits on the job through one `RunListener`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from controller.aggregate import (
    AggregateResult,
    Candidate,
    aggregate,
    chosen_for,
    get_extractor,
    score_candidates,
)
from controller.aggregate.vote import VERIFIED
from controller.policy.base import Caps, Policy
from controller.policy.factory import make_policy
from controller.routing import Route, cascade_answer, route_price
from controller.shield import uncancellable
from server import metrics
from server.billing.protocol import Billing, SettlePending, WaveHold
from server.engine.base import Sample
from server.engine.service import EngineService
from server.errors import APIError, EngineError, InsufficientQuota, LedgerDown, UpstreamTimeout
from server.sampling.job import Outcome, RoutedJob, RouteReport, SamplingJob, Spend, WaveTally
from server.sampling.plans import ModelPlan, Plan, RoutePlan
from server.sampling.policies import PolicyBook
from server.sampling.route_prices import route_prices
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


@dataclass(frozen=True)
class Drawn:
    """One sample as the loop keeps it: who drew it, and the answer extracted from it."""

    model: str
    sample: Sample
    answer: str | None


@dataclass
class Draws:
    """Every sample of a run in draw order, each model's answers, and the waves that drew."""

    items: list[Drawn] = field(default_factory=list)
    answers: dict[str, list[str | None]] = field(default_factory=dict)
    waves: list[tuple[str, int]] = field(default_factory=list)

    def add(self, model: str, samples: list[Sample], extract: Callable[[str], str | None]) -> None:
        if not samples:
            return
        mine = self.answers.setdefault(model, [])
        for sample in samples:
            answer = extract(sample.text)
            self.items.append(Drawn(model, sample, answer))
            mine.append(answer)
        self.waves.append((model, len(samples)))

    @property
    def order(self) -> list[str]:
        """The models that drew, in the order they first did."""
        return list(self.answers)


@dataclass(frozen=True)
class _Setup:
    """A run's fixed parts: the plan, the jobs by model, and (for a route) its report's λ."""

    plan: Plan
    jobs: Mapping[str, SamplingJob]
    first: SamplingJob
    route: Route | None = None
    lam: float = 0.0
    unit: str = "tokens"
    policy: Policy | None = None  # a single model's long-lived policy (it learns from answers)


class Sampler:
    """Runs jobs against the served models' engines: a `SamplingJob` on its model, or a
    `RoutedJob` across its route's candidates, switching model between waves. Safe to share
    between requests."""

    def __init__(
        self, engines: EngineService | Mapping[str, EngineService], policies: PolicyBook
    ) -> None:
        if isinstance(engines, EngineService):
            engines = {engines.model_id: engines}
        self.engines = dict(engines)
        self.engine = next(iter(self.engines.values()))
        self.policies = policies

    def _engine(self, model: str) -> EngineService:
        return self.engines.get(model, self.engine)

    async def run(
        self,
        job: SamplingJob | RoutedJob,
        billing: Billing,
        listener: RunListener | None = None,
        verifier: ServedVerifier | None = None,
        route: Route | None = None,
    ) -> Outcome:
        """Sample until the plan stops (or a cap does), settling each wave; then aggregate.

        With a `verifier`, each wave's samples are scored as they arrive: its worst case is held
        first (a refused hold stops the scoring and the request degrades to a plain vote, its
        note says why) and its compute billed like generation. The plan sees their calibrated
        P(correct) (verifier-aware stopping), the verifier methods use the scores, and any
        method returns the best-scored sample carrying the chosen answer.

        Cancellation (a client disconnect) aborts the wave in flight and still settles the
        tokens generated so far before the CancelledError propagates.
        """
        setup = await self._setup(job, billing, verifier, route)
        first = setup.first
        field_ = {"field": first.json_field} if first.json_field else {}
        extract = get_extractor(first.extractor, **field_)
        spend = Spend(unit=billing.unit)
        draws = Draws()
        clock = _Clock(first)
        verdicts = _Verdicts(verifier)
        stop_reason = ""
        try:
            while True:
                step = setup.plan.next(draws.answers, verdicts.confidences())
                if step.stop:
                    stop_reason = step.reason or "policy"
                    break
                current = setup.jobs[step.model]
                billing.use_model(step.model)
                wave = spend.waves
                samples, stop = await self._wave(
                    current, step.wave, len(draws.items), clock, billing, spend, listener
                )
                draws.add(step.model, samples, extract)
                await verdicts.score(current, wave, samples, billing, spend)
                if stop is not None:
                    stop_reason = stop
                    break
        finally:
            await self._close_run(first, billing, spend, stop_reason, len(draws.items))

        if not draws.items:
            raise UpstreamTimeout("the engine returned no samples")
        answers = [d.answer for d in draws.items]
        if setup.policy is not None:
            await self.policies.observe(first.tenant, first.model, setup.policy, answers)
        result, chosen, model = _conclude(first, draws, verdicts)
        verdicts.learn(answers, result.answer)
        return _outcome(setup, spend, draws, verdicts, result, chosen, model, stop_reason, billing)

    async def _setup(
        self,
        job: SamplingJob | RoutedJob,
        billing: Billing,
        verifier: ServedVerifier | None,
        route: Route | None,
    ) -> _Setup:
        """The run's plan: the request's policy on its one model, or the route's router."""
        stop_at = verifier.stop_at if verifier is not None else None
        if isinstance(job, SamplingJob):
            policy = await self.policies.get(job.tenant, job.model, job.policy)
            per_sample = max(billing.quote(job.prompt_tokens, job.max_tokens), 1e-12)
            # max_cost is enforced per wave (`_fit_cost`, through Caps) on what was actually
            # spent: a cap on drawn × worst case would stop long before the money runs out
            caps = Caps(
                max_samples=job.max_samples, cost_per_sample=per_sample, cost_unit=billing.unit
            )
            run = policy.start(caps, billing.price_of_compute())
            run.stop_at = stop_at
            return _Setup(ModelPlan(job.model, run), {job.model: job}, job, policy=policy)
        if route is None:
            raise ValueError(f"a routed job needs its route ({job.route})")
        first = job.jobs[route.candidates[0].model]
        prices = route_prices(job, route, billing, _spendable(billing, first.max_cost))
        own = make_policy(first.policy).own_sample_price
        lam = route_price(own, billing.price_of_compute(), prices.yardstick(), prices.unit)
        plan = RoutePlan.start(route, prices, lam, first.max_samples, job.cheapest_first, stop_at)
        return _Setup(plan, job.jobs, first, route, lam, prices.unit)

    async def _wave(
        self,
        job: SamplingJob,
        wanted: int,
        drawn: int,
        clock: _Clock,
        billing: Billing,
        spend: Spend,
        listener: RunListener | None,
    ) -> tuple[list[Sample], str | None]:
        """Reserve, draw and settle one wave of up to `wanted` samples (`drawn` so far);
        returns its samples and why sampling must stop now (None: the plan may go on).
        Raises before the first sample when not even one fits the budget or arrives in time."""
        if clock.soft_stop is not None and drawn and time.monotonic() >= clock.soft_stop:
            return [], "deadline"
        size = min(wanted, job.max_samples - drawn)
        if size < 1:
            return [], "max_samples"
        if job.max_cost is not None:
            size = _fit_cost(billing, size, job, job.max_cost - spend.cost)
            if size < 1:
                if drawn:
                    return [], "max_cost"
                size = 1  # the first sample is always tried; the ledger decides if it fits
        asked = WaveHold(spend.waves, size, job.prompt_tokens, job.max_tokens)
        try:
            hold = await billing.reserve(asked)
        except InsufficientQuota:
            if not drawn:
                raise  # not even one sample fits: the API answers 429
            return [], "budget"  # ran out mid-request: answer with what we have
        except LedgerDown:
            if not drawn:
                raise  # nothing drawn, nothing charged: the API answers 503
            return [], "ledger_unavailable"  # answer with what was drawn (and charged)
        if listener is not None:
            listener.reserved()
        limit = clock.limit(drawn)
        failure: EngineError | None = None
        try:
            samples, timed_out = await self._draw(job, hold, limit, billing, spend)
        except _EngineFailed as failed:
            if not drawn and not failed.samples:
                raise failed.error from None  # nothing to answer with: the engine's 502/503
            samples, timed_out, failure = failed.samples, False, failed.error
        spend.waves += 1
        if listener is not None:
            listener.wave_done(spend.waves, drawn + len(samples))
        if failure is not None:
            # The model failed after samples were drawn and paid for (a route's escalation, a
            # later wave, or part of this one): answer with them, as a budget cut does.
            log.warning("wave %s of %s on %s failed (%s): answering with the %d samples drawn",
                        hold.wave, job.request_id, job.model, failure.code,
                        drawn + len(samples))  # fmt: skip
            spend.notes.append(f"{job.model} failed ({failure.code}); the answer is from the "
                               "samples drawn before")  # fmt: skip
            return samples, "engine_unavailable"
        if timed_out:
            if not drawn and not samples:
                raise UpstreamTimeout(f"no sample finished within {job.timeout_s:g} s")
            return samples, "deadline"
        if hold.samples < size:
            return samples, "budget"  # the ledger shrank the wave: the budget is spent
        return samples, None

    async def _close_run(
        self, job: SamplingJob, billing: Billing, spend: Spend, stop_reason: str, drawn: int
    ) -> None:
        billing.finish(stop_reason, _status(sys.exc_info()[1]), drawn)
        try:
            await uncancellable(billing.close())
        except Exception:
            log.exception("closing the billing of %s failed", job.request_id)

    async def _draw(
        self,
        job: SamplingJob,
        hold: WaveHold,
        deadline: float,
        billing: Billing,
        spend: Spend,
    ) -> tuple[list[Sample], bool]:
        """Draw one wave and settle it whatever happens; True when the time limit cut it short."""
        engine = self._engine(job.model)
        engine_id = f"{job.request_id}-w{hold.wave}"
        tally = WaveTally()
        samples: list[Sample] = []
        timed_out = False
        failed: _EngineFailed | None = None
        limit_s = max(0.0, deadline - time.monotonic())
        watch = _StallWatch(engine, limit_s)
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
            async with asyncio.timeout(limit_s):
                async for sample in engine.sample(job.prompt, hold.samples, params, engine_id):
                    tally.prompt_tokens = sample.prompt_tokens_computed
                    tally.completion_tokens += sample.completion_tokens
                    samples.append(sample)
        except TimeoutError:
            timed_out = True
        except EngineError as exc:
            if exc.status < 500:
                raise  # the request's own fault (its context, a parameter): a 400
            failed = _EngineFailed(exc, samples)
        finally:
            watch.report(engine_id, hold.samples, bool(samples), timed_out)
            # Abort and settle even when cancelled (a disconnect), and even if cancelled again
            # while doing so: the tenant pays for exactly the tokens the engine generated.
            unfinished = len(samples) < hold.samples
            await uncancellable(
                self._close_wave(job, hold, engine_id, unfinished, tally, billing, spend, engine)
            )
        # In draw order, not arrival order: each sample is its own engine request and they
        # finish in any order, but ties and the returned carrier must not depend on it (a seed
        # reproduces the answer and its text).
        samples.sort(key=lambda sample: sample.index)
        if failed is not None:
            raise failed
        return samples, timed_out

    async def _close_wave(
        self,
        job: SamplingJob,
        hold: WaveHold,
        engine_id: str,
        unfinished: bool,
        tally: WaveTally,
        billing: Billing,
        spend: Spend,
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
            spend.cached_prompt_tokens = max(0, job.prompt_tokens - tally.prompt_tokens)
        spend.add_wave(tally)
        metrics.add_tokens(
            job.tenant, job.model, prompt=tally.prompt_tokens, completion=tally.completion_tokens
        )
        try:
            cost = await billing.settle(
                hold, prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens
            )
        except SettlePending as pending:  # kept, and billed once the ledger is back
            spend.notes.append(f"billing of wave {hold.wave + 1} is {JOURNALED}")
            cost = pending.cost
        except Exception:  # retried by the billing already; its hold stays in place
            log.exception("settling wave %s of %s failed", hold.wave, job.request_id)
            spend.notes.append(f"billing of wave {hold.wave + 1} is {PENDING}")
            return
        spend.add_cost(cost)  # t2_spend_total: counted by the billing, once per settle


class _EngineFailed(Exception):
    """The engine failed part-way through a wave (settled already): the samples it delivered
    first, and its error, for the wave to decide whether there is anything to answer with."""

    def __init__(self, error: EngineError, samples: list[Sample]) -> None:
        super().__init__(str(error))
        self.error = error
        self.samples = samples


PENDING = "pending (the ledger did not answer; it is tried again as the request closes)"
"""What a client is told of a settle that failed: never the error itself, which names the
store's address or file (the log has it)."""
JOURNALED = "pending (the ledger did not answer; it is charged once the ledger is back)"
"""What a client is told of a settle the server kept to replay (server.billing.pending): the
cost is in `t2.cost`, and the ledger will bill exactly that."""


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


def _spendable(billing: Billing, max_cost: float | None) -> float | None:
    """What a request may spend at most: the least of its hard budgets' remainder and its
    `max_cost` (None: no bound known)."""
    bounds = [b for b in (billing.remaining(), max_cost) if b is not None]
    return min(bounds) if bounds else None


def _fit_cost(billing: Billing, size: int, job: SamplingJob, left: float) -> int:
    """The largest wave ≤ size whose worst case fits in what `max_cost` leaves. `Caps` turns
    the cost cap into samples, as for any policy; a wave pays its prompt once, so the cap it
    sees is what is left after the prompt, and a sample costs its completion's worst case."""
    prompt = billing.quote(job.prompt_tokens, 0)
    per_sample = max(billing.quote(0, job.max_tokens), 1e-12)
    caps = Caps(
        max_samples=size,
        cost_per_sample=per_sample,
        cost_unit=billing.unit,
        max_cost=max(0.0, left - prompt),
    )
    return caps.remaining(0)[0]


class _Verdicts:
    """One request's verifier scores, aligned with the draws: holding the scoring's worst case,
    scoring, billing the verifier's compute, and remembering the first failure or refusal
    (after which nothing more is scored and the request degrades to a plain vote)."""

    def __init__(self, verifier: ServedVerifier | None) -> None:
        self.verifier = verifier
        self.scores: list[float] = []
        self.error: str | None = None

    def confidences(self) -> list[float] | None:
        if self.verifier is None or self.error is not None or not self.scores:
            return None
        return self.verifier.p_correct(self.scores)

    def complete(self, drawn: int) -> bool:
        return self.verifier is not None and self.error is None and len(self.scores) == drawn

    async def score(
        self, job: SamplingJob, wave: int, samples: list[Sample], billing: Billing, spend: Spend
    ) -> None:
        """Score wave `wave`'s samples; its charge is keyed by that wave (a retry of the charge
        cannot bill twice)."""
        verifier = self.verifier
        if verifier is None or self.error is not None or not samples:
            return
        texts = [s.text for s in samples]
        if not await self._hold(job, verifier, wave, texts, billing, spend):
            return
        spent_before = verifier.spend.tokens, verifier.spend.prompt_tokens
        try:
            scored = await score_candidates(verifier, job.prompt.text, texts, verifier.timeout_s)
        finally:
            await uncancellable(self._bill(job, verifier, wave, spent_before, billing, spend))
        if scored.scores is None:
            self.error = scored.error or f"{verifier.name}: failed"
            log.warning("verifier failed for %s: %s", job.request_id, self.error)
        else:
            self.scores.extend(scored.scores)

    async def _hold(
        self,
        job: SamplingJob,
        verifier: ServedVerifier,
        wave: int,
        texts: list[str],
        billing: Billing,
        spend: Spend,
    ) -> bool:
        """Hold the scoring's worst case before it runs (a hard budget stays hard); False,
        with the reason kept, when the budget or `max_cost` cannot cover it."""
        worst = verifier.worst_case(job.prompt.text, texts)
        if worst is None or worst.model is None:
            return True  # free: an HTTP scorer or a checker
        quote = billing.quote(worst.prompt_tokens, worst.completion_tokens, model=worst.model)
        if job.max_cost is not None and spend.cost + quote > job.max_cost:
            self.error = f"max_cost leaves no room for {verifier.name}'s scoring"
            return False
        try:
            await billing.hold_charge(
                worst.model,
                wave,
                prompt_tokens=worst.prompt_tokens,
                completion_tokens=worst.completion_tokens,
            )
        except InsufficientQuota as exc:
            self.error = f"the budget cannot hold {verifier.name}'s scoring ({exc.message})"
            return False
        except LedgerDown:
            self.error = f"the ledger could not be reached to hold {verifier.name}'s scoring"
            return False
        return True

    async def _bill(
        self,
        job: SamplingJob,
        verifier: ServedVerifier,
        wave: int,
        before: tuple[int, int],
        billing: Billing,
        spend: Spend,
    ) -> None:
        """Charge the tokens this call read and wrote (also when it failed part-way)."""
        tokens_before, prompt_before = before
        used = verifier.spend
        tokens = used.tokens - tokens_before
        spend.verifier_tokens += max(0, tokens)
        if used.model is None:
            return
        prompt = used.prompt_tokens - prompt_before
        metrics.add_tokens(job.tenant, used.model, prompt=prompt, completion=tokens - prompt)
        try:
            cost = await billing.charge(
                used.model, wave, prompt_tokens=prompt, completion_tokens=tokens - prompt
            )
        except SettlePending as pending:  # kept, and billed once the ledger is back
            spend.notes.append(f"billing of {verifier.name}'s scoring is {JOURNALED}")
            cost = pending.cost
        except Exception:  # retried by the billing already; its hold stays in place
            log.exception("billing the verifier of %s failed", job.request_id)
            spend.notes.append(f"billing of {verifier.name}'s scoring is {PENDING}")
            return
        spend.add_cost(cost, verifier=True)

    def learn(self, answers: list[str | None], final: str | None) -> None:
        """Refresh the calibration from this request (agreement with a clear answer)."""
        if self.verifier is not None and self.complete(len(answers)):
            self.verifier.score_map.observe(self.scores, answers, final)


def _conclude(
    job: SamplingJob, draws: Draws, verdicts: _Verdicts
) -> tuple[AggregateResult, Sample, str]:
    """The answer: aggregated over the answering model's samples (the last model that drew;
    a single model's are all of them), with their scores. A route's majority lets earlier
    models break the answering model's ties (controller.routing.cascade_answer)."""
    model = draws.items[-1].model
    mine = [i for i, d in enumerate(draws.items) if d.model == model]
    answers = [draws.items[i].answer for i in mine]
    samples = [draws.items[i].sample for i in mine]
    scores = [verdicts.scores[i] for i in mine] if verdicts.complete(len(draws.items)) else None
    candidates = _candidates(answers, samples, scores)
    result = _aggregate(job, candidates, verdicts)
    if len(draws.order) > 1 and result.method == "majority":
        answer = cascade_answer(draws.answers, draws.order)
        if answer is not None and answer != result.answer:
            index = chosen_for(candidates, answer, result.method)  # the best-scored carrier
            agreement = answers.count(answer) / len(answers)
            result = replace(result, answer=answer, chosen_index=index, agreement=agreement)
    chosen = samples[result.chosen_index if result.chosen_index is not None else 0]
    return result, chosen, model


def _candidates(
    answers: list[str | None], samples: list[Sample], scores: list[float] | None
) -> list[Candidate]:
    return [
        Candidate(answer=a, logprob=s.mean_logprob, score=scores[i] if scores else None)
        for i, (a, s) in enumerate(zip(answers, samples, strict=True))
    ]


def _aggregate(
    job: SamplingJob, candidates: list[Candidate], verdicts: _Verdicts
) -> AggregateResult:
    """Vote over the samples with their scores. Verifier methods without a verifier, or whose
    verifier failed (or whose scoring the budget refused), fall back to majority and the
    result's note says why."""
    error = verdicts.error
    if job.aggregator in VERIFIED_METHODS and verdicts.verifier is None:
        error = "no verifier is configured for this tenant"
    result = aggregate(candidates, job.aggregator, verifier_error=error)
    if error is not None and verdicts.verifier is not None and not result.degraded:
        note = f"verifier not used ({error}); the returned text is the first with the answer"
        result = replace(result, note=note)
    return result


def _outcome(
    setup: _Setup,
    spend: Spend,
    draws: Draws,
    verdicts: _Verdicts,
    result: AggregateResult,
    chosen: Sample,
    model: str,
    stop_reason: str,
    billing: Billing,
) -> Outcome:
    """The one place an `Outcome` is made: the run's spend, the answer and how it was reached."""
    first = setup.first
    paced = billing.price_of_compute()
    notes = [n for n in (result.note, *spend.notes) if n]
    report = None
    if setup.route is not None:
        report = RouteReport(
            route=setup.route.id,
            model=model,
            lam=setup.lam,
            cost_unit=setup.unit,
            candidates=setup.plan.candidates,
            waves=list(draws.waves),
        )
    return Outcome(
        text=chosen.text,
        finish_reason=chosen.finish_reason or "stop",
        answer=result.answer,
        samples=len(draws.items),
        waves=spend.waves,
        votes=dict(result.votes),
        agreement=result.agreement,
        predicted_accuracy=setup.plan.predicted_accuracy,
        cost=spend.cost,
        stop_reason=stop_reason,
        policy=first.policy,
        prompt_tokens=spend.prompt_tokens,
        completion_tokens=spend.completion_tokens,
        chosen_index=result.chosen_index,
        price_of_compute=paced.lam if paced is not None else None,
        cost_unit=billing.unit,
        aggregator=result.method,
        note="; ".join(notes) if notes else None,
        model=model,
        route=report,
        verifier=verdicts.verifier.label if verdicts.verifier is not None else None,
        verifier_tokens=spend.verifier_tokens,
        verifier_cost=spend.verifier_cost,
        # the prompt as the model that read it first (a route's members may tokenize apart)
        prompt_length=setup.jobs[draws.waves[0][0]].prompt_tokens,
        cached_prompt_tokens=spend.cached_prompt_tokens,
        logprobs=chosen.logprobs,
    )


STALL_LOG_S = 10.0
"""A wave that ends with no sample after this long is logged even when its caller left first
(a client whose own timeout matches the server's disconnects just before the limit fires); the
engine's state is taken this often while such a wave waits, so the log shows it shortly before
the end (by then the adapter has aborted the samples and the engine holds nothing)."""


class _StallWatch:
    """What the engine held while a wave waited with nothing back: taken at its time limit,
    just before the limit cancels the wave (the engine adapter then aborts its samples), and
    every STALL_LOG_S before. Logged when no sample finished, so a stalled engine (requests it
    holds but does not run) can be told from a slow one."""

    def __init__(self, service: EngineService, delay_s: float) -> None:
        self.state: str | None = None
        self._service = service
        self._started = time.monotonic()
        self._limit_at = self._started + delay_s
        self._handle = self._arm()  # one timer per wave: most waves end before it fires

    def _arm(self) -> asyncio.TimerHandle:
        wait = max(0.0, min(STALL_LOG_S, self._limit_at - time.monotonic()))
        return asyncio.get_running_loop().call_later(wait, self._again)

    def _take(self) -> None:
        engine = self._service.engine
        at = f"at {time.monotonic() - self._started:.1f} s"
        self.state = (
            f"{at}, no engine"
            if engine is None
            else f"{at}, engine: {engine.num_running} running, {engine.num_waiting} waiting, "
            f"{engine.num_unfinished} unfinished"
        )

    def _again(self) -> None:
        self._take()
        if time.monotonic() < self._limit_at:
            self._handle = self._arm()

    def report(self, engine_id: str, size: int, any_sample: bool, timed_out: bool) -> None:
        """At the wave's end: log the engine's state if nothing came back in time, or for long
        (the caller gave up first), then stop the timer."""
        self._handle.cancel()
        waited = time.monotonic() - self._started
        if any_sample or not (timed_out or waited >= STALL_LOG_S):
            return
        if self.state is None:
            self._take()
        how = "in time" if timed_out else f"in {waited:.1f} s, and its caller left"
        log.warning("wave %s: none of its %d samples finished %s (%s)", engine_id, size, how,
                    self.state)  # fmt: skip
