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

from controller.aggregate.extract import Extractor, get_extractor
from controller.aggregate.normalize import normalize_answer


def _answer(sample: dict[str, Any], extract: Extractor, named: bool) -> str | None:
    """A recorded `answer` (through the named extractor, as a routing replay reads it), else
    the extractor on the sample's text."""
    recorded = sample.get("answer")
    if recorded is not None:
        return extract(str(recorded)) if named else normalize_answer(str(recorded))
    text = sample.get("text")
    return extract(text) if isinstance(text, str) else None


class ReplayRowsError(ValueError):
    """A replay file that cannot calibrate (exit 2); names the file and line."""


def abstain(_text: str) -> str | None:
    """The writers re-read each row's answer as recorded here; a null one stays null."""
    return None


def rows_from_replay(path: Path, extractor: str | None) -> list[dict[str, Any]]:
    """The replay file's questions as calibration rows; CalibrateError names the line."""
    extract = get_extractor(extractor or "answer_is,last_number")
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
        gold = _answer({"answer": obj["gold"]}, extract, extractor is not None)
        gold = gold or normalize_answer(str(obj["gold"]))
        out = []
        for s in samples:
            if not isinstance(s, dict):
                raise ReplayRowsError(f"{here}: samples: each must be an object")
            answer = _answer(s, extract, extractor is not None)
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
