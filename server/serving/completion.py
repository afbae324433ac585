"""The completion service: one HTTP completion request from its validated body to its answer.

`CompletionService` owns the logic the routers do not: it checks the model, renders prompts,
resolves one `SamplingJob` per final answer (`n` per prompt), runs them as a `RunGroup` and
shapes the result into the protocol's response models, or into a stream of events that
server/api/sse.py encodes. A request flows one way: router → here → sampling → engine/billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from server import metrics
from server.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionChunkChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    RouteCandidateSummary,
    RouteSummary,
    RouteWave,
    SamplingRequest,
    StreamChunk,
    T2Summary,
    Usage,
)
from server.billing.identity import bind_request
from server.config import TenantConfig
from server.engine.base import TokenLogprob
from server.engine.service import choice_seed
from server.errors import (
    APIError,
    ClientClosed,
    InsufficientQuota,
    RateLimited,
    VerifierError,
    bad_request,
    internal_error,
)
from server.sampling import Outcome, RoutedJob, SamplingJob
from server.serving.events import Done, KeepAlive, StreamError, StreamEvent
from server.serving.jobs import resolve_job, routed_job
from server.serving.logprobs import chat_logprobs, completion_logprobs, visible
from server.serving.logprobs import pieces as token_pieces
from server.serving.state import ServingState
from server.verifiers import ServedVerifier

log = logging.getLogger("t2serve.serving")

Kind = Literal["chat", "text"]
_PIECE = re.compile(r"\s*\S+\s*|\s+")
WORDS_PER_CHUNK = 4


def text_pieces(text: str) -> list[str]:
    """Split text into a few words per chunk; joining the pieces gives back `text` exactly."""
    words = _PIECE.findall(text)
    return ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]


class RunGroup:
    """The jobs of one HTTP request, run concurrently: their billing handles, their progress
    (this is the sampling loop's `RunListener`), cancellation, headers and metrics."""

    def __init__(
        self,
        state: ServingState,
        tenant: TenantConfig,
        model: str,
        jobs: list[SamplingJob] | list[RoutedJob],
    ) -> None:
        self.state, self.tenant, self.model, self.jobs = state, tenant, model, jobs
        self.route = state.route(model)
        first = self.route.candidates[0].model if self.route is not None else model
        self.sampler = state.samplers[first]
        self.billings = [state.billing.for_request(tenant, first, _request_id(job)) for job in jobs]
        self.tasks: list[asyncio.Task[Outcome]] = []
        self.started = asyncio.Event()
        self.progressed = asyncio.Event()
        self.t0 = time.monotonic()
        self.waves_done = 0

    # -- RunListener ---------------------------------------------------------------------------

    def reserved(self) -> None:
        self.started.set()

    def wave_done(self, wave: int, drawn: int) -> None:
        self.waves_done += 1
        self.progressed.set()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        jobs: list[SamplingJob | RoutedJob] = list(self.jobs)
        self.tasks = [
            asyncio.create_task(
                self.sampler.run(job, billing, self, self._verifier(job), self.route)
            )
            for job, billing in zip(jobs, self.billings, strict=True)
        ]

    def _verifier(self, job: SamplingJob | RoutedJob) -> ServedVerifier | None:
        """The job's verifier (one per job: each bills its own spend), or None when the
        tenant has none. Every method uses it, logprob-weighted votes too: its scores pick the
        returned text among the chosen answer's samples and drive verifier-aware stopping. A
        routed job's candidates share their controller names: the first one's say."""
        if isinstance(job, RoutedJob):
            job = next(iter(job.jobs.values()))
        try:
            return self.state.verifiers.get(self.tenant, job.verifier, job.extractor)
        except VerifierError:  # its model is not served: the request degrades to a vote
            log.exception("verifier of %s unavailable", self.tenant.id)
            return None

    async def first_wave_or_error(self) -> None:
        """Wait until sampling has begun or failed: errors before that still get a real status."""
        started = asyncio.ensure_future(self.started.wait())
        await asyncio.wait({started, *self.tasks}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                await self.cancel()
                raise self.api_error(task.exception())

    async def wait(self) -> list[Outcome]:
        try:
            return list(await asyncio.gather(*self.tasks))
        except BaseException as exc:
            await self.cancel()
            if isinstance(exc, Exception):
                raise self.api_error(exc) from exc
            raise

    async def wait_or_leave(self, client_gone: Callable[[], Awaitable[None]]) -> list[Outcome]:
        """`wait`, cancelling the jobs (which aborts the engine's samples, and bills what they
        generated) if `client_gone()` finishes first."""
        work = asyncio.ensure_future(self.wait())
        watcher = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            raise ClientClosed()
        return work.result()

    async def cancel(self) -> None:
        self.cancel_now()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def cancel_now(self) -> None:
        """Cancel without awaiting: usable where the caller itself is being cancelled."""
        for task in self.tasks:
            if not task.done() and not task.cancelling():
                task.cancel()

    def api_error(self, exc: BaseException | None) -> APIError:
        if isinstance(exc, RateLimited):
            metrics.inc_rate_limited(self.tenant.id, exc.limit)
        elif isinstance(exc, InsufficientQuota):
            metrics.inc_budget_rejection(self.tenant.id)
        if isinstance(exc, APIError):
            return exc
        raise exc if exc is not None else RuntimeError("unknown failure")

    # -- what the response carries ---------------------------------------------------------------

    def outcomes(self) -> list[Outcome]:
        return [
            t.result() for t in self.tasks if t.done() and not t.cancelled() and not t.exception()
        ]

    def headers(self) -> dict[str, str]:
        outcomes = self.outcomes()
        remaining = [r for r in (b.remaining() for b in self.billings) if r is not None]
        headers = {
            "x-t2-samples": str(sum(o.samples for o in outcomes)),
            "x-t2-cost": _num(sum(o.cost for o in outcomes)),
            "x-t2-budget-remaining": _num(min(remaining)) if remaining else "unlimited",
        }
        levels = [
            (r, b.remaining_level()) for b in self.billings if (r := b.remaining()) is not None
        ]
        if levels:  # which budget level that tightest figure is at: tenant, key or user
            headers["x-t2-budget-level"] = str(min(levels, key=lambda x: x[0])[1])
        headers.update(self.rate_headers())
        return headers

    def rate_headers(self) -> dict[str, str]:
        """rpm/tpm as OpenAI reports them, from the first job that has reserved a wave."""
        for b in self.billings:
            rate = b.rate_limit_headers()
            if rate:
                return rate
        return {}

    def record(self, ttft_s: float | None = None) -> None:
        """The one place answered jobs reach the metrics module: the controller's figures once
        per answer, a stream's TTFT once per request. Status and latency are the app
        middleware's (RequestMetrics), once per HTTP request whatever its status."""
        for o in self.outcomes():
            metrics.observe_answer(
                tenant=self.tenant.id,
                model=self.model,
                policy=o.policy,
                samples=o.samples,
                waves=o.waves,
                stop_reason=o.stop_reason,
                agreement=o.agreement,
                predicted_accuracy=o.predicted_accuracy,
            )
            if o.route is not None:
                escalated = len({m for m, _ in o.route.waves}) > 1
                metrics.observe_routed(o.route.route, o.model, escalated)
        if ttft_s is not None:
            metrics.observe_ttft(ttft_s)


class CompletionService:
    """Chat and text completions over the app's `ServingState`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    def prompts(self, body: SamplingRequest) -> tuple[list[str], Kind]:
        """The prompts to answer, rendered with the model's chat template for chat requests."""
        if isinstance(body, ChatCompletionRequest):
            engine = self.state.engine(body.model)
            messages = [m.rendered() for m in body.messages]
            try:
                prompt = engine.chat_prompt(messages)
            except APIError:
                raise
            except Exception as exc:  # the model's chat template refused these messages
                raise bad_request(
                    f"The messages cannot be rendered with this model's chat template: {exc}",
                    param="messages",
                    code="invalid_messages",
                ) from None
            return [prompt], "chat"
        assert isinstance(body, CompletionRequest)
        return body.prompts(), "text"

    def check_model(self, tenant: TenantConfig, model: str) -> None:
        """404 for an unknown model, 403 for one the tenant may not ask for by name (a route
        it may use lends it the route's models), 503 while it (any model it routes to)
        starts."""
        self.state.engine(model)  # 404 first: an unknown model is not a forbidden one
        if not tenant.may_use(model):
            raise APIError(
                403,
                f"Tenant '{tenant.id}' may not use the model '{model}'.",
                param="model",
                code="model_not_allowed",
            )
        route = self.state.route(model)
        members = [c.model for c in route.candidates] if route is not None else [model]
        starting = [m for m in members if not self.state.engine(m).ready()]
        if starting:
            which = "" if route is None else f" (for '{', '.join(starting)}')"
            raise APIError(
                503,
                f"The engine{which} is not ready yet; retry shortly.",
                code="engine_not_ready",
                headers={"Retry-After": "5"},
            )
        if self.state.admin.blocking:  # stored keys, revocations and budgets not loaded yet
            raise APIError(
                503,
                f"Admin state not loaded: {self.state.admin.failure or 'loading'}; retry shortly.",
                code="admin_store_unavailable",
                headers={"Retry-After": "5"},
            )

    async def _group(self, tenant: TenantConfig, body: SamplingRequest) -> tuple[RunGroup, Reply]:
        """The request's jobs, run as one group. Rendering and tokenizing a large prompt run
        in a worker thread: it must not stall the event loop (and /healthz) meanwhile."""
        self.check_model(tenant, body.model)
        if _text_size(body) > OFFLOAD_CHARS:
            jobs, reply = await asyncio.to_thread(self._jobs, tenant, body)
        else:  # a thread hop costs more than rendering and tokenizing a short prompt
            jobs, reply = self._jobs(tenant, body)
        bind_request(reply.key)  # rpm counts this HTTP request once, whatever its jobs
        return RunGroup(self.state, tenant, body.model, jobs), reply

    def _jobs(
        self, tenant: TenantConfig, body: SamplingRequest
    ) -> tuple[list[SamplingJob] | list[RoutedJob], Reply]:
        prompts, kind = self.prompts(body)
        param = "messages" if kind == "chat" else "prompt"
        if any(not p for p in prompts):
            raise bad_request("The prompt is empty.", param=param)
        reply_id, request_id = _ids(kind, body.request_id)
        config = self.state.config
        route = config.route(body.model)
        jobs: list[SamplingJob] | list[RoutedJob]
        answers = [_answer(body, c) for c in range(body.n)]
        if route is not None:
            jobs = [
                routed_job(self.state, route, tenant, one, prompt, f"{request_id}-{p}-{c}", param)
                for p, prompt in enumerate(prompts)
                for c, one in enumerate(answers)
            ]
        else:
            engine = self.state.engine(body.model)
            jobs = [
                resolve_job(config, engine, tenant, one, prompt, f"{request_id}-{p}-{c}", param)
                for p, prompt in enumerate(prompts)
                for c, one in enumerate(answers)
            ]
        echo = prompts if isinstance(body, CompletionRequest) and body.echo else None
        reply = Reply(reply_id, kind, body.model, echo, body.n, key=request_id)
        reply.top_logprobs = body.top_logprobs_asked()
        reply.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return jobs, reply

    async def complete(
        self,
        tenant: TenantConfig,
        body: SamplingRequest,
        client_gone: Callable[[], Awaitable[None]],
    ) -> tuple[ChatCompletionResponse | CompletionResponse, dict[str, str]]:
        """The whole answer and its x-t2-* headers; ClientClosed (499) if the client leaves."""
        group, req = await self._group(tenant, body)
        group.start()
        outcomes = await group.wait_or_leave(client_gone)
        group.record()
        return req.response(outcomes), group.headers()

    async def stream(
        self, tenant: TenantConfig, body: SamplingRequest
    ) -> tuple[AsyncIterator[StreamEvent], dict[str, str]]:
        """Start the jobs and wait for the first wave, so that errors before it still get their
        own status; then return the stream of events (keep-alives while waves run) and the
        headers known by then (the x-ratelimit-* ones; the x-t2-* figures end the stream)."""
        group, req = await self._group(tenant, body)
        group.start()
        await group.first_wave_or_error()
        keepalive = self.state.config.server.keepalive_interval_s
        return _events(group, req, keepalive), group.rate_headers()


class Reply:
    """One completion request's identity and shape: turns outcomes into responses and chunks."""

    def __init__(
        self,
        request_id: str,
        kind: Kind,
        model: str,
        echo: list[str] | None,
        per_prompt: int,
        *,
        key: str,
    ) -> None:
        self.id, self.kind, self.model, self.echo = request_id, kind, model, echo
        self.key = key  # unique per request, unlike a client's id: what jobs are named by
        self.per_prompt = per_prompt
        self.created = int(time.time())
        self.top_logprobs: int | None = None  # None: the client asked for no logprobs
        self.include_usage = False  # stream_options.include_usage

    def logprobs(self, outcome: Outcome) -> tuple[TokenLogprob, ...] | None:
        """The returned sample's visible tokens, when the client asked for logprobs."""
        if self.top_logprobs is None:
            return None
        return visible(outcome.text, outcome.logprobs or ())

    def chat_lp(self, tokens: tuple[TokenLogprob, ...] | None) -> ChatLogprobs | None:
        return None if tokens is None else chat_logprobs(tokens, self.top_logprobs or 0)

    def text_lp(
        self, tokens: tuple[TokenLogprob, ...] | None, offset: int = 0
    ) -> CompletionLogprobs | None:
        if tokens is None:
            return None
        return completion_logprobs(tokens, self.top_logprobs or 0, offset)

    def text(self, i: int, outcome: Outcome) -> str:
        prefix = self.echo[i // self.per_prompt] if self.echo and self.kind == "text" else ""
        return prefix + outcome.text

    def answered_by(self, outcomes: list[Outcome]) -> str:
        """The response's `model`: the model asked for, or for a route the model that answered
        (its first answer's; `t2.route` names each), as OpenRouter's auto router reports it."""
        first = outcomes[0] if outcomes else None
        return first.model if first is not None and first.route is not None else self.model

    def response(self, outcomes: list[Outcome]) -> ChatCompletionResponse | CompletionResponse:
        model = self.answered_by(outcomes)
        if self.kind == "chat":
            return ChatCompletionResponse(
                id=self.id,
                created=self.created,
                model=model,
                choices=[
                    ChatChoice(
                        index=i,
                        message=AssistantMessage(content=o.text),
                        finish_reason=o.finish_reason,
                        logprobs=self.chat_lp(self.logprobs(o)),
                    )
                    for i, o in enumerate(outcomes)
                ],
                usage=usage(outcomes, self.per_prompt),
                t2=t2_summary(outcomes),
            )
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=self.text(i, o),
                    finish_reason=o.finish_reason,
                    logprobs=self.text_lp(self.logprobs(o)),
                )
                for i, o in enumerate(outcomes)
            ],
            usage=usage(outcomes, self.per_prompt),
            t2=t2_summary(outcomes),
        )

    def chunk(
        self,
        choices: list[ChatChunkChoice] | list[CompletionChunkChoice],
        **final: Usage | T2Summary | dict[str, str],
    ) -> StreamChunk:
        obj: Literal["chat.completion.chunk", "text_completion"] = (
            "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        )
        return StreamChunk(
            id=self.id,
            object=obj,
            created=self.created,
            model=self.model,
            choices=choices,
            **final,  # type: ignore[arg-type]
        )

    def piece(
        self,
        i: int,
        text: str,
        finish_reason: str | None = None,
        tokens: tuple[TokenLogprob, ...] | None = None,
        offset: int = 0,
        **final: T2Summary | dict[str, str],
    ) -> StreamChunk:
        if self.kind == "chat":
            delta = ChatDelta(content=text) if finish_reason is None else ChatDelta()
            choice = ChatChunkChoice(
                index=i, delta=delta, finish_reason=finish_reason, logprobs=self.chat_lp(tokens)
            )
            return self.chunk([choice], **final)
        return self.chunk(
            [
                CompletionChunkChoice(
                    index=i,
                    text=text,
                    finish_reason=finish_reason,
                    logprobs=self.text_lp(tokens, offset),
                )
            ],
            **final,
        )

    def opening(self, choices: int) -> list[StreamChunk]:
        """What goes out at once, as OpenAI sends it: each choice's role chunk (chat), or an
        empty text chunk (completions), so the client sees data before any wave finishes."""
        if self.kind == "chat":
            role = ChatDelta(role="assistant", content="")
            return [self.chunk([ChatChunkChoice(index=i, delta=role)]) for i in range(choices)]
        return [self.chunk([CompletionChunkChoice(index=0, text="")])]

    def keepalive(self, note: str) -> KeepAlive:
        """An empty delta (`t2_progress` says how far the waves are). Not an SSE comment: a
        client that strips a network read's trailing blank line (vllm.benchmarks.serve) glues
        a lone comment to the next event and loses it; an empty delta parses everywhere."""
        if self.kind == "chat":
            chunk = self.chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=""))])
        else:
            chunk = self.chunk([CompletionChunkChoice(index=0, text="")])
        chunk.t2_progress = note
        return KeepAlive(note, chunk)

    def stream_pieces(
        self, i: int, outcome: Outcome
    ) -> list[tuple[str, tuple[TokenLogprob, ...] | None]]:
        """The choice's text in pieces: a few words each, or a few tokens each with their
        logprobs when the client asked for logprobs."""
        text = self.text(i, outcome)
        tokens = self.logprobs(outcome)
        if tokens is None:
            return [(p, None) for p in text_pieces(text)]
        return list(token_pieces(text, tokens, WORDS_PER_CHUNK))


async def _events(group: RunGroup, req: Reply, keepalive_s: float) -> AsyncIterator[StreamEvent]:
    """The stream: keep-alives while waves run, then each chosen text in pieces, a finish
    chunk per choice (the last one also carrying t2 and the x-t2-* figures), OpenAI's usage
    chunk when asked for, and [DONE]; an error after the 200 is an error event, then [DONE].
    Disconnecting cancels the generator, which cancels the jobs and so aborts the engine's
    outstanding samples (their tokens are still billed)."""
    status = 200
    pending = asyncio.ensure_future(group.wait())
    waiter: asyncio.Future[Any] | None = None
    try:
        for opening in req.opening(len(group.jobs)):
            yield opening
        while not pending.done():
            tick = waiter = asyncio.ensure_future(group.progressed.wait())
            await asyncio.wait(
                {pending, tick}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            tick.cancel()
            if not pending.done():
                note = f"wave {group.waves_done}" if group.progressed.is_set() else "sampling"
                group.progressed.clear()
                yield req.keepalive(note)
        try:
            outcomes = pending.result()
        except APIError as exc:
            status = exc.status
            yield StreamError(exc)
            yield Done()
            return
        except Exception:  # a bug: the stream still ends with an error event, as vLLM's does
            log.exception("unhandled error while streaming %s", req.id)
            status = 500
            yield StreamError(internal_error())
            yield Done()
            return
        req.model = req.answered_by(outcomes)  # a route's answering model, from here on
        ttft: float | None = None
        for i, outcome in enumerate(outcomes):
            offset = 0
            for piece, tokens in req.stream_pieces(i, outcome):
                if ttft is None:
                    ttft = time.monotonic() - group.t0
                yield req.piece(i, piece, tokens=tokens, offset=offset)
                offset += len(piece)
            # `t2` rides on the last finish chunk: a chunk of its own would have no choices,
            # which OpenAI sends only for the usage chunk and clients index without checking
            if i < len(outcomes) - 1:
                yield req.piece(i, "", finish_reason=outcome.finish_reason)
            else:
                yield req.piece(i, "", finish_reason=outcome.finish_reason,
                                t2=t2_summary(outcomes), t2_headers=group.headers())  # fmt: skip
        if req.include_usage:  # OpenAI's usage chunk: the last one, with no choices
            yield req.chunk([], usage=usage(outcomes, req.per_prompt))
        yield Done()
        group.record(ttft)
    except (asyncio.CancelledError, GeneratorExit):
        status = 499
        raise
    finally:
        # Synchronous cancels first: under Starlette's cancel scope every await in here can be
        # cancelled again at once, and a helper left waiting would be destroyed pending.
        for helper in (waiter, pending):
            if helper is not None and not helper.done():
                helper.cancel()
        if status != 200:
            group.cancel_now()
            await asyncio.shield(group.cancel())


OFFLOAD_CHARS = 16_384


def _answer(body: SamplingRequest, choice: int) -> SamplingRequest:
    """The request as answer `choice` of its n runs it: a seeded request's answers each get
    their own seed (`choice_seed`), so they differ, as OpenAI's and vLLM's n answers do."""
    if body.seed is None or choice == 0:
        return body
    return body.model_copy(update={"seed": choice_seed(body.seed, choice)})


def _text_size(body: SamplingRequest) -> int:
    """Characters of prompt text in the request (what rendering and tokenizing work on)."""
    if isinstance(body, ChatCompletionRequest):
        return sum(len(m.text()) for m in body.messages)
    assert isinstance(body, CompletionRequest)
    return sum(len(p) for p in body.prompts())


def usage(outcomes: list[Outcome], per_prompt: int) -> Usage:
    """OpenAI's (and vLLM's) usage: each prompt's tokens once, however many answers it has
    (`per_prompt`, the request's n; its first answer's cache hits as cached), and every
    sample's completion tokens. Billing's figures are in `t2.billed_*_tokens`."""
    firsts = outcomes[::per_prompt]  # outcomes run prompt by prompt, n answers each
    prompt = sum(o.prompt_length for o in firsts)
    completion = sum(o.completion_tokens for o in outcomes)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=sum(o.cached_prompt_tokens for o in firsts)
        ),
        verifier_tokens=sum(o.verifier_tokens for o in outcomes),
    )


def _route_summary(o: Outcome) -> RouteSummary | None:
    r = o.route
    if r is None:
        return None
    return RouteSummary(
        route=r.route,
        model=r.model,
        escalated=len({m for m, _ in r.waves}) > 1,
        price_of_compute=r.lam,
        cost_unit=r.cost_unit,
        candidates=[
            RouteCandidateSummary(
                model=c.model,
                first_wave=c.first_wave,
                predicted_accuracy=c.predicted_accuracy,
                predicted_cost=c.predicted_cost,
            )
            for c in r.candidates
        ],
        waves=[RouteWave(model=m, samples=n) for m, n in r.waves],
    )


def _summary(o: Outcome) -> T2Summary:
    return T2Summary(
        route=_route_summary(o),
        samples=o.samples,
        waves=o.waves,
        votes=o.votes,
        agreement=o.agreement,
        predicted_accuracy=o.predicted_accuracy,
        cost=o.cost,
        stop_reason=o.stop_reason,
        policy=o.policy,
        answer=o.answer,
        price_of_compute=o.price_of_compute,
        aggregator=o.aggregator,
        note=o.note,
        verifier=o.verifier,
        verifier_tokens=o.verifier_tokens,
        verifier_cost=o.verifier_cost,
        billed_prompt_tokens=o.prompt_tokens,
        billed_completion_tokens=o.completion_tokens,
    )


def t2_summary(outcomes: list[Outcome]) -> T2Summary:
    """The first answer's details; totals across answers and each one's details when n > 1."""
    summary = _summary(outcomes[0])
    if len(outcomes) > 1:
        summary.samples = sum(o.samples for o in outcomes)
        summary.waves = sum(o.waves for o in outcomes)
        summary.cost = sum(o.cost for o in outcomes)
        summary.billed_prompt_tokens = sum(o.prompt_tokens for o in outcomes)
        summary.billed_completion_tokens = sum(o.completion_tokens for o in outcomes)
        summary.choices = [_summary(o) for o in outcomes]
    return summary


def _ids(kind: Kind, client_id: str | None) -> tuple[str, str]:
    """The response's id ("chatcmpl-" or "cmpl-" + the client's request id, as vLLM names it)
    and the unique key its jobs, engine requests and spend records are named by: a client's id
    may repeat, so the key adds a random part to it."""
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    if client_id is None:
        own = prefix + uuid.uuid4().hex[:24]
        return own, own
    return prefix + client_id, f"{prefix}{client_id}-{uuid.uuid4().hex[:12]}"


def _request_id(job: SamplingJob | RoutedJob) -> str:
    if isinstance(job, RoutedJob):
        return next(iter(job.jobs.values())).request_id
    return job.request_id


def _num(value: float) -> str:
    return f"{value:.6g}"
