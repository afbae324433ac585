"""README claims about serving that need controlled timing, over real HTTP (uvicorn on loopback)
with the scripted engine (tests/fakes.py) in place of vLLM: `deadline_ms` stops a request
between and inside waves, an engine that dies mid-request answers 503 with the spend settled,
`/v1/models/{id}`, the real app's 4xx/5xx status labels and budget rejections, and a verifier's
weighted votes, `headers` and `concurrency`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from server.app import create_app, serve_in_loop
from server.config import AppConfig, hash_key, parse_config
from server.engine.base import Prompt, Sample, SamplingParams
from server.errors import EngineDead
from tests.fakes import ScriptedEngine, cycle
from tests.fixtures.server import DEMO_KEY, MODEL, NO_MODELS_KEY, OpenClient, RecordingProvider
from tests.fixtures.server import server_config_dict as base_config

AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}
# Two answers in turn: ESC's window of 2 never agrees, so only a cap ends the request.
SPLIT = cycle("7+8=15;15-9=5;A: 5", "7+8=15;15-9=6;A: 6")  # 18 characters = 18 tokens each


def chat(t2: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Q: 7+8-9=?"}],
        "max_tokens": 32,
        "t2": t2,
        **extra,
    }


async def _split_server(
    token_s: float,
) -> AsyncIterator[tuple[str, ScriptedEngine, RecordingProvider]]:
    engine = ScriptedEngine(SPLIT, token_s=token_s)  # 18 tokens a wave
    billing = RecordingProvider()
    async with serve_in_loop(
        create_app(parse_config(base_config()), engine=engine, billing=billing)
    ) as live:
        yield live.v1, engine, billing


@pytest.fixture
async def split_server() -> AsyncIterator[tuple[str, ScriptedEngine, RecordingProvider]]:
    async for served in _split_server(token_s=0.05):  # 0.9 s a wave
        yield served


@pytest.fixture
async def slow_split_server() -> AsyncIterator[tuple[str, ScriptedEngine, RecordingProvider]]:
    """1.8 s a wave: a deadline inside wave 2 has 0.9 s of room on either side, for a loaded box."""
    async for served in _split_server(token_s=0.1):
        yield served


# --- deadline_ms ---------------------------------------------------------------------------


async def test_deadline_ms_stops_between_waves(
    split_server: tuple[str, ScriptedEngine, RecordingProvider],
) -> None:
    v1, engine, _ = split_server
    async with httpx.AsyncClient(base_url=v1, headers=AUTH, timeout=60) as http:
        capped = (
            await http.post("/chat/completions", json=chat({"policy": "esc:2", "deadline_ms": 300}))
        ).json()["t2"]
        # the same request without a deadline runs to its sample cap
        free = (
            await http.post("/chat/completions", json=chat({"policy": "esc:2", "max_samples": 6}))
        ).json()["t2"]
    assert (capped["samples"], capped["waves"], capped["stop_reason"]) == (2, 1, "deadline")
    assert (free["samples"], free["stop_reason"]) == (6, "max_samples"), free
    assert engine.aborted == []  # wave 1 ran to its end: the deadline only allowed no second


async def test_deadline_ms_cuts_a_later_wave_short(
    slow_split_server: tuple[str, ScriptedEngine, RecordingProvider],
) -> None:
    v1, engine, billing = slow_split_server
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=v1, headers=AUTH, timeout=60) as http:
        # wave 1 ends at ~1.8 s; wave 2 would end at ~3.6 s, past the 2.7 s deadline
        reply = await http.post(
            "/chat/completions", json=chat({"policy": "esc:2", "deadline_ms": 2700})
        )
    elapsed = time.monotonic() - started
    t2 = reply.json()["t2"]
    assert reply.status_code == 200
    assert (t2["samples"], t2["waves"], t2["stop_reason"]) == (2, 2, "deadline"), t2
    _, second = engine.calls
    assert engine.aborted == [second.request_id]  # the wave in flight was aborted
    assert elapsed < 3.6  # answered at the deadline, not after wave 2 would have finished
    # the aborted wave is billed for its partial tokens
    [cut] = [c for c in billing.calls if c["wave"] == 1]
    assert second.request_id.startswith(cut["request_id"])
    assert 0 < cut["completion_tokens"] < 2 * 18


# --- the engine dies mid-request -------------------------------------------------------------


@dataclass
class DiesInWaveTwo(ScriptedEngine):
    """Serves wave 1, then dies after the first sample of wave 2 (as vLLM's core dying does)."""

    waves: list[str] = field(default_factory=list)

    async def sample(
        self, prompt: str | Prompt, n: int, params: SamplingParams, request_id: str
    ) -> AsyncGenerator[Sample, None]:
        self.waves.append(request_id)
        delivered = 0
        async for s in super().sample(prompt, n, params, request_id):
            if len(self.waves) == 2 and delivered == 1:
                self.dead = True
                raise EngineDead("the engine core died")
            delivered += 1
            yield s


async def test_an_engine_that_dies_mid_request_answers_with_what_it_drew_and_settles() -> None:
    """Wave 1 and one sample of wave 2 were drawn and billed before the engine died: the
    answer is theirs (it was a 503 that threw them away). A request with nothing drawn yet
    gets the engine's 503."""
    engine = DiesInWaveTwo(SPLIT, token_s=0.005)
    billing = RecordingProvider()
    app = create_app(parse_config(base_config()), engine=engine, billing=billing)
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.base_url, headers=AUTH, timeout=60) as http,
    ):
        reply = await http.post("/v1/chat/completions", json=chat({"policy": "esc:2"}))
        assert reply.status_code == 200, reply.text
        t2 = reply.json()["t2"]
        assert t2["stop_reason"] == "engine_unavailable" and t2["samples"] == 3
        assert f"{MODEL} failed (engine_dead)" in t2["note"]
        assert len(engine.waves) == 2  # it died in the second wave, not before the first
        # both waves were settled: wave 1 in full, wave 2 for the sample it delivered and more
        settled = sorted((c["wave"], c["completion_tokens"]) for c in billing.calls)
        assert [w for w, _ in settled] == [0, 1] and settled[0][1] == 2 * 18
        assert settled[1][1] >= 18
        assert t2["waves"] == 2
        assert (await http.get("/readyz")).status_code == 503  # and the app says it is down
        before = requests_total(status="503")
        reply = await http.post("/v1/chat/completions", json=chat({"policy": "esc:2"}))
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] in ("engine_dead", "engine_not_ready")
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        assert requests_total(status="503") == before + 1


# --- /v1/models/{id} ------------------------------------------------------------------------


async def test_models_by_id(openai_client: OpenClient) -> None:
    app = create_app(parse_config(base_config()), engine=ScriptedEngine())
    async with serve_in_loop(app) as live:
        api = openai_client(live.v1)
        card = await api.models.retrieve(MODEL)
        assert (card.id, card.object, card.owned_by) == (MODEL, "model", "t2serve")
        listed = await api.models.list()
        assert card.created == listed.data[0].created
        with pytest.raises(openai.NotFoundError) as unknown:
            await api.models.retrieve("no-such-model")
        assert unknown.value.code == "model_not_found"
        # a model the tenant may not use is not revealed either
        barred = openai_client(live.v1, NO_MODELS_KEY)
        with pytest.raises(openai.NotFoundError):
            await barred.models.retrieve(MODEL)
        with pytest.raises(openai.AuthenticationError):
            await openai_client(live.v1, "wrong").models.retrieve(MODEL)


# --- status labels and budget rejections from the real app ---------------------------------


def metric_total(name: str, **labels: str) -> float:
    """Sum of one metric's samples in this process whose labels include `labels`."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def requests_total(**labels: str) -> float:
    return metric_total("t2_requests_total", **labels)


def metered_config(tmp_path: Path) -> AppConfig:
    settings = base_config()
    settings["ledger"] = {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite")}
    settings["tenants"].append(
        {
            "id": "broke",
            "api_keys": [{"sha256": hash_key("broke-key")}],
            "models": [MODEL],
            "prices": {"models": {"*": {"prompt_per_1m": 1e6, "completion_per_1m": 1e6}}},
            "budgets": {"day": {"limit": 5}},  # 1 unit a token: not even the prompt fits
        }
    )
    return parse_config(settings)


async def test_the_app_counts_every_status_and_budget_rejection(tmp_path: Path) -> None:
    app = create_app(metered_config(tmp_path), engine=ScriptedEngine())
    cases = [  # (key, body, status it gets)
        (DEMO_KEY, chat({"policy": "fixed:2"}), 200),
        (DEMO_KEY, chat({"policy": "fixed:2"}, max_tokens=0), 400),
        ("not-a-key", chat({"policy": "fixed:2"}), 401),
        (NO_MODELS_KEY, chat({"policy": "fixed:2"}), 403),
        (DEMO_KEY, {**chat({"policy": "fixed:2"}), "model": "no-such-model"}, 404),
        ("broke-key", chat({"policy": "fixed:2"}), 429),
    ]
    before = {status: requests_total(status=str(status)) for _, _, status in cases}
    rejected = metric_total("t2_budget_rejections_total", tenant="broke")
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, timeout=60) as http,
    ):
        for key, body, status in cases:
            reply = await http.post(
                "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert reply.status_code == status, (status, reply.text)
        exposition = (await http.get(f"{live.base_url}/metrics")).text
    for _, _, status in cases:
        assert requests_total(status=str(status)) == before[status] + 1, status
    assert requests_total(tenant="broke", model=MODEL, status="429") >= 1
    assert metric_total("t2_budget_rejections_total", tenant="broke") == rejected + 1
    assert 't2_budget_rejections_total{tenant="broke"}' in exposition
    assert 'status="429"' in exposition and 'status="401"' in exposition


# --- a verifier's weighted votes, headers and concurrency ------------------------------------


@dataclass
class RecordingScorer:
    """A loopback scoring service: scores answers ending in 6 high, and records each request's
    headers and how many requests were in flight at once."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def scorer() -> Iterator[RecordingScorer]:
    rec = RecordingScorer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with rec.lock:
                rec.in_flight += 1
                rec.most_in_flight = max(rec.most_in_flight, rec.in_flight)
                rec.headers.append({k.lower(): v for k, v in self.headers.items()})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(0.15)  # long enough for the client's parallel requests to overlap
            score = 10.0 if body["candidate"].endswith("A: 6") else 1.0
            payload = json.dumps({"score": score}).encode()
            with rec.lock:
                rec.in_flight -= 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/score"
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


async def test_a_verifier_weighs_votes_and_sends_headers_within_concurrency(
    scorer: RecordingScorer,
) -> None:
    settings = base_config()
    settings["tenants"][0]["verifier"] = {
        "url": scorer.url,
        "headers": {"Authorization": "Bearer scorer-secret", "X-Team": "research"},
        "concurrency": 2,
    }
    # 3 of 5 samples say 5 (the majority); the verifier scores the two 6s ten times higher
    engine = ScriptedEngine(cycle(*["7+8=15;15-9=5;A: 5"] * 3, *["7+8=15;15-9=6;A: 6"] * 2))
    app = create_app(parse_config(settings), engine=engine)
    async with (
        serve_in_loop(app) as live,
        httpx.AsyncClient(base_url=live.v1, headers=AUTH, timeout=60) as http,
    ):
        voted = (await http.post("/chat/completions", json=chat({"policy": "fixed:5"}))).json()
        weighed = (
            await http.post(
                "/chat/completions", json=chat({"policy": "fixed:5", "aggregator": "verifier"})
            )
        ).json()
    assert voted["t2"]["answer"] == "5" and voted["t2"]["aggregator"] == "majority"
    assert weighed["t2"]["aggregator"] == "verifier" and weighed["t2"]["note"] is None
    assert weighed["t2"]["answer"] == "6"  # 2 × 10 outweighs 3 × 1
    assert weighed["choices"][0]["message"]["content"].endswith("A: 6")
    assert weighed["t2"]["votes"] == {"5": 3, "6": 2}  # the raw counts, not the weights
    # every scoring request carried the configured headers, and at most 2 ran at once; the
    # majority request was scored too (with a verifier configured, a vote returns the
    # best-scored sample carrying the winning answer)
    assert len(scorer.headers) == 10
    for sent in scorer.headers:
        assert sent["authorization"] == "Bearer scorer-secret" and sent["x-team"] == "research"
    assert scorer.most_in_flight == 2
