"""`t2serve replay --budget ...`: the simulated-clock daily-budget replay, rendered.

The simulation is `controller.budget.simulate` (the server's own `TenantPacer` and policies);
this module only validates the option, shows progress on a terminal and prints the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from controller.budget.simulate import BudgetReplayResult, parse_budget, simulate_budget
from controller.replay import ReplayQuestion


def run_budget_replay(
    questions: list[ReplayQuestion],
    data: Path,
    budget: str,
    policy: str,
    queries_per_day: int,
    days: int,
    seed: int,
    as_json: bool,
    skipped: Sequence[int] = (),
) -> None:
    try:
        money, samples = parse_budget(budget)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    def simulate(progress: Callable[[int], None] | None = None) -> BudgetReplayResult:
        return simulate_budget(
            questions,
            policy=policy,
            samples_per_query=samples or 4.0,
            budget=money,
            queries_per_day=queries_per_day,
            days=days,
            seed=seed,
            progress=progress,
        )

    if not as_json and sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(
                f"simulating {days} day(s) of {data.name}", total=days * queries_per_day
            )
            result = simulate(lambda done: bar.update(task, completed=done))
    else:
        result = simulate()
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "skipped_lines": list(skipped)}))
        return
    _print(result, data, queries_per_day)


def _print(result: BudgetReplayResult, data: Path, queries_per_day: int) -> None:
    from rich.console import Console
    from rich.table import Table

    fits = (
        f"fits {result.samples_per_query:g} samples/query"
        if result.samples_per_query
        else "fixed amount"
    )
    table = Table(
        title=f"{data.name}: daily budget ({fits}), {queries_per_day} queries/day, {result.policy}"
    )
    for col in (
        "day",
        "budget",
        "spent",
        "spent/budget",
        "refused",
        "shrunk waves",
        "mean samples",
        "accuracy",
        "λ at end",
    ):
        table.add_column(col, justify="right")
    for d in result.days:
        table.add_row(
            str(d.day + 1),
            f"{d.budget:.4g}",
            f"{d.spent:.4g}",
            f"{d.spent_fraction:.1%}",
            str(d.refused),
            str(d.shrunk_waves),
            f"{d.mean_samples:.2f}",
            f"{d.accuracy:.3f}",
            f"{d.final_price:.3g}",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
