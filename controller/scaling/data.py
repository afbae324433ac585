"""Pass@k count tables (CSV `model,params,tokens,problem,samples,correct`) and `--where` filters.

An optional `loss` column carries each checkpoint's validation (pretraining) loss, which the
accuracy fit uses for L(N, D) when present. Answer-count files (JSON lines, one question of one
checkpoint per line with its answers' counts) load into the same cells, for maj@k.

Every rejection is a DataError whose message names the CSV line and field, so the CLI can print
it as a one-line reason.
"""

from __future__ import annotations

import csv
import hashlib
import math
import operator
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

COLUMNS = ("model", "params", "tokens", "problem", "samples", "correct")
NUMERIC_FIELDS = ("params", "tokens", "samples", "correct")
WHERE_FIELDS = ("model", "params", "tokens", "problem", "samples", "correct")


class DataError(ValueError):
    """Unusable input data; the message is one line naming the row or field."""


@dataclass(frozen=True)
class Cell:
    """One checkpoint (model at N params, D tokens) and its per-question counts."""

    model: str
    params: float
    tokens: float
    samples: NDArray[np.float64]
    correct: NDArray[np.float64]
    loss: float | None = None  # validation loss of the checkpoint, where the data has one
    answers: tuple[dict[str, int], ...] | None = None  # per question: answer -> count (maj@k)
    gold: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CountTable:
    path: str
    sha256: str
    rows: int
    where: str | None
    cells: tuple[Cell, ...]

    @property
    def has_loss(self) -> bool:
        """Every checkpoint carries a validation loss (the `loss` column)."""
        return all(c.loss is not None for c in self.cells)

    @property
    def has_answers(self) -> bool:
        """Every question carries its answer counts (an answer-count file), so maj@k works."""
        return all(c.answers is not None for c in self.cells)

    def cell(self, model: str) -> Cell:
        for c in self.cells:
            if c.model == model:
                return c
        raise KeyError(model)


@dataclass(frozen=True)
class _Row:
    line: int
    model: str
    params: float
    tokens: float
    problem: str
    samples: int
    correct: int
    loss: float | None = None
    answers: dict[str, int] | None = None
    gold: str | None = None


# ---- --where ------------------------------------------------------------------------------------

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*(?P<field>[A-Za-z_]+)\s*(?P<op><=|>=|!=|==|=|<|>)\s*(?P<value>.+?)\s*$")
RowPredicate = Callable[[_Row], bool]


def _clause(field: str, compare: Callable[[Any, Any], Any], value: float | str) -> RowPredicate:
    return lambda row: bool(compare(getattr(row, field), value))


def parse_where(expr: str) -> RowPredicate:
    """Parse `field op value [and field op value ...]` without eval.

    Fields: model, params, tokens, problem, samples, correct. Ops: < <= > >= == = !=.
    Numeric fields take numbers (3e9, 1_000); model/problem take bare or quoted strings.
    """
    clauses = re.split(r"\s+and\s+", expr.strip(), flags=re.IGNORECASE)
    if not expr.strip():
        raise DataError("--where: empty expression")
    tests: list[RowPredicate] = []
    for clause in clauses:
        m = _CLAUSE.match(clause)
        if m is None:
            raise DataError(f"--where: cannot parse '{clause.strip()}' (expected field<op>value)")
        field, op, raw = m["field"].lower(), m["op"], m["value"]
        if field not in WHERE_FIELDS:
            raise DataError(f"--where: unknown field '{field}' (use {', '.join(WHERE_FIELDS)})")
        compare = _OPS[op]
        if field in NUMERIC_FIELDS:
            try:
                number = float(raw.replace("_", ""))
            except ValueError:
                raise DataError(f"--where: '{raw}' is not a number for field '{field}'") from None
            if not math.isfinite(number):
                raise DataError(f"--where: '{raw}' is not a finite number for field '{field}'")
            tests.append(_clause(field, compare, number))
        else:
            text = raw.strip()
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
            tests.append(_clause(field, compare, text))
    return lambda row: all(t(row) for t in tests)


# ---- loading ------------------------------------------------------------------------------------


def _number(text: str | None, line: int, field: str) -> float:
    if text is None or text.strip() == "":
        raise DataError(f"row {line}: field '{field}' is empty")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"row {line}: field '{field}' is not a number: '{text}'") from None
    if math.isnan(value):
        raise DataError(f"row {line}: field '{field}' is NaN")
    if not math.isfinite(value):
        raise DataError(f"row {line}: field '{field}' is infinite")
    return value


def _count(text: str | None, line: int, field: str) -> int:
    value = _number(text, line, field)
    if value < 0:
        raise DataError(f"row {line}: field '{field}' is negative ({text})")
    if value != int(value):
        raise DataError(f"row {line}: field '{field}' is not a whole number ({text})")
    return int(value)


def _parse_row(raw: dict[str, str | None], line: int) -> _Row:
    model = (raw.get("model") or "").strip()
    if not model:
        raise DataError(f"row {line}: field 'model' is empty")
    params = _number(raw.get("params"), line, "params")
    tokens = _number(raw.get("tokens"), line, "tokens")
    for name, value in (("params", params), ("tokens", tokens)):
        if value <= 0:
            raise DataError(f"row {line}: field '{name}' must be positive ({value:g})")
    samples = _count(raw.get("samples"), line, "samples")
    correct = _count(raw.get("correct"), line, "correct")
    if samples < 1:
        raise DataError(f"row {line}: field 'samples' must be at least 1")
    if correct > samples:
        raise DataError(f"row {line}: field 'correct' ({correct}) exceeds 'samples' ({samples})")
    problem = (raw.get("problem") or "").strip()
    loss: float | None = None
    if "loss" in raw:
        loss = _number(raw.get("loss"), line, "loss")
        if loss <= 0:
            raise DataError(f"row {line}: field 'loss' must be positive ({loss:g})")
    return _Row(line, model, params, tokens, problem, samples, correct, loss)


def _read_data_file(p: Path) -> bytes:
    """The file's bytes, or a DataError a user can act on (no traceback)."""
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file not found: {p}") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {p}: {exc.strerror}") from None


@contextmanager
def _naming(p: Path) -> Iterator[None]:
    """A row's error says "row 5: …"; the user reading it also needs the file."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from None


def load_counts(path: str | Path, where: str | None = None) -> CountTable:
    """Read and validate a counts CSV, keep rows matching `where`, and group them by checkpoint."""
    p = Path(path)
    blob = _read_data_file(p)
    keep = parse_where(where) if where is not None else None
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"data file {p} is not UTF-8 text") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [col for col in COLUMNS if col not in header]
    if missing:
        raise DataError(f"{p}: missing column(s): {', '.join(missing)} (need {','.join(COLUMNS)})")
    reader.fieldnames = header
    rows: list[_Row] = []
    with _naming(p):
        for i, raw in enumerate(reader):
            row = _parse_row(raw, line=i + 2)  # line 1 is the header
            if keep is None or keep(row):
                rows.append(row)
    return _table(p, blob, rows, where)


def _table(p: Path, blob: bytes, rows: list[_Row], where: str | None) -> CountTable:
    """Group validated rows into checkpoints (one params/tokens/loss per model)."""
    if not rows:
        reason = f"no rows match --where '{where}'" if where else "the file has no data rows"
        raise DataError(f"{p}: {reason}")
    grouped: dict[str, list[_Row]] = {}
    for row in rows:
        grouped.setdefault(row.model, []).append(row)
    cells = []
    for model, members in grouped.items():
        first = members[0]
        for row in members:
            if row.params != first.params or row.tokens != first.tokens:
                raise DataError(
                    f"{p}: row {row.line}: model '{model}' has params/tokens different from row "
                    f"{first.line}"
                )
            if row.loss != first.loss:
                raise DataError(
                    f"{p}: row {row.line}: model '{model}' has a loss different from row "
                    f"{first.line}"
                )
        with_answers = all(r.answers is not None for r in members)
        cells.append(
            Cell(
                model=model,
                params=first.params,
                tokens=first.tokens,
                samples=np.array([r.samples for r in members], dtype=float),
                correct=np.array([r.correct for r in members], dtype=float),
                loss=first.loss,
                answers=tuple(r.answers or {} for r in members) if with_answers else None,
                gold=tuple(r.gold or "" for r in members) if with_answers else None,
            )
        )
    cells.sort(key=lambda c: (c.params, c.tokens, c.model))
    return CountTable(
        path=str(p),
        sha256=hashlib.sha256(blob).hexdigest(),
        rows=len(rows),
        where=where,
        cells=tuple(cells),
    )


def _answers_row(text: str, line: int) -> _Row:
    """One line of an answer-count file, validated as a counts row plus its answers."""
    import json

    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, a 5,000-digit number, deep nesting
        raise DataError(f"line {line}: not JSON") from None
    answers = doc.get("answers") if isinstance(doc, dict) else None
    gold = doc.get("gold") if isinstance(doc, dict) else None
    if not isinstance(answers, dict) or not isinstance(gold, str):
        raise DataError(f"line {line}: needs 'answers' (answer -> count) and 'gold'")
    counts = {str(k): _count(str(v), line, "answers") for k, v in answers.items()}
    raw = {
        "model": str(doc.get("model", "")),
        "params": str(doc.get("params", "")),
        "tokens": str(doc.get("tokens", "")),
        "problem": str(doc.get("problem", "")),
        "samples": str(sum(counts.values())),
        "correct": str(counts.get(gold, 0)),
    }
    if doc.get("loss") is not None:
        raw["loss"] = str(doc["loss"])
    row = _parse_row(raw, line=line)  # type: ignore[arg-type]
    return _Row(**{**row.__dict__, "answers": counts, "gold": gold})


def load_answers(path: str | Path, where: str | None = None) -> CountTable:
    """Read an answer-count file (JSON lines) into cells that also carry each question's
    answer counts: `{"model", "params", "tokens", "loss"?, "problem", "gold", "answers"}`,
    where `answers` maps each extracted answer to how many samples gave it."""
    p = Path(path)
    blob = _read_data_file(p)
    keep = parse_where(where) if where is not None else None
    rows: list[_Row] = []
    with _naming(p):
        for i, text in enumerate(blob.decode("utf-8", errors="replace").splitlines()):
            if not text.strip():
                continue
            row = _answers_row(text, i + 1)
            if keep is None or keep(row):
                rows.append(row)
    return _table(p, blob, rows, where)
