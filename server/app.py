"""`create_app(config, engine=None)`: the FastAPI application.

With no engine given, the lifespan starts each configured model's engine in the background (so
/healthz answers at once and /readyz turns ready when every engine can serve) and stops them on
shutdown. Tests and benchmarks pass an engine they already started, which then serves every
configured model id, and keep ownership of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server import __version__, metrics
from server.alerts import AlertDispatcher
from server.api import admin
from server.api.errors import install_error_handlers
from server.api.middleware import BodyLimit, Drain, DrainDeadline, OverdueLog, RequestMetrics
from server.api.openapi import install_openapi
from server.api.router import router
from server.billing import BillingProvider, BudgetProvider
from server.config import AppConfig
from server.engine.base import SampleEngine
from server.engine.pooling import PoolingService
from server.engine.service import EngineService
from server.engine.weights import model_sizes, verifier_model_sizes
from server.errors import ConfigError
from server.serving import ServingState

log = logging.getLogger("t2serve.app")


GivenEngines: TypeAlias = SampleEngine | Mapping[str, SampleEngine]
"""Engines a caller already started: one for every model, or one per model id."""


def engine_services(config: AppConfig, engine: GivenEngines | None) -> dict[str, EngineService]:
    """One `EngineService` per configured model: the given engine(s), or each its own built
    from the shared `engine:` settings with the model's own `engine:` over them."""
    if isinstance(engine, Mapping):
        missing = [m.id for m in config.models if m.id not in engine]
        if missing:
            raise ValueError(f"no engine given for configured model(s) {', '.join(missing)}")
    return {
        m.id: EngineService(
            m.id,
            m.engine_settings(config.engine),
            engine[m.id] if isinstance(engine, Mapping) else engine,
        )
        for m in config.models
    }


def create_app(
    config: AppConfig,
    engine: GivenEngines | None = None,
    billing: BillingProvider | None = None,
    pooling: dict[str, PoolingService] | None = None,
) -> FastAPI:
    """Build the app. `engine`: an already-started engine adapter for every model, or a
    mapping of model id to one (not stopped on shutdown).
    `billing`: a provider the caller owns; by default the budget ledger bills metered tenants
    (it opens its store on the first metered request) and is closed on shutdown. `pooling`:
    reward-model services the caller started (default: started from `verifier_models`)."""
    provider = billing or default_billing(config)
    state = ServingState(config, engine_services(config, engine), provider, pooling)
    alerts = AlertDispatcher(state.admin)
    if isinstance(provider, BudgetProvider):
        provider.on_usage = alerts.check  # budget alert webhooks (tenants' `alerts:`)
    metrics.configure_labels(tenants=[t.id for t in config.tenants], models=config.model_ids)
    lifespan = _lifespan(
        state,
        alerts,
        start_engines=engine is None,
        start_pooling=pooling is None,
        close_billing=billing is None,
    )
    app = FastAPI(
        title="t2serve",
        version=__version__,
        description="OpenAI-compatible, budget-aware test-time-scaling server.",
        lifespan=lifespan,
    )
    app.state.t2 = state
    _install_api(app, state)
    _install_probes(app, state)
    return app


def default_billing(config: AppConfig) -> BudgetProvider:
    """The budget ledger, pricing FLOPs by the served and verifier models' parameter counts."""
    sizes = {**model_sizes(config.models), **verifier_model_sizes(config.verifier_models)}
    return BudgetProvider(config, model_params=sizes)


def _lifespan(
    state: ServingState,
    alerts: AlertDispatcher,
    *,
    start_engines: bool,
    start_pooling: bool,
    close_billing: bool,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start-up (admin store, then engines and reward models in the background) and shutdown
    (in reverse; the billing provider only if this app made it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The admin store connects first: an in-process vLLM start blocks the event loop,
        # which would time out a Redis connect made while it runs.
        if admin.admin_digests(state.config):  # lasting admin state: keys, budget overrides
            await state.admin.start()
        await state.billing.start()  # replays settles an earlier run could not hand the ledger
        starters: list[asyncio.Task[None]] = []
        if start_engines or start_pooling:  # one after another, each in a thread
            todo = list(state.engines.values()) if start_engines else []
            then = state.verifiers.start if start_pooling else None
            starters = [asyncio.create_task(_start_in_order(todo, then))]
        try:
            yield
        finally:
            for starter in starters:
                if not starter.done():
                    starter.cancel()
                    with contextlib.suppress(BaseException):
                        await starter
            await alerts.aclose()
            await state.aclose()
            metrics.set_engine_ready(False)
            if close_billing:
                await state.billing.close()  # the ledger store this app opened

    return lifespan


def _install_api(app: FastAPI, state: ServingState) -> None:
    """The OpenAI and admin routers, error bodies, middleware and the OpenAPI schema."""
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin.router)  # /admin/*: tenants, budgets, reload
    app.state.drain = Drain()  # started by the server on SIGTERM (cli/serve.py)
    app.add_middleware(DrainDeadline, drain=app.state.drain)
    app.add_middleware(OverdueLog, limit=lambda: state.config.server.request_timeout_s)
    app.add_middleware(BodyLimit, limit=state.body_limit)
    app.add_middleware(RequestMetrics)  # outermost: it counts BodyLimit's 413s and drain 503s
    install_openapi(app, state.config.model_ids)


def _install_probes(app: FastAPI, state: ServingState) -> None:
    """/healthz, /readyz and /metrics."""

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers HTTP."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> JSONResponse:
        """Readiness: 200 only once every model's engine can serve requests."""
        ready = state.ready()
        metrics.set_engine_ready(ready)
        models = {m: _engine_status(e) for m, e in state.engines.items()}
        for route_id, route in state.routes.items():  # a route serves once all its models do
            members = [models[c.model] for c in route.candidates]
            models[route_id] = "ready" if all(m == "ready" for m in members) else "starting"
        for m, p in state.verifiers.pooling.items():  # reward models: their own readiness
            models[m] = "ready" if p.ready() else ("failed" if p.failure() else "starting")
        if ready:
            return JSONResponse({"status": "ready", "models": models})
        detail = "; ".join(state.failures()) or "engine starting"
        return JSONResponse(
            {"status": "not ready", "detail": detail, "models": models}, status_code=503
        )

    @app.get("/metrics", response_model=None)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus exposition: t2_* metrics and the engine's vllm:* metrics."""
        depths = [d for e in state.engines.values() if (d := e.queue_depth()) is not None]
        if depths:
            metrics.set_engine_queue_depth(sum(depths))
        metrics.set_engine_ready(state.ready())
        body, content_type = metrics.render_latest()
        return Response(body, media_type=content_type)


async def _start_in_order(
    engines: list[EngineService], then: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Engines start one at a time (two vLLM builds at once would share the two cores): the
    first model serves while the next builds. Reward models (`then`) come last."""
    for engine in engines:
        await engine.start()
    if then is not None:
        await then()


def _engine_status(engine: EngineService) -> str:
    if engine.ready():
        return "ready"
    return "failed" if engine.failure() is not None else "starting"


def enable_reload(app: FastAPI, config_path: str | os.PathLike[str] | None) -> None:
    """Remember the config file for /admin/reload and reload it on SIGHUP (main thread only)."""
    state: ServingState = app.state.t2
    state.config_path = Path(config_path) if config_path else None
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return

    def on_sighup(_signum: int, _frame: object) -> None:
        try:
            state.reload_from_file()
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)

    signal.signal(signal.SIGHUP, on_sighup)


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


DRAIN_GRACE_S = 2
"""Seconds uvicorn waits beyond the drain time: enough to send the 503s and settle spend."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, starting the app's drain deadline (DrainDeadline) as shutdown begins.
    uvicorn's own cut-off (timeout_graceful_shutdown) must come DRAIN_GRACE_S later."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin(self.drain_s)
        await super().shutdown(sockets)


IN_LOOP_SHUTDOWN_S = 60
"""How long `serve_in_loop` waits for uvicorn to stop, lifespan included: vLLM can take ~5 s to
stop an engine, more on a loaded box."""


@contextlib.asynccontextmanager
async def serve_in_loop(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Serve `app` under uvicorn in the current event loop, on `port` (0: a free one), until
    the block exits. Tests and benchmarks use it to put real HTTP in front of engines they
    share. Close every client opened in this loop (`async with`): an unclosed AsyncOpenAI
    left to the garbage collector can unregister the reader of a connection this server has
    since accepted on its old fd number, and that request is never read (tests' `openai_client`
    fixture explains)."""
    # Keep-alive outlasts httpx's 5 s pool expiry, so a loaded test box cannot hit the race
    # of the server closing an idle connection just as the client reuses it (a ReadError).
    config = uvicorn.Config(
        app, host=host, port=0, log_level="warning", lifespan="on", timeout_keep_alive=30
    )
    server = _InLoopServer(config)
    with listening_socket(host, port) as sock:
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
                await asyncio.wait_for(task, timeout=IN_LOOP_SHUTDOWN_S)
