"""schemathesis with every check against routes: the OpenAPI document names the routes (`auto`,
a cheapest-first `cascade`) and their members as examples of `model`, so generated requests
reach the one sampling loop on routes; no 5xx, every status and body as documented. A scripted
engine serves the shipped pair (the routes are built from their real curves), so the run is
bounded by schemathesis' own limits, not by an engine start. Seeded and bounded by examples
(200 per operation, about 30 s idle), not by a time box, so a loaded box tests the same cases."""

from __future__ import annotations

from server.app import create_app, serve_in_loop
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.routes import routes_config
from tests.fixtures.schemathesis import schemathesis_passes
from tests.fixtures.server import DEMO_KEY, RecordingProvider


async def test_schemathesis_on_routes_finds_nothing() -> None:
    engine = ScriptedEngine(cycle('{"answer": 6}', "A: 5", "A: 6"), structured_outputs=True)
    app = create_app(routes_config(), engine=engine, billing=RecordingProvider())
    async with serve_in_loop(app) as live:
        await schemathesis_passes(
            live.base_url,
            DEMO_KEY,
            seed=11,
            max_examples=200,
            options=("--include-path-regex", "^/v1/(chat/)?completions$"),
        )
    assert any(call.request_id for call in engine.calls)  # generated requests were sampled
