"""Every request of the fuzz corpus (tests/data/hostile_requests.jsonl, made by
tests/data/make_hostile.py) gets a 4xx in OpenAI's error shape, with no traceback text, and the
server keeps serving. Against the real app over HTTP, with a scripted engine: what is under test
is the surface, so the corpus runs in seconds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server.app import create_app, serve_in_loop
from server.config import parse_config
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, server_config_dict

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "hostile_requests.jsonl").read_text().splitlines()
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def base_url() -> AsyncIterator[str]:
    config = parse_config(server_config_dict())
    app = create_app(config, engine=ScriptedEngine(cycle("A: 2")))
    async with serve_in_loop(app) as live:
        yield live.base_url


def test_the_corpus_is_large_and_covers_every_kind_of_case() -> None:
    kinds = {case["name"].split(":", 1)[0] for case in CORPUS}
    assert len(CORPUS) >= 150
    assert kinds >= {
        "type",
        "huge",
        "nonfinite",
        "surrogate",
        "t2",
        "nesting",
        "json",
        "model",
        "path",
        "method",
        "auth",
        "admin",
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
async def test_a_hostile_request_gets_a_clean_4xx(base_url: str, case: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        headers = {k: v.encode("latin-1") for k, v in case["headers"].items()}  # raw bytes
        resp = await http.request(
            case["method"], case["path"], content=case["body"].encode(), headers=headers
        )
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
        assert "Traceback" not in resp.text and 'File "' not in resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        health = await http.get("/healthz")
        assert health.status_code == 200


async def test_a_real_request_still_works_after_the_corpus(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Q: 1+1=?"}]},
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
        )
    assert resp.status_code == 200 and resp.json()["t2"]["answer"] == "2"
