"""Server benchmarks (issue 5), one engine for the whole run:

1. Overhead against the raw in-process engine: the same prompts at fixed k = 8, sent straight to
   the engine adapter and through the server (HTTP + official openai client, in a separate
   process), at concurrency 1, 8 and 32. Throughput ratio (goal ≥ 0.9×) and added p50 latency
   (goal ≤ 5 ms).
2. Accuracy against cost, live: the tiny model's held-back questions (models/tiny-arith/
   replay.jsonl) through the server with fixed:1, fixed:8 and t2. Accuracy, mean samples, tokens
   (goal: t2 ≥ fixed:8 accuracy at ≤ 0.5× its tokens).

3. Overhead with structured outputs on (`T2_BENCH_PARTS=overhead_json`): the same as 1, with
   both paths decoding to the same JSON schema (`response_format` served, vLLM's structured
   outputs on the raw engine), so the ratio is the server's cost, not the grammar's.

Run: `python -m bench server` (or `make bench`; T2_BENCH_EXECUTOR=mp runs the model in its own
worker process, as vLLM's server does on a CPU; T2_BENCH_CLIENT=aiohttp sends the served
requests with a bare HTTP client, as vLLM's serving benchmark does, instead of the official
openai client, whose own CPU on a small box is taken from the server). Prints a JSON summary
and writes it to var/bench/server.json; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import openai

from bench import executor_setting
from controller.aggregate import get_extractor, normalize_answer
from server.app import create_app, serve_in_loop
from server.config import parse_config
from server.engine.base import GenerationOptions, StructuredOutput
from server.engine.service import EngineService

MODEL_DIR = Path(os.environ.get("T2_BENCH_MODEL_DIR", "models/tiny-arith"))
KEY = "bench-key"
K = 8
MAX_TOKENS = 32
CONCURRENCY = (1, 8, 32)
REQUESTS_PER_LEVEL = int(os.environ.get("T2_BENCH_REQUESTS", "128"))
ROUNDS = int(os.environ.get("T2_BENCH_ROUNDS", "3"))
HELD_BACK = int(os.environ.get("T2_BENCH_QUESTIONS", "320"))
# Live-accuracy policies, `;`-separated (t2 options themselves use commas); fixed:8 is the base.
DEFAULT_POLICIES = "fixed:1;fixed:8;t2;t2:lam=0.01;t2:lam=0.02,first_wave=2"
POLICIES = os.environ.get("T2_BENCH_POLICIES", DEFAULT_POLICIES).split(";")
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": -99, "maximum": 99}},
    "required": ["answer"],
    "additionalProperties": False,
}
CLIENT = os.environ.get("T2_BENCH_CLIENT", "openai")
"""The served path's client: `openai` (the official client, the headline figures) or `aiohttp`
(a bare HTTP client, as vLLM's own serving benchmark uses: what is left is the server's cost)."""
if CLIENT not in ("openai", "aiohttp"):
    raise SystemExit(f"T2_BENCH_CLIENT must be openai or aiohttp, got {CLIENT!r}")
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}}


def bench_config() -> dict[str, Any]:
    return {
        "demo": True,
        "server": {"request_timeout_s": 600},
        "models": [{"id": "tiny-arith", "path": str(MODEL_DIR)}],
        "engine": executor_setting(),  # both paths: the raw one runs this engine too
        "defaults": {"max_samples": 16, "max_tokens": MAX_TOKENS, "extractor": "last_number"},
        "tenants": [{"id": "bench", "api_keys": [{"plain": KEY}], "allow_raising_caps": True}],
    }


def load_questions(limit: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (MODEL_DIR / "replay.jsonl").read_text().splitlines()]
    return rows[:limit]


async def timed_run(
    calls: list[Callable[[], Awaitable[int]]], concurrency: int
) -> tuple[float, list[float], int]:
    """Run the calls with at most `concurrency` in flight: (wall s, latencies s, tokens)."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(call: Callable[[], Awaitable[int]]) -> None:
        nonlocal tokens
        async with gate:
            t0 = time.perf_counter()
            got = await call()  # not `tokens += await ...`: that reads `tokens` before awaiting
            tokens += got
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return time.perf_counter() - start, latencies, tokens


def served_run(
    base_url: str, questions: list[str], concurrency: int, structured: bool = False
) -> tuple[float, list[float], int, float]:
    """The served path's load, run in the client process: (wall s, latencies s, tokens, the
    client's own CPU s). The raw path has no client; on a 2-core box the client's CPU is taken
    from the server's core, so the row reports it. CLIENT picks the client (module doc)."""
    cpu = time.process_time()
    load = _served_load(base_url, questions, concurrency, structured)
    wall, latencies, tokens = asyncio.run(load)
    return wall, latencies, tokens, time.process_time() - cpu


def _request_body(question: str, i: int, structured: bool) -> dict[str, Any]:
    """One served request, as both clients send it."""
    body: dict[str, Any] = {
        "model": "tiny-arith",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 1.0,
        "seed": i,
        "t2": {"policy": f"fixed:{K}"},
    }
    if structured:
        body["response_format"] = RESPONSE_FORMAT
    return body


async def _served_load(
    base_url: str, questions: list[str], concurrency: int, structured: bool
) -> tuple[float, list[float], int]:
    bodies = [_request_body(q, i, structured) for i, q in enumerate(questions)]
    if CLIENT == "aiohttp":
        limit = aiohttp.TCPConnector(limit=concurrency)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(connector=limit, headers=headers) as session:

            def lean_call(body: dict[str, Any]) -> Callable[[], Awaitable[int]]:
                async def call() -> int:
                    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
                        resp.raise_for_status()
                        usage = (await resp.json()).get("usage") or {}
                    return int(usage.get("completion_tokens", 0))

                return call

            return await timed_run([lean_call(b) for b in bodies], concurrency)
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=0, timeout=600
    ) as api:

        def served_call(body: dict[str, Any]) -> Callable[[], Awaitable[int]]:
            async def call() -> int:
                fields = {k: v for k, v in body.items() if k not in ("t2", "response_format")}
                extra = {k: v for k, v in body.items() if k in ("t2", "response_format")}
                resp = await api.chat.completions.create(**fields, extra_body=extra)
                return resp.usage.completion_tokens if resp.usage else 0

            return call

        return await timed_run([served_call(b) for b in bodies], concurrency)


def _row(
    level: int,
    structured: bool,
    requests: int,
    raw: tuple[float, int, list[float]],
    served: tuple[float, int, list[float]],
) -> dict[str, Any]:
    """One concurrency level's figures: (seconds, tokens, latencies) of each path."""
    (raw_s, raw_tok, raw_lat), (srv_s, srv_tok, srv_lat) = raw, served
    raw_tps, srv_tps = raw_tok / raw_s, srv_tok / srv_s
    return {
        "concurrency": level,
        "structured_outputs": structured,
        "requests": requests,
        "raw_tokens_per_s": round(raw_tps, 1),
        "server_tokens_per_s": round(srv_tps, 1),
        "throughput_ratio": round(srv_tps / raw_tps, 3),
        "raw_requests_per_s": round(len(raw_lat) / raw_s, 2),
        "server_requests_per_s": round(len(srv_lat) / srv_s, 2),
        "raw_p50_ms": round(statistics.median(raw_lat) * 1000, 1),
        "server_p50_ms": round(statistics.median(srv_lat) * 1000, 1),
        "added_p50_ms": round((statistics.median(srv_lat) - statistics.median(raw_lat)) * 1000, 1),
    }


async def overhead(
    engine_api: EngineService,
    api: openai.AsyncOpenAI,
    base_url: str,
    questions: list[str],
    structured: bool = False,
) -> list[dict[str, Any]]:
    """The same chat prompts both ways: rendered by the engine's template for the raw path.

    The served path's client runs in its own process, as a real caller would: in this process
    it would share the event loop with the server and vLLM's output handler, and the openai
    client's own work (≈ 9 ms of CPU per request, profiled) would be counted as server overhead.
    """
    client = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    client.submit(int).result()  # start the client process before timing anything
    prompts = [engine_api.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    options = GenerationOptions(
        structured=StructuredOutput(json_schema=json.dumps(ANSWER_SCHEMA, sort_keys=True))
        if structured
        else None
    )
    rows = []
    # Warm the prefix cache with every prompt first, so neither path profits from the other.
    warm = [
        api.chat.completions.create(
            model="tiny-arith",
            messages=[{"role": "user", "content": q}],
            max_tokens=1,
            extra_body={"t2": {"policy": "fixed:1"}},
        )
        for q in questions[:REQUESTS_PER_LEVEL]
    ]
    await asyncio.gather(*warm)
    for level in CONCURRENCY:
        picks = [i % len(prompts) for i in range(REQUESTS_PER_LEVEL)]

        def raw_call(prompt: str, i: int, level: int = level) -> Callable[[], Awaitable[int]]:
            async def call() -> int:
                params = engine_api.params(  # the same request both ways
                    max_tokens=MAX_TOKENS,
                    temperature=1.0,
                    top_p=None,
                    stop=[],
                    seed=i,
                    wave=0,
                    options=options,
                )
                tokens = 0
                ready = engine_api.tokenize(prompt, chat=True)
                async for sample in engine_api.sample(ready, K, params, f"raw-{level}-{i}"):
                    tokens += sample.completion_tokens
                return tokens

            return call

        # Alternate the two paths in rounds so drift in a shared machine's load hits both.
        raw_s = srv_s = 0.0
        raw_lat: list[float] = []
        srv_lat: list[float] = []
        raw_tok = srv_tok = 0
        client_cpu = 0.0
        api_cpu = {"raw": 0.0, "served": 0.0}  # this process: the raw calls, or the server
        for _ in range(ROUNDS):
            cpu0 = time.process_time()
            s, lat, tok = await timed_run(
                [raw_call(prompts[j], i) for i, j in enumerate(picks)], level
            )
            api_cpu["raw"] += time.process_time() - cpu0
            raw_s, raw_tok = raw_s + s, raw_tok + tok
            raw_lat += lat
            cpu0 = time.process_time()
            s, lat, tok, cpu = await asyncio.get_running_loop().run_in_executor(
                client, served_run, base_url, [questions[j] for j in picks], level, structured
            )
            api_cpu["served"] += time.process_time() - cpu0
            client_cpu += cpu
            srv_s, srv_tok = srv_s + s, srv_tok + tok
            srv_lat += lat
        rows.append(_row(level, structured, len(picks) * ROUNDS, (raw_s, raw_tok, raw_lat),
                         (srv_s, srv_tok, srv_lat)))  # fmt: skip
        rows[-1]["client"] = CLIENT
        rows[-1]["client_cpu_ms_per_request"] = round(client_cpu / len(srv_lat) * 1000, 2)
        for side, seconds in api_cpu.items():
            rows[-1][f"api_cpu_ms_per_request_{side}"] = round(seconds / len(srv_lat) * 1000, 2)
        print(json.dumps(rows[-1]), flush=True)
    client.shutdown()
    return rows


async def live_accuracy(
    api: openai.AsyncOpenAI, questions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    extract = get_extractor("last_number")
    rows: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(8)

    async def guarded(
        call: Callable[[], Awaitable[tuple[bool, int, int, int]]],
    ) -> tuple[bool, int, int, int]:
        async with gate:
            return await call()

    for policy in POLICIES:

        def ask(
            q: dict[str, Any], policy: str = policy
        ) -> Callable[[], Awaitable[tuple[bool, int, int, int]]]:
            async def call() -> tuple[bool, int, int, int]:
                resp = await api.chat.completions.create(
                    model="tiny-arith",
                    messages=[{"role": "user", "content": q["question"]}],
                    max_tokens=MAX_TOKENS,
                    extra_body={"t2": {"policy": policy, "max_samples": 16}},
                )
                t2 = (resp.model_extra or {})["t2"]
                right = normalize_answer(str(q["gold"])) == extract(
                    resp.choices[0].message.content or ""
                )
                # what the ledger bills (usage counts the whole prompt once, as OpenAI does)
                billed = int(t2["billed_prompt_tokens"]) + int(t2["billed_completion_tokens"])
                return right, int(t2["samples"]), billed, int(t2["billed_completion_tokens"])

            return call

        results = await asyncio.gather(*(guarded(ask(q)) for q in questions))
        n = len(results)
        rows.append(
            {
                "policy": policy,
                "questions": n,
                "accuracy": round(sum(r[0] for r in results) / n, 3),
                "mean_samples": round(sum(r[1] for r in results) / n, 2),
                "tokens": sum(r[2] for r in results),
                "completion_tokens": sum(r[3] for r in results),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["policy"] == "fixed:8")
    for r in rows:
        r["tokens_vs_fixed8"] = round(r["tokens"] / base["tokens"], 3)
    return rows


async def run() -> dict[str, Any]:
    config = parse_config(bench_config(), "bench config")
    model = config.models[0]
    engine_api = EngineService(
        model.id, {"model_path": model.path, "served_name": model.id, **config.engine}
    )
    await engine_api.start()
    if not engine_api.ready():
        raise SystemExit(f"engine did not start: {engine_api.failure()}")
    try:
        questions = load_questions(HELD_BACK)
        prompts = [q["question"] for q in questions]
        app = create_app(config, engine=engine_api.engine)
        async with (
            serve_in_loop(app) as live,
            openai.AsyncOpenAI(base_url=live.v1, api_key=KEY, max_retries=0, timeout=600) as api,
        ):
            await api.chat.completions.create(
                model="tiny-arith", messages=[{"role": "user", "content": prompts[0]}], max_tokens=4
            )  # warm-up
            parts = os.environ.get("T2_BENCH_PARTS", "overhead,accuracy").split(",")
            over = await overhead(engine_api, api, live.v1, prompts) if "overhead" in parts else []
            if "overhead_json" in parts:
                over += await overhead(engine_api, api, live.v1, prompts, structured=True)
            live_rows = await live_accuracy(api, questions) if "accuracy" in parts else []
    finally:
        await engine_api.shutdown()
    return {"overhead": over, "live_accuracy": live_rows, "k": K, "max_tokens": MAX_TOKENS}


def main() -> None:
    summary = asyncio.run(run())
    out = Path("var/bench/server.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
