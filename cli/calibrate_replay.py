"""`t2serve calibrate --from-replay FILE --model ID`: the curves live calibration would write,
from samples a user already has (a replay file), without sampling again.

Rows are rebuilt as `record` writes them (id, question, gold, samples with text, answer and
correct) and go through the same writers (cli.calibrate.write_outputs): replay.jsonl,
passk.csv, measured.json and the model's curves.json entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli.calibrate import CalibrateError, write_outputs
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


def _abstain(_text: str) -> str | None:
    return None


def rows_from_replay(path: Path, extractor: str | None) -> list[dict[str, Any]]:
    """The replay file's questions as calibration rows; CalibrateError names the line."""
    extract = get_extractor(extractor or "answer_is,last_number")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrateError(f"--from-replay: cannot read {path}: {exc}") from None
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        here = f"{path}:{number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CalibrateError(f"{here}: not valid JSON ({exc.msg})") from None
        samples = obj.get("samples") if isinstance(obj, dict) else None
        if not isinstance(samples, list) or not samples:
            raise CalibrateError(f"{here}: samples: missing or empty")
        if obj.get("gold") is None:
            raise CalibrateError(f"{here}: gold: missing")
        gold = _answer({"answer": obj["gold"]}, extract, extractor is not None)
        gold = gold or normalize_answer(str(obj["gold"]))
        out = []
        for s in samples:
            if not isinstance(s, dict):
                raise CalibrateError(f"{here}: samples: each must be an object")
            answer = _answer(s, extract, extractor is not None)
            right = answer is not None and normalize_answer(answer) == gold
            out.append({"text": s.get("text") or "", "answer": answer, "correct": right})
        rows.append({"id": str(obj.get("id", f"line-{number}")),
                     "question": str(obj.get("question", "")), "gold": gold,
                     "samples": out, "model": obj.get("model")})  # fmt: skip
    if not rows:
        raise CalibrateError(f"--from-replay: {path} holds no questions")
    width = min(len(r["samples"]) for r in rows)
    for r in rows:  # the curves need the same K for every question: the fewest recorded
        r["samples"] = r["samples"][:width]
    return rows


def calibrate_from_replay(
    path: Path,
    out: Path,
    *,
    model_id: str,
    params: float,
    tokens: float | None,
    extractor: str | None,
    curves_path: Path | None,
) -> dict[str, str]:
    """Write the outputs; returns {name: path}."""
    rows = rows_from_replay(path, extractor)
    out.mkdir(parents=True, exist_ok=True)
    # the writers re-read each row's answer as recorded here; a null one stays an abstention
    return write_outputs(out, rows, model_id=model_id, params=params, tokens=tokens,
                         source=str(path), extractor=_abstain,
                         curves_path=curves_path)  # fmt: skip
