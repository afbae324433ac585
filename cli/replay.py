"""`t2serve replay`: run sampling policies over recorded samples and compare them.

The command only parses options, reads the file and renders; the replay itself is
`controller.replay`. `replay_command` is a short dispatcher over its steps (`run_loo_mode`,
`parse_options`, `load_questions`, `replay_and_render`); its options are module-level
`Annotated` aliases. A new mode adds an alias, a parameter and one early dispatch line into
its own module, leaving the rest alone.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail
from cli.left_out import NO_SAMPLES, left_out_line
from cli.mode_options import refuse_unread
from cli.output_path import plot_path_problem
from controller.aggregate import get_extractor
from controller.aggregate.extract import Extractor
from controller.policy import make_policy
from controller.replay import (
    ALL_POLICIES,
    DEFAULT_EXTRACTOR,
    SWEEPS,
    EmptySamples,
    ReplayDataError,
    ReplayQuestion,
    ReplayResult,
    family,
    load_replay,
    replay,
)


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
        ax.annotate(
            r.policy,
            (r.mean_samples, r.accuracy),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
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


DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="replay file (JSON Lines); with --loo, a folder of them"),
]
PolicyOption = Annotated[
    list[str],
    typer.Option(
        "--policy",
        help="NAME[:params] (fixed:5, adaptive_consistency:0.95, esc:5, margin:4, t2:0.0005, "
        "online:0.005) or all; repeatable",
    ),
]
ExtractorOption = Annotated[
    str,
    typer.Option(
        help="extractor for samples recorded without an `answer` field (a null one abstains); "
        "a named one also reads recorded answers and gold (e.g. date); a,b = chain"
    ),
]
AvgSamplesOption = Annotated[
    float | None,
    typer.Option("--avg-samples", help="average-budget mode: pace to B samples/question"),
]
PermsOption = Annotated[
    int,
    typer.Option(
        help="seeded random orders: each one stream of traffic the policy learns from as it goes",
        min=1,
    ),
]
SeedOption = Annotated[int, typer.Option(help="random seed", min=0)]
MaxSamplesOption = Annotated[
    int | None, typer.Option("--max-samples", help="cap per question (default: all)", min=1)
]
SkipEmptyOption = Annotated[
    bool,
    typer.Option(
        "--skip-empty/--no-skip-empty",
        help="leave out (and name on stderr) questions with no samples, a failed call "
        "in the log, as --route does; --no-skip-empty makes them an error",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON, no progress")]
PlotOption = Annotated[
    Path | None, typer.Option("--plot", help="PNG: accuracy vs mean samples per policy")
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="simulated-clock daily budget paced by the server's pacing code: '4x' fits 4 "
        "samples/query, '12.5' is money per day (controller.budget.simulate)",
    ),
]
QueriesPerDayOption = Annotated[
    int, typer.Option("--queries-per-day", help="--budget: steady stream per day", min=1)
]
DaysOption = Annotated[int, typer.Option("--days", help="--budget: simulated days", min=1)]
LooOption = Annotated[
    bool,
    typer.Option(
        "--loo",
        help="leave-one-file-out over every *.jsonl in the --data folder: "
        "each file scored with settings chosen on the others",
    ),
]
TunePermsOption = Annotated[
    int, typer.Option("--tune-perms", help="--loo: orders per grid point when tuning", min=1)
]
ToleranceOption = Annotated[
    float,
    typer.Option(
        "--tolerance",
        help="--loo: a setting is feasible on a training file within this accuracy of maj@all",
        min=0.0,
    ),
]
BudgetsOption = Annotated[
    str, typer.Option("--budgets", help="--loo: average budgets to pace to, comma-separated")
]
RouteOption = Annotated[
    Path | None,
    typer.Option(
        "--route",
        help="routing set (manifest.json + one file per model), or a "
        "folder of them: routes vs models and cascades (docs/routing-replay.md)",
    ),
]
FoldsOption = Annotated[int, typer.Option("--folds", help="--route: cross-fitting folds")]
LamsOption = Annotated[
    str | None, typer.Option("--lams", help="--route: λ list, in 1/(reference cost)")
]
DescendOption = Annotated[
    bool, typer.Option("--descend/--no-descend", help="--route: may move to a cheaper model")
]


COMMON_READS = frozenset({"extractor", "seed", "as_json"})
ROUTE_READS = COMMON_READS | {"route", "folds", "lams", "perms", "descend", "plot"}
LOO_READS = COMMON_READS | {"data", "loo", "budgets", "skip_empty", "perms", "tune_perms",
                            "tolerance", "plot"}  # fmt: skip
BUDGET_READS = COMMON_READS | {"data", "budget", "policy", "skip_empty", "queries_per_day", "days"}
DATA_READS = COMMON_READS | {"data", "policy", "avg_samples", "perms", "max_samples",
                             "skip_empty", "plot"}  # fmt: skip
"""The options each mode reads; any other one given is refused (cli.mode_options)."""


def replay_command(
    data: DataOption = None,
    policy: PolicyOption = ["t2"],  # noqa: B006 - typer needs a literal default
    extractor: ExtractorOption = DEFAULT_EXTRACTOR,
    avg_samples: AvgSamplesOption = None,
    perms: PermsOption = 20,
    seed: SeedOption = 0,
    max_samples: MaxSamplesOption = None,
    skip_empty: SkipEmptyOption = True,
    as_json: JsonOption = False,
    plot: PlotOption = None,
    budget: BudgetOption = None,
    queries_per_day: QueriesPerDayOption = 2000,
    days: DaysOption = 2,
    loo: LooOption = False,
    tune_perms: TunePermsOption = 10,
    tolerance: ToleranceOption = 0.002,
    budgets: BudgetsOption = "4,8",
    route: RouteOption = None,
    folds: FoldsOption = 2,
    lams: LamsOption = None,
    descend: DescendOption = True,
) -> None:
    """Replay sampling policies over recorded samples: accuracy vs samples per question.

    One file compares the policies in a table (or JSON); `--loo` scores each file of a folder
    with settings chosen on the others; `--budget` paces one policy through simulated days;
    `--route` replays T² routes against single models and cascades over routing sets."""
    # Each mode dispatches early to its own step; a new mode adds an option, one such line
    # and the options it reads (below), so that the others are refused, not ignored.
    values = dict(locals())
    if plot is not None:  # before the replay, not after minutes of it
        problem = plot_path_problem(plot)
        if problem:
            fail(f"--plot: {problem}")
    if route is not None:
        from cli.replay_route import run_route_command

        refuse_unread(replay_command, "--route", values, ROUTE_READS)

        given = extractor if extractor != DEFAULT_EXTRACTOR else None
        run_route_command(
            route,
            folds=folds,
            lams=lams,
            perms=perms,
            seed=seed,
            extractor=given,
            descend=descend,
            as_json=as_json,
            plot=plot,
        )
        return
    if data is None:
        fail("--data is required (or --route)")
    if loo:
        refuse_unread(replay_command, "--loo", values, LOO_READS)
        run_loo_mode(
            data,
            extractor,
            budgets,
            skip_empty=skip_empty,
            perms=perms,
            tune_perms=tune_perms,
            seed=seed,
            tolerance=tolerance,
            as_json=as_json,
            plot=plot,
        )
        return
    if budget is not None:
        refuse_unread(replay_command, "--budget", values, BUDGET_READS)
        if len(policy) > 1:
            fail("--budget paces one policy; give one --policy")
    else:
        refuse_unread(replay_command, "--data", values, DATA_READS)
    options, extract = parse_options(
        data, policy, extractor, avg_samples, perms, seed, max_samples, skip_empty, as_json, plot
    )
    questions, skipped = load_questions(options, extract)
    if budget is not None:
        from cli.budget_replay import run_budget_replay

        run_budget_replay(
            questions,
            data,
            budget,
            options.policies[0],
            queries_per_day,
            days,
            seed,
            as_json,
            skipped,
        )
        return
    replay_and_render(options, questions, skipped)


def run_loo_mode(
    data: Path,
    extractor: str,
    budgets: str,
    *,
    skip_empty: bool,
    perms: int,
    tune_perms: int,
    seed: int,
    tolerance: float,
    as_json: bool,
    plot: Path | None,
) -> None:
    """`--loo`: validate its options, then leave-one-file-out over the folder (cli.replay_loo)."""
    if not data.is_dir():
        fail(f"{data}: --loo needs a folder of replay files")
    try:
        levels = [float(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        levels = [0.0]
    if not all(1 <= b < math.inf for b in levels):
        fail(f"--budgets must be finite numbers >= 1, got {budgets!r}")
    try:
        extract = get_extractor(extractor)
    except ValueError as exc:
        fail(str(exc))
    from cli.replay_loo import run_loo_command

    run_loo_command(
        data,
        extract,
        named=extractor != DEFAULT_EXTRACTOR,
        skip_empty=skip_empty,
        perms=perms,
        tune_perms=tune_perms,
        seed=seed,
        tolerance=tolerance,
        budgets=levels,
        as_json=as_json,
        plot=plot,
    )


def parse_options(
    data: Path,
    policy: list[str],
    extractor: str,
    avg_samples: float | None,
    perms: int,
    seed: int,
    max_samples: int | None,
    skip_empty: bool,
    as_json: bool,
    plot: Path | None,
) -> tuple[ReplayOptions, Extractor]:
    """Validate a single-file replay's options (exit 2 with the reason on a bad one)."""
    if avg_samples is not None and not 1 <= avg_samples < math.inf:
        fail(f"--avg-samples must be a finite number >= 1, got {avg_samples:g}")
    if data.is_dir():
        fail(f"{data}: a folder; --data takes one replay file (--loo takes a folder)")
    if not data.is_file():
        fail(f"{data}: no such file")
    try:
        policies = expand_policies(policy)
        extract = get_extractor(extractor)
        if avg_samples is not None:
            fixed = [p for p in policies if not make_policy(p).adaptive]
            if fixed and len(fixed) == len(policies):
                raise ValueError(f"--avg-samples needs an adaptive policy, not {fixed[0]}")
            policies = [p for p in policies if make_policy(p).adaptive]
    except ValueError as exc:
        fail(str(exc))
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
    return options, extract


def load_questions(
    options: ReplayOptions, extract: Extractor
) -> tuple[list[ReplayQuestion], list[int]]:
    """The file's questions (exit 2 naming the line on bad data), and the lines of those left
    out for having no samples (named on stderr here; JSON output lists them too)."""
    try:
        named = options.extractor != DEFAULT_EXTRACTOR  # then it reads recorded answers too
        questions, skipped = load_replay(options.data, extract, options.skip_empty, named)
    except EmptySamples as exc:
        fail(f"{exc} ({exc.hint})")
    except ReplayDataError as exc:
        fail(str(exc))
    report_skipped(options.data, skipped)
    return questions, skipped


def report_skipped(path: Path, lines: list[int]) -> None:
    """Name the questions left out for having no samples. Said on stderr even with --json
    (stdout stays one object): the scored set is smaller than the file."""
    if lines:
        typer.echo(left_out_line(NO_SAMPLES, lines, str(path)), err=True)


def replay_and_render(
    options: ReplayOptions, questions: list[ReplayQuestion], skipped: Sequence[int] = ()
) -> None:
    """Replay every policy (and the --plot sweeps) with progress on a terminal, then print the
    table or JSON and draw the plot."""
    policies, data, plot = options.policies, options.data, options.plot
    curves: dict[str, list[ReplayResult]] = {}
    total = len(policies) * options.perms
    if plot is not None:
        families = dict.fromkeys(map(family, policies))
        total += sum(len(SWEEPS.get(f, (f,))) for f in families) * options.perms
    if not options.as_json and sys.stderr.isatty():
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
    title = f"{data.name}: {len(questions)} questions × {options.perms} orders"
    if plot is not None:
        draw_plot(plot, title, curves, results)
    if options.as_json:
        objs = [r.to_json() for r in results]
        doc = objs[0] if len(objs) == 1 else {"results": objs}
        typer.echo(json.dumps({**doc, "skipped_lines": list(skipped)}))
        return
    if options.avg_samples is not None:
        title += f", mean ≤ {options.avg_samples:g} samples"
    _print_table(results, title)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
