"""`t2serve replay --route DIR`: routes over recorded multi-model logs against the baselines.

The command parses, loads and renders; the replay is controller.replay.route_report.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from cli.errors import fail
from cli.left_out import left_out_line
from controller.replay.route_report import ReplayPlan, replay_set, work
from controller.replay.routing_set import RoutingSetError, load_routing_set, routing_sets


def parse_lams(text: str | None) -> tuple[float, ...] | None:
    """`--lams 0,0.1,1,10`: λ in units of 1 / the reference's cost per question."""
    if text is None:
        return None
    try:
        lams = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        lams = ()
    if not lams or any(not (v >= 0 and v != float("inf")) for v in lams):
        fail(f"--lams must be comma-separated numbers >= 0, got {text!r}")
    return lams


def run_route_command(
    path: Path,
    *,
    folds: int,
    lams: str | None,
    perms: int,
    seed: int,
    extractor: str | None,
    descend: bool,
    as_json: bool,
    plot: Path | None,
) -> None:
    grid = parse_lams(lams)
    try:
        sets = [load_routing_set(p, extractor) for p in routing_sets(path)]
    except RoutingSetError as exc:
        fail(str(exc))
    for rs in sets:
        if not 2 <= folds <= rs.questions:
            fail(f"--folds must be between 2 and {rs.questions} ({rs.name})")
        if rs.skipped and not as_json:  # with --json, the set's `skipped` says it
            typer.echo(left_out_line("some model has no sample for", rs.skipped, rs.name), err=True)
    plan = ReplayPlan(perms=perms, seed=seed, folds=folds, descend=descend)
    if grid is not None:
        plan = replace(plan, lams=grid)
    out: dict[str, Any] = {}
    try:
        if not as_json and sys.stderr.isatty():
            from rich.progress import Progress

            with Progress(transient=True) as progress:
                for rs in sets:
                    task = progress.add_task(f"routing {rs.name}", total=work(rs, plan))
                    out[rs.name] = replay_set(rs, plan, _advance(progress, task))
        else:
            for rs in sets:
                out[rs.name] = replay_set(rs, plan)
    except RoutingSetError as exc:  # a λ past a float's range over this set's costs
        fail(str(exc))
    if plot is not None:
        from cli.route_plot import draw_frontiers

        draw_frontiers(plot, out, f"{perms} orders, {folds}-fold cross-fitting")
    if as_json:
        typer.echo(json.dumps({"sets": out}))
        return
    for name, entry in out.items():
        _print_set(name, entry, perms)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _advance(progress: Any, task: Any) -> Callable[[int], None]:
    return lambda n: progress.advance(task, n)


def _print_set(name: str, entry: dict[str, Any], perms: int) -> None:
    from rich.console import Console
    from rich.table import Table

    ref = entry["reference"]
    ref_cost = ref["cost"]
    title = (
        f"{name}: {entry['questions']} questions × {perms} orders; reference "
        f"{ref['model']} × {ref['k']}: {ref['accuracy']:.3f} at ${ref_cost:.4f}"
    )
    table = Table(title=title)
    for col in ("what", "accuracy", "95% CI", "rel. cost", "predicted", "escalated"):
        table.add_column(col)
    for lams, p in route_rows(entry["route"]):
        lo, hi = p["accuracy_ci95"]
        table.add_row(f"route {p['mode']} λ={lams}/ref",
                      f"{p['accuracy']:.3f}", f"{lo:.3f}–{hi:.3f}", f"{p['relative_cost']:.3f}",
                      f"{p['predicted_accuracy']:.3f}", f"{p['escalated']:.2f}")  # fmt: skip
    for s in entry["baselines"]["single"]:
        lo, hi = s["accuracy_ci95"]
        table.add_row(f"{s['model']} × {s['k']}", f"{s['accuracy']:.3f}", f"{lo:.3f}–{hi:.3f}",
                      f"{s['cost'] / ref_cost:.3f}", "", "")  # fmt: skip
    cascades = entry["baselines"]["vote_cascade"]
    best = [c for c in cascades if c["accuracy"] >= ref["accuracy"] - 0.005]
    if best:
        c = min(best, key=lambda c: c["cost"])
        lo, hi = c["accuracy_ci95"]
        table.add_row(f"vote cascade {'>'.join(c['models'])} k={c['k']} τ={c['tau']}",
                      f"{c['accuracy']:.3f}", f"{lo:.3f}–{hi:.3f}", f"{c['cost'] / ref_cost:.3f}",
                      "", "")  # fmt: skip
    o = entry["baselines"]["oracle"]
    table.add_row(f"oracle cascade k={o['k']}", f"{o['accuracy']:.3f}", "",
                  f"{o['cost'] / ref_cost:.3f}", "", "")  # fmt: skip
    console = Console() if Console().is_terminal else Console(width=160)
    console.print(table)
    console.print("\n".join(summary_lines(entry["summary"])), highlight=False)


def route_rows(points: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The route's points as table rows, neighbours on the λ grid that decided alike (same mode,
    accuracy and cost as printed) in one row labelled with their λ range: at the grid's ends
    many λ give the same route, and 44 rows would hide the few that differ."""
    rows: list[tuple[list[float], dict[str, Any]]] = []
    for p in points:
        shown = (p["mode"], f"{p['accuracy']:.3f}", f"{p['relative_cost']:.3f}")
        last = rows[-1][1] if rows else None
        if last is not None and shown == (last["mode"], f"{last['accuracy']:.3f}",
                                          f"{last['relative_cost']:.3f}"):  # fmt: skip
            rows[-1][0].append(p["lam_per_reference"])
        else:
            rows.append(([p["lam_per_reference"]], p))
    return [(f"{lams[0]:g}" if len(lams) == 1 else f"{lams[0]:g}–{lams[-1]:g}", p)
            for lams, p in rows]  # fmt: skip


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The set's answer in words: where each start mode reaches the reference, the cheapest
    baseline that does, and the baseline furthest above the route at equal cost."""
    lines = [f"Within {summary['tolerance'] * 100:g} pt of the reference's accuracy:"]
    for mode, label in (("auto", "route, start: best"), ("cascade", "route, start: cheapest")):
        m = summary[mode]
        if m["reaches_reference_at"] is None:
            best = m["best"]
            there = (f"never (its best, {best['accuracy']:.3f}, at "
                     f"{best['relative_cost']:.3f}× the reference's cost)")  # fmt: skip
        else:
            lam = m["lam_per_reference_there"]
            there = (f"at {m['reaches_reference_at']:.3f}× the reference's cost "
                     f"({m['accuracy_there']:.3f}, λ = {lam:g}/ref)")  # fmt: skip
        lines.append(f"  {label}: {there}")
    b = summary["baseline_reaches_reference_at"]
    cheapest = "none" if b is None else (
        f"{b['baseline']} at {b['relative_cost']:.3f}× ({b['accuracy']:.3f})")  # fmt: skip
    lines.append(f"  cheapest baseline: {cheapest}")
    both = summary["both"]
    gap = both["worst_baseline_margin"] * 100
    if gap > 0:
        lines.append(f"Largest lead of a baseline over the route at equal cost: {gap:+.2f} pt "
                     f"({both['worst_baseline']})")  # fmt: skip
    else:
        lines.append("No baseline is above the route at equal cost.")
    return lines
