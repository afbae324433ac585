"""T² routing live through the server: accuracy against billed FLOPs on held-back questions,
for each shipped grid model alone (several policies) and for the routes over both.

`python -m bench route` (or `python -m bench.route --questions N --concurrency C`) starts the
real app with both models on their own in-process engines, a tenant billed in FLOPs (2·N per
token), and two routes: `auto` (start on the best predicted plan) and `cascade` (always start
on the small model and escalate by value). Every configuration answers the same questions, one
seeded request each.

Questions: `models.chain.eval_questions()`, the 320 held-back questions: never trained on, and
disjoint from the calibration questions the models' curves and the routes' vote statistics come
from (chain's 256 validation questions, `models/<model>/calibration/replay.jsonl`).

Writes var/bench/route.json and docs/route-frontier.png; prints the frontier comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from models import chain
from server.app import create_app, serve_in_loop
from server.config import hash_key, parse_config

SMALL, LARGE = "tiny-chain-31k", "tiny-chain-252k"
KEY = "bench-route-key"
SINGLE: dict[str, list[str]] = {
    SMALL: ["fixed:1", "fixed:2", "fixed:4", "fixed:8", "fixed:16", "t2:lam=0.002", "t2:lam=0.02"],
    LARGE: [
        "fixed:1",
        "fixed:2",
        "fixed:3",
        "fixed:4",
        "t2:lam=0.002",
        "t2:lam=0.02",
        "t2:lam=0.1",
    ],
}
ROUTE_LAMS: dict[str, list[float]] = {  # λ per small-model sample
    "auto": [1.0, 0.1, 0.06, 0.05, 0.03, 0.01, 0.003, 0.001, 0.0003],
    "cascade": [0.1, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01],
}
PNG = Path("docs/route-frontier.png")
JSON_OUT = Path("var/bench/route.json")


def bench_config(ledger: Path) -> Any:
    return parse_config(
        {
            "models": [
                {
                    "id": SMALL,
                    "path": f"models/{SMALL}",
                    "curves": f"models/{SMALL}/curves.json",  # single-model t2 starts calibrated
                    "engine": {"kv_cache_memory_bytes": 2**26},
                },
                {
                    "id": LARGE,
                    "path": f"models/{LARGE}",
                    "curves": f"models/{LARGE}/curves.json",  # single-model t2 starts calibrated
                    "engine": {"kv_cache_memory_bytes": 2**27},
                },
                {"id": "auto", "route": [SMALL, LARGE]},
                {"id": "cascade", "route": [SMALL, LARGE], "start": "cheapest"},
            ],
            "engine": {"max_num_seqs": 128, "max_model_len": 128, "seed": 0},
            "ledger": {"backend": "sqlite", "path": str(ledger)},
            "server": {"request_timeout_s": 600},
            "defaults": {"max_samples": 16, "max_tokens": 40},
            "tenants": [
                {
                    "id": "bench",
                    "api_keys": [{"sha256": hash_key(KEY)}],
                    "budgets": {"day": {"limit": 1e18, "unit": "flops"}},
                }
            ],
        },
        "bench route",
    )


async def _one(
    http: httpx.AsyncClient, url: str, model: str, policy: str, q: chain.Question, seed: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": chain.question_text(q)}],
        "max_tokens": 40,
        "seed": seed,
        "t2": {"policy": policy},
    }
    for attempt in range(3):
        resp = await http.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
        if resp.status_code == 200:
            break
        await asyncio.sleep(1 + attempt)
    resp.raise_for_status()
    t2 = resp.json()["t2"]
    route = t2.get("route")
    return {
        "right": t2["answer"] == chain.gold(q),
        "flops": t2["cost"],
        "samples": t2["samples"],
        "model": route["model"] if route else model,
        "escalated": bool(route and route["escalated"]),
    }


async def _config(
    http: httpx.AsyncClient, url: str, model: str, policy: str, qs: list[chain.Question], conc: int
) -> dict[str, Any]:
    sem = asyncio.Semaphore(conc)

    async def go(i: int, q: chain.Question) -> dict[str, Any]:
        async with sem:
            return await _one(http, url, model, policy, q, 1000 + i)

    t0 = time.monotonic()
    rows = await asyncio.gather(*(go(i, q) for i, q in enumerate(qs)))
    n = len(rows)
    acc = sum(r["right"] for r in rows) / n
    return {
        "model": model,
        "policy": policy,
        "questions": n,
        "accuracy": acc,
        "ci95": 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n),
        "flops": sum(r["flops"] for r in rows) / n,
        "samples": sum(r["samples"] for r in rows) / n,
        "answered_by_large": sum(r["model"] == LARGE for r in rows) / n,
        "escalated": sum(r["escalated"] for r in rows) / n,
        "right": [r["right"] for r in rows],
        "seconds": time.monotonic() - t0,
    }


def hull_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The upper concave envelope of (cost, accuracy) points at cost x (None below the
    cheapest point: that model cannot spend so little), held flat beyond the dearest."""
    pts = sorted(points)
    if not pts or x < pts[0][0] - 1e-9:
        return None
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    best = max(y for px, y in pts if px <= x + 1e-9)
    for (x1, y1), (x2, y2) in itertools.pairwise(hull):
        if x1 <= x <= x2 and x2 > x1:
            best = max(best, y1 + (y2 - y1) * (x - x1) / (x2 - x1))
    return best


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each route point against each single model's envelope at the route's spend."""
    singles = {
        m: [(r["flops"], r["accuracy"]) for r in results if r["model"] == m] for m in (SMALL, LARGE)
    }
    out = []
    for r in results:
        if r["model"] not in ROUTE_LAMS:
            continue
        at = {m: hull_at(p, r["flops"]) for m, p in singles.items()}
        best = max((v for v in at.values() if v is not None), default=None)
        out.append(
            {
                "route": r["model"],
                "policy": r["policy"],
                "flops": r["flops"],
                "accuracy": r["accuracy"],
                "ci95": r["ci95"],
                "single_small": at[SMALL],
                "single_large": at[LARGE],
                "margin": None if best is None else r["accuracy"] - best,
            }
        )
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {
        SMALL: ("tab:blue", "o", "tiny-chain-31k alone"),
        LARGE: ("tab:red", "s", "tiny-chain-252k alone"),
        "auto": ("black", "D", "route auto (best start)"),
        "cascade": ("tab:green", "^", "route cascade (start small)"),
    }
    for key, (color, marker, label) in styles.items():
        pts = sorted((r["flops"], r["accuracy"], r["ci95"]) for r in results if r["model"] == key)
        if not pts:
            continue
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, ls="-" if key in ROUTE_LAMS
                    else ":", label=label, capsize=2, ms=5, lw=1)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("billed FLOPs per question (2·N per token, all waves)")
    ax.set_ylabel("accuracy on held-back questions")
    ax.set_title("T² routing live through the server: accuracy against spend")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def run(n_questions: int, concurrency: int, quiet: bool) -> dict[str, Any]:
    questions = chain.eval_questions()[:n_questions]
    ledger = Path("var/bench/route-ledger.sqlite")
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.unlink(missing_ok=True)
    cfg = bench_config(ledger)
    app = create_app(cfg)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    async with serve_in_loop(app) as server, httpx.AsyncClient(timeout=900) as http:
        while (await http.get(f"{server.base_url}/readyz")).status_code != 200:
            await asyncio.sleep(1)
        ready_s = time.monotonic() - started
        url = f"{server.v1}/chat/completions"
        plan: list[tuple[str, str]] = [(m, p) for m, ps in SINGLE.items() for p in ps]
        plan += [(r, f"t2:lam={lam:g}") for r, lams in ROUTE_LAMS.items() for lam in lams]
        for i, (model, policy) in enumerate(plan, 1):
            res = await _config(http, url, model, policy, questions, concurrency)
            results.append(res)
            if not quiet:
                print(f"[{i}/{len(plan)}] {model:16s} {policy:16s} acc {res['accuracy']:.3f} "
                      f"±{res['ci95']:.3f}  FLOPs/q {res['flops']:.3g}  k {res['samples']:.2f}  "
                      f"large {res['answered_by_large']:.2f}  esc {res['escalated']:.2f}  "
                      f"({res['seconds']:.0f} s)", flush=True)  # fmt: skip
    await app.state.t2.billing.close()
    return {"questions": len(questions), "engines_ready_s": ready_s, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench route", description=__doc__)
    parser.add_argument("--questions", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args([a for a in raw if a != "route"])  # `python -m bench route`
    summary = asyncio.run(run(args.questions, args.concurrency, args.json))
    summary["comparison"] = compare(summary["results"])
    JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(summary, indent=2))
    plot(summary["results"], PNG)
    if args.json:
        print(json.dumps(summary["comparison"], indent=2))
        return
    print(
        f"\nengines ready in {summary['engines_ready_s']:.0f} s; {summary['questions']} questions"
    )
    print("route point vs each single model's envelope at the same spend (accuracy):")
    for c in summary["comparison"]:
        small = "  -  " if c["single_small"] is None else f"{c['single_small']:.3f}"
        large = "  -  " if c["single_large"] is None else f"{c['single_large']:.3f}"
        margin = "n/a" if c["margin"] is None else f"{c['margin']:+.3f}"
        print(f"  {c['route']:8s} {c['policy']:14s} FLOPs {c['flops']:.3g}  acc {c['accuracy']:.3f}"
              f" ±{c['ci95']:.3f}  small {small}  large {large}  margin {margin}")  # fmt: skip
    print(f"wrote {PNG} and {JSON_OUT}")


if __name__ == "__main__":
    main()
