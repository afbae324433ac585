"""`t2serve calibrate --from-replay FILE --model ID`: the curves live calibration would write,
from samples a user already has (a replay file), without sampling again.

Rows are rebuilt as `record` writes them (id, question, gold, samples with text, answer and
correct); cli.calibrate passes them to the same writers (`write_outputs`): replay.jsonl,
passk.csv, measured.json and the model's curves.json entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.aggregate.extract import get_extractor
from controller.aggregate.normalize import normalize_answer
from controller.replay.data import DEFAULT_EXTRACTOR, recorded_gold, sample_answer


class ReplayRowsError(ValueError):
    """A replay file that cannot calibrate (exit 2); names the file and line."""


def abstain(_text: str) -> str | None:
    """The writers re-read each row's answer as recorded here; a null one stays null."""
    return None


def rows_from_replay(path: Path, extractor: str | None) -> list[dict[str, Any]]:
    """The replay file's questions as calibration rows; CalibrateError names the line."""
    extract = get_extractor(extractor or DEFAULT_EXTRACTOR)
    through = extract if extractor is not None else None  # as a routing replay reads answers
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayRowsError(f"--from-replay: cannot read {path}: {exc}") from None
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        here = f"{path}:{number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReplayRowsError(f"{here}: not valid JSON ({exc.msg})") from None
        samples = obj.get("samples") if isinstance(obj, dict) else None
        if not isinstance(samples, list) or not samples:
            raise ReplayRowsError(f"{here}: samples: missing or empty")
        if obj.get("gold") is None:
            raise ReplayRowsError(f"{here}: gold: missing")
        gold = recorded_gold(obj["gold"], through)
        out = []
        for s in samples:
            if not isinstance(s, dict):
                raise ReplayRowsError(f"{here}: samples: each must be an object")
            answer = sample_answer(s, extract, through)
            right = answer is not None and normalize_answer(answer) == gold
            out.append({"text": s.get("text") or "", "answer": answer, "correct": right})
        rows.append({"id": str(obj.get("id", f"line-{number}")),
                     "question": str(obj.get("question", "")), "gold": gold,
                     "samples": out, "model": obj.get("model")})  # fmt: skip
    if not rows:
        raise ReplayRowsError(f"--from-replay: {path} holds no questions")
    width = min(len(r["samples"]) for r in rows)
    for r in rows:  # the curves need the same K for every question: the fewest recorded
        r["samples"] = r["samples"][:width]
    return rows
