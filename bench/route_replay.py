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
import time
from pathlib import Path
from typing import Any

from cli.route_plot import draw_frontiers
from controller.replay.route_report import ReplayPlan, replay_set
from controller.replay.route_summary import VIEWS
from controller.replay.routing_set import load_routing_set, routing_sets

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "routing"


def goals(entry: dict[str, Any]) -> dict[str, Any]:
    """Per mode: the cheapest route point within 0.5 point of the reference, and the worst
    baseline margin over the route's envelope (the set's `summary`)."""
    return {mode: entry["summary"][mode] for mode in VIEWS}


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
