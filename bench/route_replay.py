"""Routes over recorded LLM outputs (issue 21): every routing set in ../shared/data/routing at
the replay's defaults, timed, with the issue's goals checked.

`python -m bench route_replay` (or `python -m bench.route_replay [--data DIR] [--perms N]`)
writes var/bench/route_replay.json and docs/routing-replay-frontier.png and prints, per set:
the time, where the route reaches the reference's accuracy within 0.5 point, and the largest
amount by which any single-model or vote-cascade point beats the route's upper envelope at
its cost (interpolated on log cost).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from cli.route_plot import draw_frontiers, envelope
from controller.replay.route_report import ReplayPlan, replay_set
from controller.replay.routing_set import load_routing_set, routing_sets

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "routing"
TOLERANCE = 0.005


def envelope_at(env: list[tuple[float, float]], cost: float) -> float:
    """The envelope's accuracy at `cost`, linear in log cost (0 below its cheapest point)."""
    xs = [math.log(c) for c, _ in env]
    if math.log(cost) < xs[0]:
        return 0.0
    return float(np.interp(math.log(cost), xs, [a for _, a in env]))


def goals(entry: dict[str, Any]) -> dict[str, Any]:
    """Per mode: the cheapest route point within 0.5 point of the reference, and the worst
    baseline margin over the route's envelope."""
    ref = entry["reference"]
    base = entry["baselines"]
    rivals = [(s["cost"], s["accuracy"], f"{s['model']} x{s['k']}") for s in base["single"]]
    rivals += [(c["cost"], c["accuracy"], f"{'>'.join(c['models'])} k={c['k']} tau={c['tau']}")
               for c in base["vote_cascade"]]  # fmt: skip
    out: dict[str, Any] = {}
    for mode in ("auto", "cascade", "both"):
        pts = [p for p in entry["route"] if mode in ("both", p["mode"])]
        env = envelope([(p["cost"], p["accuracy"]) for p in pts])
        near = [p for p in pts if p["accuracy"] >= ref["accuracy"] - TOLERANCE]
        reach = min(near, key=lambda p: p["cost"]) if near else None
        gap, who = max((a - envelope_at(env, c), name) for c, a, name in rivals)
        out[mode] = {
            "reaches_reference_at": None if reach is None else reach["relative_cost"],
            "accuracy_there": None if reach is None else reach["accuracy"],
            "worst_baseline_margin": round(gap, 4),
            "worst_baseline": who,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--perms", type=int, default=ReplayPlan.perms)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "route_replay.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "routing-replay-frontier.png")
    args = parser.parse_args(argv or [])
    plan = ReplayPlan(perms=args.perms)
    sets: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for path in routing_sets(args.data):
        start = time.perf_counter()
        rs = load_routing_set(path)
        sets[rs.name] = replay_set(rs, plan)
        seconds = time.perf_counter() - start
        report[rs.name] = {"seconds": round(seconds, 1), **goals(sets[rs.name])}
        print(rs.name, json.dumps(report[rs.name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"sets": sets, "goals": report}) + "\n")
    draw_frontiers(args.plot, sets, f"{plan.perms} orders, {plan.folds}-fold cross-fitting")
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
