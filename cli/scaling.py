"""`t2serve fit / predict / plan / plot`: fit T² curves to pass@k counts and use them.

Bad input exits 2 with one line on stderr naming the row, field or flag; never a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.errors import fail
from cli.output_path import plot_path_problem
from controller.scaling.curves import APPROACHES, Curves, CurvesError, load_curves
from controller.scaling.data import CountTable, DataError, load_answers, load_counts
from controller.scaling.fit import METRICS, FitError, fit_curves
from controller.scaling.optimize import Progress as ProgressFn
from controller.scaling.plan import PlanError, plan_deployment, plan_paper

_USER_ERRORS = (DataError, CurvesError, FitError, PlanError)


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[ProgressFn]:
    """A rich progress bar on stderr (hidden when quiet or not a terminal)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None, best="-")

        def update(done: int, total: int, best: float) -> None:
            shown = f"{best:.5g}" if math.isfinite(best) else "-"
            bar.update(task, completed=done, total=total, best=shown)

        yield update


def _summary(curves: Curves, out: Path) -> Table:
    table = Table(title=f"{curves.approach} fit -> {out}", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    if curves.parameters is not None:
        for name, value in curves.parameters.model_dump().items():
            table.add_row(name, f"{value:.6g}")
    if curves.models:
        table.add_column("a", justify="right")
        table.add_column("b", justify="right")
        table.add_column("p_max", justify="right")
        table.add_column("rmse Beta / power law", justify="right")
        table.columns[0].header, table.columns[1].header = "model", "pass@1"
        for name, m in curves.models.items():
            plaw = m.power_law.rmse_log if m.power_law else None
            rmse = "-" if m.rmse_log is None else f"{m.rmse_log:.3f}"
            rmse += " / " + ("-" if plaw is None else f"{plaw:.3f}")
            table.add_row(
                name, f"{m.fit().mean:.3g}", f"{m.a:.4g}", f"{m.b:.4g}", f"{m.p_max:.3g}", rmse
            )
        return table
    for key in ("rmse_log", "mean_abs_rel_error", "points", "starts", "starts_at_best", "seconds"):
        if key in curves.diagnostics:
            value = curves.diagnostics[key]
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def load_data(data: Path, where: str | None) -> CountTable:
    """A counts CSV, or an answers .jsonl (per-question answer counts, needed for maj@k)."""
    if data.suffix == ".jsonl":
        return load_answers(data, where=where)
    return load_counts(data, where=where)


def fit(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="CSV: model,params,tokens,problem,samples,correct[,loss]; or an answers .jsonl",
        ),
    ],
    approach: Annotated[str, typer.Option("--approach", help="loss, accuracy or beta")],
    out: Annotated[Path, typer.Option("--out", help="where to write curves.json")],
    where: Annotated[
        str | None,
        typer.Option("--where", help="keep rows matching e.g. 'params<=3e9 and tokens>=2e9'"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the multi-start fits", min=0)] = 0,
    starts: Annotated[
        int | None,
        typer.Option("--starts", min=1, help="L-BFGS-B starts (default 256 loss, 64 accuracy)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the curves JSON, no table/progress")
    ] = False,
    metric: Annotated[
        str,
        typer.Option(
            "--metric", help="pass (pass@k, perfect verifier) or maj (majority vote; .jsonl data)"
        ),
    ] = "pass",
) -> None:
    """Fit T² curves to pass@k (or maj@k) counts and write curves.json.

    The accuracy approach fits L(N, D) to the data's `loss` column when it has one, and
    otherwise to the negative log of pass@1 (the fit's diagnostics say which)."""
    if approach not in APPROACHES:
        fail(f"--approach: unknown approach '{approach}' (use {', '.join(APPROACHES)})")
    if metric not in METRICS:
        fail(f"--metric: unknown metric '{metric}' (use {', '.join(METRICS)})")
    try:
        table = load_data(data, where)
        with _progress(f"fitting {approach}", as_json) as progress:
            curves = fit_curves(
                table, approach, seed=seed, n_starts=starts, progress=progress, metric=metric
            )
        curves.save(out)
    except _USER_ERRORS as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror}")
    if as_json:
        typer.echo(json.dumps(curves.model_dump(mode="json")))
    else:
        Console().print(_summary(curves, out))


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"--k: expected comma-separated integers like 1,10,100, got '{text}'")
    if not ks or any(k < 1 for k in ks):
        fail(f"--k: every k must be an integer >= 1, got '{text}'")
    return ks


def predict(
    curves_path: Annotated[Path, typer.Option("--curves", help="curves.json from t2serve fit")],
    k: Annotated[str, typer.Option("--k", help="comma-separated k values, e.g. 1,10,100")],
    params: Annotated[float | None, typer.Option("--params", help="model parameters N")] = None,
    tokens: Annotated[float | None, typer.Option("--tokens", help="training tokens D")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model name (beta fits)")] = None,
) -> None:
    """Print predicted pass@k as JSON: {"k": [...], "pass_at_k": [...]}."""
    ks = _parse_ks(k)
    try:
        curves = load_curves(curves_path)
        values = curves.pass_at_k(ks, params=params, tokens=tokens, model=model)
    except _USER_ERRORS as exc:
        fail(str(exc))
    typer.echo(json.dumps({"k": ks, "pass_at_k": [float(v) for v in values]}))


def plan(
    curves_path: Annotated[
        Path, typer.Option("--curves", help="curves.json (loss or accuracy fit)")
    ],
    train_flops: Annotated[
        float | None, typer.Option("--train-flops", help="C_train (6ND)")
    ] = None,
    inference_flops: Annotated[
        float | None, typer.Option("--inference-flops", help="C_inf per served token (2Nk)")
    ] = None,
    total_flops: Annotated[
        float | None, typer.Option("--total-flops", help="C_total = 6ND + 2NkTQ")
    ] = None,
    queries: Annotated[float | None, typer.Option("--queries", help="Q served queries")] = None,
    tokens_per_query: Annotated[
        float | None, typer.Option("--tokens-per-query", help="T tokens per query")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="pass or maj: check the curves were fitted for it"),
    ] = None,
    min_params: Annotated[
        float, typer.Option("--min-params", help="smallest N searched (our own grid: 1e4)")
    ] = 1e6,
    min_tokens: Annotated[
        float, typer.Option("--min-tokens", help="fewest training tokens searched")
    ] = 1e6,
) -> None:
    """Print the T² compute-optimal (N, D, k) and the Chinchilla baseline as JSON.

    Plan for the aggregator you serve with: pass@k curves assume a perfect verifier; a server
    that votes gets maj@k, so fit with `--metric maj` and plan on those curves."""
    paper = (train_flops, inference_flops)
    deploy = (total_flops, queries, tokens_per_query)
    use_paper = any(v is not None for v in paper)
    use_deploy = any(v is not None for v in deploy)
    if use_paper == use_deploy:
        fail(
            "give either --train-flops and --inference-flops, or --total-flops, --queries and "
            "--tokens-per-query"
        )
    try:
        curves = load_curves(curves_path)
        if use_paper:
            if train_flops is None or inference_flops is None:
                fail("--train-flops and --inference-flops go together")
            result = plan_paper(
                curves, train_flops, inference_flops, n_min=min_params, d_min=min_tokens
            )
        else:
            if total_flops is None or queries is None or tokens_per_query is None:
                fail("--total-flops, --queries and --tokens-per-query go together")
            result = plan_deployment(
                curves, total_flops, queries, tokens_per_query, n_min=min_params, d_min=min_tokens
            )
    except _USER_ERRORS as exc:
        fail(str(exc))
    fitted_for = str(curves.diagnostics.get("metric", "pass"))
    if metric is not None and metric != fitted_for:
        fail(f"--metric {metric}: {curves_path} was fitted for '{fitted_for}'")
    typer.echo(json.dumps(result.to_dict() | {"metric": fitted_for}))


def plot(
    curves_path: Annotated[Path, typer.Option("--curves", help="curves.json from t2serve fit")],
    data: Annotated[Path, typer.Option("--data", help="the counts CSV to plot against")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")],
    where: Annotated[str | None, typer.Option("--where", help="plot only matching rows")] = None,
) -> None:
    """Plot fitted pass@k curves against the measured points, one panel per model size."""
    from controller.scaling.plot import render  # matplotlib is slow to import: only here

    problem = plot_path_problem(out)
    if problem:
        fail(f"--out: {problem}")
    try:
        curves = load_curves(curves_path)
        table = load_data(data, where)
        render(curves, table, out)
    except _USER_ERRORS as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror}")
    typer.echo(str(out), err=True)


def register(app: typer.Typer) -> None:
    app.command("fit")(fit)
    app.command("predict")(predict)
    app.command("plan")(plan)
    app.command("plot")(plot)
