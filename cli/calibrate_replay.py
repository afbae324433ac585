"""`t2serve calibrate --from-replay FILE --model ID`: the curves live calibration would write,
from samples a user already has (a replay file), without sampling again.

Rows are rebuilt as `record` writes them (id, question, gold, samples with text, answer and
correct); cli.calibrate passes them to the same writers (cli.calibrate_files.write_outputs):
replay.jsonl, passk.csv, measured.json and the model's curves.json entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.aggregate.extract import get_extractor
from controller.replay.data import DEFAULT_EXTRACTOR, ReplayDataError, load_replay
from controller.scaling.served import calibration_width


class ReplayRowsError(ValueError):
    """A replay file that cannot calibrate (exit 2); names the file and line."""


def abstain(_text: str) -> str | None:
    """The writers re-read each row's answer as recorded here; a null one stays null."""
    return None


def rows_from_replay(
    path: Path, extractor: str | None, model: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The replay file's questions (read by controller.replay.data, as `replay` reads them) as
    `model`'s calibration rows, and the ids left out. The curves need the same K samples per
    question: K = `calibration_width`, the others cut to their first K (the report's
    `samples_per_question`); questions with fewer, or none, are left out."""
    try:
        questions, _ = load_replay(path, get_extractor(extractor or DEFAULT_EXTRACTOR),
                                   named=extractor is not None, keep_empty=True)  # fmt: skip
    except ReplayDataError as exc:
        raise ReplayRowsError(f"--from-replay: {exc}") from None
    # the width of the questions that have samples: failed calls (none) are left out anyway
    width = calibration_width([len(q.samples) for q in questions if q.samples])
    if width == 0:
        raise ReplayRowsError(f"--from-replay: {path}: no question has samples")
    rows: list[dict[str, Any]] = []
    left_out: list[str] = []
    for q in questions:
        if q.gold is None:
            raise ReplayRowsError(
                f"{path}:{q.line}: gold: missing (calibration needs each question's gold answer; "
                "a file scored by `correct` flags can be replayed, not calibrated)"
            )
        if len(q.samples) < width:
            left_out.append(q.id)
            continue
        # right as `replay` scores it: the answer and the gold were read alike above
        samples = [{"text": s.text or "", "answer": s.answer,
                    "correct": s.answer is not None and s.answer == q.gold}
                   for s in q.samples[:width]]  # fmt: skip
        rows.append({"id": q.id, "question": q.question or "", "gold": q.gold,
                     "samples": samples, "model": model})  # fmt: skip
    return rows, left_out
