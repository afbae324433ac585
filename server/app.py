"""`create_app(config, engine=None)`: the FastAPI application.

With no engine given, the lifespan starts the in-process engine from the config in the background
(so /healthz answers at once and /readyz turns ready when the engine can serve) and stops it on
shutdown. Tests and benchmarks pass an engine they already started and keep ownership of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.admin import install_admin
from server.api.errors import install_error_handlers
from server.api.routes import router
from server.api.state import AppState
from server.billing import BudgetProvider
from server.billing_protocol import BillingProvider
from server.config import AppConfig
from server.orchestrator import EngineAPI

log = logging.getLogger("t2serve.app")

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")


class RequestMetrics:
    """Pure ASGI middleware counting every completion request by final status (incl. 4xx/5xx).

    Pure ASGI rather than BaseHTTPMiddleware so streaming and disconnect detection pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        status = 499

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            state = scope.get("state") or {}
            tenant = state.get("tenant")
            metrics.observe_request(getattr(tenant, "id", None), state.get("model"), status)


def create_app(
    config: AppConfig,
    engine: Any | None = None,
    billing: BillingProvider | None = None,
) -> FastAPI:
    """Build the app. `engine`: an already-started engine adapter (not stopped on shutdown)."""
    engine_api = EngineAPI(engine, config)
    state = AppState(config=config, engine_api=engine_api)
    # the budget ledger bills metered tenants; it opens its store on the first metered request
    state.billing = billing if billing is not None else BudgetProvider(config)
    metrics.configure_labels(tenants=[t.id for t in config.tenants], models=config.model_ids)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starter: asyncio.Task[None] | None = None
        if engine is None:
            starter = asyncio.create_task(engine_api.start())
        try:
            yield
        finally:
            if starter is not None and not starter.done():
                starter.cancel()
                with contextlib.suppress(BaseException):
                    await starter
            await engine_api.shutdown()
            metrics.set_engine_ready(False)
            await state.verifiers.aclose()
            closer = getattr(state.billing, "close", None)
            if billing is None and closer is not None:
                await closer()  # the ledger store this app opened

    app = FastAPI(
        title="t2serve",
        version="0.1.0",
        description="OpenAI-compatible, budget-aware test-time-scaling server.",
        lifespan=lifespan,
    )
    app.state.t2 = state
    install_error_handlers(app)
    app.include_router(router)
    install_admin(app)  # /admin/*: tenants, budgets, reload
    app.add_middleware(RequestMetrics)

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers HTTP."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> JSONResponse:
        """Readiness: 200 only once the engine can serve requests."""
        ready = engine_api.ready()
        metrics.set_engine_ready(ready)
        if ready:
            return JSONResponse({"status": "ready"})
        detail = engine_api.failure() or "engine starting"
        return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)

    @app.get("/metrics", response_model=None)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus exposition: t2_* metrics and the engine's vllm:* metrics."""
        depth = engine_api.queue_depth()
        if depth is not None:
            metrics.set_engine_queue_depth(depth)
        metrics.set_engine_ready(engine_api.ready())
        body, content_type = metrics.render_latest()
        return Response(body, media_type=content_type)

    return app


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the embedding program (tests, bench) owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningServer:
    app: FastAPI
    base_url: str

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def listening_socket(host: str, port: int = 0) -> socket.socket:
    """A bound TCP socket for uvicorn's `sockets=`.

    IPPROTO_TCP explicitly: asyncio turns on TCP_NODELAY for accepted connections only when
    the socket's proto says TCP, and `socket.socket()` says 0. Without it a response's header
    and body writes meet the client's delayed ACK: back-to-back requests waited ~40 ms each.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.asynccontextmanager
async def serve_in_loop(app: FastAPI, host: str = "127.0.0.1") -> AsyncIterator[RunningServer]:
    """Serve `app` under uvicorn in the current event loop, on a free port, until the block
    exits. Tests and benchmarks use it to put real HTTP in front of an engine they share."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
    server = _InLoopServer(config)
    with listening_socket(host) as sock:
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited during start")
                await asyncio.sleep(0.02)
            yield RunningServer(app=app, base_url=f"http://{host}:{port}")
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)
