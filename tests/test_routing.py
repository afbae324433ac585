"""T² routing on the shipped pair's calibrated curves (controller.routing): λ moves the choice
between cheap and accurate (model, k); the cascade keeps clear cases on the small model and
moves unsure ones; the final answer; and the config refusing routes it cannot serve."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from controller.pacing import ComputePrice
from controller.routing import (
    Route,
    cascade_answer,
    route_price,
)
from server.config import ConfigError, hash_key, parse_config
from tests.fixtures.routes import shipped_route

ROOT = Path(__file__).resolve().parents[1]
SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"
RATIO = 252_384 / 30_880  # FLOPs of a LARGE sample over a SMALL one (same tokens)
COSTS = {SMALL: 1.0, LARGE: RATIO}  # in units of one SMALL sample
KV = 2**25


@pytest.fixture(scope="module")
def route() -> Route:
    return shipped_route()


def chosen(route: Route, lam: float, allowed: int = 16) -> tuple[str, int, float, float]:
    """(model, first wave, predicted cost, predicted accuracy) of the route's first decision."""
    run = route.start(COSTS, lam, allowed)
    step = run.decide({})
    plan = next(p for p in run.plans if p.model == step.model)
    return step.model, step.wave, plan.predicted_cost, plan.predicted_accuracy


def test_rising_lambda_shifts_routing_to_cheaper_pairs(route: Route) -> None:
    lams = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 6e-2, 0.1, 0.3, 1.0]
    picks = [chosen(route, lam) for lam in lams]
    costs = [p[2] for p in picks]
    accuracy = [p[3] for p in picks]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(costs)), picks
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(accuracy)), picks
    assert picks[0][:2] == (LARGE, 16) or (picks[0][0] == LARGE and picks[0][1] >= 4)
    assert picks[-1][:3] == (SMALL, 1, pytest.approx(1.0))  # compute is dear: one cheap sample
    assert accuracy[0] > accuracy[-1] + 0.3  # falling λ buys accuracy
    assert len({p[:2] for p in picks}) >= 4  # not a switch between two fixed choices


def test_every_candidate_is_reported(route: Route) -> None:
    run = route.start(COSTS, 0.05, 16)
    run.decide({})
    assert [p.model for p in run.plans] == [SMALL, LARGE]
    for plan in run.plans:
        assert 0 < plan.predicted_accuracy < 1 and plan.predicted_cost > 0 and plan.first_wave >= 1


def test_cascade_keeps_clear_cases_small_and_escalates_unsure_ones(route: Route) -> None:
    lam = 0.05  # a cascade starting on the small model samples it, then decides
    run = route.start(COSTS, lam, 16, cheapest_first=True)
    step = run.decide({})
    assert step.model == SMALL and step.wave >= 2
    k = step.wave
    agree = run.decide({SMALL: ["7"] * k})
    assert agree.stop and agree.reason == "marginal_value"
    run = route.start(COSTS, lam, 16, cheapest_first=True)
    run.decide({})
    split = run.decide({SMALL: [str(i) for i in range(k)]})
    assert split.model == LARGE and not split.stop
    done = run.decide({SMALL: [str(i) for i in range(k)], LARGE: ["3"] * split.wave})
    assert done.stop  # a convincing large-model answer ends it
    assert run.predicted_accuracy is not None and run.predicted_accuracy > 0.8


def test_escalation_only_when_it_pays(route: Route) -> None:
    run = route.start(COSTS, 1.0, 16)  # a large sample costs 8 correct answers
    run.decide({})
    assert run.decide({SMALL: ["1"]}).stop


def test_cascade_answer_is_the_last_models_majority_ties_broken_by_earlier_votes() -> None:
    order = [SMALL, LARGE]
    assert cascade_answer({SMALL: ["4", "4", "4"], LARGE: ["9"]}, order) == "9"
    assert cascade_answer({SMALL: ["4", "9", "4"], LARGE: ["9", "4"]}, order) == "4"
    assert cascade_answer({SMALL: [], LARGE: ["9", "4"]}, order) == "9"  # first seen
    assert cascade_answer({SMALL: ["2", "2"]}, order) == "2"
    assert cascade_answer({SMALL: [None]}, order) is None


def _config(models: list[dict[str, object]], allowed: list[str]) -> dict[str, object]:
    return {
        "models": models,
        "tenants": [{"id": "t", "api_keys": [{"sha256": hash_key("k")}], "models": allowed}],
    }


def test_a_route_naming_an_unknown_model_is_refused_naming_it() -> None:
    models: list[dict[str, object]] = [
        {"id": SMALL, "path": f"models/{SMALL}"},
        {"id": "auto", "route": [SMALL, "tiny-chain-9000k"]},
    ]
    with pytest.raises(ConfigError, match=r"models\.1\.route\.1: unknown model 'tiny-chain-9000k'"):
        parse_config(_config(models, ["*"]))


def test_route_ids_must_not_clash_and_members_appear_once() -> None:
    base: list[dict[str, object]] = [{"id": SMALL, "path": f"models/{SMALL}"}]
    with pytest.raises(ConfigError, match="duplicate model or route id"):
        parse_config(_config([*base, {"id": SMALL, "route": [SMALL]}], ["*"]))
    with pytest.raises(ConfigError, match="names a model twice"):
        parse_config(_config([*base, {"id": "auto", "route": [SMALL, SMALL]}], ["*"]))


def test_models_take_their_own_engine_settings() -> None:
    cfg = parse_config(
        _config(
            [
                {
                    "id": SMALL,
                    "path": f"models/{SMALL}",
                    "engine": {"kv_cache_memory_bytes": 2**25},
                },
                {"id": LARGE, "path": f"models/{LARGE}"},
                {"id": "auto", "route": [SMALL, LARGE]},
            ],
            ["*"],
        )
        | {"engine": {"kv_cache_memory_bytes": 2**26, "max_num_seqs": 32}}
    )
    small, large = (m.engine_settings(cfg.engine) for m in cfg.models)
    assert small["kv_cache_memory_bytes"] == KV and large["kv_cache_memory_bytes"] == 2**26
    assert small["max_num_seqs"] == large["max_num_seqs"] == 32
    assert small["model_path"] == f"models/{SMALL}" and small["served_name"] == SMALL
    assert cfg.model_ids == [SMALL, LARGE, "auto"] and cfg.route("auto") is not None
    with pytest.raises(ConfigError, match=r"models\.0\.engine \(tiny-chain-31k\): .*block_size"):
        parse_config(_config([{"id": SMALL, "path": "x", "engine": {"block_size": 33}}], ["*"]))


def test_the_budgets_price_of_compute_sets_the_routes_lambda() -> None:
    ref = 4e6  # FLOPs of one small-model sample
    assert route_price(0.02, None, ref, "flops") == pytest.approx(0.02 / ref)
    tight = ComputePrice(1e-6, "flops", "cap")  # a budget burning ahead of pace
    assert route_price(0.02, tight, ref, "flops") == pytest.approx(1e-6)
    slack = ComputePrice(1e-12, "flops", "cap")  # a cap never lowers the route's own price
    assert route_price(0.02, slack, ref, "flops") == pytest.approx(0.02 / ref)
    spend = ComputePrice(1e-12, "flops", "spend")  # a spend target replaces it
    assert route_price(0.02, spend, ref, "flops") == pytest.approx(1e-12)
    per_sample = ComputePrice(0.5, "sample", "cap")
    assert route_price(0.02, per_sample, ref, "flops") == pytest.approx(0.5 / ref)
    assert route_price(0.02, ComputePrice(9.0, "currency"), ref, "flops") == 0.02 / ref


def test_a_tightening_budget_moves_the_route_to_the_cheap_model(route: Route) -> None:
    """The pacing λ a budget sets, through route_price, shifts the choice as λ itself does."""
    own = 0.0005  # t2's default λ per small sample
    picks = []
    for lam in (1e-9, 1e-3, 1e-2, 0.2):  # the budget's λ per small-sample cost unit, rising
        price = ComputePrice(lam, "flops", "cap")
        picks.append(chosen(route, route_price(own, price, 1.0, "flops")))
    assert picks[0][0] == LARGE and picks[-1][0] == SMALL
    assert [p[2] for p in picks] == sorted((p[2] for p in picks), reverse=True)
