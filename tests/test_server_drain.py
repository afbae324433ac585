"""SIGTERM on a real `t2serve serve` process (README, Serving and Deploy): it stops accepting
connections at once, lets a request that is still running finish, and gives up on one that
outlives `server.drain_timeout_s`.

A request to the tiny model ends in well under a second, too soon to be sure it is still
running when the signal lands. So the server runs on the remote backend in front of the
scriptable upstream (tests/fixtures/upstream.py), which holds its answer until the test lets
it go: the request is in flight, provably, for as long as the test needs."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fixtures.replicas import ROOT, ServeProcess, start_t2serve
from tests.fixtures.upstream import ANSWER, FakeUpstream, serve_upstream
from tests.support import free_port

KEY = "drain-key"
READY_S = 300  # no vLLM to start, but a loaded 2-core box is slow to import torch


@pytest.fixture
def held() -> Iterator[FakeUpstream]:
    with serve_upstream(FakeUpstream(hold=threading.Event())) as up:
        yield up


def start(tmp_path: Path, up: FakeUpstream, drain_timeout_s: float) -> ServeProcess:
    config = {
        "demo": True,
        "server": {"drain_timeout_s": drain_timeout_s, "request_timeout_s": 120},
        "models": [{"id": "tiny-arith", "path": str(ROOT / "models" / "tiny-arith")}],
        "engine": {"backend": "remote", "remote": {"urls": [up.url]}},
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")},
        "tenants": [
            {"id": "demo", "api_keys": [{"plain": KEY}], "models": ["tiny-arith"]},
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # this checkout's code, also when the venv's t2serve was installed from another one
    env = {"PYTHONPATH": str(ROOT)}
    server = start_t2serve(path, free_port(), tmp_path / "t2serve.log", env=env)
    try:
        server.wait_ready(READY_S)
    except BaseException:
        server.kill()
        raise
    return server


def request_in_background(server: ServeProcess) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            resp = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={
                    "model": "tiny-arith",
                    "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
                    "t2": {"policy": "fixed:3"},
                },
                timeout=120,
            )
            result["status"] = resp.status_code
            result["text"] = resp.text
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, result


def refuses_connections(server: ServeProcess) -> bool:
    try:
        httpx.get(f"{server.base_url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_stops_accepting_and_drains_the_request_in_flight(
    tmp_path: Path, held: FakeUpstream
) -> None:
    server = start(tmp_path, held, drain_timeout_s=60)
    try:
        worker, result = request_in_background(server)
        assert held.wait_for_arrivals(1, 60), "the request never reached the upstream"
        server.process.send_signal(signal.SIGTERM)
        # it stops accepting while the request is still held upstream
        stop = time.monotonic() + 20
        while not refuses_connections(server):
            assert time.monotonic() < stop, "still accepting connections after SIGTERM"
            time.sleep(0.1)
        assert worker.is_alive() and server.process.poll() is None
        time.sleep(1.0)  # draining: the process waits for the request, however long it takes
        assert worker.is_alive() and server.process.poll() is None
        assert held.hold is not None
        held.hold.set()  # the upstream answers
        worker.join(60)
        assert result.get("status") == 200, (result, server.log_tail())
        body = json.loads(result["text"])
        assert body["choices"][0]["message"]["content"] == ANSWER
        assert body["t2"]["samples"] == 3
        # uvicorn finishes its graceful shutdown, then re-raises the SIGTERM it caught
        assert server.process.wait(60) in (0, -signal.SIGTERM)
    finally:
        server.kill()


def test_sigterm_gives_up_after_drain_timeout(tmp_path: Path, held: FakeUpstream) -> None:
    drain_s = 2.0
    server = start(tmp_path, held, drain_timeout_s=drain_s)
    try:
        worker, result = request_in_background(server)
        assert held.wait_for_arrivals(1, 60), "the request never reached the upstream"
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)  # the upstream never answers: only the cut-off ends it
        waited = time.monotonic() - signalled
        assert drain_s - 0.2 <= waited < drain_s + 20, waited
        assert code in (0, 1, -signal.SIGTERM), server.log_tail()
        worker.join(30)
        # cut off: an OpenAI-shaped 503 that says why, not uvicorn's bare-text 500
        assert result.get("status") == 503, result
        error = json.loads(result["text"])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
        assert held.answered == 0
    finally:
        server.kill()
