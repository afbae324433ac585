"""The OpenAI-compatible API end to end: official openai client → live app → real engine."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest

from controller.aggregate import get_extractor
from server.engine import SampleEngine
from tests.fixtures.server import DEMO_KEY, MODEL, LiveServer, OpenClient, generated_tokens

pytestmark = pytest.mark.engine

PROMPT = "Q: 7+8-9=?"
# The tiny model is a chat model; a text completion gets the chat template rendered by hand.
TEXT_PROMPT = "<|system|>Work it out step by step.<|user|>Q: 7+8-9=?<|assistant|>"
last_number = get_extractor("last_number")  # the test config's extractor


@pytest.fixture
def api(live_server: LiveServer, openai_client: OpenClient) -> openai.AsyncOpenAI:
    # longer than the server's own 60 s limit, so a stalled wave ends in the server's answer
    # and its stall log, not in the client leaving first
    return openai_client(live_server.v1, timeout=90)


async def test_chat_completion_with_t2_options(api: openai.AsyncOpenAI) -> None:
    raw = await api.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=16,
        extra_body={"t2": {"policy": "fixed:5"}},
    )
    resp = raw.parse()
    t2: dict[str, Any] = resp.model_extra["t2"]  # type: ignore[index]
    assert resp.object == "chat.completion" and resp.model == MODEL
    assert len(resp.choices) == 1 and resp.choices[0].message.role == "assistant"
    assert t2["samples"] == 5 and t2["policy"] == "fixed:5" and t2["stop_reason"] == "fixed"
    assert sum(t2["votes"].values()) <= 5 and 0 <= t2["agreement"] <= 1
    assert t2["waves"] >= 1 and t2["cost"] > 0
    assert raw.headers["x-t2-samples"] == "5"
    assert float(raw.headers["x-t2-cost"]) == pytest.approx(t2["cost"], rel=1e-5)
    assert raw.headers["x-t2-budget-remaining"] == "unlimited"
    assert resp.usage is not None and resp.usage.completion_tokens >= 5
    # the answer returned is one the vote chose
    if t2["answer"] is not None:
        assert t2["votes"][t2["answer"]] == max(t2["votes"].values())


async def test_text_completion(api: openai.AsyncOpenAI) -> None:
    resp = await api.completions.create(
        model=MODEL, prompt=TEXT_PROMPT, max_tokens=12, extra_body={"t2": {"policy": "fixed:3"}}
    )
    assert resp.object == "text_completion" and resp.model_extra
    t2 = resp.model_extra["t2"]
    assert t2["samples"] == 3
    assert last_number(resp.choices[0].text) == t2["answer"]  # the text is the voted sample


async def test_n_gives_n_answers(api: openai.AsyncOpenAI) -> None:
    resp = await api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=8,
        n=2,
        extra_body={"t2": {"policy": "fixed:2"}},
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.model_extra and resp.model_extra["t2"]["samples"] == 4


async def test_streaming_parses_with_official_client(api: openai.AsyncOpenAI) -> None:
    """A seeded request draws the same samples streamed or not: the streamed text must be the
    very sample the non-streamed answer returns, and carry the voted answer."""
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
        "seed": 4242,
        "extra_body": {"t2": {"policy": "fixed:4"}},
    }
    whole = await api.chat.completions.create(**request)
    stream = await api.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **request
    )
    text, finish, final, used = "", None, None, None
    async for chunk in stream:
        if chunk.choices:  # every chunk but the usage one: a client may index it unchecked
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
            if chunk.model_extra and "t2" in chunk.model_extra:  # on the last finish chunk
                final = chunk
        else:
            assert chunk.usage is not None  # OpenAI's usage chunk, last
            used = chunk.usage
    assert finish in {"stop", "length"} and final is not None and used is not None
    assert final.choices[0].finish_reason == finish
    t2 = final.model_extra["t2"]
    assert t2["samples"] == 4 and used.completion_tokens >= 4
    assert whole.usage is not None  # the same samples; cache hits depend on what ran before
    assert (used.prompt_tokens, used.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)  # fmt: skip
    assert whole.model_extra is not None
    assert t2["votes"] == whole.model_extra["t2"]["votes"]  # the same four samples
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert last_number(text) == t2["answer"]


async def test_the_content_is_a_sample_the_vote_chose(api: openai.AsyncOpenAI) -> None:
    """Over several seeds (so some first samples lose the vote), the returned text is always
    one that says the winning answer."""
    for seed in range(8):
        resp = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=24,
            seed=seed,
            extra_body={"t2": {"policy": "fixed:5"}},
        )
        t2: dict[str, Any] = resp.model_extra["t2"]  # type: ignore[index]
        content = resp.choices[0].message.content or ""
        assert last_number(content) == t2["answer"], (seed, content, t2["votes"])
        if t2["answer"] is not None:
            assert t2["votes"][t2["answer"]] == max(t2["votes"].values())


async def test_stream_sends_keepalives_then_done(fixed_length_server: LiveServer) -> None:
    """A wave of 96-token samples (EOS ignored) outlasts the 0.1 s keep-alive interval: the
    stream must send the role chunk at once, keep-alives (empty deltas) while the wave runs,
    then the answer, then [DONE]."""
    body = {
        "model": MODEL,
        "prompt": TEXT_PROMPT,
        "max_tokens": 96,
        "stream": True,
        "stream_options": {"include_usage": True},
        "t2": {"policy": "fixed:8"},
    }
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=120) as http,
        http.stream(
            "POST",
            f"{fixed_length_server.v1}/completions",
            json=body,
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
        ) as resp,
    ):
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(
            "text/event-stream"
        )
        async for line in resp.aiter_lines():
            if line:
                lines.append(line)
    assert all(ln.startswith("data: ") for ln in lines), lines[:3]  # no SSE comments
    progress = [i for i, ln in enumerate(lines) if '"t2_progress"' in ln]
    assert progress and progress[0] == 1, lines[:3]  # the opening chunk, then keep-alives
    data = lines
    assert data[-1] == "data: [DONE]"
    assert '"t2"' in data[-3] and '"usage"' not in data[-3]
    assert '"usage"' in data[-2]
    assert '"completion_tokens":768' in data[-2].replace(" ", "")  # 8 × 96: EOS was ignored


async def test_fixed_policy_draws_exactly_k_and_t2_stops_early(api: openai.AsyncOpenAI) -> None:
    fixed = await api.completions.create(
        model=MODEL, prompt=TEXT_PROMPT, max_tokens=8, extra_body={"t2": {"policy": "fixed:5"}}
    )
    assert fixed.model_extra and fixed.model_extra["t2"]["samples"] == 5
    adaptive = await api.completions.create(
        model=MODEL,
        prompt=TEXT_PROMPT,
        max_tokens=8,
        temperature=0.0,
        extra_body={"t2": {"policy": "t2", "max_samples": 16}},
    )
    t2 = adaptive.model_extra["t2"]  # type: ignore[index]
    assert t2["samples"] < 16 and t2["stop_reason"] != "max_samples", t2
    assert t2["predicted_accuracy"] is not None


async def test_usage_counts_the_whole_prompt_and_cached_tokens(
    engine: SampleEngine, api: openai.AsyncOpenAI
) -> None:
    """The same prompt twice: the second finds it in the prefix cache, yet both report the
    whole prompt as `prompt_tokens` (as vLLM does); the hits are `cached_tokens`."""
    prompt = f"<|system|>Run {uuid.uuid4().hex}. Work it out step by step.<|user|>Q: 2+3-4=?"
    prompt += "<|assistant|>"
    size = engine.count_tokens(prompt)
    assert size > 64  # two full 32-token KV blocks can be cached
    seen = []
    for _ in range(2):
        r = await api.completions.create(
            model=MODEL, prompt=prompt, max_tokens=4, extra_body={"t2": {"policy": "fixed:1"}}
        )
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        assert r.model_extra is not None
        cached = r.usage.prompt_tokens_details.cached_tokens or 0
        seen.append((r.usage.prompt_tokens, cached, r.model_extra["t2"]["billed_prompt_tokens"]))
    (first, cached1, billed1), (second, cached2, billed2) = seen
    assert first == second == size
    assert cached1 == 0 and billed1 == size
    assert cached2 >= 64 and billed2 == size - cached2


async def test_usage_equals_engine_reported_tokens(
    live_server: LiveServer, engine: Any, api: openai.AsyncOpenAI
) -> None:
    recorder = live_server.billing_recorder
    recorder.calls.clear()
    generated_before = generated_tokens(engine)
    resp = await api.completions.create(
        model=MODEL, prompt=TEXT_PROMPT, max_tokens=10, extra_body={"t2": {"policy": "fixed:6"}}
    )
    assert resp.usage is not None
    settled = recorder.calls
    assert resp.model_extra is not None
    t2 = resp.model_extra["t2"]
    # usage as OpenAI and vLLM report it: the whole prompt once, its cache hits as cached
    details = resp.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert 0 <= details.cached_tokens < resp.usage.prompt_tokens
    # billing charges only what the engine computed, and says so in t2
    assert sum(c["prompt_tokens"] for c in settled) == t2["billed_prompt_tokens"]
    assert t2["billed_prompt_tokens"] == resp.usage.prompt_tokens - details.cached_tokens
    assert sum(c["completion_tokens"] for c in settled) == resp.usage.completion_tokens
    assert t2["billed_completion_tokens"] == resp.usage.completion_tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert t2["cost"] == pytest.approx(t2["billed_prompt_tokens"] + resp.usage.completion_tokens)
    # and vLLM's own counter of generated tokens moved by exactly usage.completion_tokens
    for _ in range(50):
        generated = generated_tokens(engine) - generated_before
        if generated >= resp.usage.completion_tokens:
            break
        await asyncio.sleep(0.02)
    assert generated == resp.usage.completion_tokens


async def test_models_health_ready_metrics(
    live_server: LiveServer, api: openai.AsyncOpenAI
) -> None:
    models = await api.models.list()
    assert [m.id for m in models.data] == [MODEL]
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        exposition = (await http.get("/metrics")).text
    assert "t2_requests_total" in exposition and "t2_samples_per_request" in exposition


async def test_concurrent_requests(api: openai.AsyncOpenAI) -> None:
    results = await asyncio.gather(
        *[
            api.completions.create(
                model=MODEL,
                prompt=TEXT_PROMPT.replace("7+", f"{i + 1}+"),
                max_tokens=8,
                extra_body={"t2": {"policy": "fixed:2"}},
            )
            for i in range(6)
        ]
    )
    assert all(r.model_extra and r.model_extra["t2"]["samples"] == 2 for r in results)


async def test_seeded_concurrent_requests_leave_the_engine_alive(
    live_server: LiveServer, api: openai.AsyncOpenAI
) -> None:
    """Seeded requests share a batch: the engine runs them (see test_server_seed.py)."""
    results = await asyncio.gather(
        *[
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=8,
                seed=i,
                extra_body={"t2": {"policy": "fixed:4"}},
            )
            for i in range(8)
        ]
    )
    assert all(r.model_extra and r.model_extra["t2"]["samples"] == 4 for r in results)
    async with httpx.AsyncClient(base_url=live_server.base_url) as http:
        assert (await http.get("/readyz")).status_code == 200
