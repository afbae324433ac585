"""The OpenAI-compatible routes. Each completion request becomes `n` sampling jobs (one per final
answer); the orchestrator runs them and this module shapes the standard response around them."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server import metrics
from server.api.errors import APIError, bad_request
from server.api.schemas import (
    MAX_CHOICES,
    ChatCompletionRequest,
    CompletionRequest,
    _SamplingRequest,
)
from server.api.state import AppState, get_state
from server.api.streaming import sse_stream
from server.billing_protocol import InsufficientQuota
from server.config import TenantConfig
from server.orchestrator import EngineNotReady, Outcome, SamplingJob, UpstreamTimeout

router = APIRouter()
Kind = Literal["chat", "text"]


async def current_tenant(request: Request) -> TenantConfig:
    """Dependency: authenticate before the body is used (401 beats every other error)."""
    state = get_state(request)
    tenant = state.keyring.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant


Tenant = Annotated[TenantConfig, Depends(current_tenant)]


@router.get("/v1/models")
async def list_models(request: Request, tenant: Tenant) -> dict[str, Any]:
    state = get_state(request)
    data = [
        {"id": m.id, "object": "model", "created": state.started_at, "owned_by": m.owned_by}
        for m in state.config.models
        if tenant.may_use(m.id)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request, tenant: Tenant) -> dict[str, Any]:
    state = get_state(request)
    model = state.config.model(model_id)
    if model is None or not tenant.may_use(model_id):
        raise APIError(
            404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found"
        )
    return {
        "id": model.id,
        "object": "model",
        "created": state.started_at,
        "owned_by": model.owned_by,
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, tenant: Tenant
) -> Response:
    state = get_state(request)
    request.state.model = body.model
    _check_model(state, tenant, body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = state.engine_api.chat_prompt(messages)
    except Exception as exc:  # the model's chat template refused these messages (jinja raise)
        raise bad_request(
            f"The messages cannot be rendered with this model's chat template: {exc}",
            param="messages",
            code="invalid_messages",
        ) from None
    return await _complete(request, state, tenant, body, [prompt], "chat")


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, tenant: Tenant) -> Response:
    state = get_state(request)
    request.state.model = body.model
    _check_model(state, tenant, body.model)
    return await _complete(request, state, tenant, body, body.prompts(), "text")


def _check_model(state: AppState, tenant: TenantConfig, model: str) -> None:
    if state.config.model(model) is None:
        raise APIError(
            404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
        )
    if not tenant.may_use(model):
        raise APIError(
            403,
            f"Tenant '{tenant.id}' may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )
    if not state.engine_api.ready():
        raise APIError(
            503,
            "The engine is not ready yet; retry shortly.",
            code="engine_not_ready",
            headers={"Retry-After": "5"},
        )


async def _complete(
    request: Request,
    state: AppState,
    tenant: TenantConfig,
    body: _SamplingRequest,
    prompts: list[str],
    kind: Kind,
) -> Response:
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request(
            f"n × prompts = {len(prompts) * body.n} answers; at most {MAX_CHOICES} per request.",
            param="n",
        )
    if any(not p for p in prompts):
        raise bad_request("The prompt is empty.", param="prompt" if kind == "text" else "messages")
    started = time.monotonic()
    request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    jobs = [
        state.job(tenant, body, prompt, f"{request_id}-{p}-{c}")
        for p, prompt in enumerate(prompts)
        for c in range(body.n)
    ]
    runs = _Runs(state, tenant, body.model, jobs)
    if body.stream:
        await runs.start()
        first = await runs.first_wave_or_error()
        if first is not None:
            raise first
        return StreamingResponse(
            sse_stream(
                runs,
                request_id,
                kind,
                body.model,
                state.config.server.keepalive_interval_s,
                started,
                echo_prompts=prompts if isinstance(body, CompletionRequest) and body.echo else None,
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    await runs.start()
    outcomes = await _until_disconnect(request, runs.wait())
    text_prefix = prompts if isinstance(body, CompletionRequest) and body.echo else None
    payload = build_response(
        request_id, kind, body.model, outcomes, text_prefix, len(jobs) // len(prompts)
    )
    runs.record()
    return JSONResponse(payload, headers=runs.headers())


async def _until_disconnect(request: Request, work: Awaitable[list[Outcome]]) -> list[Outcome]:
    """Run `work`, cancelling it (which aborts the engine's samples) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise APIError(
            499, "The client closed the request.", type="request_cancelled", code="client_closed"
        )
    return task.result()


class _Runs:
    """The jobs of one HTTP request, run concurrently, with their billing handles and errors."""

    def __init__(
        self, state: AppState, tenant: TenantConfig, model: str, jobs: list[SamplingJob]
    ) -> None:
        self.state, self.tenant, self.model, self.jobs = state, tenant, model, jobs
        self.billings = [state.billing.for_request(tenant, model, job.request_id) for job in jobs]
        self.tasks: list[asyncio.Task[Outcome]] = []
        self.started = asyncio.Event()
        self.t0 = time.monotonic()
        self.waves_done = 0
        self.on_progress: Callable[[], None] | None = None

    async def start(self) -> None:
        def progress(_wave: int, _drawn: int) -> None:
            self.waves_done += 1
            if self.on_progress is not None:
                self.on_progress()

        def first() -> None:
            self.started.set()

        self.tasks = [
            asyncio.create_task(
                self.state.orchestrator.run(
                    job,
                    billing,
                    on_wave=progress,
                    on_reserved=first,
                    tenant=self.tenant.id,
                    verifier=self.state.verifiers.get(self.tenant),
                )
            )
            for job, billing in zip(self.jobs, self.billings, strict=True)
        ]

    async def first_wave_or_error(self) -> APIError | None:
        """Wait until sampling has begun or failed: errors before that still get a real status."""
        started = asyncio.ensure_future(self.started.wait())
        await asyncio.wait({started, *self.tasks}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                await self.cancel()
                return self.to_api_error(task.exception())
        return None

    async def wait(self) -> list[Outcome]:
        try:
            return list(await asyncio.gather(*self.tasks))
        except BaseException as exc:
            await self.cancel()
            if isinstance(exc, Exception):
                raise self.to_api_error(exc) from exc
            raise

    async def cancel(self) -> None:
        self.cancel_now()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def to_api_error(self, exc: BaseException | None) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, InsufficientQuota):
            metrics.inc_budget_rejection(self.tenant.id)
            headers = {}
            if exc.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
            return APIError(
                429,
                exc.message,
                type="insufficient_quota",
                code="insufficient_quota",
                headers=headers,
            )
        if isinstance(exc, UpstreamTimeout):
            return APIError(
                504, f"Upstream timeout: {exc}", type="timeout", code="upstream_timeout"
            )
        status = getattr(exc, "http_status", None)
        if isinstance(status, int) and 400 <= status < 600:  # the engine adapter's typed errors
            return APIError(
                status,
                str(exc) or type(exc).__name__,
                param=getattr(exc, "param", None),
                code=getattr(exc, "code", None),
            )
        if isinstance(exc, EngineNotReady):
            return APIError(
                503, "The engine is not ready yet; retry shortly.", code="engine_not_ready"
            )
        raise exc if exc is not None else RuntimeError("unknown failure")

    def headers(self) -> dict[str, str]:
        outcomes = [
            t.result()
            for t in self.tasks
            if t.done() and not t.cancelled() and t.exception() is None
        ]
        remaining = [r for r in (b.remaining() for b in self.billings) if r is not None]
        return {
            "x-t2-samples": str(sum(o.samples for o in outcomes)),
            "x-t2-cost": _num(sum(o.cost for o in outcomes)),
            "x-t2-budget-remaining": _num(min(remaining)) if remaining else "unlimited",
        }

    def cancel_now(self) -> None:
        """Cancel without awaiting: usable where the caller itself is being cancelled."""
        for task in self.tasks:
            if not task.done() and not task.cancelling():
                task.cancel()

    def record(self, ttft_s: float | None = None) -> None:
        """The one place answered jobs reach the metrics module (statuses: see app middleware)."""
        duration = time.monotonic() - self.t0
        for task in self.tasks:
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            o = task.result()
            metrics.observe_completion(
                tenant=self.tenant.id,
                model=self.model,
                policy=o.policy,
                samples=o.samples,
                waves=o.waves,
                stop_reason=o.stop_reason,
                agreement=o.agreement,
                predicted_accuracy=o.predicted_accuracy,
                duration_s=duration,
                ttft_s=ttft_s,
            )


def _num(value: float) -> str:
    return f"{value:.6g}"


def usage(outcomes: list[Outcome]) -> dict[str, int]:
    prompt = sum(o.prompt_tokens for o in outcomes)
    completion = sum(o.completion_tokens for o in outcomes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def t2_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """The response's `t2` object: the first answer's details, totals across answers when n > 1."""
    summary = outcomes[0].t2()
    if len(outcomes) > 1:
        summary["samples"] = sum(o.samples for o in outcomes)
        summary["waves"] = sum(o.waves for o in outcomes)
        summary["cost"] = sum(o.cost for o in outcomes)
        summary["choices"] = [o.t2() for o in outcomes]
    return summary


def build_response(
    request_id: str,
    kind: Kind,
    model: str,
    outcomes: list[Outcome],
    echo: list[str] | None,
    per_prompt: int,
) -> dict[str, Any]:
    created = int(time.time())
    choices: list[dict[str, Any]] = []
    for i, o in enumerate(outcomes):
        if kind == "chat":
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": o.text},
                    "finish_reason": o.finish_reason,
                    "logprobs": None,
                }
            )
        else:
            prefix = echo[i // per_prompt] if echo else ""
            choices.append(
                {
                    "index": i,
                    "text": prefix + o.text,
                    "finish_reason": o.finish_reason,
                    "logprobs": None,
                }
            )
    return {
        "id": request_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(outcomes),
        "t2": t2_summary(outcomes),
    }
