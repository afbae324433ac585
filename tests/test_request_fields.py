"""The README's request-field table, checked row by row against the live server (real engine):
a supported field is answered (200), a refused one is a 400 `unsupported_parameter` naming it,
an ignored one is answered; and the table lists exactly the fields the protocol declares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api.protocol import (
    IGNORED_FIELDS,
    REFUSED_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
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
        if status == "ignored":
            for path, body in (("/chat/completions", chat), ("/completions", text)):
                r = await post(http, path, body(**{field: PROBE}))
                assert r.status_code == 200, (path, r.text)
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
        if field not in CHAT_ONLY:
            r = await post(http, "/completions", text(**extra))
            assert r.status_code == 200, r.text
