"""`t2serve replay --loo`: leave-one-file-out over a folder of replay files, and its rendering.

The protocol is `controller.replay.loo`; this module loads the folder, shows progress, prints
the per-file tables (or JSON) and draws the frontier PNG.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer

from cli.left_out import NO_SAMPLES, left_out_line
from controller.aggregate.extract import Extractor
from controller.replay import EmptySamples, ReplayDataError, ReplayQuestion, load_replay
from controller.replay.loo import FAMILIES, MAJORITY, LooReport, leave_one_out, total_runs


def load_folder(
    folder: Path, extractor: Extractor, skip_empty: bool, named: bool = False
) -> tuple[dict[str, list[ReplayQuestion]], dict[str, list[int]]]:
    """Every *.jsonl file in `folder` by stem (sorted), or ReplayDataError; `named`: the
    extractor also reads recorded answers (controller.replay.data.parse_question). Also the
    lines of the questions left out for having no samples, by stem; they are named on stderr,
    file by file."""
    paths = sorted(folder.glob("*.jsonl"))
    if len(paths) < 2:
        raise ReplayDataError(f"{folder}: --loo needs at least two *.jsonl files")
    files: dict[str, list[ReplayQuestion]] = {}
    skipped: dict[str, list[int]] = {}
    for path in paths:
        files[path.stem], skipped[path.stem] = load_replay(path, extractor, skip_empty, named)
        if skipped[path.stem]:
            typer.echo(left_out_line(NO_SAMPLES, skipped[path.stem], str(path)), err=True)
    return files, skipped


def run_loo_command(
    folder: Path,
    extractor: Extractor,
    *,
    named: bool = False,
    skip_empty: bool,
    perms: int,
    tune_perms: int,
    seed: int,
    tolerance: float,
    budgets: list[float],
    as_json: bool,
    plot: Path | None,
) -> None:
    try:
        files, skipped = load_folder(folder, extractor, skip_empty, named)
    except ReplayDataError as exc:
        hint = f" ({exc.hint})" if isinstance(exc, EmptySamples) else ""
        typer.echo(f"error: {exc}{hint}", err=True)
        raise typer.Exit(2) from None
    kwargs = dict(
        perms=perms, tune_perms=tune_perms, seed=seed, tolerance=tolerance, budgets=budgets
    )
    if not as_json and sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(
                f"leave-one-out over {len(files)} files",
                total=total_runs(len(files), budgets=budgets),
            )
            report = leave_one_out(files, progress=lambda n: progress.advance(task, n), **kwargs)  # type: ignore[arg-type]
    else:
        report = leave_one_out(files, **kwargs)  # type: ignore[arg-type]
    if plot is not None:
        draw_frontiers(plot, report)
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "skipped_lines": skipped}))
        return
    print_report(report)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def print_report(report: LooReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=170)
    for name, f in report.files.items():
        table = Table(
            title=f"{name} ({f.questions} q × {report.perms} orders; "
            f"maj@all {f.majority.accuracy:.4f} @ {f.majority.mean_samples:.2f})"
        )
        for col in (
            "family",
            "setting (chosen without this file)",
            "accuracy",
            "95% CI",
            "mean samples",
            "× AC",
            "Δ maj@all (paired 95% CI)",
            "Δ AC",
        ):
            table.add_column(
                col, justify="left" if col.startswith(("family", "setting")) else "right"
            )
        for fam, s in f.loo.items():
            r = s.result
            lo, hi = s.vs_majority.ci95
            table.add_row(
                fam,
                r.policy,
                f"{r.accuracy:.4f}",
                f"{r.accuracy_ci95[0]:.3f}-{r.accuracy_ci95[1]:.3f}",
                f"{r.mean_samples:.2f}",
                f"{s.samples_vs_ac:.2f}",
                f"{s.vs_majority.diff * 100:+.2f} ({lo * 100:+.2f}, {hi * 100:+.2f})",
                f"{s.vs_ac.diff * 100:+.2f}",
            )
        console.print(table)
        for budget, by in f.paced.items():
            cells = ", ".join(f"{k} {r.accuracy:.4f}@{r.mean_samples:.2f}" for k, r in by.items())
            console.print(f"  --avg-samples {budget:g}: {cells}")
            if "t2" in by and len(by) > 2:
                rival, p = f.paced_vs_best_baseline(budget)
                console.print(
                    f"    t2 − {rival}: {p.diff * 100:+.2f} points "
                    f"({p.ci95[0] * 100:+.2f}, {p.ci95[1] * 100:+.2f})"
                )
    pooled = report.to_json()["pooled"]
    console.print("pooled over all files (held-out settings):")
    for fam, p in pooled["loo"].items():  # type: ignore[index]
        console.print(
            f"  {fam:22s} Δ maj@all {p['vs_majority']['diff'] * 100:+.2f} points, "
            f"{p['samples_vs_ac']:.2f}× AC samples"
        )


def draw_frontiers(path: Path, report: LooReport) -> None:
    """One panel per file: each family's grid (accuracy vs mean samples, tune_perms orders)
    with the held-out-chosen settings, scored at full perms, as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.files)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), dpi=110, squeeze=False)
    colors = {fam.name: f"C{i}" for i, fam in enumerate(FAMILIES)}
    for ax, name in zip(axes.ravel(), names, strict=False):
        grid, f = report.grids[name], report.files[name]
        for fam in FAMILIES:
            runs = sorted(
                (grid[s] for s in fam.settings if s in grid), key=lambda r: r.mean_samples
            )
            ax.plot(
                [r.mean_samples for r in runs],
                [r.accuracy for r in runs],
                marker="o",
                markersize=3,
                color=colors[fam.name],
                label=fam.name,
                alpha=0.8,
            )
            if fam.name in f.loo:
                r = f.loo[fam.name].result
                ax.scatter(
                    [r.mean_samples],
                    [r.accuracy],
                    marker="*",
                    s=110,
                    zorder=5,
                    color=colors[fam.name],
                    edgecolor="black",
                    linewidth=0.5,
                )
        maj = grid[MAJORITY].accuracy
        ax.axhline(maj, color="grey", lw=0.8, ls="--", label="maj@all")
        ax.axhline(maj - 0.003, color="grey", lw=0.6, ls=":", label="maj@all − 0.3 pt")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name} ({f.questions} q)", fontsize=9)
        ax.set_xlabel("mean samples per question", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_ylim(max(0.0, maj - 0.03), maj + 0.012)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Frontiers ({report.tune_perms} orders per grid point); stars: the setting "
        f"chosen without the file, {report.perms} orders",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
