"""`create_app(config, engine=..., pooling=...)` with engines the caller started: one generator
engine for every model or one per model id, and reward models. The app uses them and leaves them
running: the suite serves several configs on the chain pair and reward model it starts once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from server.app import create_app, serve_in_loop
from server.config import VerifierModelConfig, parse_config
from server.engine.pooling import PoolingService
from server.engine.service import EngineService
from server.verifiers import VerifierBook
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.routes import LARGE, SMALL
from tests.fixtures.server import DEMO_KEY, server_config_dict


def pair_config() -> dict[str, object]:
    cfg = server_config_dict()
    cfg["models"] = [
        {"id": SMALL, "path": f"models/{SMALL}"},
        {"id": LARGE, "path": f"models/{LARGE}"},
    ]
    cfg["tenants"][0]["models"] = ["*"]
    return cfg


async def test_each_model_answers_from_the_engine_given_for_it() -> None:
    engines = {SMALL: ScriptedEngine(cycle("A: 1")), LARGE: ScriptedEngine(cycle("A: 2"))}
    app = create_app(parse_config(pair_config()), engine=engines)
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(headers={"Authorization": f"Bearer {DEMO_KEY}"}) as http,
    ):
        for model, answer in ((SMALL, "1"), (LARGE, "2")):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Q: 1+1=?"}],
                "t2": {"policy": "fixed:2"},
            }
            resp = await http.post(f"{live.v1}/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            assert resp.json()["t2"]["answer"] == answer
    assert len(engines[SMALL].calls) == len(engines[LARGE].calls) == 1


def test_a_model_without_a_given_engine_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=LARGE):
        create_app(parse_config(pair_config()), engine={SMALL: ScriptedEngine()})


class RecordingPooling(PoolingService):
    """A reward-model service that records its lifecycle instead of starting vLLM."""

    def __init__(self) -> None:
        super().__init__(VerifierModelConfig(id="rm", path="models/tiny-chain-rm"))
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


async def test_an_app_leaves_the_reward_models_it_was_given_running() -> None:
    given = RecordingPooling()
    app = create_app(parse_config(pair_config()), engine=ScriptedEngine(), pooling={"rm": given})
    async with serve_in_loop(app):
        pass
    assert given.events == []


async def test_the_verifier_book_stops_the_reward_models_it_started() -> None:
    pooling = RecordingPooling()
    book = VerifierBook(pooling={"rm": pooling})
    await book.start()
    await book.aclose()
    assert pooling.events == ["start", "shutdown"]


async def test_an_app_stops_its_engines_together() -> None:
    """vLLM takes ~5 s to stop an engine: a server with several stops them all in ~5 s."""
    stopping: list[str] = []
    all_stopping = asyncio.Event()

    class SlowToStop(EngineService):
        async def shutdown(self) -> None:
            stopping.append(self.model_id)
            if len(stopping) == 2:
                all_stopping.set()
            await asyncio.wait_for(all_stopping.wait(), 10)  # one at a time: times out here

    app = create_app(parse_config(pair_config()), engine=ScriptedEngine())
    state = app.state.t2
    state.engines = {m: SlowToStop(m, {}, ScriptedEngine()) for m in (SMALL, LARGE)}
    await state.aclose()
    assert sorted(stopping) == sorted([SMALL, LARGE])
