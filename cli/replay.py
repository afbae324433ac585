"""`t2serve replay`: run sampling policies over recorded samples and compare them.

The command only parses options, reads the file and renders; the replay itself is
`controller.replay`. New modes (e.g. a simulated-clock daily budget) add an option to
`ReplayOptions` and a branch in `run_replay`, leaving the rest alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from controller.aggregate import get_extractor
from controller.policy import make_policy
from controller.replay import (
    ALL_POLICIES,
    SWEEPS,
    ReplayDataError,
    ReplayQuestion,
    ReplayResult,
    family,
    load_replay,
    replay,
)

DEFAULT_EXTRACTOR = "answer_is,last_number"


@dataclass
class ReplayOptions:
    """Everything `t2serve replay` was asked to do (validated)."""

    data: Path
    policies: list[str]
    extractor: str = DEFAULT_EXTRACTOR
    avg_samples: float | None = None
    perms: int = 20
    seed: int = 0
    max_samples: int | None = None
    skip_empty: bool = False
    as_json: bool = False
    plot: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def expand_policies(specs: list[str]) -> list[str]:
    """`all` expands to ALL_POLICIES; each spec is validated (ValueError on a bad one)."""
    out: list[str] = []
    for spec in specs:
        for part in [spec] if spec.strip().lower() != "all" else list(ALL_POLICIES):
            make_policy(part)  # validate early, before any long work
            if part not in out:
                out.append(part)
    return out


def run_replay(
    options: ReplayOptions,
    questions: list[ReplayQuestion],
    tick: Callable[[int], None] | None = None,
) -> list[ReplayResult]:
    """Replay each requested policy; `tick(n)` reports finished permutations."""
    results = []
    for spec in options.policies:
        results.append(
            replay(
                questions,
                spec,
                perms=options.perms,
                seed=options.seed,
                avg_samples=options.avg_samples,
                max_samples=options.max_samples,
                progress=(lambda _done: tick(1)) if tick else None,
            )
        )
    return results


def sweep_curves(
    options: ReplayOptions, questions: list[ReplayQuestion], tick: Callable[[int], None] | None
) -> dict[str, list[ReplayResult]]:
    """One curve per policy family requested: the family's SWEEPS settings."""
    curves: dict[str, list[ReplayResult]] = {}
    for spec in options.policies:
        fam = family(spec)
        if fam in curves:
            continue
        curves[fam] = [
            replay(
                questions,
                setting,
                perms=options.perms,
                seed=options.seed,
                max_samples=options.max_samples,
                progress=(lambda _done: tick(1)) if tick else None,
            )
            for setting in SWEEPS.get(fam, (spec,))
        ]
    return curves


def draw_plot(
    path: Path,
    title: str,
    curves: dict[str, list[ReplayResult]],
    points: list[ReplayResult],
) -> None:
    """Accuracy against mean samples: one line per policy family, chosen runs as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for fam, runs in curves.items():
        ordered = sorted(runs, key=lambda r: r.mean_samples)
        ax.plot(
            [r.mean_samples for r in ordered],
            [r.accuracy for r in ordered],
            marker="o",
            markersize=3,
            label=fam,
        )
    for r in points:
        ax.scatter([r.mean_samples], [r.accuracy], marker="*", s=90, zorder=5)
        ax.annotate(r.policy, (r.mean_samples, r.accuracy), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean samples per question")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _print_table(results: list[ReplayResult], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("policy", "accuracy", "95% CI", "mean samples", "mean tokens", "stops"):
        left = col in ("policy", "stops")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "stops")
    for r in results:
        stops = ", ".join(f"{k} {v}" for k, v in sorted(r.stop_reasons.items()))
        tokens = "-" if r.mean_tokens is None else f"{r.mean_tokens:.0f}"
        table.add_row(
            r.policy,
            f"{r.accuracy:.4f}",
            f"{r.accuracy_ci95[0]:.3f}-{r.accuracy_ci95[1]:.3f}",
            f"{r.mean_samples:.2f}",
            tokens,
            stops,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def replay_command(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="replay file (JSON Lines); with --loo, a folder of them"),
    ] = None,
    policy: Annotated[
        list[str],
        typer.Option(
            "--policy",
            help="NAME[:params] (fixed:5, adaptive_consistency:0.95, esc:5, margin:4, t2:0.0005) "
            "or all; "
            "repeatable",
        ),
    ] = ["t2"],  # noqa: B006 - typer needs a literal default
    extractor: Annotated[
        str, typer.Option(help="extractor for samples without a recorded answer; a,b = chain")
    ] = DEFAULT_EXTRACTOR,
    avg_samples: Annotated[
        float | None,
        typer.Option("--avg-samples", help="average-budget mode: pace to B samples/question"),
    ] = None,
    perms: Annotated[int, typer.Option(help="seeded random orders per question")] = 20,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    max_samples: Annotated[
        int | None, typer.Option("--max-samples", help="cap per question (default: all)")
    ] = None,
    skip_empty: Annotated[
        bool, typer.Option("--skip-empty", help="skip questions with no samples (else error)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON, no progress")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="PNG: accuracy vs mean samples per policy")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="simulated-clock daily budget paced by the server's pacing code: '4x' fits 4 "
            "samples/query, '12.5' is money per day (controller.budget.simulate)",
        ),
    ] = None,
    queries_per_day: Annotated[
        int, typer.Option("--queries-per-day", help="--budget: steady stream per day", min=1)
    ] = 2000,
    days: Annotated[int, typer.Option("--days", help="--budget: simulated days", min=1)] = 2,
    loo: Annotated[
        bool,
        typer.Option("--loo", help="leave-one-file-out over every *.jsonl in the --data folder: "
                     "each file scored with settings chosen on the others"),
    ] = False,
    tune_perms: Annotated[
        int, typer.Option("--tune-perms", help="--loo: orders per grid point when tuning", min=1)
    ] = 10,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", help="--loo: a setting is feasible on a training file "
                     "within this accuracy of maj@all", min=0.0),
    ] = 0.002,
    budgets: Annotated[
        str, typer.Option("--budgets", help="--loo: average budgets to pace to, comma-separated")
    ] = "4,8",
    route: Annotated[
        Path | None,
        typer.Option("--route", help="routing set (manifest.json + one file per model), or a "
                     "folder of them: routes vs models and cascades (docs/routing-replay.md)"),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", help="--route: cross-fitting folds")] = 2,
    lams: Annotated[
        str | None, typer.Option("--lams", help="--route: λ list, in 1/(reference cost)")
    ] = None,
    descend: Annotated[
        bool, typer.Option("--descend/--no-descend", help="--route: may move to a cheaper model")
    ] = True,
) -> None:
    """Replay sampling policies over recorded samples: accuracy vs samples per question."""
    if perms < 1:
        raise _fail("--perms must be >= 1")
    if route is not None:
        from cli.replay_route import run_route_command

        given = extractor if extractor != DEFAULT_EXTRACTOR else None
        run_route_command(route, folds=folds, lams=lams, perms=perms, seed=seed, extractor=given,
                          descend=descend, as_json=as_json, plot=plot)
        return
    if data is None:
        raise _fail("--data is required (or --route)")
    if loo:
        if not data.is_dir():
            raise _fail(f"{data}: --loo needs a folder of replay files")
        try:
            levels = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            levels = [0.0]
        if any(b < 1 for b in levels):
            raise _fail(f"--budgets must be numbers >= 1, got {budgets!r}")
        try:
            extract_loo = get_extractor(extractor)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        from cli.replay_loo import run_loo_command

        run_loo_command(data, extract_loo, skip_empty=skip_empty, perms=perms,
                        tune_perms=tune_perms, seed=seed, tolerance=tolerance, budgets=levels,
                        as_json=as_json, plot=plot)
        return
    if avg_samples is not None and avg_samples < 1:
        raise _fail("--avg-samples must be >= 1")
    if max_samples is not None and max_samples < 1:
        raise _fail("--max-samples must be >= 1")
    if not data.is_file():
        raise _fail(f"{data}: no such file")
    try:
        policies = expand_policies(policy)
        extract = get_extractor(extractor)
        if avg_samples is not None:
            fixed = [p for p in policies if not make_policy(p).adaptive]
            if fixed and len(fixed) == len(policies):
                raise ValueError(f"--avg-samples needs an adaptive policy, not {fixed[0]}")
            policies = [p for p in policies if make_policy(p).adaptive]
    except ValueError as exc:
        raise _fail(str(exc)) from None
    options = ReplayOptions(
        data=data,
        policies=policies,
        extractor=extractor,
        avg_samples=avg_samples,
        perms=perms,
        seed=seed,
        max_samples=max_samples,
        skip_empty=skip_empty,
        as_json=as_json,
        plot=plot,
    )
    try:
        questions, skipped = load_replay(data, extract, skip_empty=skip_empty)
    except ReplayDataError as exc:
        raise _fail(str(exc)) from None
    if skipped and not as_json:
        typer.echo(f"skipped {len(skipped)} question(s) with no samples: lines {skipped}", err=True)
    if budget is not None:
        from cli.budget_replay import run_budget_replay

        run_budget_replay(
            questions, data, budget, policies[0], queries_per_day, days, seed, as_json
        )
        return

    curves: dict[str, list[ReplayResult]] = {}
    total = len(policies) * perms
    if plot is not None:
        total += sum(len(SWEEPS.get(f, (f,))) for f in dict.fromkeys(map(family, policies))) * perms
    show = not as_json and sys.stderr.isatty()
    if show:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(f"replaying {data.name}", total=total)

            def tick(n: int) -> None:
                progress.advance(task, n)

            results = run_replay(options, questions, tick)
            if plot is not None:
                curves = sweep_curves(options, questions, tick)
    else:
        results = run_replay(options, questions)
        if plot is not None:
            curves = sweep_curves(options, questions, None)
    if plot is not None:
        title = f"{data.name}: {len(questions)} questions × {perms} orders"
        draw_plot(plot, title, curves, results)

    if as_json:
        objs = [r.to_json() for r in results]
        typer.echo(json.dumps(objs[0] if len(objs) == 1 else {"results": objs}))
        return
    budget = f", mean ≤ {avg_samples:g} samples" if avg_samples is not None else ""
    _print_table(results, f"{data.name}: {len(questions)} questions × {perms} orders{budget}")
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
