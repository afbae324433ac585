"""The config's T² routes (a model id that routes between served models) as the controller's
`Route`s, built once per process. Not to be confused with HTTP routes (server/api/router.py).

A route's members are served models with calibrated curves (their `curves:` file, else
`<model dir>/curves.json`); its vote statistics are measured on those curves' calibration
samples (controller.routing), which takes a few seconds, so built routes are kept by what they
were built from and a config reload or a second app reuses them.
"""

from __future__ import annotations

import os
from functools import lru_cache

from controller.routing import (
    CalibrationQuestion,
    Route,
    RouteMember,
    build_route,
    served_calibration,
)
from controller.scaling.served import ServedCurvesError, load_served
from server.config import AppConfig, ModelConfig, RouteConfig
from server.errors import ConfigError

_BUILT: dict[tuple[object, ...], Route] = {}
MAX_BUILT = 16


@lru_cache(maxsize=MAX_BUILT)
def _calibration(path: str, mtime: float, model_id: str) -> tuple[CalibrationQuestion, ...]:
    """A member's calibration questions, read and normalised once per curves file version
    (~0.5 s for the shipped models' 256 questions × 64 samples): a model in several routes,
    a config reload and a second app in one process share them."""
    return tuple(served_calibration(path, model_id))


def _member(model: ModelConfig) -> tuple[RouteMember, tuple[str, float]]:
    path = model.curves_file()
    curves = load_served(path, model.id)
    mtime = os.path.getmtime(path)
    questions = _calibration(str(path), mtime, model.id)
    params = model.params or curves.params
    return RouteMember(model.id, curves, params, questions), (str(path), mtime)


def build(config: AppConfig, route: RouteConfig, index: int) -> Route:
    members = []
    keys: list[object] = [route.id]
    for name in route.route:
        model = config.model(name)
        assert model is not None  # the config validator refused unknown members
        try:
            member, key = _member(model)
        except (ServedCurvesError, OSError, ValueError) as exc:
            who = "" if isinstance(exc, ServedCurvesError) else f"model {name!r}: "  # it names it
            raise ConfigError(f"routes.{index} ({route.id}): {who}{exc}") from None
        members.append(member)
        keys += [name, key, member.params]
    cache_key = tuple(keys)
    built = _BUILT.get(cache_key)
    if built is None:
        built = build_route(route.id, members)
        if len(_BUILT) >= MAX_BUILT:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[cache_key] = built
    return built


def route_table(config: AppConfig) -> dict[str, Route]:
    """Every configured route by id; ConfigError names the route and member that cannot be
    built (no curves, no calibration samples)."""
    return {r.id: build(config, r, i) for i, r in enumerate(config.routes)}
