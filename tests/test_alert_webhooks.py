"""Budget alert webhooks on the real app over HTTP (uvicorn, scripted engine, SQLite ledger) to a
real HTTP receiver: each threshold crossing is POSTed once per window and threshold, signed with
HMAC-SHA256, retried after a failure, and never slows or fails the requests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from server.alerts import SIGNATURE_HEADER
from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config
from tests.fakes import ScriptedEngine, cycle

SECRET = "webhook-secret-0123456789"
KEY = "alerts-acme"
RECEIVER_DELAY_S = 3.0  # far above a request's own time on a loaded box


def receiver() -> tuple[FastAPI, list[tuple[dict[str, str], bytes]]]:
    """Records every POST; answers 500 to the first one, and is slow to answer any."""
    seen: list[tuple[dict[str, str], bytes]] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        seen.append((dict(request.headers), await request.body()))
        status = 500 if len(seen) == 1 else 204
        await asyncio.sleep(RECEIVER_DELAY_S)
        return Response(status_code=status)

    return app, seen


async def test_each_crossing_is_sent_once_signed_and_retried(tmp_path: Path) -> None:
    hook_app, seen = receiver()
    async with serve_in_loop(hook_app) as hook:
        config = parse_config(
            {
                "models": [{"id": "m", "path": "models/tiny-arith"}],
                "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
                "defaults": {"policy": "fixed:2", "max_tokens": 8},
                "tenants": [
                    {
                        "id": "acme",
                        "api_keys": [{"sha256": hash_key(KEY)}],
                        # 1 unit per completion token: a request of 2 × "A: 6" costs 8
                        "prices": {"models": {"*": {"completion_per_1m": 1e6}}},
                        "budgets": {"day": {"limit": 100, "hard": False}},
                        "alerts": {
                            "url": f"{hook.base_url}/hook",
                            "secret": SECRET,
                            "thresholds": [0.5, 1.0],
                            "backoff_s": 0.05,
                        },
                    }
                ],
            }
        )
        app = create_app(config, engine=ScriptedEngine(cycle("A: 6")))
        async with (
            serve_in_loop(app) as live,
            httpx.AsyncClient(base_url=live.base_url, timeout=30) as http,
        ):
            durations = []
            for i in range(16):  # 128 units: past 50% and 100% of the day's 100
                t = time.monotonic()
                r = await http.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": f"Q: {i}?"}]},
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                durations.append(time.monotonic() - t)
                assert r.status_code == 200, r.text
            # the receiver takes 3 s per call and failed once: requests never waited for it
            assert max(durations) < RECEIVER_DELAY_S
            for _ in range(400):
                if len(seen) >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more arrives
            dispatcher_store = app.state.t2.admin.store
            events: list[dict[str, Any]] = []
            for headers, body in seen:
                expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert headers[SIGNATURE_HEADER.lower()] == f"sha256={expected}"
                events.append(json.loads(body))
            # the first event failed once and was sent again; the second went through
            assert sorted(e["threshold"] for e in events) == [0.5, 0.5, 1.0]
            assert events[0]["threshold"] == 0.5 and events[-1]["threshold"] == 0.5
            assert events[0] == events[-1]  # the retry sends the same event
            first, second = events[-1], events[1]
            assert first["tenant"] == "acme" and first["window"] == "day"
            assert first["type"] == "budget.threshold" and first["limit"] == 100
            assert 50 <= first["spent"] < 100 <= second["spent"]
            # another replica sharing the store would not send it again
            assert not await dispatcher_store.claim_alert(second["id"], time.time(), 60)
