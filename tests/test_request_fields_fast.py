"""The request's pass-through sampling fields reach the engine for every wave, and bad values
are 400s naming the field (scripted engine over real HTTP; runs in seconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server.app import create_app, serve_in_loop
from server.config import parse_config
from server.engine.base import StructuredOutput
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, RecordingProvider, server_config_dict

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
SCRIPT = cycle('{"answer": 6}', '{"answer": 5}', '{"answer": 6}')


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedEngine]]:
    engine = ScriptedEngine(SCRIPT, structured_outputs=True)
    config = parse_config(server_config_dict())
    app = create_app(config, engine=engine, billing=RecordingProvider())
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=30) as http,
    ):
        yield http, engine


def chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
        "max_tokens": 32,
        "t2": {"policy": "esc:2"},  # waves of 2 until one agrees: 6,5 then 6,6
        **extra,
    }


PASSED = {
    "top_k": 5,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "min_tokens": 3,
    "logit_bias": {"55": 10, "7": -100},
    "stop_token_ids": [10, 59],
    "ignore_eos": True,
}


async def test_every_wave_gets_the_fields(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    r = await http.post("/chat/completions", json=chat(**PASSED))
    assert r.status_code == 200, r.text
    assert len(engine.calls) >= 2  # more than one wave
    for call in engine.calls:
        p = call.params
        assert (p.top_k, p.min_p, p.repetition_penalty) == (5, 0.1, 1.3)
        assert (p.presence_penalty, p.frequency_penalty, p.min_tokens) == (0.5, -0.5, 3)
        assert dict(p.logit_bias) == {55: 10.0, 7: -100.0}
        assert p.stop_token_ids == (10, 59) and p.ignore_eos
        assert p.top_logprobs is None and p.structured is None


@pytest.mark.parametrize(("aggregator", "asked"), [("majority", False), ("logprob", True)])
async def test_sample_logprobs_are_asked_only_for_a_logprob_vote(
    served: tuple[httpx.AsyncClient, ScriptedEngine], aggregator: str, asked: bool
) -> None:
    http, engine = served
    body = chat()
    body["t2"] = {**body["t2"], "aggregator": aggregator}
    r = await http.post("/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert engine.calls and all(c.params.sample_logprob is asked for c in engine.calls)


async def test_response_format_and_json_field_vote(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    t2 = {"policy": "fixed:3", "json_field": "answer"}
    body = (await http.post("/chat/completions", json=chat(response_format=fmt, t2=t2))).json()
    assert body["t2"]["answer"] == "6", body
    assert body["t2"]["votes"] == {"6": 2, "5": 1}
    spec = engine.calls[-1].params.structured
    assert isinstance(spec, StructuredOutput) and spec.json_schema is not None
    assert '"answer"' in spec.json_schema
    obj = await http.post("/chat/completions", json=chat(response_format={"type": "json_object"}))
    assert engine.calls[-1].params.structured == StructuredOutput(json_object=True), obj.text
    engine.structured_outputs = False  # an engine that cannot enforce it: refused, not ignored
    r = await http.post("/chat/completions", json=chat(response_format={"type": "json_object"}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -2),
        ("top_k", 1.5),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("min_tokens", -1),
        ("min_tokens", 33),  # more than max_tokens
        ("logit_bias", {"x": 1}),
        ("logit_bias", {"5": 101}),
        ("logit_bias", {"9999999999": 1}),  # not a token of this model
        ("stop_token_ids", [-1]),
        ("stop_token_ids", ["a"]),
        ("ignore_eos", "yes"),
        ("stream_options", {"include_usage": True}),  # without stream: true
        ("request_id", "tab\there"),
        ("request_id", "x" * 257),
        ("request_id", 7),
        ("response_format", {"type": "yaml"}),
        ("top_logprobs", 3),  # without logprobs
        ("top_logprobs", 21),
        ("logprobs", 1),
        ("t2", {"policy": "t2:lam=0.001,lam=0.01"}),  # the first was dropped
        ("t2", {"policy": "t2:0.001,0.01"}),
    ],
)
async def test_bad_values_are_400s_naming_the_field(
    served: tuple[httpx.AsyncClient, ScriptedEngine], field: str, value: Any
) -> None:
    http, engine = served
    r = await http.post("/chat/completions", json=chat(**{field: value}))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == field, r.text
    assert engine.calls == []


async def test_a_request_id_names_the_response_as_in_vllm(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    """`request_id` (or an X-Request-Id header, which wins) becomes the response's id; the
    engine requests get a random part too, so two requests with one id do not collide."""
    http, engine = served
    first = await http.post("/chat/completions", json=chat(request_id="trace-42"))
    again = await http.post("/chat/completions", json=chat(request_id="trace-42"))
    assert first.json()["id"] == again.json()["id"] == "chatcmpl-trace-42"
    ids = {call.request_id for call in engine.calls}
    assert all(i.startswith("chatcmpl-trace-42-") for i in ids) and len(ids) >= 4
    body = {"model": MODEL, "prompt": "Q: 1+1=?", "max_tokens": 8, "request_id": "body"}
    text = await http.post("/completions", json=body, headers={"X-Request-Id": "header"})
    assert text.json()["id"] == "cmpl-header"
    async with http.stream("POST", "/chat/completions",
                           json=chat(stream=True, request_id="s-1")) as r:  # fmt: skip
        chunks = [line async for line in r.aiter_lines() if line.startswith("data: {")]
    assert chunks and all('"id":"chatcmpl-s-1"' in c.replace(" ", "") for c in chunks)
    bad = await http.post("/chat/completions", json=chat(), headers={"X-Request-Id": "x" * 257})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request_id"


async def test_message_fields_render_or_are_refused_never_dropped(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    """A message's `name` reaches the chat template; what a template would render but
    t2serve does not pass on (tool calls, reasoning, ...) is a 400 naming it unless null, so
    a previous response's message, nulls and all, can be sent back."""
    http, engine = served
    named = [{"role": "user", "name": "ann", "content": "Q: 7+8-9=?"}]
    assert (await http.post("/chat/completions", json=chat(messages=named))).status_code == 200
    assert engine.calls[-1].prompt.text.startswith("<user:ann>Q: 7+8-9=?")
    first = await http.post("/chat/completions", json=chat())
    echoed = {**first.json()["choices"][0]["message"], "refusal": None, "tool_calls": None,
              "function_call": None, "audio": None, "annotations": []}  # fmt: skip
    turn = [chat()["messages"][0], echoed, {"role": "user", "content": "And 1+1?"}]
    assert (await http.post("/chat/completions", json=chat(messages=turn))).status_code == 200
    for field, value in [("tool_calls", [{"id": "c", "type": "function"}]),
                         ("reasoning_content", "so"), ("tool_call_id", "c")]:  # fmt: skip
        bad = [{"role": "assistant", "content": "x", field: value}]
        r = await http.post("/chat/completions", json=chat(messages=bad))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == f"messages.0.{field}", r.text
        assert r.json()["error"]["code"] == "unsupported_parameter"
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    r = await http.post("/chat/completions",
                        json=chat(messages=[{"role": "user", "content": image}]))  # fmt: skip
    assert r.status_code == 400 and "'image_url'" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages.0.content"
    usage = {"include_usage": True, "continuous_usage_stats": True}
    r = await http.post("/chat/completions", json=chat(stream=True, stream_options=usage))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream_options.continuous_usage_stats"
