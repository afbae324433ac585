"""The question a team asks of a routing set, answered from its replay: does routing reach the
dearest model's accuracy for less, and does anything it can already do (one model at k samples,
a vote cascade) beat the route at equal cost? Issue 21's goals are these figures.

"Equal accuracy" is within `TOLERANCE` of the reference; "at equal cost" reads the route's
upper envelope at a baseline's cost, joined linearly on log cost (0 below the route's cheapest
point). A margin > 0 is how far that baseline is above the route there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

TOLERANCE = 0.005
"""Within half a point of the reference's accuracy counts as reaching it."""
VIEWS = ("auto", "cascade", "both")
"""The views summarised: each start mode alone, and `both` (their two envelopes as one)."""


def envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left envelope of (cost, accuracy) points: those no cheaper point beats."""
    out: list[tuple[float, float]] = []
    for cost, acc in sorted(points):
        if not out or acc > out[-1][1]:
            out.append((cost, acc))
    return out


def envelope_at(env: Sequence[tuple[float, float]], cost: float) -> float:
    """The envelope's accuracy at `cost`, linear in log cost (0 below its cheapest point)."""
    priced = [(c, a) for c, a in env if c > 0]
    if cost <= 0 or not priced:  # a free baseline: only a free route point can match it
        return max((a for c, a in env if c <= cost), default=0.0)
    xs = [math.log(c) for c, _ in priced]
    if math.log(cost) < xs[0]:
        return max((a for c, a in env if c <= 0), default=0.0)
    return float(np.interp(math.log(cost), xs, [a for _, a in priced]))


def baselines_of(entry: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(cost, accuracy, name) of what a team can already do: each model at k, vote cascades."""
    base = entry["baselines"]
    out = [(s["cost"], s["accuracy"], f"{s['model']} x{s['k']}") for s in base["single"]]
    out += [(c["cost"], c["accuracy"], f"{'>'.join(c['models'])} k={c['k']} tau={c['tau']}")
            for c in base["vote_cascade"]]  # fmt: skip
    return out


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """A set's summary (the `summary` field of `t2serve replay --route --json`): the cheapest
    baseline within `TOLERANCE` of the reference, and per mode the cheapest route point there,
    the route's best point, and the baseline furthest above the route at its cost."""
    ref = entry["reference"]
    target = ref["accuracy"] - TOLERANCE
    rivals = baselines_of(entry)
    near = [r for r in rivals if r[1] >= target]
    cheapest = min(near) if near else None
    out: dict[str, Any] = {
        "tolerance": TOLERANCE,
        "baseline_reaches_reference_at": None if cheapest is None else {
            "baseline": cheapest[2], "relative_cost": cheapest[0] / ref["cost"],
            "accuracy": cheapest[1]},
    }  # fmt: skip
    for mode in VIEWS:
        pts = [p for p in entry["route"] if mode in ("both", p["mode"])]
        env = envelope([(p["cost"], p["accuracy"]) for p in pts])
        there = [p for p in pts if p["accuracy"] >= target]
        reach = min(there, key=lambda p: p["cost"]) if there else None
        best = max(pts, key=lambda p: (p["accuracy"], -p["cost"]))
        gap, who = max((a - envelope_at(env, c), name) for c, a, name in rivals)
        out[mode] = {
            "reaches_reference_at": None if reach is None else reach["relative_cost"],
            "accuracy_there": None if reach is None else reach["accuracy"],
            "lam_per_reference_there": None if reach is None else reach["lam_per_reference"],
            "best": {"accuracy": best["accuracy"], "relative_cost": best["relative_cost"]},
            "worst_baseline_margin": round(gap, 4),
            "worst_baseline": who,
        }
    return out
