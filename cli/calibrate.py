"""`t2serve calibrate`: sample a gold-labelled question set through a served model, as configured,
and fit the serving curves the controller starts from (controller/scaling/served.py).

Writes into --out: `replay.jsonl` (the shared replay schema), `passk.csv` (model,params,tokens,
problem,samples,correct, for `t2serve fit`), `measured.json` (single-sample and majority-of-16
accuracy) and `curves.json` (the model's Beta and `serving` entry, merged into a file already
there). Every final file is written whole (temp file + rename).

Resuming: each finished question is appended to `.calibrate-<model>.journal.jsonl` in --out and
fsynced; a rerun with the same settings skips the questions already there (a torn last line from
a crash is dropped). An engine that fails mid-way leaves the journal as it was and the command
says which question it stopped at (exit 1). Bad input exits 2 naming the line. The question
file, the journal and the writers are cli.calibrate_files; this module samples and runs the
command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.calibrate_files import (
    JOURNAL_FORMAT,
    CalibrateError,
    Question,
    load_questions,
    measured_summary,
    read_journal,
    write_line,
    write_outputs,
)
from cli.errors import fail
from cli.left_out import left_out_line
from cli.mode_options import refuse_unread
from controller.aggregate.extract import Extractor, get_extractor
from controller.aggregate.normalize import normalize_answer

if TYPE_CHECKING:
    from server.config import AppConfig
    from server.engine.base import SampleEngine


class EngineStopped(RuntimeError):
    """The engine failed mid-way; what was recorded stays in the journal (exit 1)."""


# ---- sampling ----------------------------------------------------------------------------------


@dataclass
class Settings:
    model_id: str
    samples: int
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 2026
    concurrency: int = 4
    extractor: str = "last_number"


@dataclass
class Outcome:
    recorded: int
    total: int
    resumed: int
    skipped: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _question_seed(seed: int, qid: str) -> int:
    """A seed per question from its id: the same on resume, whatever order questions run in."""
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


async def record(
    engine: SampleEngine,
    questions: Sequence[Question],
    journal: Path,
    settings: Settings,
    header: dict[str, Any],
    on_done: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """Sample every question not yet in the journal, appending each as it finishes.

    Raises EngineStopped at the first engine failure, after cancelling the questions in flight;
    the journal keeps every question finished before it.
    """
    extract: Extractor = get_extractor(settings.extractor)
    done = read_journal(journal, header)
    todo = [q for q in questions if q.id not in done]
    params = engine.params(
        max_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p
    )
    seeded = engine.capabilities.request_seed
    fresh = not journal.exists() or journal.stat().st_size == 0
    with journal.open("a", encoding="utf-8") as fh:
        if fresh:
            write_line(fh, {"format": JOURNAL_FORMAT, **header})
        sem = asyncio.Semaphore(settings.concurrency)

        async def one(q: Question) -> None:
            prompt = engine.apply_chat_template([{"role": r, "content": c} for r, c in q.messages])
            p = replace(params, seed=_question_seed(settings.seed, q.id)) if seeded else params
            async with sem:
                try:
                    got = [
                        s
                        async for s in engine.sample(
                            prompt, settings.samples, p, f"calibrate-{q.id}"
                        )
                    ]
                except Exception as exc:
                    raise EngineStopped(f"question {q.id!r} (line {q.line}): {exc}") from exc
            if len(got) != settings.samples:
                raise EngineStopped(
                    f"question {q.id!r} (line {q.line}): the engine returned {len(got)} of "
                    f"{settings.samples} samples"
                )
            got.sort(key=lambda s: s.index)
            gold = normalize_answer(q.gold)
            samples = []
            for s in got:
                answer = extract(s.text)
                samples.append(
                    {
                        "text": s.text,
                        "answer": answer,
                        "correct": answer is not None and normalize_answer(answer) == gold,
                        "tokens": s.completion_tokens,
                    }
                )
            row = {
                "id": q.id,
                "question": q.text,
                "gold": q.gold,
                "samples": samples,
                "model": settings.model_id,
            }
            write_line(fh, row)
            done[q.id] = row
            on_done()

        tasks = [asyncio.create_task(one(q)) for q in todo]
        try:
            for finished in asyncio.as_completed(tasks):
                await finished
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    return done


def model_facts(config: AppConfig, model_id: str) -> tuple[float, float | None]:
    """(N, D): N from the config or the weights; D from the model's training.json, if shipped."""
    from server.engine.weights import model_sizes

    entry = config.model(model_id)
    if entry is None:
        raise CalibrateError(
            f"--model: {model_id!r} is not in the config (have: {', '.join(config.model_ids)})"
        )
    params = model_sizes([entry])[model_id]
    if params is None:
        idx = config.model_ids.index(model_id)
        raise CalibrateError(f"models.{idx}.params: N is unknown for {model_id!r}; set it")
    tokens = None
    training = Path(entry.path) / "training.json"
    if training.is_file():
        raw = json.loads(training.read_text()).get("train_tokens")
        tokens = float(raw) if isinstance(raw, int | float) and raw > 0 else None
    return float(params), tokens


async def calibrate(
    engine: SampleEngine,
    questions: Sequence[Question],
    out: Path,
    settings: Settings,
    *,
    params: float,
    tokens: float | None,
    source: Path,
    curves_path: Path | None = None,
    on_done: Callable[[], None] = lambda: None,
) -> Outcome:
    """Record what is missing, then write the outputs (the engine is the caller's)."""
    out.mkdir(parents=True, exist_ok=True)
    journal = out / f".calibrate-{settings.model_id}.journal.jsonl"
    header = {
        "model": settings.model_id,
        "data_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "samples": settings.samples,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
        "extractor": settings.extractor,
    }
    before = len(read_journal(journal, header))
    done = await record(engine, questions, journal, settings, header, on_done)
    rows = [done[q.id] for q in questions]
    files = write_outputs(
        out,
        rows,
        model_id=settings.model_id,
        params=params,
        tokens=tokens,
        source=str(source),
        extractor=get_extractor(settings.extractor),
        curves_path=curves_path,
    )
    journal.unlink()
    return Outcome(
        recorded=len(rows),
        total=len(questions),
        resumed=before,
        files=files,
        summary=measured_summary(rows),
    )


# ---- the command -------------------------------------------------------------------------------


async def _run(
    config: AppConfig,
    questions: list[Question],
    out: Path,
    settings: Settings,
    data: Path,
    quiet: bool,
    curves_path: Path | None,
) -> Outcome:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from server.app import engine_services

    params, tokens = model_facts(config, settings.model_id)
    service = engine_services(config, None)[settings.model_id]
    console = Console(stderr=True)
    if not quiet:
        console.print(f"starting the engine for {settings.model_id} ...")
    await service.start()
    engine = service.engine
    if engine is None:
        raise EngineStopped(service.failure() or "the engine did not start")
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet or not console.is_terminal,
        ) as bar:
            task = bar.add_task(f"calibrating {settings.model_id}", total=len(questions))
            return await calibrate(
                engine,
                questions,
                out,
                settings,
                params=params,
                tokens=tokens,
                source=data,
                curves_path=curves_path,
                on_done=lambda: bar.advance(task),
            )
    finally:
        await service.shutdown()


FROM_REPLAY_READS = frozenset({"model", "out", "config", "extractor", "curves", "as_json",
                               "from_replay", "params"})  # fmt: skip
"""What `--from-replay` reads: the sampling options have nothing to act on."""


def calibrate_command(
    model: Annotated[str, typer.Option("--model", help="a model id from the config")],
    out: Annotated[Path, typer.Option("--out", help="directory for the outputs")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="the server's config YAML")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="questions .jsonl: id, question, gold")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=1024, help="samples per question")] = 64,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="per sample (default: defaults.max_tokens)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0, help="default: the engine's configured default")
    ] = None,
    top_p: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    seed: Annotated[int, typer.Option(help="per-question seeds derive from it", min=0)] = 2026,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="questions in flight")] = 4,
    extractor: Annotated[
        str | None, typer.Option(help="answer extractor (default: defaults.extractor)")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="skip malformed or gold-less lines, listing them")
    ] = False,
    curves: Annotated[
        Path | None,
        typer.Option(help="merge the fitted curves into this file (default: OUT/curves.json)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print only a JSON summary")] = False,
    from_replay: Annotated[
        Path | None,
        typer.Option("--from-replay", help="fit from recorded samples (a replay file), no engine"),
    ] = None,
    params: Annotated[
        float | None, typer.Option("--params", help="--from-replay without --config: N", min=0)
    ] = None,
) -> None:
    """Sample a gold-labelled question set through a configured model; fit its serving curves."""
    given = dict(locals())
    if not model.strip():
        fail("--model: give a model id")
    if from_replay is not None:
        refuse_unread(calibrate_command, "--from-replay", given, FROM_REPLAY_READS)
        _from_replay(from_replay, out, model, config, params, extractor, curves, as_json)
        return
    if config is None or data is None:
        fail("--config and --data are required (or --from-replay)")
    refuse_unread(calibrate_command, "--data", given, set(given) - {"params"})
    # stdout carries the result (--json); the engine's logs go to stderr, quieter with --json
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if as_json:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    cfg, questions, skipped, name = _load(config, data, extractor, skip_bad)
    settings = Settings(
        model_id=model,
        samples=samples,
        max_tokens=max_tokens or cfg.defaults.max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        concurrency=concurrency,
        extractor=name,
    )
    try:
        outcome = asyncio.run(_run(cfg, questions, out, settings, data, as_json, curves))
    except CalibrateError as exc:
        fail(str(exc))
    except EngineStopped as exc:
        journal = out / f".calibrate-{model}.journal.jsonl"
        kept = max(0, sum(1 for _ in journal.open()) - 1) if journal.exists() else 0
        fail(
            f"the engine failed at {exc}; {kept} of {len(questions)} questions are recorded in "
            f"{journal}; rerun the same command to resume",
            code=1,
        )
    outcome.skipped = skipped
    _report(model, samples, outcome, as_json)


def _load(
    config: Path, data: Path, extractor: str | None, skip_bad: bool
) -> tuple[AppConfig, list[Question], list[str], str]:
    """The config, the questions (and the lines skipped), and the extractor's name; exits 2
    with one line on any error."""
    from server.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    try:
        questions, skipped = load_questions(data, skip_bad)
        name = extractor or cfg.defaults.extractor
        get_extractor(name)
    except (CalibrateError, ValueError) as exc:
        fail(str(exc))
    return cfg, questions, skipped, name


def _report(model: str, samples: int, outcome: Outcome, as_json: bool) -> None:
    report = {
        "model": model,
        "questions": outcome.total,
        "resumed": outcome.resumed,
        "skipped_lines": outcome.skipped,
        "files": outcome.files,
        **outcome.summary,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in outcome.skipped:
        typer.echo(f"skipped {line}", err=True)
    typer.echo(
        f"calibrated {model} on {outcome.total} questions x {samples} samples "
        f"({outcome.resumed} resumed)"
    )
    for key, value in outcome.summary.items():
        if key.endswith("accuracy"):
            typer.echo(f"  {key}: {value}")
    for name_, path in outcome.files.items():
        typer.echo(f"  wrote {name_}: {path}")
    sys.stdout.flush()


def _from_replay(
    path: Path,
    out: Path,
    model: str,
    config: Path | None,
    params: float | None,
    extractor: str | None,
    curves: Path | None,
    as_json: bool,
) -> None:
    from cli.calibrate_replay import abstain, rows_from_replay

    tokens = None
    try:
        if params is None and config is not None:
            from server.config import ConfigError, load_config

            try:
                params, tokens = model_facts(load_config(config), model)
            except ConfigError as exc:
                raise CalibrateError(str(exc)) from None
        if not params:
            raise CalibrateError("--params: N is needed (or --config naming the model)")
        if extractor is not None:
            get_extractor(extractor)
        rows, left_out = rows_from_replay(path, extractor, model)
        out.mkdir(parents=True, exist_ok=True)
        files = write_outputs(out, rows, model_id=model, params=params, tokens=tokens,
                              source=str(path), extractor=abstain, curves_path=curves)  # fmt: skip
    except (CalibrateError, ValueError) as exc:
        fail(str(exc))
    summary = measured_summary(rows)
    report = {"model": model, "files": files, "left_out": left_out, **summary}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(
        f"calibrated {model} from {path} ({summary['questions']} questions x "
        f"{summary['samples_per_question']} samples, no sampling)"
    )
    if left_out:
        typer.echo("  " + left_out_line("with fewer samples", left_out))
    for name_, file in files.items():
        typer.echo(f"  wrote {name_}: {file}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
