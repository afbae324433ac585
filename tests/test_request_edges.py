"""Request edges found by an audit against OpenAI's and vLLM's documented behaviour: hostile
schemas and content-part types are 400s (never 500s), a field that would be dropped is refused,
n seeded answers differ, a near-zero temperature is greedy, usage counts a prompt once, and a
context error names the field that overflowed. Scripted engine over real HTTP (seconds)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, RecordingProvider, server_config_dict

AUTH = {"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"}


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedEngine]]:
    engine = ScriptedEngine(cycle('{"answer": 6}', '{"answer": 5}'), request_seed=True,
                            structured_outputs=True)  # fmt: skip
    app = create_app(parse_config(server_config_dict()), engine=engine,
                     billing=RecordingProvider())  # fmt: skip
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=30) as http,
    ):
        yield http, engine


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
            "max_tokens": 16, "t2": {"policy": "fixed:2"}, **extra}  # fmt: skip


def unbounded(**extra: Any) -> dict[str, Any]:
    """`chat` without `max_tokens`: the server's default length applies."""
    body = chat(**extra)
    del body["max_tokens"]
    return body


async def post(http: httpx.AsyncClient, body: str | dict[str, Any]) -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return await http.post("/chat/completions", content=text.encode())


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # a lone surrogate in a content part's type: the message quoting it must still render
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "\ud800"}]}]}), "messages.0.content"),
        (json.dumps(chat(response_format=schema_format({"$schema": 5}))),
         "response_format.json_schema.schema"),
        (json.dumps(chat(response_format=schema_format(nested(400)))),
         "response_format.json_schema.schema"),
        # NaN and a lone surrogate parse as JSON in Python, but no engine can be sent them
        (json.dumps(chat(response_format=schema_format({"type": "number", "minimum": 1})))
         .replace('"minimum": 1', '"minimum": NaN'), "response_format.json_schema.schema"),
        (json.dumps(chat(response_format=schema_format({"type": "string",
                                                        "description": "\ud800"}))),
         "response_format.json_schema.schema"),
    ],
    ids=["surrogate-part-type", "schema-uri-not-string", "deep-schema", "nan", "surrogate"],
)  # fmt: skip
async def test_hostile_inputs_are_400s_naming_the_field(
    served: tuple[httpx.AsyncClient, ScriptedEngine], body: str, param: str
) -> None:
    http, engine = served
    resp = await post(http, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].startswith(param)
    assert not engine.calls


async def test_verbosity_and_an_undeliverable_json_field_are_refused(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    resp = await post(http, chat(verbosity="low"))  # OpenAI: it changes the answer's length
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "verbosity"
    assert (await post(http, chat(verbosity=None))).status_code == 200
    for t2, why in (
        ({"json_field": "answer"}, "no JSON response_format"),
        ({"json_field": "answer", "extractor": "last_number"}, "t2.extractor"),
    ):
        body = chat(t2={"policy": "fixed:2", **t2})
        if "extractor" in t2:
            body["response_format"] = {"type": "json_object"}
        resp = await post(http, body)
        err = resp.json()["error"]
        assert resp.status_code == 400 and err["param"] == "t2.json_field", resp.text
        assert why in err["message"]
    calls = len(engine.calls)
    body = chat(t2={"policy": "fixed:2", "json_field": "answer"},
                response_format={"type": "json_object"})  # fmt: skip
    resp = await post(http, body)
    assert resp.status_code == 200 and resp.json()["t2"]["votes"] == {"6": 1, "5": 1}
    assert len(engine.calls) > calls


async def test_n_seeded_answers_get_their_own_seeds(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    resp = await post(http, chat(n=3, seed=42, t2={"policy": "fixed:1"}))
    assert resp.status_code == 200, resp.text
    seeds = [c.params.seed for c in engine.calls]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    engine.calls.clear()
    again = await post(http, chat(n=3, seed=42, t2={"policy": "fixed:1"}))
    assert again.status_code == 200
    assert [c.params.seed for c in engine.calls] == seeds  # and each stays reproducible
    engine.calls.clear()
    one = await post(http, chat(seed=42, t2={"policy": "fixed:1"}))
    assert one.status_code == 200 and [c.params.seed for c in engine.calls] == seeds[:1]


async def test_a_temperature_vllm_decodes_greedily_draws_one_sample(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    resp = await post(http, chat(temperature=1e-6, t2={"policy": "fixed:4"}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["t2"]["samples"] == 1 and sum(c.n for c in engine.calls) == 1


async def test_usage_counts_the_prompt_once_per_prompt(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, _ = served
    one = (await post(http, chat(t2={"policy": "fixed:1"}))).json()["usage"]
    three = (await post(http, chat(n=3, t2={"policy": "fixed:1"}))).json()["usage"]
    assert three["prompt_tokens"] == one["prompt_tokens"]  # as vLLM and OpenAI count it
    assert three["completion_tokens"] == 3 * one["completion_tokens"]


async def test_a_context_overflow_names_the_field_that_asked(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, _ = served
    resp = await post(http, unbounded(max_completion_tokens=10_000))
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["param"] == "max_completion_tokens" and "max_completion_tokens (10000)" in (
        err["message"])  # fmt: skip


async def test_min_tokens_past_the_default_length_says_it_is_the_default(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, _ = served
    err = (await post(http, unbounded(min_tokens=100))).json()["error"]
    assert err["param"] == "min_tokens" and "the default where none is given" in err["message"]
    named = (await post(http, chat(min_tokens=100))).json()["error"]  # max_tokens 16, named
    assert named["message"] == "min_tokens (100) exceeds max_tokens (16)."


async def test_any_seed_vllm_takes_is_taken(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    for seed in (-1, 2**40, -(2**63), 2**63 - 1):
        engine.calls.clear()
        resp = await post(http, chat(seed=seed, t2={"policy": "fixed:1"}))
        assert resp.status_code == 200, resp.text
        first = engine.calls[0].params.seed
        assert first is not None and 0 <= first < 2**31  # what reaches an engine
        await post(http, chat(seed=seed, t2={"policy": "fixed:1"}))
        assert engine.calls[-1].params.seed == first
    resp = await post(http, chat(seed=2**63))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "seed"


async def _stream_lines(http: httpx.AsyncClient, body: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    async with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
    return lines


async def test_a_bug_mid_stream_ends_it_with_an_error_event_and_done(
    served: tuple[httpx.AsyncClient, ScriptedEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, engine = served
    real = engine.sample
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second wave: after the 200 and the role chunk went out
            raise RuntimeError("a bug in a backend")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "sample", failing)
    lines = await _stream_lines(http, chat(t2={"policy": "esc:2"}))  # 6, 5: a second wave
    assert lines[-1] == "data: [DONE]"  # the client sees an end, not a cut connection
    error = json.loads(lines[-2][6:])["error"]
    assert error["type"] == "server_error" and "logged" in error["message"]


async def test_a_stream_cut_by_the_drain_deadline_says_so() -> None:
    engine = ScriptedEngine(cycle('{"answer": 6}', '{"answer": 5}'), token_s=0.05)
    app = create_app(parse_config(server_config_dict()), engine=engine,
                     billing=RecordingProvider())  # fmt: skip
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=30) as http,
    ):
        body = {**chat(t2={"policy": "fixed:4"}, max_tokens=64), "stream": True}
        lines: list[str] = []
        async with http.stream("POST", "/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if line and not lines:
                    app.state.drain.begin(0.2)  # shutting down while this stream samples
                if line:
                    lines.append(line)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "server_shutting_down"
