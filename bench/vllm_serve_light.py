"""The two-minute check beside `bench vllm_serve` (issue 23): sequential requests, one at a
time, at 1 and 32 output tokens, against t2serve (`fixed:1`) and vLLM's own OpenAI server on
the same shipped model, alternated request by request, with the p50 latency of each.

At 1 token the figure is the per-request cost of each server (routing, auth, billing, response
shaping); at 32 tokens anything paid per generated token shows on top. Both servers are the
ones `bench vllm_serve` starts (same engine settings, both up for the whole run); the client
is one keep-alive httpx connection per server sending non-streamed chat completions with
`ignore_eos`, so both generate exactly the asked number of tokens.

Run: `python -m bench vllm_serve_light` (T2_LIGHT_REQUESTS per server and length, default 300).
Writes var/bench/vllm_serve_light.json; the load average is recorded beside the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.vllm_serve import (
    KEY,
    MODEL,
    ROOT,
    T2_EXTRA,
    free_port,
    running,
    t2serve_command,
    vllm_command,
)
from models.train_tiny import heldout_questions, question_text

REQUESTS = int(os.environ.get("T2_LIGHT_REQUESTS", "300"))
WARMUP = 8
LENGTHS = (1, 32)


def body(question: str, max_tokens: int, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # a vLLM extension both servers honour: fixed-length answers
        **(extra or {}),
    }


def timed(client: httpx.Client, payload: dict[str, Any]) -> float:
    """One request's end-to-end latency in ms (checked: a 200 with the asked tokens)."""
    started = time.perf_counter()
    r = client.post("/v1/chat/completions", json=payload)
    elapsed = (time.perf_counter() - started) * 1000
    r.raise_for_status()
    got = r.json()["usage"]["completion_tokens"]
    if got != payload["max_tokens"]:
        raise RuntimeError(f"asked {payload['max_tokens']} tokens, got {got}")
    return elapsed


def measure(clients: dict[str, tuple[httpx.Client, Any]]) -> dict[str, Any]:
    """Alternate the servers request by request, each length in turn; p50 per server."""
    questions = [question_text(q) for q in heldout_questions(REQUESTS + WARMUP)]
    figures: dict[str, Any] = {}
    for length in LENGTHS:
        lat: dict[str, list[float]] = {name: [] for name in clients}
        for i, question in enumerate(questions):
            order = list(clients) if i % 2 == 0 else list(reversed(clients))
            for name in order:
                client, extra = clients[name]
                ms = timed(client, body(question, length, extra))
                if i >= WARMUP:
                    lat[name].append(ms)
        p50 = {name: round(statistics.median(v), 2) for name, v in lat.items()}
        figures[str(length)] = {
            "p50_ms": p50,
            "p90_ms": {n: round(statistics.quantiles(v, n=10)[-1], 2) for n, v in lat.items()},
            "added_p50_ms": round(p50["t2serve"] - p50["vllm"], 2),
            "latency_ratio": round(p50["t2serve"] / p50["vllm"], 3),
        }
        print(length, json.dumps(figures[str(length)]), flush=True)
    return figures


def main() -> None:
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        clients: dict[str, tuple[httpx.Client, Any]] = {}
        for name, command, ready, extra in (
            ("t2serve", t2serve_command, "/readyz", T2_EXTRA),
            ("vllm", lambda p, _w: vllm_command(p), "/health", None),
        ):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = out_dir / f"vllm_serve_light-{name}.log"
            stack.enter_context(running(command(port, work), base + ready, log))
            client = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
            )
            clients[name] = (stack.enter_context(client), extra)
        load_before = os.getloadavg()
        started = time.monotonic()
        figures = measure(clients)
        results = {
            "requests_per_server_and_length": REQUESTS,
            "seconds": round(time.monotonic() - started, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "lengths": figures,
        }
    (out_dir / "vllm_serve_light.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
