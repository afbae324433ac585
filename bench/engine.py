"""Engine: three ways to get 8 samples for each of 64 prompts, measured in one run.

- `n8`: one engine request with n=8 per prompt (the baseline);
- `8xn1`: 8 separate n=1 requests per prompt, all in flight together;
- `waves2`: 4 sequential waves of n=2 per prompt (what an adaptive policy does when it never
  stops early); waves 2-4 should find the prompt's KV in the prefix cache.

All 64 prompts run concurrently in every mode, on the in-process engine with prefix caching, the
cache reset before each mode. Samples are fixed-length (`ignore_eos`, 24 tokens) so each mode
does the same decoding work. Reported: wall time, samples/s and the ratio to `n8`; prompt tokens
the engine actually computed (prompt tokens minus prefix-cache hits, per engine request, and
the engine's own prefix-cache counters); and the time to abort the rest after wave 1: wave 2 is
started for all prompts, then aborted once it runs, timed until the engine reports nothing
running or waiting. Run: `python -m bench engine`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from models.train_tiny import heldout_questions, question_text
from server.engine import EngineConfig, Sample, SamplingParams, start_engine
from server.engine.inprocess import InProcessEngine

PROMPTS = 64
SAMPLES = 8
WAVE = 2
MAX_TOKENS = 24
MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-arith"


async def _request(
    engine: InProcessEngine, prompt: str, n: int, params: SamplingParams
) -> tuple[int, int, int]:
    """(samples, prompt tokens computed, completion tokens) of one engine request."""
    got: list[Sample] = [s async for s in engine.sample(prompt, n, params, uuid.uuid4().hex)]
    computed = got[-1].prompt_tokens_computed if got else 0
    return len(got), computed, sum(s.completion_tokens for s in got)


async def _mode_n8(engine: InProcessEngine, prompts: list[str], p: SamplingParams) -> list[Any]:
    return await asyncio.gather(*(_request(engine, q, SAMPLES, p) for q in prompts))


async def _mode_n1(engine: InProcessEngine, prompts: list[str], p: SamplingParams) -> list[Any]:
    return await asyncio.gather(
        *(_request(engine, q, 1, p) for q in prompts for _ in range(SAMPLES))
    )


async def _mode_waves(engine: InProcessEngine, prompts: list[str], p: SamplingParams) -> list[Any]:
    async def per_prompt(q: str) -> list[tuple[int, int, int]]:
        return [await _request(engine, q, WAVE, p) for _ in range(SAMPLES // WAVE)]

    results = await asyncio.gather(*(per_prompt(q) for q in prompts))
    return [r for rs in results for r in rs]


async def _cold_cache(engine: InProcessEngine) -> None:
    """Reset the prefix cache; vLLM refuses while blocks are still in use, so retry."""
    for _ in range(100):
        if await engine.reset_prefix_cache():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the prefix cache could not be reset")


async def _measure(
    engine: InProcessEngine,
    name: str,
    run: Callable[[InProcessEngine, list[str], SamplingParams], Awaitable[list[Any]]],
    prompts: list[str],
    params: SamplingParams,
) -> dict[str, Any]:
    await _cold_cache(engine)
    before = engine.cache_stats()
    start = time.perf_counter()
    results = await run(engine, prompts, params)
    wall = time.perf_counter() - start
    await asyncio.sleep(0.5)  # the last scheduler stats ride on the next engine output
    after = engine.cache_stats()
    samples = sum(r[0] for r in results)
    prompt_total = sum(engine.count_tokens(q) for q in prompts)
    return {
        "mode": name,
        "engine_requests": len(results),
        "samples": samples,
        "wall_s": round(wall, 2),
        "samples_per_s": round(samples / wall, 1),
        "completion_tokens": sum(r[2] for r in results),
        "prompt_tokens_submitted": prompt_total * len(results) // len(prompts),
        "prompt_tokens_computed": sum(r[1] for r in results),
        "engine_prefix_queries": after.queries - before.queries,
        "engine_prefix_hits": after.hits - before.hits,
    }


async def _abort_after_wave_one(
    engine: InProcessEngine, prompts: list[str], params: SamplingParams
) -> dict[str, Any]:
    """Wave 1 for every prompt, then wave 2 started and aborted mid-flight."""
    await _cold_cache(engine)
    await asyncio.gather(*(_request(engine, q, WAVE, params) for q in prompts))
    long = SamplingParams(max_tokens=400, ignore_eos=True, temperature=1.0)
    ids = [f"bench-abort-{i}-{uuid.uuid4().hex}" for i in range(len(prompts))]

    async def drain(q: str, rid: str) -> int:
        return len([s async for s in engine.sample(q, WAVE, long, rid)])

    tasks = [asyncio.create_task(drain(q, rid)) for q, rid in zip(prompts, ids, strict=True)]
    while engine.num_running < min(len(prompts), engine.config.max_num_seqs // WAVE):
        await asyncio.sleep(0.01)
    running_before = engine.num_running
    start = time.perf_counter()
    await asyncio.gather(*(engine.abort(rid) for rid in ids))
    returned = time.perf_counter() - start
    while engine.num_running or engine.num_waiting:
        await asyncio.sleep(0.005)
    idle = time.perf_counter() - start
    finished = sum(await asyncio.gather(*tasks))
    return {
        "running_before_abort": running_before,
        "abort_call_s": round(returned, 4),
        "abort_to_idle_s": round(idle, 3),
        "aborted_samples_delivered": finished,
    }


async def run() -> dict[str, Any]:
    engine = await start_engine(
        EngineConfig(
            model_path=str(MODEL),
            kv_cache_memory_bytes=512 * 2**20,
            max_num_seqs=256,
            seed=0,
            log_stats=True,
        )
    )
    assert isinstance(engine, InProcessEngine)
    try:
        prompts = [
            engine.apply_chat_template([{"role": "user", "content": question_text(q)}])
            for q in heldout_questions(PROMPTS, seed=99)
        ]
        params = SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        await _mode_n8(engine, prompts[:4], params)  # warm-up
        rows = [
            await _measure(engine, "n8", _mode_n8, prompts, params),
            await _measure(engine, "8xn1", _mode_n1, prompts, params),
            await _measure(engine, f"waves{WAVE}", _mode_waves, prompts, params),
        ]
        base = rows[0]["samples_per_s"]
        for row in rows:
            row["throughput_vs_n8"] = round(row["samples_per_s"] / base, 3)
        abort = await _abort_after_wave_one(engine, prompts, params)
    finally:
        await engine.shutdown()
    return {
        "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "prompts": PROMPTS,
        "samples_per_prompt": SAMPLES,
        "max_tokens": MAX_TOKENS,
        "prompt_tokens_each": engine.count_tokens(prompts[0]),
        "modes": rows,
        "abort_after_wave_1": abort,
    }


def main() -> None:
    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="8 samples × 64 prompts, tiny-arith, in-process vLLM")
    for col in ("mode", "wall s", "samples/s", "vs n8", "prompt tok computed", "cache hits"):
        table.add_column(col)
    for r in result["modes"]:
        table.add_row(
            r["mode"], str(r["wall_s"]), str(r["samples_per_s"]), str(r["throughput_vs_n8"]),
            f"{r['prompt_tokens_computed']}/{r['prompt_tokens_submitted']}",
            str(r["engine_prefix_hits"]),
        )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
