"""Mini-T²: train a grid of our own models (sizes × training tokens) and measure every cell.

Each cell is one model trained on the chain task (models/chain.py) for D tokens; for each we
record the validation loss (held-out sequences of the training distribution) and pass@k counts
through vLLM on the 320 held-back questions (64 samples each at T = 1). Output, under --out:

- `grid.csv`: `model,params,tokens,problem,samples,correct,loss` (the shared pass@k schema plus
  the loss column), what `t2serve fit` reads;
- `answers.jsonl`: each question of each cell with its answers' counts, for maj@k from the
  same samples (`t2serve fit --data answers.jsonl --metric maj`);
- `cells/<model>.json`: per cell, the training record, timings and the same counts;
- `grid.json`: the grid's arguments (a rerun with different ones into the same folder is
  refused) and the wall time spent;
- `checkpoints/` (not in git): weights and resumable training state.

Reproducible and resumable: seeded throughout; a rerun skips cells already measured and resumes
training from the last checkpoint. Training of the next size runs in a child process while the
current size is sampled, so both cores work.

Run: `python -m models.grid --out models/mini-t2` (full grid), `--smoke` (2 × 2, few samples).
Bad arguments exit 2 with a one-line reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from models import chain
from models.grid_train import Size, TrainSettings, checkpoint_dir, tokens_per_batch

FULL_SIZES = "32x2,64x2,96x2,128x2"
FULL_TOKENS = "1.5e5,3e5,6e5,1.2e6,2.4e6,4.8e6"
SMOKE = {"sizes": "32x1,32x2", "tokens": "2e4,4e4", "samples": 8, "questions": 16, "batch": 16}
CSV_COLUMNS = ("model", "params", "tokens", "problem", "samples", "correct", "loss")


class GridError(ValueError):
    """Arguments the grid cannot run with; the message is the one-line reason."""


def parse_sizes(text: str) -> list[Size]:
    sizes: list[Size] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            hidden, layers = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise GridError(f"--sizes: '{part}' is not HIDDENxLAYERS (e.g. 64x2)") from None
        if hidden < 32 or hidden % 32 or layers < 1:
            raise GridError(
                f"--sizes: '{part}': hidden must be a multiple of 32 (head dim 32), layers >= 1"
            )
        sizes.append(Size(hidden, layers))
    if not sizes:
        raise GridError("--sizes: the size list is empty")
    if len(set(sizes)) != len(sizes):
        raise GridError("--sizes: a size is listed twice")
    return sizes


def parse_tokens(text: str, batch: int) -> list[int]:
    values: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(int(float(part.replace("_", ""))))
        except ValueError:
            raise GridError(f"--tokens: '{part}' is not a number") from None
    if not values:
        raise GridError("--tokens: the token list is empty")
    smallest = tokens_per_batch(batch)
    low = min(values)
    if low < smallest:
        raise GridError(
            f"--tokens: {low} is below one batch ({batch} sequences = {smallest} tokens)"
        )
    if len(set(values)) != len(values):
        raise GridError("--tokens: a token count is listed twice")
    return sorted(values)


def spec_of(args: argparse.Namespace, sizes: list[Size], tokens: list[int]) -> dict[str, Any]:
    """What makes a grid this grid: a folder holding another spec is refused."""
    return {
        "task": "chain",
        "sizes": [s.label for s in sizes],
        "tokens": tokens,
        "samples": args.samples,
        "questions": args.questions,
        "seed": args.seed,
        "batch": args.batch,
        "lr": args.lr,
    }


def check_out(out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The folder's grid.json (created if new); GridError if it describes a different grid."""
    path = out / "grid.json"
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise GridError(f"--out: {path} is not a grid.json (unreadable JSON)") from None
        if doc.get("spec") != spec:
            old = doc.get("spec") or {}
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            raise GridError(
                f"--out: {out} holds a different grid ({', '.join(diff)} differ); "
                "use another folder"
            )
        return dict(doc)
    if out.exists() and any(p.name not in {"README.md"} for p in out.iterdir()):
        raise GridError(f"--out: {out} is not empty and holds no grid.json")
    out.mkdir(parents=True, exist_ok=True)
    doc = {"spec": spec, "wall_seconds": 0.0, "runs": []}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def cell_name(size: Size, tokens: int) -> str:
    return checkpoint_dir(Path("."), size, tokens).name


def write_csv(out: Path, cells: list[dict[str, Any]]) -> Path:
    path = out / "grid.csv"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for cell in sorted(cells, key=lambda c: (c["params"], c["train_tokens"])):
            for q in cell["questions"]:
                w.writerow(
                    [cell["model"], cell["params"], cell["train_tokens"], q["problem"],
                     q["samples"], q["correct"], f"{cell['validation_loss']:.6f}"]
                )  # fmt: skip
    tmp.replace(path)
    return path


def write_answers(out: Path, cells: list[dict[str, Any]]) -> Path:
    """One JSON line per question of each cell: the answer counts maj@k is computed from."""
    path = out / "answers.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for cell in sorted(cells, key=lambda c: (c["params"], c["train_tokens"])):
            for q in cell["questions"]:
                row = {
                    "model": cell["model"],
                    "params": cell["params"],
                    "tokens": cell["train_tokens"],
                    "loss": round(cell["validation_loss"], 6),
                    "problem": q["problem"],
                    "gold": q["gold"],
                    "answers": q["answers"],
                }
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def _train_job(
    size: Size, tokens: list[int], root: str, settings: TrainSettings
) -> list[dict[str, Any]]:
    from models.grid_train import train_size

    return train_size(size, tokens, Path(root), settings)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = parse_sizes(args.sizes)
    tokens = parse_tokens(args.tokens, args.batch)
    if not 1 <= args.questions <= chain.EVAL_QUESTIONS:
        raise GridError(f"--questions must be in 1..{chain.EVAL_QUESTIONS}")
    if args.samples < 1:
        raise GridError("--samples must be at least 1")
    out = Path(args.out)
    spec = spec_of(args, sizes, tokens)
    doc = check_out(out, spec)
    ckpt_root = Path(args.checkpoints) if args.checkpoints else out / "checkpoints"
    (out / "cells").mkdir(exist_ok=True)
    started = time.monotonic()
    settings = TrainSettings(seed=args.seed, batch=args.batch, lr=args.lr)
    questions = chain.eval_questions()[: args.questions]

    def done(size: Size, d: int) -> bool:
        return (out / "cells" / f"{cell_name(size, d)}.json").is_file()

    todo = [s for s in sizes if not all(done(s, d) for d in tokens)]
    quiet = args.json or not sys.stderr.isatty()
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(console=Console(stderr=True), disable=quiet, transient=False)
    total = len(sizes) * len(tokens)
    bar = progress.add_task("grid", total=total, completed=total - len(todo) * len(tokens))
    measured = [0]

    def advance() -> None:
        measured[0] += 1
        progress.advance(bar)

    ctx = multiprocessing.get_context("spawn")
    with progress, ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        jobs: dict[Size, Future[list[dict[str, Any]]]] = {
            s: pool.submit(_train_job, s, tokens, str(ckpt_root), settings) for s in todo
        }
        for size in todo:
            progress.update(bar, description=f"training {size.label}")
            infos = jobs[size].result()
            progress.update(bar, description=f"sampling {size.label}")
            _sample_size(size, infos, out, ckpt_root, questions, args, advance)
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    wanted = {cell_name(s, d) for s in sizes for d in tokens}
    cells = [c for c in cells if c["model"] in wanted]
    csv_path = write_csv(out, cells)
    write_answers(out, cells)
    elapsed = time.monotonic() - started
    doc["wall_seconds"] = round(float(doc.get("wall_seconds", 0.0)) + elapsed, 1)
    this_run = {"seconds": round(elapsed, 1), "cells_done": measured[0]}
    doc["runs"] = [*doc.get("runs", []), this_run]
    (out / "grid.json").write_text(json.dumps(doc, indent=2) + "\n")
    return {
        "csv": str(csv_path),
        "cells": len(cells),
        "wall_seconds_this_run": round(elapsed, 1),
        "wall_seconds_total": doc["wall_seconds"],
        "params": sorted({c["params"] for c in cells}),
        "pass_at_1": {
            c["model"]: round(
                sum(q["correct"] for q in c["questions"])
                / max(sum(q["samples"] for q in c["questions"]), 1),
                4,
            )
            for c in cells
        },
    }


def _sample_size(
    size: Size,
    infos: list[dict[str, Any]],
    out: Path,
    ckpt_root: Path,
    questions: list[chain.Question],
    args: argparse.Namespace,
    advance: Any,
) -> None:
    from models.grid_sample import INPROCESS_SAMPLES, CellSampler

    cells = out / "cells"
    pending = [
        i for i in infos if not (cells / f"{size.label}-d{i['target_tokens']}.json").exists()
    ]
    if not pending:
        return
    first = checkpoint_dir(ckpt_root, size, pending[0]["target_tokens"])
    small = len(questions) * args.samples <= INPROCESS_SAMPLES
    sampler = CellSampler(first, seed=args.seed, inprocess=small)
    try:
        for info in pending:
            name = cell_name(size, info["target_tokens"])
            t0 = time.monotonic()
            sampler.load(checkpoint_dir(ckpt_root, size, info["target_tokens"]))
            counts = sampler.sample(questions, args.samples)
            cell = {
                "model": name,
                "params": info["params"],
                "train_tokens": info["train_tokens"],
                "validation_loss": info["validation_loss"],
                "training": info,
                "sample_seconds": round(time.monotonic() - t0, 1),
                "sampling": {"temperature": 1.0, "top_p": 1.0, "engine": "vllm offline LLM"},
                "questions": [
                    {
                        "problem": q.problem,
                        "gold": q.gold,
                        "samples": q.samples,
                        "correct": q.correct,
                        "answers": q.answers,
                    }
                    for q in counts
                ],
            }
            path = out / "cells" / f"{name}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cell) + "\n")
            tmp.replace(path)  # a cell counts as done only once its file is whole
            advance()
    finally:
        sampler.shutdown()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", default="models/mini-t2")
    p.add_argument("--sizes", default=None, help=f"HIDDENxLAYERS list (default {FULL_SIZES})")
    p.add_argument("--tokens", default=None, help=f"training tokens (default {FULL_TOKENS})")
    p.add_argument("--samples", type=int, default=None, help="samples per question (64)")
    p.add_argument("--questions", type=int, default=None, help="held-back questions (320)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (64)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--checkpoints", default=None, help="default OUT/checkpoints")
    p.add_argument("--smoke", action="store_true", help="2 × 2 grid, few samples (CI)")
    p.add_argument("--json", action="store_true", help="no progress bar; print the summary JSON")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else {
        "sizes": FULL_SIZES, "tokens": FULL_TOKENS, "samples": 64, "questions": 320, "batch": 64
    }  # fmt: skip
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    try:
        summary = run(args)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
