"""`start_engine`: validate the settings and start the configured backend."""

from __future__ import annotations

from typing import Any

from server.engine.base import SampleEngine
from server.engine.config import EngineConfig


async def start_engine(config: EngineConfig | None = None, **settings: Any) -> SampleEngine:
    """Start an engine from an `EngineConfig` or its fields as keywords.

    The server calls `start_engine(model_path=..., served_name=..., **config["engine"])`;
    pydantic rejects unknown or invalid settings with the field's name.
    """
    if settings.get("model_path") is None:
        settings.pop("model_path", None)
    cfg = config if config is not None else EngineConfig.model_validate(settings)
    if cfg.backend == "remote":
        from server.engine.remote import RemoteEngine

        return await RemoteEngine.start(cfg)
    from server.engine.inprocess import InProcessEngine

    return await InProcessEngine.start(cfg)
