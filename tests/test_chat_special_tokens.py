"""A chat prompt carries the special tokens its template wrote, so the tokenizer adds none, as
vLLM's chat endpoint does (a template that writes a BOS would otherwise get two); a completions
prompt gets them. The remote backend tells its upstream the same."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from server.app import create_app, serve_in_loop
from server.config import parse_config
from server.engine.config import EngineConfig, RemoteConfig
from server.engine.remote import RemoteEngine
from tests.fakes import ScriptedEngine
from tests.fixtures.server import DEMO_KEY, MODEL, RecordingProvider, server_config_dict

BOS = 1


class BosTokenizer:
    """A tokenizer that puts a BOS before a text unless told not to (as Llama's does)."""

    def __init__(self, bos: bool = True) -> None:
        self.bos = bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [100 + ord(c) for c in text]
        return [BOS, *ids] if add_special_tokens and self.bos else ids


async def test_chat_text_is_tokenized_without_added_special_tokens() -> None:
    cfg = EngineConfig(backend="remote", remote=RemoteConfig(urls=["http://a/v1"]))
    async with httpx.AsyncClient() as client:
        remote = RemoteEngine(cfg, client, tokenizer=BosTokenizer())
        chat, plain = remote.tokenize("<s>hi", chat=True), remote.tokenize("hi")
        assert chat.token_ids[0] != BOS and chat.chat
        assert plain.token_ids[0] == BOS and not plain.chat
        params = remote.params()
        assert remote._body(chat, 1, params)["add_special_tokens"] is False
        assert "add_special_tokens" not in remote._body(plain, 1, params)
        plain_tok = RemoteEngine(cfg, client, tokenizer=BosTokenizer(bos=False))
        # nothing to leave out: an upstream that does not know the field never sees it
        assert "add_special_tokens" not in plain_tok._body(chat, 1, params)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedEngine]]:
    engine = ScriptedEngine()
    app = create_app(parse_config(server_config_dict()), engine=engine,
                     billing=RecordingProvider())  # fmt: skip
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(
            base_url=live.v1, timeout=30, headers={"Authorization": f"Bearer {DEMO_KEY}"}
        ) as http,  # fmt: skip
    ):
        yield http, engine


async def test_the_server_marks_chat_prompts_and_not_completions(
    served: tuple[httpx.AsyncClient, ScriptedEngine],
) -> None:
    http, engine = served
    common = {"model": MODEL, "max_tokens": 4, "t2": {"policy": "fixed:1"}}
    resp = await http.post(
        "/chat/completions", json={**common, "messages": [{"role": "user", "content": "1+1?"}]}
    )
    assert resp.status_code == 200, resp.text
    resp = await http.post("/completions", json={**common, "prompt": "1+1="})
    assert resp.status_code == 200, resp.text
    assert [c.prompt.chat for c in engine.calls] == [True, False]
