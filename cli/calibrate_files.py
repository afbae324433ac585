"""What `t2serve calibrate` reads and writes, apart from sampling: the question file, the
journal that makes a run resumable, and the outputs (replay.jsonl, passk.csv, measured.json,
the model's curves.json entry), each written whole (temp file + rename). Live calibration
(cli.calibrate) and `--from-replay` (cli.calibrate_replay) share them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.aggregate.extract import Extractor
from controller.replay.data import ReplayQuestion, json_object_line, parse_question
from controller.scaling.curves import CurvesError, load_curves
from controller.scaling.served import data_info, fit_served, with_served

JOURNAL_FORMAT = "t2serve.calibrate-journal/1"
MAJORITY_K = 16


class CalibrateError(ValueError):
    """Bad input or settings (exit 2); the message names the line, field or flag."""


# ---- the question file -------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """One line of the question file: `id`, `question` (or chat `messages`) and `gold`."""

    id: str
    messages: tuple[tuple[str, str], ...]
    gold: str
    line: int

    @property
    def text(self) -> str:
        return self.messages[-1][1]


def _parse_line(raw: str, line: int, where: str) -> Question:
    here = f"{where}:{line}"
    obj = json_object_line(raw, here, CalibrateError)
    gold = obj.get("gold")
    if gold is None or isinstance(gold, bool) or not isinstance(gold, str | int | float):
        raise CalibrateError(f"{here}: no `gold` answer (a string or number is needed)")
    if str(gold).strip() == "":
        raise CalibrateError(f"{here}: empty `gold`")
    if isinstance(obj.get("messages"), list):
        msgs: list[tuple[str, str]] = []
        for m in obj["messages"]:
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise CalibrateError(f"{here}: each of `messages` needs a `role` and `content`")
            msgs.append((m["role"], m["content"]))
        if not msgs:
            raise CalibrateError(f"{here}: empty `messages`")
    elif isinstance(obj.get("question"), str) and obj["question"].strip():
        msgs = [("user", obj["question"])]
    else:
        raise CalibrateError(f"{here}: needs a `question` string or a `messages` list")
    qid = obj.get("id", f"line-{line}")
    if not isinstance(qid, str | int) or isinstance(qid, bool):
        raise CalibrateError(f"{here}: `id` must be a string or integer")
    return Question(str(qid), tuple(msgs), str(gold), line)


def load_questions(path: Path, skip_bad: bool = False) -> tuple[list[Question], list[str]]:
    """The questions, and (with skip_bad) one "file:line: reason" per line skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrateError(f"--data: {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrateError(f"--data: cannot read {path}: {exc}") from None
    questions: list[Question] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            q = _parse_line(raw, number, str(path))
            if q.id in seen:
                raise CalibrateError(
                    f"{path}:{number}: duplicate id {q.id!r} (first on line {seen[q.id]})"
                )
        except CalibrateError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        seen[q.id] = number
        questions.append(q)
    if not questions:
        raise CalibrateError(f"--data: {path} holds no usable questions")
    return questions, skipped


# ---- the journal -------------------------------------------------------------------------------


def write_line(fh: io.TextIOWrapper, obj: dict[str, Any]) -> None:
    fh.write(json.dumps(obj) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_journal(path: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recorded questions by id. A torn last line (crash mid-write) is cut off; a journal made
    with other settings is refused, naming the setting."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):  # the tail was torn by a crash: drop it
        with path.open("r+b") as fh:
            fh.truncate(keep)
        data = data[:keep]
    lines = data.decode("utf-8").splitlines()
    if not lines:
        return {}
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError:
        raise CalibrateError(
            f"{path}:1: not a calibrate journal; delete it to start over"
        ) from None
    if not isinstance(first, dict) or first.get("format") != JOURNAL_FORMAT:
        raise CalibrateError(f"{path}:1: not a calibrate journal; delete it to start over")
    for key, value in header.items():
        if first.get(key) != value:
            raise CalibrateError(
                f"{path}: recorded with {key}={first.get(key)!r}, this run has {value!r}; rerun "
                "with the same settings to resume, or delete the journal to start over"
            )
    done: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(lines[1:], start=2):
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            raise CalibrateError(f"{path}:{number}: corrupt journal line") from None
        done[str(row["id"])] = row
    return done


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---- outputs -----------------------------------------------------------------------------------


def measured_summary(rows: Sequence[dict[str, Any]], vote_k: int = MAJORITY_K) -> dict[str, Any]:
    """Single-sample accuracy and majority-of-k accuracy (over disjoint groups of k): the
    numbers a model card quotes (ties go to the answer seen first, as the server votes)."""
    from controller.aggregate.vote import count_votes, leader

    single: list[float] = []
    voted: list[float] = []
    for row in rows:
        answers = [s["answer"] for s in row["samples"]]
        single.append(sum(bool(s["correct"]) for s in row["samples"]) / len(answers))
        groups = [answers[i : i + vote_k] for i in range(0, len(answers) - vote_k + 1, vote_k)]
        if groups:
            voted.append(sum(leader(count_votes(g)) == row["gold"] for g in groups) / len(groups))
    n = len(rows)
    out: dict[str, Any] = {
        "questions": n,
        "samples_per_question": len(rows[0]["samples"]) if rows else 0,
        "single_sample_accuracy": round(sum(single) / n, 4),
    }
    if voted:
        out[f"majority_of_{vote_k}_accuracy"] = round(sum(voted) / len(voted), 4)
    out["pass_at_1_questions_never_right"] = round(sum(s == 0 for s in single) / n, 4)
    return out


def write_outputs(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    model_id: str,
    params: float,
    tokens: float | None,
    source: str,
    extractor: Extractor,
    curves_path: Path | None = None,
) -> dict[str, str]:
    """replay.jsonl, passk.csv, measured.json and curves.json (or `curves_path`), each whole."""
    replay = out / "replay.jsonl"
    atomic_write(replay, "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "params", "tokens", "problem", "samples", "correct"])
    for r in rows:
        right = sum(bool(s["correct"]) for s in r["samples"])
        w.writerow(
            [
                model_id,
                f"{params:g}",
                "" if tokens is None else f"{tokens:g}",
                r["id"],
                len(r["samples"]),
                right,
            ]
        )
    atomic_write(out / "passk.csv", buf.getvalue())
    atomic_write(out / "measured.json", json.dumps(measured_summary(rows), indent=2) + "\n")
    questions: list[ReplayQuestion] = []
    for i, r in enumerate(rows, start=1):
        q = parse_question(json.dumps(r), i, extractor, str(replay))
        assert q is not None
        questions.append(q)
    fit = fit_served(
        questions,
        model_id=model_id,
        params=params,
        tokens=tokens,
        calibration=f"all {len(rows)} questions of {source}",
        data=data_info(replay, len(rows)),
        where=str(replay),
    )
    curves_path = curves_path or out / "curves.json"
    existing = None
    if curves_path.exists():
        try:
            existing = load_curves(curves_path)
        except CurvesError as exc:
            raise CalibrateError(
                f"--out: an existing {curves_path} cannot be merged: {exc}"
            ) from None
    with_served(existing, fit).save(curves_path)
    files = {k: str(out / k) for k in ("replay.jsonl", "passk.csv", "measured.json")}
    return {**files, "curves.json": str(curves_path)}
