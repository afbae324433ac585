"""Replay records: questions with many recorded samples, read from JSON Lines.

Schema (../shared/data/replay/README.md): one object per line with `id`, `question`, `gold`
(string or null) and `samples`, a list of objects with `text`, `answer` and/or `correct`. This
is the one reader of such lines: replays, routing sets (controller.replay.routing_set) and
`calibrate --from-replay` all parse them here and add only their own checks. Which answer a
sample gives is `sample_answer`'s rule. Every problem is reported as a `ReplayDataError`
naming the line, so a user can fix the file; a field of the wrong type (`"text": 5`, an
`answer` that is a list) is such a problem, never read as something else or as absent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from controller.aggregate.extract import Extractor
from controller.aggregate.normalize import normalize_answer


class ReplayDataError(ValueError):
    """A replay file problem; the message starts with "<file>:<line>:"."""


class EmptySamples(ReplayDataError):
    """A question with no samples: `replay` leaves it out unless `--no-skip-empty`; other
    readers cannot."""

    hint = "drop --no-skip-empty to leave such questions out"


def json_object_line(
    raw: str, here: str, error: type[ValueError] = ReplayDataError
) -> dict[str, Any]:
    """One line of a JSONL file as an object, or `error` saying where ("<file>:<line>") and
    why: every reader of question files (replay, routing sets, calibrate) words it alike."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise error(f"{here}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting past the stack
        raise error(f"{here}: not JSON this reader takes ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise error(f"{here}: expected a JSON object")
    return obj


@dataclass(frozen=True)
class ReplaySample:
    answer: str | None  # normalised; None = abstained
    correct: bool | None  # the source's judgement, when it gave one
    tokens: float | None  # length in tokens (recorded, or estimated from the text)
    text: str | None = None  # the recorded generation, where kept


@dataclass(frozen=True)
class ReplayQuestion:
    id: str
    gold: str | None  # normalised gold answer, None when scored by `correct` flags
    samples: tuple[ReplaySample, ...]
    line: int
    question: str | None = None  # the question's text, where kept


DEFAULT_EXTRACTOR = "answer_is,last_number"
"""What reads a sample's `text` when its record has no `answer` field and nobody named one."""


def _json_type(value: object) -> str:
    """What JSON calls `value`'s type, for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _scalar(value: object) -> bool:
    """A recorded answer, gold or id: a string or a finite number (code logs 84.0 for 84)."""
    if isinstance(value, str):
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(cast(float, value))


def _answer(value: object) -> bool:
    """A recorded answer: a scalar, or true/false (a program of thought may return a bool, and
    the source logs it as one: it reads as the text "True" or "False", a wrong answer where gold
    is "yes", never a reason to refuse the file)."""
    return _scalar(value) or isinstance(value, bool)


def _count(value: object) -> bool:
    return _scalar(value) and not isinstance(value, str) and cast(float, value) >= 0


def _string(value: object) -> bool:
    return isinstance(value, str)


def _flag(value: object) -> bool:
    return isinstance(value, bool)


FieldType = tuple[Callable[[object], bool], str]  # the check, and what the error says it wants
_QUESTION_FIELDS: dict[str, FieldType] = {
    "id": (_scalar, "a string, a number or null"),
    "question": (_string, "a string or null"),
    "gold": (_scalar, "a string, a number or null"),
}
_SAMPLE_FIELDS: dict[str, FieldType] = {
    "text": (_string, "a string or null"),
    "answer": (_answer, "a string, a number, true/false or null"),
    "correct": (_flag, "true/false or null"),
    "tokens": (_count, "a number of at least 0, or null"),
    "num_tokens": (_count, "a number of at least 0, or null"),
}


def _check_types(obj: Mapping[str, object], fields: Mapping[str, FieldType], where: str) -> None:
    """Each of `fields` that `obj` has is null or of its type, else ReplayDataError."""
    for key, (fits, wanted) in fields.items():
        value = obj.get(key)
        if value is not None and not fits(value):
            raise ReplayDataError(f"{where}`{key}` must be {wanted}, not {_json_type(value)}")


def recorded_answer(raw: object, through: Extractor | None = None) -> str | None:
    """A recorded answer: normalised, or through a named extractor (a normaliser such as
    `date`, as a routing set's task names one); null stays null."""
    if raw is None:
        return None
    text = str(raw)
    return through(text) if through is not None else normalize_answer(text)


def recorded_gold(raw: object, through: Extractor | None = None) -> str | None:
    """A recorded gold answer, read as `recorded_answer` reads answers; one a named normaliser
    cannot read (a number gold under a date normaliser) is kept normalised, not lost."""
    if raw is None:
        return None
    return recorded_answer(raw, through) or normalize_answer(str(raw))


def sample_answer(
    sample: Mapping[str, object], extract: Extractor, through: Extractor | None = None
) -> str | None:
    """The answer a recorded sample gives. Its `answer` field wherever the record has one, and
    a null there abstains: the source found no answer (a program that failed, a reply with
    none), so the text must not be searched for one (a failed program's last number is not an
    answer). Only a sample without the field has its `text` read by `extract`. `through`:
    see `recorded_answer`."""
    if "answer" in sample:
        return recorded_answer(sample["answer"], through)
    text = sample.get("text")
    return extract(text) if isinstance(text, str) else None


def _tokens(sample: dict[str, object]) -> float | None:
    """Recorded `tokens`/`num_tokens`, else ~4 characters per token of `text` (an estimate)."""
    for key in ("tokens", "num_tokens"):
        value = sample.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    text = sample.get("text")
    return float(math.ceil(len(text) / 4)) if isinstance(text, str) and text else None


def parse_question(
    raw: str,
    line: int,
    extractor: Extractor,
    where: str = "<data>",
    named: bool = False,
    *,
    keep_empty: bool = False,
) -> ReplayQuestion | None:
    """One line → a question. Blank lines give None; anything malformed raises with the line.
    `named`: the user named the extractor, so it also reads the recorded answers and gold (a
    normaliser such as `date`), as routing sets and `calibrate --from-replay` read them.
    `keep_empty`: a question with no samples comes back with none rather than raising (a
    routing set aligns files by line, and one model may have recorded nothing there)."""
    if not raw.strip():
        return None
    here = f"{where}:{line}"
    obj = json_object_line(raw, here)
    if "samples" not in obj:
        raise ReplayDataError(f"{here}: missing `samples`")
    samples_raw = obj["samples"]
    if not isinstance(samples_raw, list):
        raise ReplayDataError(f"{here}: `samples` must be a list, not {_json_type(samples_raw)}")
    if not samples_raw and not keep_empty:
        raise EmptySamples(f"{here}: empty `samples`")
    _check_types(obj, _QUESTION_FIELDS, f"{here}: ")
    through = extractor if named else None
    gold = recorded_gold(obj.get("gold"), through)
    samples: list[ReplaySample] = []
    for i, s in enumerate(samples_raw):
        if not isinstance(s, dict):
            raise ReplayDataError(f"{here}: sample {i} must be an object, not {_json_type(s)}")
        _check_types(s, _SAMPLE_FIELDS, f"{here}: sample {i} ")
        correct = s.get("correct")
        if "answer" not in s and s.get("text") is None and correct is None:
            raise ReplayDataError(f"{here}: sample {i} has no `answer`, `text` or `correct`")
        text = s.get("text")
        samples.append(ReplaySample(sample_answer(s, extractor, through), correct, _tokens(s),
                                    text if isinstance(text, str) else None))  # fmt: skip
    if gold is None and any(s.correct is None for s in samples):
        raise ReplayDataError(f"{here}: no `gold`, so every sample needs a `correct` flag")
    qid = obj.get("id")
    name = str(qid) if qid is not None else f"line-{line}"
    text = obj.get("question")
    return ReplayQuestion(name, gold, tuple(samples), line, str(text) if text is not None else None)


def parse_lines(
    lines: Iterable[str],
    extractor: Extractor,
    where: str = "<data>",
    skip_empty: bool = False,
    named: bool = False,
    *,
    keep_empty: bool = False,
) -> tuple[list[ReplayQuestion], list[int]]:
    """All questions, and the line numbers skipped for empty `samples` (when skip_empty);
    `named` and `keep_empty` as in `parse_question`."""
    questions: list[ReplayQuestion] = []
    skipped: list[int] = []
    for number, raw in enumerate(lines, start=1):
        question = parse_question(raw, number, extractor, where, named,
                                  keep_empty=keep_empty or skip_empty)  # fmt: skip
        if question is None:
            continue
        if skip_empty and not keep_empty and not question.samples:
            skipped.append(number)
            continue
        questions.append(question)
    if not questions:
        raise ReplayDataError(f"{where}: no questions")
    return questions, skipped


def load_replay(
    path: str | Path,
    extractor: Extractor,
    skip_empty: bool = False,
    named: bool = False,
    *,
    keep_empty: bool = False,
) -> tuple[list[ReplayQuestion], list[int]]:
    """Read a replay file (see parse_lines)."""
    p = Path(path)
    try:
        with p.open(encoding="utf-8-sig") as fh:  # a byte-order mark is not line 1's JSON
            return parse_lines(fh, extractor, str(p), skip_empty, named, keep_empty=keep_empty)
    except UnicodeDecodeError as exc:
        raise ReplayDataError(f"{p}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ReplayDataError(f"{p}: cannot read it ({exc.strerror or exc})") from None
