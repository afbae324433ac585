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
from controller.routing import N_MAX, POOL, SHRINK, Route
from server.engine.service import EngineService
from server.sampling import PolicyBook, Sampler
from server.sampling.job import RoutedJob
from server.sampling.route_prices import FREE, route_prices
from tests.fakes import ScriptedEngine
from tests.test_replay_route import toy
from tests.test_replay_route_server import MODELS, PROMPT, PricedBilling, recorded_set, replaying
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


class FreeWeakBilling(PricedBilling):
    """The weak model is self-hosted and billed nothing; the strong one as PricedBilling."""

    def quote(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        return 0.0 if model == "weak" else super().quote(prompt_tokens, completion_tokens, model)


def test_a_requests_lambda_prices_a_sample_of_the_cheapest_model_that_costs_anything(
    tmp_path: Path,
) -> None:
    """λ per sample is converted by the first candidate's sample, unless that one is free: λ
    per unit of nothing would be infinite and the route would never leave the free model."""
    route, routed = route_and_jobs(tmp_path, {"weak": 8, "strong": 8})
    priced = route_prices(routed, route, PricedBilling(unit="currency"))
    assert priced.yardstick() == priced.per_sample("weak")
    free = route_prices(routed, route, FreeWeakBilling(unit="currency"))
    assert free.per_sample("weak") == pytest.approx(0.0, abs=1e-9)
    assert free.yardstick() == free.per_sample("strong") == priced.per_sample("strong")
    nothing = dataclasses.replace(free, sample={m: FREE for m in free.sample},
                                  call={m: 0.0 for m in free.call})  # fmt: skip
    assert nothing.yardstick() == nothing.per_sample("weak")


async def test_a_route_leaves_a_free_model_when_its_votes_split(tmp_path: Path) -> None:
    """Through the loop: the weak model is free and split on odd questions, so a request's λ
    per sample must still let the route buy the strong model there. With λ converted by the
    free model's sample, no question ever left it."""
    rs = load_routing_set(recorded_set(tmp_path / "s", n=60))
    route = calibrate_route(rs, np.arange(rs.questions), MODELS, 0, SHRINK, pool=POOL)
    split = ["A: 7", "A: 2", "A: 3", "A: 1"] * 4
    engines = {m: EngineService(m, {}, ScriptedEngine(replaying(split if m == "weak" else
                                                                ["A: 7"] * 16)))
               for m in MODELS}  # fmt: skip
    prompt = engines["weak"].tokenize(PROMPT)
    jobs = {m: job(engines[m], "t2:lam=0.02", model=m, prompt=prompt, max_samples=N_MAX)
            for m in MODELS}  # fmt: skip
    out = await Sampler(engines, PolicyBook()).run(
        RoutedJob("r", jobs), FreeWeakBilling(unit="currency"), route=route
    )
    assert out.route is not None
    assert "strong" in {m for m, _ in out.route.waves}
