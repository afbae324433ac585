"""The fuzz corpus (tests/data/hostile_requests.jsonl) against routes: every request that names
the served model is sent again naming the route `auto` (and the cheapest-first `cascade`), and
gets a clean 4xx in OpenAI's error shape, never a 500. A scripted engine serves the shipped
pair (the routes are built from their real curves) over real HTTP: runs in seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server.app import create_app, serve_in_loop
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.routes import routes_config
from tests.fixtures.server import MODEL
from tests.test_hostile_corpus import CORPUS

NAMED = f'"model": "{MODEL}"'
ON_ROUTES = [
    {
        **case,
        "name": f"{route}:{case['name']}",
        "body": case["body"].replace(NAMED, f'"model": "{route}"'),
    }
    for case in CORPUS
    if NAMED in case["body"]
    for route in ("auto", "cascade")
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def base_url() -> AsyncIterator[str]:
    app = create_app(routes_config(), engine=ScriptedEngine(cycle("A: 2", "A: 3")))
    async with serve_in_loop(app) as live:
        yield live.base_url


def test_most_of_the_corpus_names_the_model() -> None:
    assert len(ON_ROUTES) >= 2 * 100


@pytest.mark.parametrize("case", ON_ROUTES, ids=[c["name"] for c in ON_ROUTES])
async def test_a_hostile_request_to_a_route_gets_a_clean_4xx(
    base_url: str, case: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        headers = {k: v.encode("latin-1") for k, v in case["headers"].items()}
        resp = await http.request(
            case["method"], case["path"], content=case["body"].encode(), headers=headers
        )
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
        assert "Traceback" not in resp.text and 'File "' not in resp.text
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
