"""The frontier panels of `t2serve replay --route --plot`: accuracy against cost relative to
the reference (log axis), one panel per set, every baseline on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.replay.route_summary import envelope


def x_scale(costs: list[float]) -> tuple[str, dict[str, float]]:
    """A log axis, or symlog when some point costs nothing (a model priced at 0, such as a
    self-hosted one): a log axis would drop those points; symlog draws 0 at the left edge and
    stays logarithmic from the cheapest priced point up."""
    priced = [c for c in costs if c > 0]
    if len(priced) == len(costs) or not priced:
        return "log", {}
    return "symlog", {"linthresh": min(priced)}


def draw_frontiers(path: Path, sets: dict[str, dict[str, Any]], subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.8), dpi=120, squeeze=False)
    for ax, (name, entry) in zip(axes[0], sets.items(), strict=True):
        ref = entry["reference"]
        rel = ref["cost"]
        base = entry["baselines"]
        costs = [p["relative_cost"] for p in entry["route"]]
        costs += [s["cost"] / rel for s in base["single"]]
        costs += [c["cost"] / rel for c in base["vote_cascade"]]
        scale, scale_kw = x_scale(costs)
        for mode, style in (("auto", "-o"), ("cascade", "--s")):
            pts = [(p["relative_cost"], p["accuracy"]) for p in entry["route"] if p["mode"] == mode]
            env = envelope(pts)
            ax.plot(*zip(*env, strict=True), style, markersize=3, label=f"route ({mode})", zorder=4)
        models = dict.fromkeys(s["model"] for s in base["single"])
        for model in models:
            pts = [(s["cost"] / rel, s["accuracy"]) for s in base["single"] if s["model"] == model]
            ax.plot(*zip(*pts, strict=True), ":^", markersize=4, label=f"{model} × k")
        if base.get("t2"):
            pts = envelope([(p["relative_cost"], p["accuracy"]) for p in base["t2"]])
            ax.plot(*zip(*pts, strict=True), ":", color="grey", label="one model, t2 stopping")
        vc = envelope([(c["cost"] / rel, c["accuracy"]) for c in base["vote_cascade"]])
        ax.plot(*zip(*vc, strict=True), "-.x", markersize=4, label="vote cascade (best k, τ)")
        o = base["oracle"]
        ax.scatter([o["cost"] / rel], [o["accuracy"]], marker="*", s=90, label="oracle cascade")
        ax.axhline(ref["accuracy"], color="black", lw=0.6, alpha=0.5)
        ax.axhline(ref["accuracy"] - 0.005, color="black", lw=0.6, ls="--", alpha=0.4)
        ax.set_xscale(scale, **scale_kw)
        if scale == "symlog":
            ax.set_xlim(left=0)
        ax.set_xlabel("cost relative to the reference (dearest model, all its samples)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: {subtitle}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
