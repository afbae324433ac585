"""`t2serve serve`: run the OpenAI-compatible server from a config file."""

from __future__ import annotations

import errno
import logging
import math
import socket
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail
from server.config import (
    CONFIG_ENV,
    ConfigError,
    LedgerConfig,
    load_config,
    resolve_config_path,
)


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"config YAML (default: ${CONFIG_ENV}, then configs/default.yaml)",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (overrides server.host)")] = None,
    port: Annotated[
        int | None, typer.Option(help="port (overrides server.port)", min=0, max=65535)
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API with test-time scaling on the configured model."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    _check_admin_key_env()
    if cfg.ledger.backend == "sqlite":
        _open_ledger_file(cfg.ledger.path)
    _check_journal(cfg.ledger)

    import uvicorn

    from server.app import DRAIN_GRACE_S, DrainingServer, create_app, enable_reload

    settings = cfg.server
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(cfg)  # routes are built here: a member without usable curves fails
        cfg.check_inprocess_weights()
    except ConfigError as exc:
        fail(f"{resolve_config_path(config)}: {exc}")
    enable_reload(app, resolve_config_path(config))  # POST /admin/reload and SIGHUP
    address = (host or settings.host, settings.port if port is None else port)
    # Bound before uvicorn runs the lifespan (the engines' start, ~30 s), so a port in use is
    # one line now rather than uvicorn's exit 3 after the engines were built.
    sock = _bind(*address, from_options=(host is not None, port is not None))
    drain_s = settings.drain_timeout_s
    uv_config = uvicorn.Config(
        app,
        host=address[0],
        port=sock.getsockname()[1],
        log_level=settings.log_level,
        # uvicorn's own cut-off comes after ours, so requests get our 503, not its bare 500
        timeout_graceful_shutdown=math.ceil(drain_s) + DRAIN_GRACE_S,
        timeout_keep_alive=5,
    )
    with sock:
        DrainingServer(uv_config, app.state.drain, drain_s).run(sockets=[sock])


def _check_admin_key_env() -> None:
    """A malformed T2SERVE_ADMIN_KEY digest, refused now rather than inside the lifespan."""
    from server.config import env_admin_digest

    try:
        env_admin_digest()
    except ValueError as exc:
        fail(f"{exc}; give the admin key, or 'sha256:' and its 64-digit hex digest")


def _open_ledger_file(path: str) -> None:
    """Make the SQLite ledger's folder and open its file: one that cannot be opened would make
    every metered request a 500."""
    from storage.sqlite.database import openable

    problem = openable(path)
    if problem is not None:
        fail(f"ledger.path: {problem}")


def _check_journal(ledger: LedgerConfig) -> None:
    """The pending-settles journal is written only when the ledger's store fails: a place it
    cannot be written must be found now, not in an outage. Its file is not made here."""
    from storage import open_stores
    from storage.sqlite.database import writable

    path = open_stores(ledger).pending_path
    problem = writable(path)
    if problem is not None:
        given = "" if ledger.pending_settles_path else f" (its default, {str(path)!r})"
        fail(f"ledger.pending_settles_path{given}: {problem}")


def _bind(host: str, port: int, from_options: tuple[bool, bool]) -> socket.socket:
    """The listening socket; a port in use or an address not this host's is one line."""
    from server.app import listening_socket

    try:
        return listening_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            field = "--port" if from_options[1] else "server.port"
            fail(f"{field}: {host}:{port} is in use")
        field = "--host" if from_options[0] else "server.host"
        fail(f"{field}: cannot listen on {host}:{port} ({exc.strerror or exc})")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
