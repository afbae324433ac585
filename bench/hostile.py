"""Does one hostile client stall everyone? /healthz latency while 4 clients send maximal bodies.

The server (real engine on models/tiny-arith, its real tokenizer) runs under uvicorn in this
process. A separate client process first probes /healthz alone (the idle baseline), then again
while 4 threads keep sending chat requests whose single message fills the body limit
(the effective limit: `server.max_body_bytes`, 4 MiB, or less where no larger body could carry a
prompt the model's context holds): each is parsed and validated, then refused with
context_length_exceeded without being tokenized. A fifth sends 4 MiB bodies over the limit
(413 before parsing). Goal: /healthz p99 under 50 ms while loaded, with its ratio to idle.

Run: `python -m bench hostile`. Prints a JSON summary and writes var/bench/hostile.json.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from server.app import create_app, serve_in_loop
from server.config import parse_config

MODEL_DIR = Path(os.environ.get("T2_BENCH_MODEL_DIR", "models/tiny-arith"))
KEY = "bench-key"
PROBE_S = float(os.environ.get("T2_BENCH_PROBE_S", "10"))
SENDERS = 4
LIMIT = 4 * 2**20


def bench_config() -> dict[str, Any]:
    return {
        "demo": True,
        "server": {"max_body_bytes": LIMIT, "request_timeout_s": 120},
        "models": [{"id": "tiny-arith", "path": str(MODEL_DIR)}],
        "engine": {"kv_cache_memory_bytes": 256 * 2**20},
        "tenants": [{"id": "bench", "api_keys": [{"plain": KEY}]}],
    }


def _percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "probes": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
    }


def _probe(base: str, seconds: float) -> list[float]:
    import httpx

    out: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as http:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            http.get("/healthz").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    return out


def client_process(base: str, limit: int) -> dict[str, Any]:
    """Idle probes, then probes under load; runs in its own process (its own GIL)."""
    import httpx

    idle = _probe(base, PROBE_S / 2)
    message = "7" * (limit - 200)  # the body, with its JSON around it, just fits the limit
    body = json.dumps({"model": "tiny-arith", "messages": [{"role": "user", "content": message}]})
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def send(payload: bytes) -> None:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        with httpx.Client(base_url=base, timeout=120) as http:
            while not stop.is_set():
                code = http.post("/v1/chat/completions", content=payload, headers=headers)
                statuses[code.status_code] = statuses.get(code.status_code, 0) + 1

    payloads = [body.encode()] * SENDERS + [(body + " " * LIMIT).encode()]  # the last: 413
    threads = [threading.Thread(target=send, args=(p,), daemon=True) for p in payloads]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let every sender get a request in flight
    loaded = _probe(base, PROBE_S)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return {"idle": idle, "loaded": loaded, "statuses": statuses}


async def run() -> dict[str, Any]:
    app = create_app(parse_config(bench_config(), "bench config"))
    async with serve_in_loop(app) as live:
        state = app.state.t2
        while not state.ready():
            if state.failures():
                raise SystemExit("; ".join(state.failures()))
            await asyncio.sleep(0.5)
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        limit = state.body_limit()
        raw = await loop.run_in_executor(pool, client_process, live.base_url, limit)
        pool.shutdown()
    idle, loaded = _percentiles(raw["idle"]), _percentiles(raw["loaded"])
    return {
        "idle": idle,
        "loaded": loaded,
        "p99_ratio_loaded_vs_idle": round(loaded["p99_ms"] / max(idle["p99_ms"], 1e-9), 2),
        "goal_p99_ms": 50,
        "met": loaded["p99_ms"] < 50,
        "sender_statuses": raw["statuses"],
        "body_bytes": limit,
        "configured_limit_bytes": LIMIT,
        "senders": SENDERS,
    }


def main() -> None:
    summary = asyncio.run(run())
    out = Path("var/bench/hostile.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
