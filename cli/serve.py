"""`t2serve serve`: run the OpenAI-compatible server from a config file."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer

from server.config import CONFIG_ENV, ConfigError, load_config, resolve_config_path


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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if cfg.ledger.backend == "sqlite":
        try:
            Path(cfg.ledger.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            typer.echo(f"error: ledger.path: cannot make its folder ({exc})", err=True)
            raise typer.Exit(2) from None

    import uvicorn

    from server.app import DRAIN_GRACE_S, DrainingServer, create_app, enable_reload

    settings = cfg.server
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(cfg)  # routes are built here: a member without usable curves fails
    except ConfigError as exc:
        typer.echo(f"error: {resolve_config_path(config)}: {exc}", err=True)
        raise typer.Exit(2) from None
    enable_reload(app, resolve_config_path(config))  # POST /admin/reload and SIGHUP
    drain_s = settings.drain_timeout_s
    uv_config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level,
        # uvicorn's own cut-off comes after ours, so requests get our 503, not its bare 500
        timeout_graceful_shutdown=math.ceil(drain_s) + DRAIN_GRACE_S,
        timeout_keep_alive=5,
    )
    DrainingServer(uv_config, app.state.drain, drain_s).run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
