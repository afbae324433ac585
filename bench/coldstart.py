"""Cold start: does a calibrated prior make t2 cheaper from the first request?

For each shipped chain model, and each of several seeded orders of its 320 held-back questions
(models/<model>/replay.jsonl; the curves were calibrated on chain's 256 validation questions,
which are disjoint from them), the first 50 questions go one after another through a freshly
started server (a new app, a new empty ledger and learned-state file) whose config gives the
model either its `curves:` (t2 starts from the calibrated leader prior, Acc(k)) or none (t2
starts from the uniform prior). Both arms then learn online as they serve.

Requests carry a seed per (order, question), so both arms see the same samples in the same
order (t2 draws one sample per wave, and the engine seeds wave w from the request's seed): the
difference between arms is the prior's doing, not sampling noise. The engine itself is started
once per model and shared (its warmth changes no answer).

`T2_BENCH_COLDSTART_COMPARE=online` compares instead the online rule (learning from the
tenant's own traffic, from an empty table) with Adaptive-Consistency, both without curves.

Run: `python -m bench coldstart` (T2_BENCH_ORDERS=8 orders, T2_BENCH_FIRST=50 requests).
Prints a JSON summary and writes var/bench/coldstart.json; BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import openai
from scipy import stats

from controller.aggregate import get_extractor, normalize_answer
from server.app import create_app, serve_in_loop
from server.config import parse_config
from server.engine.service import EngineService

MODELS = os.environ.get("T2_BENCH_COLDSTART_MODELS", "tiny-chain-252k,tiny-chain-31k").split(",")
ORDERS = int(os.environ.get("T2_BENCH_ORDERS", "8"))
FIRST = int(os.environ.get("T2_BENCH_FIRST", "50"))
POLICY = os.environ.get("T2_BENCH_COLDSTART_POLICY", "t2")
COMPARE = os.environ.get("T2_BENCH_COLDSTART_COMPARE", "prior")
"""`prior`: t2 with the calibrated prior (curves) against t2 from the uniform one; `online`:
the online rule (controller.policy.online, learning from the tenant's own traffic from an
empty table) against Adaptive-Consistency (C = 0.95) on a new tenant's first questions."""
MAX_SAMPLES = 16
MAX_TOKENS = 40  # as the replays and the calibration were recorded
KEY = "bench-key"
ARM_POLICIES = (
    {"online": "online", "ac": "adaptive_consistency"}
    if COMPARE == "online"
    else {"curves": POLICY, "uniform": POLICY}
)
ARMS = tuple(ARM_POLICIES)


def config(model: str, arm: str, ledger: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": model, "path": f"models/{model}"}
    if arm == "curves":
        entry["curves"] = f"models/{model}/curves.json"
    return {
        "demo": True,
        "server": {"request_timeout_s": 600},
        "models": [entry],
        "engine": {"kv_cache_memory_bytes": 128 * 2**20, "max_num_seqs": 64},
        "ledger": {"backend": "sqlite", "path": str(ledger / "ledger.sqlite")},
        "defaults": {
            "policy": ARM_POLICIES[arm],
            "max_samples": MAX_SAMPLES,
            "max_tokens": MAX_TOKENS,
        },
        "tenants": [{"id": "bench", "api_keys": [{"plain": KEY}], "allow_raising_caps": True}],
    }


def held_back(model: str) -> list[dict[str, Any]]:
    lines = Path(f"models/{model}/replay.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def order_of(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)[:FIRST]]


def request_seed(order: int, question: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{order}:{question}".encode()).digest()[:4], "big") >> 1


async def one_run(
    engine: EngineService, model: str, arm: str, order: int, questions: list[dict[str, Any]]
) -> dict[str, Any]:
    """A cold server: fresh app and ledger; the first FIRST questions of this order, in turn."""
    extract = get_extractor("last_number")
    with tempfile.TemporaryDirectory(prefix="t2-coldstart-") as tmp:
        app = create_app(
            parse_config(config(model, arm, Path(tmp)), "bench config"), engine=engine.engine
        )
        async with (
            serve_in_loop(app) as live,
            openai.AsyncOpenAI(base_url=live.v1, api_key=KEY, max_retries=0, timeout=600) as api,
        ):
            right: list[bool] = []
            samples: list[int] = []
            predicted: list[float] = []
            tokens = 0
            for qi in order_of(len(questions), order):
                q = questions[qi]
                resp = await api.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": q["question"]}],
                    max_tokens=MAX_TOKENS,
                    seed=request_seed(order, q["id"]),
                )
                t2 = (resp.model_extra or {})["t2"]
                answer = extract(resp.choices[0].message.content or "")
                right.append(answer == normalize_answer(str(q["gold"])))
                samples.append(int(t2["samples"]))
                if t2.get("predicted_accuracy") is not None:
                    predicted.append(float(t2["predicted_accuracy"]))
                tokens += resp.usage.completion_tokens if resp.usage else 0
            await api.close()
    return {
        "model": model,
        "arm": arm,
        "order": order,
        "accuracy": sum(right) / len(right),
        "mean_samples": sum(samples) / len(samples),
        "completion_tokens": tokens,
        "mean_predicted_accuracy": sum(predicted) / len(predicted) if predicted else None,
    }


def ci95(values: list[float]) -> dict[str, float]:
    """Mean and a 95% t-interval over the orders."""
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) < 2:
        return {"mean": mean, "lo": mean, "hi": mean}
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return {"mean": round(mean, 4), "lo": round(mean - half, 4), "hi": round(mean + half, 4)}


def summarize(runs: list[dict[str, Any]], model: str) -> dict[str, Any]:
    by = {
        arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["order"]) for arm in ARMS
    }
    first, second = ARMS
    out: dict[str, Any] = {"model": model, "orders": len(by[first]), "first": FIRST}
    for arm in ARMS:
        out[arm] = {
            "accuracy": ci95([r["accuracy"] for r in by[arm]]),
            "mean_samples": ci95([r["mean_samples"] for r in by[arm]]),
        }
    pairs = list(zip(by[first], by[second], strict=True))
    out[f"{first}_minus_{second}"] = {
        "accuracy": ci95([c["accuracy"] - u["accuracy"] for c, u in pairs]),
        "mean_samples": ci95([c["mean_samples"] - u["mean_samples"] for c, u in pairs]),
    }
    out["sample_ratio"] = round(
        sum(c["mean_samples"] for c, _ in pairs) / sum(u["mean_samples"] for _, u in pairs), 3
    )
    predicted = [c["mean_predicted_accuracy"] for c, _ in pairs if c["mean_predicted_accuracy"]]
    if predicted:
        out[f"{first}_predicted_accuracy"] = ci95(predicted)
    return out


async def runs_for(engine: EngineService, model: str) -> list[dict[str, Any]]:
    """Both arms of every order; a few runs at once (each run's requests stay in turn)."""
    questions = held_back(model)
    gate = asyncio.Semaphore(4)

    async def guarded(arm: str, order: int) -> dict[str, Any]:
        async with gate:
            return await one_run(engine, model, arm, order, questions)

    return list(
        await asyncio.gather(*(guarded(arm, order) for order in range(ORDERS) for arm in ARMS))
    )


async def run() -> dict[str, Any]:
    summaries = []
    all_runs: list[dict[str, Any]] = []
    for model in MODELS:
        engine = EngineService(
            model,
            {
                "model_path": f"models/{model}",
                "served_name": model,
                **config(model, ARMS[1], Path("."))["engine"],
            },
        )
        await engine.start()
        if not engine.ready():
            raise SystemExit(f"engine for {model} did not start: {engine.failure()}")
        try:
            runs = await runs_for(engine, model)
        finally:
            await engine.shutdown()
        all_runs.extend(runs)
        summaries.append(summarize(runs, model))
        print(json.dumps(summaries[-1]), flush=True)
    return {
        "policies": ARM_POLICIES,
        "max_samples": MAX_SAMPLES,
        "summaries": summaries,
        "runs": all_runs,
    }


def main() -> None:
    summary = asyncio.run(run())
    out = Path(f"var/bench/coldstart{'-online' if COMPARE == 'online' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["summaries"], indent=2))


if __name__ == "__main__":
    main()
