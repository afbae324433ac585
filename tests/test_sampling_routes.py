"""Routes in the one sampling loop (scripted engines, the shipped pair's real route): an
escalation that draws nothing ends with the answer so far and says why, never an error; a
route gets json_field, verifiers and every aggregator as one model does; votes are keyed by
answer and the answering model is named. Fast: no vLLM (test_server_routes.py serves it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.aggregate import ProgrammaticVerifier
from controller.aggregate.checkers import chain_steps
from controller.aggregate.score_map import TrafficScoreMap
from controller.routing import Route
from server.config import VerifierConfig
from server.engine.service import EngineService
from server.errors import InsufficientQuota
from server.sampling import Outcome, PolicyBook, RoutedJob, Sampler
from server.verifiers import ServedVerifier
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.routes import shipped_route
from tests.test_sampling_loop import RecordingBilling, job

ROOT = Path(__file__).resolve().parents[1]
SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"
UNSURE = cycle("A: 1", "A: 2", "A: 3", "A: 4")  # no two agree: the cascade wants the large one
SURE = cycle("A: 7")


@pytest.fixture(scope="module")
def route() -> Route:
    return shipped_route()


def routed(
    small: ScriptedEngine, large: ScriptedEngine, **over: object
) -> tuple[Sampler, RoutedJob]:
    services = {SMALL: EngineService(SMALL, {}, small), LARGE: EngineService(LARGE, {}, large)}
    jobs = {
        name: dataclasses.replace(job(service, "t2", **over), model=name)
        for name, service in services.items()
    }
    return Sampler(services, PolicyBook()), RoutedJob("auto", jobs, cheapest_first=True)


async def run(
    route: Route, sampler: Sampler, the_job: RoutedJob, billing: RecordingBilling, **kw: object
) -> Outcome:
    return await sampler.run(the_job, billing, route=route, **kw)  # type: ignore[arg-type]


async def test_an_unsure_cascade_escalates_and_names_the_answering_model(route: Route) -> None:
    sampler, the_job = routed(ScriptedEngine(UNSURE), ScriptedEngine(SURE))
    out = await run(route, sampler, the_job, RecordingBilling())
    assert out.route is not None and out.route.waves[0][0] == SMALL
    assert out.model == out.route.model == LARGE and out.answer == "7"
    assert set(out.votes) == {"7"}  # keyed by answer, not "model:answer"


@pytest.mark.parametrize("max_cost", [30.0, 60.0, 100.0, 150.0, 200.0, 300.0])
async def test_max_cost_refusing_the_escalation_answers_with_the_small_model(
    route: Route, max_cost: float
) -> None:
    sampler, the_job = routed(ScriptedEngine(UNSURE), ScriptedEngine(SURE), max_cost=max_cost)
    billing = RecordingBilling()
    out = await run(route, sampler, the_job, billing)
    assert out.samples >= 1 and out.cost <= max_cost
    assert out.answer is not None and out.model in (SMALL, LARGE)
    if out.route is not None and all(m == SMALL for m, _ in out.route.waves):
        assert out.model == SMALL and out.stop_reason in ("max_cost", "marginal_value")
    assert billing.closed == 1


async def test_a_budget_refusal_on_escalation_answers_with_what_was_drawn(route: Route) -> None:
    sampler, the_job = routed(ScriptedEngine(UNSURE), ScriptedEngine(SURE))
    billing = RecordingBilling(grants=[16, InsufficientQuota("spent")])
    out = await run(route, sampler, the_job, billing)
    assert out.stop_reason == "budget" and out.model == SMALL
    assert out.route is not None and {m for m, _ in out.route.waves} == {SMALL}
    assert out.answer in {"1", "2", "3", "4"} and out.text == f"A: {out.answer}"


async def test_json_field_works_on_a_route(route: Route) -> None:
    script = cycle('{"answer":"5"}', '{"answer":"6"}', '{"answer":"5"}')
    sampler, the_job = routed(
        ScriptedEngine(script), ScriptedEngine(script), extractor="json_field", json_field="answer"
    )
    out = await run(route, sampler, the_job, RecordingBilling())
    assert out.answer == "5" and set(out.votes) <= {"5", "6"} and out.votes["5"] >= 1


async def test_a_verifier_scores_a_route_and_best_of_n_is_honoured(route: Route) -> None:
    chains = cycle("1+1=3;A: 3", "1+1=5;A: 5", "1+1=2;A: 2", "1+1=4;A: 4")
    sampler, the_job = routed(
        ScriptedEngine(chains), ScriptedEngine(chains), aggregator="best_of_n"
    )
    cfg = VerifierConfig(kind="checker", checker="chain_steps")
    verifier = ServedVerifier(
        cfg, ProgrammaticVerifier("chain_steps", chain_steps), TrafficScoreMap()
    )
    out = await run(route, sampler, the_job, RecordingBilling(), verifier=verifier)
    assert out.verifier == "chain_steps" and out.aggregator == "best_of_n"
    assert out.answer == "2" and out.text == "1+1=2;A: 2"


async def test_verifier_aware_stopping_applies_to_routes(route: Route) -> None:
    chains = cycle("1+1=2;A: 2", "1+1=5;A: 5", "1+1=3;A: 3")
    sampler, the_job = routed(ScriptedEngine(chains), ScriptedEngine(chains))
    cfg = VerifierConfig(kind="checker", checker="chain_steps", stop_at=0.9)
    verifier = ServedVerifier(
        cfg, ProgrammaticVerifier("chain_steps", chain_steps), TrafficScoreMap()
    )
    out = await run(route, sampler, the_job, RecordingBilling(), verifier=verifier)
    assert out.stop_reason == "verified" and out.model == SMALL


async def test_the_deadline_ends_a_route_with_the_answer_so_far(route: Route) -> None:
    # the first wave takes ~40 ms; the 10 ms soft deadline lets no second wave start
    sampler, the_job = routed(
        ScriptedEngine(UNSURE, token_s=0.01), ScriptedEngine(SURE), deadline_ms=10
    )
    out = await run(route, sampler, the_job, RecordingBilling())
    assert out.stop_reason == "deadline" and out.waves == 1 and out.model == SMALL
    assert out.answer is not None
