"""The README's request-field table, checked row by row against the live server (real engine):
a supported field is answered (200) and does what it says where the output shows it, a refused
one is a 400 `unsupported_parameter` naming it, an ignored one is answered exactly as without
it; and the table lists exactly the fields the protocol declares. (Routes: see
test_request_fields_routes.py.)"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from server.api.protocol import (
    IGNORED_FIELDS,
    REFUSED_FIELDS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    StreamOptions,
)
from tests.fixtures.server import DEMO_KEY, MODEL, LiveServer

pytestmark = [pytest.mark.engine]
README = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
ROW = re.compile(r"^\| `([a-z0-9_]+)`[^|]*\| (supported|refused|ignored)\b[^|]*\|")
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
PROBE = {"probe": 1}  # not the "off" value of any refused field

# A valid value for each supported field (text-completion-only ones marked below).
EXAMPLES: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 8,
    "max_completion_tokens": 8,
    "stop": ["\n"],
    "seed": 3,
    "n": 2,
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "table-user",
    "t2": {"policy": "fixed:2"},
    "top_k": 5,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "min_tokens": 2,
    "logit_bias": {"13": 1},
    "stop_token_ids": [2],
    "ignore_eos": True,
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "request_id": "table-row",
}
TEXT_ONLY = {"prompt": "Q: 1+2-3=?", "echo": True}
CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs"}


def table() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_table_lists_every_declared_field_once() -> None:
    rows = table()
    declared = set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    assert set(rows) == declared
    assert {f for f, s in rows.items() if s == "refused"} == set(REFUSED_FIELDS)
    assert {f for f, s in rows.items() if s == "ignored"} == set(IGNORED_FIELDS)


def test_every_field_vllm_and_openai_declare_is_declared() -> None:
    """A field the protocol does not declare is dropped unread (extra="ignore"): one that
    vLLM or OpenAI added later would be silently ignored. So every request, message and
    stream-options field of the installed vllm and openai packages must be declared here
    (and a request field is then in the table)."""
    from openai.types import completion_create_params as text_params
    from openai.types.chat import (
        ChatCompletionMessageParam,
        ChatCompletionStreamOptionsParam,
    )
    from openai.types.chat import completion_create_params as chat_params
    from vllm.entrypoints.generate.base.protocol import StreamOptions as VllmStreamOptions
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest as VllmChat,
    )
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VllmText
    from vllm.renderers.chat_utils import CustomChatCompletionMessageParam as VllmMessage

    def keys(typed: type) -> set[str]:
        return {k for base in typed.__mro__ for k in getattr(base, "__annotations__", {})}

    chat_known = set(VllmChat.model_fields) | keys(chat_params.CompletionCreateParamsBase)
    text_known = set(VllmText.model_fields) | keys(text_params.CompletionCreateParamsBase)
    assert chat_known - set(ChatCompletionRequest.model_fields) == set()
    assert text_known - set(CompletionRequest.model_fields) == set()
    messages = {k for m in get_args(ChatCompletionMessageParam) for k in keys(m)}
    messages |= keys(VllmMessage)
    assert messages - set(ChatMessage.model_fields) == set()
    stream_known = keys(ChatCompletionStreamOptionsParam) | set(VllmStreamOptions.model_fields)
    assert stream_known - set(StreamOptions.model_fields) == set()


def chat(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Q: 1+2-3=?"}],
        "max_tokens": 8,
        "t2": {"policy": "fixed:2"},
    }
    body.update(extra)
    if "top_logprobs" in extra:
        body["logprobs"] = True
    if "stream_options" in extra:
        body["stream"] = True
    return body


def text(**extra: Any) -> dict[str, Any]:
    body = {k: v for k, v in chat(**extra).items() if k != "messages" and k not in CHAT_ONLY}
    body.setdefault("prompt", TEXT_ONLY["prompt"])
    if extra.get("logprobs") is True:
        body["logprobs"] = 2
    return body


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    resp = await http.post(path, json=body)
    await resp.aread()
    return resp


@pytest.mark.parametrize("field", sorted(table()))
async def test_each_row_against_the_live_server(live_server: LiveServer, field: str) -> None:
    status = table()[field]
    async with httpx.AsyncClient(base_url=live_server.v1, headers=AUTH, timeout=120) as http:
        if status == "refused":
            for path, body in (("/chat/completions", chat), ("/completions", text)):
                r = await post(http, path, body(**{field: PROBE}))
                assert r.status_code == 400, (path, r.text)
                err = r.json()["error"]
                assert (err["param"], err["code"]) == (field, "unsupported_parameter"), err
            return
        if status == "ignored":  # answered exactly as without it (greedy: the same text)
            for path, body in (("/chat/completions", chat), ("/completions", text)):
                r = await post(http, path, body(temperature=0, **{field: PROBE}))
                assert r.status_code == 200, (path, r.text)
                plain = await post(http, path, body(temperature=0))
                assert _texts(r.json()) == _texts(plain.json()), (path, field)
            return
        if field == "echo":  # supported on completions, refused on chat (as the row says)
            r = await post(http, "/completions", text(echo=True))
            assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Q: 1+2")
            r = await post(http, "/chat/completions", chat(echo=True))
            assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
            return
        extra = {} if field in ("model", "messages", "prompt") else {field: EXAMPLES[field]}
        if field != "prompt":
            r = await post(http, "/chat/completions", chat(**extra))
            assert r.status_code == 200, r.text
            await _effect(http, field, "/chat/completions", chat, r)
        if field not in CHAT_ONLY:
            r = await post(http, "/completions", text(**extra))
            assert r.status_code == 200, r.text
            await _effect(http, field, "/completions", text, r)


def _texts(body: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] if "message" in c else c["text"] for c in body["choices"]]


def _events(r: httpx.Response) -> list[dict[str, Any]]:
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    return [json.loads(ln) for ln in lines if ln != "[DONE]"]


async def _effect(
    http: httpx.AsyncClient,
    field: str,
    path: str,
    body: Callable[..., dict[str, Any]],
    r: httpx.Response,
) -> None:
    """What a supported field does to the output, where the output shows it (the pass-through
    sampling knobs are checked reaching the engine in test_request_fields_fast.py)."""
    if field in ("stream", "stream_options"):
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
        assert events and r.text.rstrip().endswith("data: [DONE]")
        if field == "stream_options":
            assert events[-1]["usage"]["completion_tokens"] > 0 and events[-1]["choices"] == []
        return
    out = r.json()
    texts, t2, usage = _texts(out), out["t2"], out["usage"]
    if field in ("max_tokens", "max_completion_tokens"):
        assert usage["completion_tokens"] <= 8 * t2["samples"]
    elif field == "stop":
        assert all("\n" not in t for t in texts)
    elif field == "n":
        assert len(out["choices"]) == 2 and len(t2["choices"]) == 2
    elif field == "t2":
        assert t2["samples"] == 2 and t2["policy"] == "fixed:2"
    elif field == "min_tokens":
        assert usage["completion_tokens"] >= 2 * t2["samples"]
    elif field == "ignore_eos":  # no sample may end early: every one runs to max_tokens
        assert usage["completion_tokens"] == 8 * t2["samples"]
        assert all(c["finish_reason"] == "length" for c in out["choices"])
    elif field == "response_format":
        assert all(t.lstrip().startswith("{") for t in texts)
    elif field in ("logprobs", "top_logprobs"):
        assert out["choices"][0]["logprobs"] is not None
        if field == "top_logprobs":
            assert len(out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    elif field == "seed":  # the same seed draws the same samples (in any order: same votes)
        again = (await post(http, path, body(seed=EXAMPLES["seed"]))).json()["t2"]
        assert (again["answer"], again["votes"]) == (t2["answer"], t2["votes"])
    elif field == "request_id":
        assert out["id"] == ("chatcmpl-" if "chat" in path else "cmpl-") + "table-row"
    elif field == "temperature":  # greedy decoding draws one sample
        greedy = (await post(http, path, body(temperature=0))).json()
        assert greedy["t2"]["samples"] == 1
