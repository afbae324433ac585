"""What a route's decisions are told a wave costs (server.sampling.route_prices): the call's
prompt once, nothing for a repeat call's cached prompt, each sample's worst-case completion,
each model's cap; in FLOPs (2·N per token) for unmetered tenants."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from controller.replay.route import calibrate_route
from controller.replay.routing_set import load_routing_set
from controller.routing import N_MAX, Route
from server.engine.service import EngineService
from server.sampling.job import RoutedJob
from server.sampling.route_prices import route_prices
from tests.fakes import ScriptedEngine
from tests.test_replay_route import toy
from tests.test_replay_route_server import PricedBilling
from tests.test_sampling_loop import RecordingBilling, job

PARAMS = {"weak": 1e6, "strong": 1e9}


def route_and_jobs(tmp_path: Path, caps: dict[str, int]) -> tuple[Route, RoutedJob]:
    rs = load_routing_set(toy(tmp_path / "s"))
    route = calibrate_route(rs, np.arange(rs.questions), ("weak", "strong"), 0)
    sized = tuple(dataclasses.replace(c, params=PARAMS[c.model]) for c in route.candidates)
    route = dataclasses.replace(route, candidates=sized)
    service = EngineService("weak", {}, ScriptedEngine())
    jobs = {m: job(service, "t2", model=m, max_samples=caps[m]) for m in PARAMS}
    return route, RoutedJob("r", jobs)


def test_metered_prices_are_the_billing_quote_per_model(tmp_path: Path) -> None:
    route, routed = route_and_jobs(tmp_path, {"weak": 40, "strong": 3})
    prompt = routed.jobs["weak"].prompt_tokens
    prices = route_prices(routed, route, PricedBilling(unit="currency"))
    assert prices.unit == "currency"
    assert prices.call == {"weak": 1.0 * prompt, "strong": 10.0 * prompt}
    assert prices.sample == {"weak": 16.0, "strong": 160.0}  # max_tokens 16
    assert prices.recall == {"weak": 0.0, "strong": 0.0}  # a repeat call's prompt is cached
    assert prices.caps == {"weak": N_MAX, "strong": 3}  # its own max_samples, at most N_MAX
    assert prices.per_sample("strong") == pytest.approx(10.0 * (prompt + 16))


def test_unmetered_prices_are_flops_of_each_models_size(tmp_path: Path) -> None:
    route, routed = route_and_jobs(tmp_path, {"weak": 8, "strong": 8})
    prompt = routed.jobs["weak"].prompt_tokens
    prices = route_prices(routed, route, RecordingBilling(unit="tokens"))
    assert prices.unit == "flops"
    assert prices.call["strong"] == pytest.approx(2.0 * 1e9 * prompt)
    assert prices.sample["weak"] == pytest.approx(2.0 * 1e6 * 16)
    assert prices.recall == {"weak": 0.0, "strong": 0.0}
