"""Verifiers against majority voting at equal billed compute, live through the server.

Generator: models/tiny-chain-31k (single-sample accuracy ≈ 0.46 on the chain task, room for a
verifier to help). Verifiers: the shipped reward model (models/tiny-chain-rm, vLLM's pooling
runner), an LLM judge (models/tiny-chain-252k grading by its own greedy answer, `read: answer`)
and the step checker (`chain_steps`). Questions: the chain task's held-back questions
(models.train_reward.held_back: never trained on by the reward model), each asked with one seed
per k so every method at that k aggregates the same samples (a paired comparison).

Every request is billed in FLOPs (2·N per token, the verifier's model included), so the x axis
is what the tenant paid. Methods: majority (no verifier configured: nothing spent on one);
best_of_n with each verifier kind; score-weighted vote (`verifier`) and `vote_score` with the
reward model; verifier-aware t2 (t2 stopping once a sample's calibrated P(correct) ≥ 0.9, the
score map fit on the *training* questions' samples, the threshold fixed beforehand).

Also: reward-model scoring throughput (tokens/s) against generation throughput (completion
tokens/s) of tiny-chain-252k, the generator whose trunk the reward model extends, in the same
process on the same machine.

Run: `python -m bench verifiers` (≈ 15 min on the loaded 2-core box). Writes
var/bench/verifiers.json and docs/verifiers-accuracy-flops.png; BENCHMARKS.md records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

from controller.aggregate import get_extractor, normalize_answer
from controller.aggregate.checkers import chain_steps
from controller.aggregate.score_map import IsotonicScoreMap
from models.train_reward import REPLAYS, held_back, prompt_of, replay_rows
from server.app import create_app, serve_in_loop
from server.config import parse_config

GEN, JUDGE, RM = "tiny-chain-31k", "tiny-chain-252k", "tiny-chain-rm"
KEYS = {"plain": "bench-plain", "verified": "bench-verified"}
QUESTIONS = int(os.environ.get("T2_BENCH_VERIFIER_QUESTIONS", "64"))
KS = (1, 2, 4, 8)
MAX_TOKENS = 40
CONCURRENCY = 8
STOP_AT = 0.9
OUT = Path("var/bench/verifiers.json")
PLOT = Path("docs/verifiers-accuracy-flops.png")
VAR = Path("var/bench/verifiers")


def score_map_files() -> dict[str, str]:
    """The checker's score → P(correct) map, fit on the training questions' recorded samples
    of the generator (never the held-back ones); the reward model ships its own."""
    rows = [r for r in replay_rows(REPLAYS[0]) if not held_back(r["question"])]
    scores, labels = [], []
    for row in rows:
        prompt = prompt_of(row["question"])
        for s in row["samples"]:
            scores.append(chain_steps(prompt, s["text"]))
            labels.append(int(bool(s["correct"])))
    VAR.mkdir(parents=True, exist_ok=True)
    path = VAR / "chain_steps-score_map.json"
    path.write_text(json.dumps(IsotonicScoreMap().fit(scores, labels).to_dict()))
    return {"chain_steps": str(path), RM: f"models/{RM}/score_map.json"}


def bench_config(score_maps: dict[str, str]) -> dict[str, Any]:
    flops = {"day": {"limit": 1e18, "unit": "flops"}}
    verifiers = [
        {"kind": "reward_model", "name": "rm", "model": RM, "score_map": score_maps[RM]},
        {
            "kind": "judge",
            "name": "judge",
            "model": JUDGE,
            "read": "answer",
            "template": "{question}",
            "max_tokens": MAX_TOKENS,
        },
        {"kind": "checker", "name": "steps", "checker": "chain_steps"},
        {
            "kind": "checker",
            "name": "steps-stop",
            "checker": "chain_steps",
            "score_map": score_maps["chain_steps"],
            "stop_at": STOP_AT,
        },
        {
            "kind": "reward_model",
            "name": "rm-stop",
            "model": RM,
            "score_map": score_maps[RM],
            "stop_at": STOP_AT,
        },
    ]
    return {
        "demo": True,
        "server": {"request_timeout_s": 600},
        "models": [
            {"id": GEN, "path": f"models/{GEN}"},
            {"id": JUDGE, "path": f"models/{JUDGE}"},
        ],
        "verifier_models": [{"id": RM, "path": f"models/{RM}"}],
        "engine": {"kv_cache_memory_bytes": 256 * 2**20},
        "ledger": {"backend": "sqlite", "path": str(VAR / "ledger.sqlite")},
        "defaults": {"max_samples": 16, "max_tokens": MAX_TOKENS, "extractor": "last_number"},
        "tenants": [
            {"id": "plain", "api_keys": [{"plain": KEYS["plain"]}], "budgets": flops},
            {
                "id": "verified",
                "api_keys": [{"plain": KEYS["verified"]}],
                "budgets": flops,
                "verifiers": verifiers,
            },
        ],
    }


def methods() -> list[tuple[str, str, dict[str, Any], list[int]]]:
    """(label, tenant, t2 options without the policy, ks)."""
    return [
        ("majority", "plain", {"aggregator": "majority"}, list(KS)),
        (
            "best-of-N: reward model",
            "verified",
            {"aggregator": "best_of_n", "verifier": "rm"},
            list(KS),
        ),
        (
            "best-of-N: judge",
            "verified",
            {"aggregator": "best_of_n", "verifier": "judge"},
            list(KS),
        ),
        (
            "best-of-N: step checker",
            "verified",
            {"aggregator": "best_of_n", "verifier": "steps"},
            list(KS),
        ),
        (
            "score-weighted vote (reward model)",
            "verified",
            {"aggregator": "verifier", "verifier": "rm"},
            list(KS),
        ),
        (
            "vote_score (reward model)",
            "verified",
            {"aggregator": "vote_score", "verifier": "rm"},
            list(KS),
        ),
    ]


def adaptive() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("t2 (no verifier)", "plain", {"aggregator": "majority", "policy": "t2"}),
        (
            "verifier-aware t2 (step checker)",
            "verified",
            {"aggregator": "best_of_n", "verifier": "steps-stop", "policy": "t2"},
        ),
        (
            "verifier-aware t2 (reward model)",
            "verified",
            {"aggregator": "best_of_n", "verifier": "rm-stop", "policy": "t2"},
        ),
    ]


async def ask(
    clients: dict[str, openai.AsyncOpenAI],
    tenant: str,
    question: str,
    seed: int,
    t2: dict[str, Any],
) -> dict[str, Any]:
    resp = await clients[tenant].chat.completions.create(
        model=GEN,
        messages=[{"role": "user", "content": question}],
        temperature=1.0,
        seed=seed,
        max_tokens=MAX_TOKENS,
        extra_body={"t2": t2},
    )
    info = dict((resp.model_extra or {})["t2"])
    info["text"] = resp.choices[0].message.content or ""
    return info


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n: int = 4000) -> list[float]:
    idx = rng.integers(0, len(values), size=(n, len(values)))
    means = values[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


async def run_accuracy(base_v1: str, questions: list[dict[str, Any]]) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as opened:
        clients = {
            t: await opened.enter_async_context(
                openai.AsyncOpenAI(base_url=base_v1, api_key=k, max_retries=2, timeout=600)
            )
            for t, k in KEYS.items()
        }
        return await _accuracy(clients, questions)


async def _accuracy(
    clients: dict[str, openai.AsyncOpenAI], questions: list[dict[str, Any]]
) -> dict[str, Any]:
    extract = get_extractor("last_number")
    gate = asyncio.Semaphore(CONCURRENCY)
    results: dict[str, dict[str, Any]] = {}

    async def one(label: str, tenant: str, t2: dict[str, Any], qi: int, seed: int) -> None:
        q = questions[qi]
        async with gate:
            info = await ask(clients, tenant, q["question"], seed, t2)
        ok = normalize_answer(q["gold"]) == extract(info["text"])
        cell = results.setdefault(label, {"correct": {}, "flops": {}, "samples": {}, "notes": 0})
        cell["correct"][qi] = float(ok)
        cell["flops"][qi] = float(info["cost"])
        cell["samples"][qi] = info["samples"]
        cell["notes"] += info["note"] is not None

    jobs = []
    for label, tenant, t2, ks in methods():
        for k in ks:
            for qi in range(len(questions)):
                jobs.append(
                    one(f"{label}@{k}", tenant, {**t2, "policy": f"fixed:{k}"}, qi, 1000 * k + qi)
                )
    for label, tenant, t2 in adaptive():
        for qi in range(len(questions)):
            jobs.append(one(label, tenant, {**t2, "max_samples": 16}, qi, 99_000 + qi))
    random.Random(0).shuffle(jobs)  # no method gets the quiet (or the busy) part of the run
    started = time.monotonic()
    done = 0
    for chunk in range(0, len(jobs), 64):
        await asyncio.gather(*jobs[chunk : chunk + 64])
        done += len(jobs[chunk : chunk + 64])
        print(f"  {done}/{len(jobs)} requests, {time.monotonic() - started:.0f} s", flush=True)
    return results


def summarise(results: dict[str, Any], n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    table = {}
    for label, cell in results.items():
        correct = np.array([cell["correct"][i] for i in range(n)])
        flops = np.array([cell["flops"][i] for i in range(n)])
        table[label] = {
            "accuracy": float(correct.mean()),
            "accuracy_ci95": bootstrap_ci(correct, rng),
            "mean_flops": float(flops.mean()),
            "mean_samples": float(np.mean([cell["samples"][i] for i in range(n)])),
            "degraded": cell["notes"],
        }
    # equal compute: each method against majority at the smallest k whose mean billed FLOPs
    # are at least as high (majority gets as much compute or more), paired by question
    majority = {k: results[f"majority@{k}"] for k in KS}
    comparisons: list[dict[str, Any]] = []
    for label, cell in results.items():
        if label.startswith("majority"):
            continue
        spent = float(np.mean(list(cell["flops"].values())))
        richer = [k for k in KS if np.mean(list(majority[k]["flops"].values())) >= spent]
        if not richer:
            continue
        k_major = min(richer)
        mine = np.array([cell["correct"][i] for i in range(n)])
        theirs = np.array([majority[k_major]["correct"][i] for i in range(n)])
        diff = mine - theirs
        comparisons.append(
            {
                "method": label,
                "flops": spent,
                "majority_k": k_major,
                "majority_flops": float(np.mean(list(majority[k_major]["flops"].values()))),
                "gain": float(diff.mean()),
                "gain_ci95": bootstrap_ci(diff, rng),
            }
        )
    comparisons.sort(key=lambda c: -float(c["gain"]))
    return {"methods": table, "equal_compute": comparisons}


def plot(summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    groups: dict[str, list[tuple[float, float, list[float]]]] = {}
    for label, row in summary["methods"].items():
        name = label.split("@")[0]
        groups.setdefault(name, []).append(
            (row["mean_flops"], row["accuracy"], row["accuracy_ci95"])
        )
    for name, pts in groups.items():
        pts.sort()
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        err = np.array([[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]])
        style = "o-" if len(pts) > 1 else "*"
        ax.errorbar(
            xs, ys, yerr=err, fmt=style, capsize=3, label=name, markersize=9 if len(pts) == 1 else 5
        )
    ax.set_xscale("log")
    ax.set_xlabel("billed FLOPs per question (generation + verifier)")
    ax.set_ylabel("accuracy on held-back questions")
    ax.set_title(
        f"tiny-chain-31k: verifiers vs majority at equal compute ({QUESTIONS} questions, 95% CI)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


async def throughput(app: Any) -> dict[str, Any]:
    """Reward-model scoring tokens/s against generation tokens/s of tiny-chain-252k (the
    trunk the reward model extends), one after the other in this process."""
    state = app.state.t2
    pooling = state.verifiers.pooling[RM]
    gen = state.engines[JUDGE]
    rows = [r for r in replay_rows(REPLAYS[1]) if held_back(r["question"])][:32]
    texts = [prompt_of(r["question"]) + s["text"] for r in rows for s in r["samples"]]
    await pooling.classify(texts[:64])  # warm
    t0 = time.perf_counter()
    scored = await pooling.classify(texts)
    rm_s = time.perf_counter() - t0
    prompt = gen.tokenize(prompt_of(rows[0]["question"]))
    params = gen.params(
        max_tokens=MAX_TOKENS, temperature=1.0, top_p=None, stop=[], seed=None, wave=0
    )
    tokens = 0
    t0 = time.perf_counter()

    async def draw(i: int) -> int:
        got = 0
        async for s in gen.sample(prompt, 64, params, f"tp-{i}"):
            got += s.completion_tokens
        return got

    tokens = sum(await asyncio.gather(*(draw(i) for i in range(len(texts) // 64))))
    gen_s = time.perf_counter() - t0
    rm_tps = scored.tokens / rm_s
    gen_tps = tokens / gen_s
    return {
        "rm_texts": len(texts),
        "rm_tokens": scored.tokens,
        "rm_seconds": rm_s,
        "rm_tokens_per_s": rm_tps,
        "gen_completion_tokens": tokens,
        "gen_seconds": gen_s,
        "gen_tokens_per_s": gen_tps,
        "ratio_rm_over_gen": rm_tps / gen_tps,
    }


async def run() -> dict[str, Any]:
    rows = [r for r in replay_rows(REPLAYS[0]) if held_back(r["question"])]
    questions = random.Random(17).sample(rows, min(QUESTIONS, len(rows)))
    config = parse_config(bench_config(score_map_files()), "bench verifiers")
    app = create_app(config)
    summary: dict[str, Any] = {}
    try:
        async with serve_in_loop(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                t0 = time.monotonic()
                while (await http.get("/readyz")).status_code != 200:
                    if time.monotonic() - t0 > 900:
                        raise RuntimeError("engines did not start")
                    await asyncio.sleep(2)
            results = await run_accuracy(server.v1, questions)
            summary = summarise(results, len(questions))
            summary["questions"] = len(questions)
            summary["stop_at"] = STOP_AT
            save(summary)  # before the throughput run and the engines' shutdown
            try:
                summary["throughput"] = await throughput(app)
            except Exception as exc:  # recorded, not lost: the accuracy is already saved
                traceback.print_exc()
                summary["throughput"] = {"error": f"{type(exc).__name__}: {exc}"}
            save(summary)
    except TimeoutError:  # three engines may take longer to stop than serve_in_loop waits
        print("  (the server's shutdown timed out; results were saved)", flush=True)
    return summary


def save(summary: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))
    plot(summary)


def main() -> None:
    summary = asyncio.run(run())
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
