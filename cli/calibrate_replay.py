"""`t2serve calibrate --from-replay FILE --model ID`: the curves live calibration would write,
from samples a user already has (a replay file), without sampling again.

Rows are rebuilt as `record` writes them (id, question, gold, samples with text, answer and
correct); cli.calibrate passes them to the same writers (`write_outputs`): replay.jsonl,
passk.csv, measured.json and the model's curves.json entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.aggregate.extract import get_extractor
from controller.aggregate.normalize import normalize_answer
from controller.replay.data import DEFAULT_EXTRACTOR, ReplayDataError, load_replay


class ReplayRowsError(ValueError):
    """A replay file that cannot calibrate (exit 2); names the file and line."""


def abstain(_text: str) -> str | None:
    """The writers re-read each row's answer as recorded here; a null one stays null."""
    return None


def rows_from_replay(path: Path, extractor: str | None, model: str) -> list[dict[str, Any]]:
    """The replay file's questions (read by controller.replay.data, as `replay` reads them) as
    `model`'s calibration rows, cut to the fewest samples any question has: the curves need
    the same K for every question (the report's `samples_per_question`)."""
    try:
        questions, _ = load_replay(path, get_extractor(extractor or DEFAULT_EXTRACTOR),
                                   named=extractor is not None)  # fmt: skip
    except ReplayDataError as exc:
        raise ReplayRowsError(f"--from-replay: {exc}") from None
    rows: list[dict[str, Any]] = []
    for q in questions:
        if q.gold is None:
            raise ReplayRowsError(f"{path}:{q.line}: gold: missing")
        samples = [{"text": s.text or "", "answer": s.answer,
                    "correct": s.answer is not None and normalize_answer(s.answer) == q.gold}
                   for s in q.samples]  # fmt: skip
        rows.append({"id": q.id, "question": q.question or "", "gold": q.gold,
                     "samples": samples, "model": model})  # fmt: skip
    width = min(len(r["samples"]) for r in rows)
    for r in rows:
        r["samples"] = r["samples"][:width]
    return rows
