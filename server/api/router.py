"""The OpenAI-compatible routes, kept thin: authenticate, hand the validated body to the
completion service, and send what it returns. Nothing imports this module but the app."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api import sse
from server.api.deps import Tenant, get_state
from server.api.middleware import note_stream_errors
from server.api.protocol import (
    REQUEST_ID_PATTERN,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from server.billing.identity import bind_user
from server.config import ModelConfig, RouteConfig, TenantConfig
from server.errors import APIError, model_not_found
from server.serving import CompletionService

router = APIRouter()


async def client_gone(request: Request) -> None:
    """Returns once the client has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models")
async def list_models(request: Request, tenant: Tenant) -> ModelList:
    state = get_state(request)
    entries: list[ModelConfig | RouteConfig] = [*state.config.models, *state.config.routes]
    cards = [  # a route is a model id to clients
        ModelCard(id=m.id, created=state.started_at, owned_by=m.owned_by)
        for m in entries
        if tenant.may_use(m.id)
    ]
    return ModelList(data=cards)


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request, tenant: Tenant) -> ModelCard:
    state = get_state(request)
    model = state.config.model(model_id) or state.config.route(model_id)
    if model is None or not tenant.may_use(model_id):
        raise model_not_found(model_id)
    return ModelCard(id=model.id, created=state.started_at, owned_by=model.owned_by)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, tenant: Tenant
) -> Response:
    return await _complete(body, request, tenant)


def _with_header_id(
    body: ChatCompletionRequest | CompletionRequest, request: Request
) -> ChatCompletionRequest | CompletionRequest:
    """An X-Request-Id header names the request as vLLM's servers take it: over `request_id`."""
    header = request.headers.get("x-request-id")
    if header is None:
        return body
    if re.fullmatch(REQUEST_ID_PATTERN, header) is None:
        raise APIError(
            400,
            "The X-Request-Id header must be 1-256 printable ASCII characters.",
            code="invalid_request_id",
        )
    return body.model_copy(update={"request_id": header})


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request, tenant: Tenant) -> Response:
    return await _complete(body, request, tenant)


async def _complete(
    body: ChatCompletionRequest | CompletionRequest, request: Request, tenant: TenantConfig
) -> Response:
    request.state.model = body.model
    body = _with_header_id(body, request)
    bind_user(body.user)  # spend logs and per-user budgets (server.billing.identity)
    service = CompletionService(get_state(request))
    if body.stream:
        events, headers = await service.stream(tenant, body)
        return StreamingResponse(
            sse.encode_stream(note_stream_errors(events, request.state)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )
    response, headers = await service.complete(tenant, body, lambda: client_gone(request))
    return JSONResponse(response.model_dump(mode="json"), headers=headers)
